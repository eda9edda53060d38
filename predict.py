"""Predict the test set (flip TTA, averaged over folds) as uint8 PNGs, and score the out-of-fold images."""

from ternaus.cli import load_stage_config, run_stage, stage_parser
from ternaus.inference import predict


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    return run_stage(lambda: predict(load_stage_config(args)))


if __name__ == "__main__":
    raise SystemExit(main())
