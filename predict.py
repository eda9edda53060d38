"""Predict the test set (flip TTA, averaged over folds) as uint8 PNGs, and score the out-of-fold images.

With --shard i/n (or under torchrun, one shard per process) only every n-th batch from batch i is predicted;
the shards together write exactly what one process would.
"""

from ternaus.cli import load_stage_config, run_stage, stage_parser
from ternaus.inference import Shard, predict


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--shard", metavar="I/N", default=None, help="predict part I of N (0 <= I < N)")
    args = parser.parse_args(argv)
    return run_stage(lambda: predict(load_stage_config(args), Shard.parse(args.shard) if args.shard else None))


if __name__ == "__main__":
    raise SystemExit(main())
