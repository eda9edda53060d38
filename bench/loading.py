"""Data loading at Carvana's full resolution (1918 x 1280): images/s of one worker for plain JPEG decoding
(OpenCV, torchvision.io on the CPU, nvJPEG on CUDA when there is a GPU) against the pipeline's own items
(read + decode + pad to 1920 x 1280 + to tensor, and for training also the GIF mask and the augmentation);
then the DataLoader with 0..N workers, and how many workers it takes to feed the model.

    python -m bench.loading [--quick]
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from torchvision.transforms import v2

from bench.common import fmt, median_seconds, parser, table, write_section
from bench.fixtures import rendered_views
from ternaus.augment import JointTransform, build_train_transform
from ternaus.config import AugmentConfig, load_config
from ternaus.data.dataset import SegmentationDataset
from ternaus.data.geometry import Geometry
from ternaus.fixtures.carvana import gif_bytes, jpeg_bytes
from ternaus.runtime import Runtime
from ternaus.training import build_loader

SIZE = (1918, 1280)


def write_files(folder: Path, count: int) -> list[dict]:
    """``count`` JPEGs and GIF masks (8 distinct renders, repeated); the dataset rows that point at them."""
    views = rendered_views(SIZE)
    rows = []
    for k in range(count):
        image, mask = views[k % len(views)]
        rows.append({"id": f"img{k:04d}", "image": str(folder / f"img{k:04d}.jpg"),
                     "mask": str(folder / f"img{k:04d}_mask.gif"), "rle": ""})
        Path(rows[-1]["image"]).write_bytes(jpeg_bytes(image, 90))
        Path(rows[-1]["mask"]).write_bytes(gif_bytes(mask))
    return rows


REPO = Path(__file__).resolve().parent.parent


def recipe_augmentation() -> AugmentConfig:
    """The Carvana recipe's (configs/carvana.yaml): flips and, half the time, an HSV shift or a grey copy."""
    return load_config(REPO / "configs" / "carvana.yaml").train.augment


def torchvision_only_transform(aug: AugmentConfig) -> JointTransform:
    """The same recipe with v2's own float kernels (ColorJitter, RandomAffine), for comparison."""
    colour = v2.RandomChoice([v2.ColorJitter(brightness=aug.brightness, saturation=aug.saturation, hue=aug.hue),
                              v2.Grayscale(num_output_channels=3)], p=[0.75, 0.25])
    affine = v2.RandomAffine(degrees=aug.rotate, translate=(aug.shift, aug.shift),
                             scale=(1 - aug.scale, 1 + aug.scale))
    return JointTransform(v2.Compose([v2.RandomHorizontalFlip(aug.hflip), v2.RandomApply([affine], p=aug.ssr_p),
                                      v2.RandomApply([colour], p=aug.color_p)]))


def per_worker_rates(rows: list[dict], repeats: int) -> list[tuple[str, float]]:
    """Images/s of one process with one torch thread, as in a DataLoader worker."""
    paths = [r["image"] for r in rows]
    aug = recipe_augmentation()
    with_ssr = AugmentConfig(**{**aug.__dict__, "ssr_p": 1.0})
    predict_items = SegmentationDataset(rows, Geometry(None), False)
    train_items = SegmentationDataset(rows, Geometry(None), True, build_train_transform(aug))
    train_v2 = SegmentationDataset(rows, Geometry(None), True, torchvision_only_transform(aug))
    ssr_items = SegmentationDataset(rows, Geometry(None), True, build_train_transform(with_ssr))
    ssr_v2 = SegmentationDataset(rows, Geometry(None), True, torchvision_only_transform(with_ssr))
    ways = [("cv2.imdecode (file read + decode)",
             lambda p, k: cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_COLOR)),
            ("torchvision.io.decode_jpeg, CPU", lambda p, k: torchvision.io.decode_jpeg(torchvision.io.read_file(p))),
            ("pipeline, prediction item (decode, RGB, pad, tensor)", lambda p, k: predict_items[k]),
            ("pipeline, training item (+ GIF mask, the recipe's augmentation)", lambda p, k: train_items[(k, k)]),
            ("  the same with v2.ColorJitter (torchvision's float HSV)", lambda p, k: train_v2[(k, k)]),
            ("pipeline, training item, + shift-scale-rotate on every image", lambda p, k: ssr_items[(k, k)]),
            ("  the same with v2.ColorJitter and v2.RandomAffine", lambda p, k: ssr_v2[(k, k)])]
    rates = []
    for name, read in ways:
        seconds = median_seconds(lambda: [read(p, k) for k, p in enumerate(paths)], repeats)
        rates.append((name, len(paths) / seconds))
    if torch.cuda.is_available():
        data = [torchvision.io.read_file(p) for p in paths]
        seconds = median_seconds(lambda: torchvision.io.decode_jpeg(data, device="cuda"), repeats)
        rates.append(("nvJPEG, torchvision.io.decode_jpeg(device='cuda'), batched", len(paths) / seconds))
    return rates


