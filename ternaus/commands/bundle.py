"""``ternaus bundle``: a finished run as a folder to upload as a Kaggle dataset; ``ternaus predict-bundle``: the
checked submission from that folder, offline (see docs/kaggle.md)."""

from __future__ import annotations

import argparse

from ternaus.cli import load_stage_config, run_stage, stage_parser

__all__ = ["make", "predict"]

MAKE = """Write a finished run's bundle into --out: the project's wheel, each fold's checkpoint (model weights only),
the resolved config, postprocess.json and bundle.json (sizes, SHA-256, version). The run must have been through
train.py and predict.py; its test data must be at data.root (the bundle records what its images look like)."""

PREDICT = """Write OUT/submission.csv.gz (checked) for the test images in TEST_DIR with the bundle's models, as
make_submission.py would in the run; writes nothing outside OUT. Every file of the bundle is checked against its
bundle.json first, and test images unlike the run's (file type, channels) are refused before any prediction."""


def make(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = stage_parser(MAKE, prog)
    parser.add_argument("--out", required=True, help="the bundle's folder (new or empty, or an earlier bundle)")
    parser.add_argument("--wheel", default=None, help="ship this wheel of ternaus instead of building one")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = load_stage_config(args)
        # Imported once the config has loaded: a mistyped key is reported at once, not after torch starts.
        from ternaus.bundle import make_bundle

        make_bundle(cfg, args.out, args.wheel)

    return run_stage(body)


def predict(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=PREDICT)
    parser.add_argument("bundle", help="the folder `ternaus bundle` wrote (e.g. /kaggle/input/my-bundle)")
    parser.add_argument("test_dir", help="the test images (e.g. /kaggle/input/carvana-image-masking-challenge/test)")
    parser.add_argument("out", help="where the predictions and the submission go (e.g. /kaggle/working)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override a value of the bundle's config, e.g. predict.batch_size=8")
    parser.add_argument("--sample-submission", default=None,
                        help="the sample submission (default: the config's name, next to TEST_DIR)")
    args = parser.parse_intermixed_args(argv)

    def body() -> None:
        from ternaus.bundle import predict_bundle

        path = predict_bundle(args.bundle, args.test_dir, args.out, args.overrides, args.sample_submission)
        print(f"submission written and checked: {path}")

    return run_stage(body)
