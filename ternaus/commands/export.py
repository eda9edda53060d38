"""Export a trained checkpoint as ONNX or TorchScript, for use outside Python (dynamic batch, height, width).

--normalise puts the ImageNet normalisation inside: the input is then uint8 RGB, as the pipeline reads images.
--sigmoid puts the sigmoid inside: the output is then a probability instead of logits.
"""

from ternaus.cli import load_stage_config, run_stage, stage_parser
from ternaus.export import FORMATS, export

__all__ = ["main"]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = stage_parser(__doc__, prog)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of the configured model, e.g. "
                                                            "runs/carvana/fold_0/best.pt")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="what to write")
    parser.add_argument("--out", default=None, help="the file to write (default: next to the checkpoint, "
                                                    "best.onnx or best.torchscript.pt)")
    parser.add_argument("--normalise", action="store_true", help="input uint8 RGB 0..255, normalised inside")
    parser.add_argument("--sigmoid", action="store_true", help="output probabilities instead of logits")
    args = parser.parse_args(argv)
    return run_stage(lambda: export(load_stage_config(args), args.checkpoint, args.format, args.out,
                                    args.normalise, args.sigmoid))

