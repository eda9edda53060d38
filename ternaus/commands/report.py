"""Write the run's report: {output_dir}/report/index.html (training curves, CV table, worst and best out-of-fold
images, test predictions) and its PNGs, from the files train.py and predict.py wrote."""

from ternaus.cli import load_stage_config, run_stage, stage_parser
from ternaus.report import build_report

__all__ = ["main"]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = stage_parser(__doc__, prog).parse_args(argv)
    return run_stage(lambda: print(f"report written: {build_report(load_stage_config(args))}"))

