"""Check the training data and split it into folds grouped by car: writes {output_dir}/folds.csv."""

from ternaus.cli import load_stage_config, run_stage, stage_parser

__all__ = ["main"]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = stage_parser(__doc__, prog).parse_args(argv)

    def body() -> None:
        cfg = load_stage_config(args)
        # Imported once the config has loaded: a mistyped key is reported at once, not after torch starts.
        from ternaus.prepare import prepare_folds

        prepare_folds(cfg)

    return run_stage(body)

