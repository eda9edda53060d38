"""Predict the test set (flip TTA, averaged over folds) as uint8 PNGs, and score the out-of-fold images.

With --shard i/n (or under torchrun, one shard per process) only every n-th batch from batch i is predicted;
the shards together write exactly what one process would.
"""

from ternaus.cli import load_stage_config, run_stage, stage_parser

__all__ = ["main"]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = stage_parser(__doc__, prog)
    parser.add_argument("--shard", metavar="I/N", default=None, help="predict part I of N (0 <= I < N)")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = load_stage_config(args)
        # Imported once the config has loaded: a mistyped key is reported at once, not after torch starts.
        from ternaus.inference import Shard, predict

        predict(cfg, Shard.parse(args.shard) if args.shard else None)

    return run_stage(body)

