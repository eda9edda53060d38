"""Check the training data and split it into folds grouped by car: writes {output_dir}/folds.csv."""

from ternaus.cli import load_stage_config, run_stage, stage_parser
from ternaus.prepare import prepare_folds


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    return run_stage(lambda: prepare_folds(load_stage_config(args)))


if __name__ == "__main__":
    raise SystemExit(main())
