"""Threshold the test predictions, run-length encode them and write {output_dir}/submission.csv.gz.

The threshold and minimum area: --threshold/--min-area, else the values predict.py searched on the out-of-fold
predictions ({output_dir}/postprocess.json) when postprocess.use_searched, else postprocess.threshold/min_area.

With --check FILE, only check an existing submission file and list what is wrong, line by line.
"""

import sys

from ternaus.cli import load_stage_config, run_stage, stage_parser

__all__ = ["main"]


def _check(cfg, path: str) -> None:
    from ternaus.submission import check_submission

    problems = check_submission(path, cfg)
    for line in problems:
        print(line)
    print(f"{path}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    if problems:
        sys.exit(1)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = stage_parser(__doc__, prog)
    # Plain strings: each is checked as the config key it sets, by the config's own checks.
    parser.add_argument("--threshold", default=None,
                        help="overrides the searched postprocess.json and postprocess.threshold")
    parser.add_argument("--min-area", default=None,
                        help="empty masks of fewer pixels; overrides postprocess.json and postprocess.min_area")
    parser.add_argument("--check", metavar="FILE", default=None, help="check FILE instead of writing one")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = load_stage_config(args, {"--threshold": "postprocess.threshold", "--min-area": "postprocess.min_area"})
        if args.check:
            _check(cfg, args.check)
        else:
            # Imported once the config has loaded: a mistyped key is reported at once, not after torch starts.
            from ternaus.submission import make_submission

            threshold = cfg.postprocess.threshold if args.threshold is not None else None
            min_area = cfg.postprocess.min_area if args.min_area is not None else None
            print(f"submission written and checked: {make_submission(cfg, threshold, min_area)}")

    return run_stage(body)

