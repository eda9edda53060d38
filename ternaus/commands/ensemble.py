"""Merge several runs' test predictions (weighted mean, then ensemble.rules) into {output_dir}/predictions, the
folder make_submission.py reads; score each run's and the ensemble's out-of-fold predictions.

Each run of ensemble.members must have been through predict.py. A rerun keeps the merged PNGs already written
by the same runs and settings.
"""

from ternaus.cli import load_stage_config, run_stage, stage_parser

__all__ = ["main"]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = stage_parser(__doc__, prog).parse_args(argv)

    def body() -> None:
        cfg = load_stage_config(args)
        # Imported once the config has loaded: a mistyped key is reported at once, not after torch starts.
        from ternaus.ensemble import ensemble

        ensemble(cfg)

    return run_stage(body)

