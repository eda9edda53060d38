"""Train one UNet11 per fold (all folds of train.folds, or --fold K): writes {output_dir}/fold_K/."""

from ternaus.cli import load_stage_config, run_stage, stage_parser

__all__ = ["main"]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = stage_parser(__doc__, prog)
    parser.add_argument("--fold", type=int, default=None, help="train this fold only")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = load_stage_config(args)
        # Imported once the config has loaded: a mistyped key is reported at once, not after torch starts.
        from ternaus.training import train

        train(cfg, args.fold)

    return run_stage(body)