def loader_rates(rows: list[dict], workers: list[int]) -> list[tuple[int, float]]:
    """Training items through a DataLoader (batch 4): images/s after the first batch."""
    dataset = SegmentationDataset(rows, Geometry(None), True, build_train_transform(recipe_augmentation()))
    keys = [(k % len(rows), k) for k in range(4 * len(rows))]
    rates = []
    for count in workers:
        loader = build_loader(_Keyed(dataset, keys), 4, Runtime.detect(), count)
        iterator = iter(loader)
        next(iterator)
        start, seen = time.perf_counter(), 0
        for batch in iterator:
            seen += len(batch["id"])
        rates.append((count, seen / (time.perf_counter() - start)))
    return rates


class _Keyed(torch.utils.data.Dataset):
    """The dataset read at (index, seed) keys, as the training sampler reads it."""

    def __init__(self, dataset: SegmentationDataset, keys: list[tuple[int, int]]):
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, position: int) -> dict:
        return self.dataset[self.keys[position]]


def main() -> None:
    args = parser(__doc__).parse_args()
    count, repeats = (4, 1) if args.quick else (8, 3)
    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_files(Path(tmp), count)
        torch.set_num_threads(1)  # as in a DataLoader worker
        rates = per_worker_rates(rows, repeats)
        torch.set_num_threads(threads)
        loaders = loader_rates(rows, sorted({0, 1, cores}) if not args.quick else [0])
    train_rate = rates[3][1]
    # An H100 at 40% MFU (an assumption, not a measurement here): 5.78 TFLOP per training image (forward and
    # backward), 2 x 1.93 TFLOP per predicted image (the image and its mirror, forward only).
    train_gpu, predict_gpu = 0.4 * 989e12 / 5.776e12, 0.4 * 989e12 / (2 * 1.928e12)
    body = (f"{count} JPEGs of 1918 x 1280 (quality 90) with their GIF masks, from the page cache. One process, "
            "one torch thread (as in a DataLoader worker):\n\n"
            + table(["what", "images/s per worker"], [[name, fmt(rate, 1)] for name, rate in rates])
            + f"\n\nTraining items through a DataLoader (batch 4) on this machine's {cores} cores:\n\n"
            + table(["workers", "images/s"], [[w, fmt(r, 1)] for w, r in loaders])
            + f"\n\nWorkers needed: a GPU that trains at R images/s at full resolution needs R / {fmt(train_rate, 1)} "
            f"workers of this CPU. An H100 at 40% MFU would train about {train_gpu:.0f} images/s and predict about "
            f"{predict_gpu:.0f} (an arithmetic projection, not a measurement): about "
            f"{math.ceil(train_gpu / train_rate)} training workers and {math.ceil(predict_gpu / rates[2][1])} "
            "prediction workers, one core each.")
    write_section("loading", "Data loading", body, write=not args.quick)


if __name__ == "__main__":
    main()
