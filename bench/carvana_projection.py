"""Projected GPU-hours of re-creating the 1st-place Carvana submission: arithmetic on FLOP counts, not a
measurement.

    python -m bench.carvana_projection

Each family's forward FLOPs per image come from ``bench.models.forward_flops`` (the meta device: convolutions
only, a multiply-add counted as 2). A training image costs three forward passes (the forward pass and a
backward pass of twice its work), a validation or test image one per view. The FLOPs become hours at the
throughput the competition reported for UNet11 at full resolution on a GTX 1080 Ti: about 1 image per second
training and 5 per second predicting, i.e. 3 x 1,928 GFLOPs per second training and 5 x 1,928 predicting
(``REPORTED``). Every family is assumed to run as efficiently per FLOP as UNet11 did; the table is a scale, not
a promise. The result is printed as a markdown table (docs/carvana-1st-place.md holds it).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.common import parser
from bench.models import forward_flops

TRAIN_IMAGES, TEST_IMAGES = 5_088, 100_064
FULL = (1280, 1920)  # 1918 x 1280 padded
# GTX 1080 Ti, UNet11 at full resolution, as reported: 1 training image/s, 5 test images/s.
REPORTED = {"train_images_per_s": 1.0, "predict_images_per_s": 5.0}
TEAM_GPU_HOURS = {"train": 2_140, "predict": 320}


@dataclass(frozen=True)
class Family:
    name: str
    model: str
    options: tuple[tuple[str, object], ...]
    size: tuple[int, int]
    networks: int  # folds x configurations trained
    folds: int
    epochs: int
    views: int  # test-time views per network (2: flip TTA)


FAMILIES = (
    Family("scratch", "scratch", (), (1024, 1024), 7, 7, 250, 1),
    Family("vgg11v1", "unet11", (("num_filters", 64),), (1024, 1024), 7, 7, 60, 1),
    Family("albu (6 configurations)", "linknet34", (), FULL, 30, 5, 40, 2),
    Family("ternaus", "unet11", (), FULL, 5, 5, 52, 1),
)


def hours(family: Family, unet11_full: float) -> dict[str, float]:
    """GPU-hours of training (with a validation pass each epoch) and of predicting the test set."""
    flops = forward_flops(family.model, *family.size, **dict(family.options))
    train_rate = 3 * unet11_full * REPORTED["train_images_per_s"]  # FLOPs per second
    predict_rate = unet11_full * REPORTED["predict_images_per_s"]
    per_network = family.epochs * TRAIN_IMAGES * flops * (3 * (family.folds - 1) / family.folds + 1 / family.folds)
    train = family.networks * per_network / train_rate / 3600
    predict = family.networks * family.views * TEST_IMAGES * flops / predict_rate / 3600
    return {"gflops": flops / 1e9, "train": train, "predict": predict}


def table() -> str:
    unet11_full = forward_flops("unet11", *FULL)
    lines = ["| family | network, input | forward GFLOPs | networks × epochs | training GPU-h | prediction GPU-h |",
             "|---|---|---|---|---|---|"]
    totals = {"train": 0.0, "predict": 0.0}
    for family in FAMILIES:
        found = hours(family, unet11_full)
        totals = {k: totals[k] + found[k] for k in totals}
        options = "".join(f", {k} {v}" for k, v in family.options)
        lines.append(f"| {family.name} | {family.model}{options}, {family.size[1]}×{family.size[0]} | "
                     f"{found['gflops']:,.0f} | {family.networks} × {family.epochs} | {found['train']:,.0f} | "
                     f"{found['predict']:,.0f} |")
    lines.append(f"| **total** | | | | **{totals['train']:,.0f}** | **{totals['predict']:,.0f}** |")
    lines.append(f"| the team, as reported | | | | {TEAM_GPU_HOURS['train']:,} | {TEAM_GPU_HOURS['predict']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser(__doc__).parse_args(argv)
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
