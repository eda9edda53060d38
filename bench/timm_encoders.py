"""Write ``ternaus/models/timm_encoders.txt``: every model name the pinned timm lists, with the reductions of its
``features_only`` feature maps, so that a config's ``model.encoder`` and input size are checked when it loads,
before torch is imported.

    python -m bench.timm_encoders [--partial FILE]  # rewrites the file (20 minutes on 2 busy CPU cores)
    python -m bench.timm_encoders --check    # exit 1 if the file's names differ from timm.list_models()

Each encoder is built with ``timm.create_model(name, pretrained=False, features_only=True)`` on the meta device:
no weights are allocated, initialised or downloaded; ``feature_info.reduction()`` is read from the module. A line
is ``name<TAB>r1,r2,...`` (the reduction of each feature map, in the order the encoder returns them),
``name<TAB>-`` (timm cannot build it with ``features_only``) or ``name<TAB>?`` (it could not be built on the meta
device; the reductions are then read when the network is built). Rerun it when requirements.txt's timm changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / "ternaus" / "models" / "timm_encoders.txt"


def reductions_of(name: str) -> str:
    import timm
    import torch

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder = timm.create_model(name, pretrained=False, features_only=True)
    except Exception as err:  # noqa: BLE001 - sorted below; the network's build decides in the end
        print(f"{name}: {type(err).__name__}: {str(err)[:200]}", file=sys.stderr)
        return "?"
    return ",".join(str(r) for r in encoder.feature_info.reduction())


# Plain ViTs and their kin are the slowest to build and have no pyramid: read last, and the common CNN families
# first, so that an interrupted run (--partial) has the encoders a U-Net is most often put on.
_TRANSFORMER_MARKS = ("vit", "eva", "beit", "deit", "aimv2", "patch", "cait", "xcit", "mixer", "clip", "siglip")


_COMMON = ("tf_efficientnet_lite", "efficientnet", "resnet", "mobilenet", "convnext", "regnet")


def _transformers_last(name: str) -> tuple[bool, bool, str]:
    return any(mark in name for mark in _TRANSFORMER_MARKS), not name.startswith(_COMMON), name


def _done(partial: Path) -> dict[str, str]:
    lines = partial.read_text().splitlines() if partial.is_file() else []
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--check", action="store_true", help="compare the file's names with timm.list_models()")
    args.add_argument("--out", default=str(TABLE))
    args.add_argument("--partial", help="a file of the lines done so far, kept between runs: an interrupted run "
                                        "continues where it stopped")
    opts = args.parse_args(argv)
    import timm

    names = timm.list_models()
    if opts.check:
        from ternaus.encoders import timm_encoder_table

        have = list(timm_encoder_table())
        print("the same" if have == names else f"differs: {len(have)} names in the file, timm lists {len(names)}")
        return 0 if have == names else 1
    header = (f"# timm=={timm.__version__}: python -m bench.timm_encoders (name, reductions of its features_only "
              "maps; -: no features_only; ?: read at build time)")
    done = _done(Path(opts.partial)) if opts.partial else {}
    with open(opts.partial or os.devnull, "a") as partial:
        for index, name in enumerate(sorted(names, key=_transformers_last)):
            if name not in done:
                done[name] = reductions_of(name)
                partial.write(f"{name}\t{done[name]}\n")
                partial.flush()
            if index % 100 == 0:
                print(f"{index}/{len(names)} {name}", file=sys.stderr, flush=True)
    lines = [header, *(f"{name}\t{done[name]}" for name in names)]
    Path(opts.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {opts.out}: {len(names)} names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
