"""Train one UNet11 per fold (all folds of train.folds, or --fold K): writes {output_dir}/fold_K/."""

from ternaus.cli import load_stage_config, run_stage, stage_parser
from ternaus.training import train


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--fold", type=int, default=None, help="train this fold only")
    args = parser.parse_args(argv)
    return run_stage(lambda: train(load_stage_config(args), args.fold))


if __name__ == "__main__":
    raise SystemExit(main())
