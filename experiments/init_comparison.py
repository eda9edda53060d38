"""The paper's experiment: UNet11 from LeCun uniform, from the ImageNet encoder and from a whole network
pre-trained on another dataset, under identical settings; writes the validation-IoU table and IoU-by-epoch curves.

    python -m experiments.init_comparison --config experiments/init_comparison.yaml \\
        (--pretrain-data DIR [--pretrain-epochs N] | --pretrained CHECKPOINT) [KEY=VALUE ...]

With --pretrain-data the whole-network checkpoint is made first: the same model and settings trained from
scratch on DIR (its fold 0 held out), into {output_dir}/pretrain/. Without the ImageNet weights file the
ImageNet row is reported as not run and the other two are trained. Running the command again resumes.
"""

from pathlib import Path

from experiments.initialisation import pretrain, run_experiment
from ternaus.cli import load_stage_config, run_stage, stage_parser
from ternaus.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrain-data", metavar="DIR", help="dataset (Carvana layout) to pre-train on first")
    source.add_argument("--pretrained", metavar="CHECKPOINT", help="whole-network checkpoint to start from")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default: train.epochs")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = load_stage_config(args)
        if args.pretrained:
            checkpoint = Path(args.pretrained)
            if not checkpoint.is_file():
                raise ConfigError(f"--pretrained {checkpoint}: no such file")
        else:
            print(f"---- pre-training on {args.pretrain_data}")
            checkpoint = pretrain(cfg, args.pretrain_data, Path(cfg.output_dir) / "pretrain", args.pretrain_epochs)
        run_experiment(cfg, checkpoint)

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
