"""Synthetic fixtures in the layouts of three more competitions, for the example configs and their tests:

- ``tgs``: TGS Salt -- 101 x 101 greyscale PNGs, ``train/images`` + ``train/masks`` paired by stem, and
  ``train.csv`` (id, rle_mask: column-major, 1-indexed); about 40 % of the masks empty.
- ``airbus``: Airbus Ship Detection -- 768 x 768 RGB JPEGs in ``train_v2``, masks only as
  ``train_ship_segmentations_v2.csv`` (ImageId, EncodedPixels), one row per ship and one empty row for an
  image without ships (most of them).
- ``severstal``: Severstal Steel Defect -- 1600 x 256 grey JPEGs in ``train_images``, ``train.csv`` (ImageId,
  ClassId, EncodedPixels) listing only the (image, class) pairs that have a defect, four classes.

Each also writes the test images, the competition's sample submission and, hidden from the pipeline, the test
set's true masks in the training masks' own format (``test_masks/``, ``test_ship_segmentations.csv``,
``test.csv``), so that a submission can be scored (``ternaus.evaluate``). Sizes are arguments: the tests use
tiny ones. The shapes are simple (a salt body under a wavy line, bright ships, four kinds of defects with four
textures): a network learns them in a few epochs, which the tests rely on.

    python -m ternaus.competitions tgs --out data/tgs
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ternaus.io import atomic_write_bytes
from ternaus.rle import RleFormat, encode_rle

__all__ = ["generate_tgs", "generate_airbus", "generate_severstal", "GENERATORS", "COLUMN_MAJOR", "TRUTH"]

COLUMN_MAJOR = RleFormat(order="F")  # TGS, Airbus and Severstal: column-major, 1-indexed, "" when empty


def _ids(seed: int, count: int, split: str, length: int) -> list[str]:
    return [hashlib.sha256(f"{seed}:{split}:{i}".encode()).hexdigest()[:length] for i in range(count)]


def _encoded(image: np.ndarray, suffix: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix == ".jpg" else []
    ok, data = cv2.imencode(suffix, image, params)
    if not ok:
        raise RuntimeError(f"cv2 failed to encode a {suffix} image")
    return data.tobytes()


def _write_image(path: Path, image: np.ndarray) -> None:
    atomic_write_bytes(path, _encoded(image, path.suffix), durable=False)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False, lineterminator="\n").encode())


def _texture(rng: np.random.Generator, shape: tuple[int, int], blur: float, mean: float, spread: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), blur)
    return mean + spread * noise / (noise.std() + 1e-6)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------- TGS Salt


def tgs_sample(rng: np.random.Generator, size: int, salt: bool) -> tuple[np.ndarray, np.ndarray]:
    """A greyscale seismic-like image and its 0/1 salt mask: salt is a smooth, brighter body under a wavy
    line (or above it), sediment has horizontal layers."""
    rows = np.arange(size, dtype=np.float32)[:, None]
    layers = 20 * np.sin(rows / rng.uniform(2.0, 4.0) + rng.uniform(0, 6)) + np.zeros((size, size), np.float32)
    image = 100 + layers + _texture(rng, (size, size), 1.0, 0, 12)
    mask = np.zeros((size, size), np.uint8)
    if salt:
        cols = np.arange(size, dtype=np.float32)
        line = size * rng.uniform(0.25, 0.7) + size * 0.12 * np.sin(cols / size * rng.uniform(3, 8) + rng.uniform(0, 6))
        mask = (rows >= line[None, :]).astype(np.uint8)
        if rng.random() < 0.3:
            mask = 1 - mask
        image = np.where(mask > 0, 170 + _texture(rng, (size, size), 3.0, 0, 8), image)
    return _to_uint8(image), mask


def generate_tgs(out: str | Path, images: int = 40, test_images: int = 8, size: int = 101, seed: int = 0,
                 empty_share: float = 0.4) -> Path:
    out = Path(out)
    rng = np.random.default_rng([seed, 101])
    for split, count, mask_dir in (("train", images, "train/masks"), ("test", test_images, "test_masks")):
        rows = []
        for image_id in _ids(seed, count, split, 10):
            image, mask = tgs_sample(rng, size, salt=rng.random() >= empty_share)
            _write_image(out / split / "images" / f"{image_id}.png", image)
            _write_image(out / mask_dir / f"{image_id}.png", mask * 255)
            rows.append({"id": image_id, "rle_mask": encode_rle(mask, COLUMN_MAJOR)})
        if split == "train":
            _write_csv(out / "train.csv", pd.DataFrame(rows))
        else:
            _write_csv(out / "sample_submission.csv", pd.DataFrame({"id": [r["id"] for r in rows], "rle_mask": "1 1"}))
    return out


# ---------------------------------------------------------------- Airbus ships


def _ship(rng: np.random.Generator, size: int) -> np.ndarray:
    """A rotated rectangle's corners: a ship of 1/8 to 1/4 of the image long, a quarter as wide."""
    length = size * rng.uniform(0.12, 0.25)
    centre = rng.uniform(0.15, 0.85, 2) * size
    box = cv2.boxPoints(((float(centre[0]), float(centre[1])), (length, max(2.0, length / 4)), rng.uniform(0, 180)))
    return np.round(box).astype(np.int32)


def airbus_sample(rng: np.random.Generator, size: int, ships: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """An RGB sea and one 0/1 mask per ship; ships do not touch (a ship that would is not drawn)."""
    sea = _texture(rng, (size, size), 2.0, 0, 10)
    image = np.stack([40 + sea, 70 + sea, 110 + sea], axis=-1)
    taken, masks = np.zeros((size, size), np.uint8), []
    for _ in range(ships):
        mask = cv2.fillPoly(np.zeros((size, size), np.uint8), [_ship(rng, size)], 1)
        if (cv2.dilate(mask, np.ones((3, 3), np.uint8)) & taken).any():
            continue
        taken |= mask
        masks.append(mask)
        image[mask > 0] = rng.uniform(190, 235)
    return _to_uint8(image), masks


def generate_airbus(out: str | Path, images: int = 40, test_images: int = 8, size: int = 768, seed: int = 0,
                    empty_share: float = 0.5) -> Path:
    out = Path(out)
    rng = np.random.default_rng([seed, 768])
    for split, count, folder, csv in (("train", images, "train_v2", "train_ship_segmentations_v2.csv"),
                                      ("test", test_images, "test_v2", "test_ship_segmentations.csv")):
        rows = []
        for image_id in _ids(seed, count, split, 9):
            ships = 0 if rng.random() < empty_share else int(rng.integers(1, 4))
            image, masks = airbus_sample(rng, size, ships)
            name = f"{image_id}.jpg"
            _write_image(out / folder / name, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            rows += [{"ImageId": name, "EncodedPixels": encode_rle(m, COLUMN_MAJOR)} for m in masks] or \
                [{"ImageId": name, "EncodedPixels": ""}]
        _write_csv(out / csv, pd.DataFrame(rows))
        if split == "test":
            names = sorted({r["ImageId"] for r in rows})
            _write_csv(out / "sample_submission_v2.csv", pd.DataFrame({"ImageId": names, "EncodedPixels": "1 2"}))
    return out


# ---------------------------------------------------------------- Severstal steel defects


def _defect(rng: np.random.Generator, shape: tuple[int, int], kind: int) -> np.ndarray:
    """A 0/1 mask of one defect class: 1 small spots, 2 vertical scratches, 3 wide patches, 4 large blobs."""
    height, width = shape
    mask = np.zeros(shape, np.uint8)
    x = int(rng.integers(width // 8, width - width // 8))
    if kind == 1:
        for _ in range(int(rng.integers(2, 5))):
            centre = (int(x + rng.integers(-width // 16, width // 16)), int(rng.integers(height // 4, 3 * height // 4)))
            cv2.circle(mask, centre, max(2, height // 10), 1, -1)
    elif kind == 2:
        cv2.rectangle(mask, (x, 0), (x + max(2, width // 80), height - 1), 1, -1)
    elif kind == 3:
        half = int(rng.integers(width // 16, width // 8))
        cv2.ellipse(mask, (x, height // 2), (half, height // 3), 0, 0, 360, 1, -1)
    else:
        half = int(rng.integers(width // 12, width // 6))
        cv2.rectangle(mask, (max(0, x - half), height // 6), (min(width - 1, x + half), 5 * height // 6), 1, -1)
    return mask


DEFECT_SHADE = {1: -70.0, 2: -90.0, 3: 60.0, 4: -45.0}  # darker or brighter than the steel around it


def severstal_sample(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A grey steel strip (horizontal rolling streaks) and its (4, H, W) 0/1 defect masks, at most two classes
    per image, the later one drawn over the earlier (so a pixel has one class, as in the competition)."""
    streaks = _texture(rng, (shape[0], 1), 1.0, 0, 6) + np.zeros(shape, np.float32)
    image = 120 + streaks + _texture(rng, shape, 0.7, 0, 5)
    masks = np.zeros((4, *shape), np.uint8)
    present = rng.choice(4, size=int(rng.choice([0, 1, 1, 2])), replace=False) + 1
    for kind in present:
        mask = _defect(rng, shape, int(kind))
        masks[:, mask > 0] = 0
        masks[kind - 1] = mask
        texture = 12 * np.sign(np.sin(np.arange(shape[1]) / 2.0))[None, :] if kind == 4 else 0
        image = np.where(mask > 0, image + DEFECT_SHADE[int(kind)] + texture, image)
    return _to_uint8(image), masks


def generate_severstal(out: str | Path, images: int = 40, test_images: int = 8, size: tuple[int, int] = (256, 1600),
                       seed: int = 0) -> Path:
    """``size`` is (H, W)."""
    out = Path(out)
    rng = np.random.default_rng([seed, 1600])
    for split, count, folder, csv in (("train", images, "train_images", "train.csv"),
                                      ("test", test_images, "test_images", "test.csv")):
        rows, names = [], []
        for image_id in _ids(seed, count, split, 9):
            image, masks = severstal_sample(rng, tuple(size))
            names.append(f"{image_id}.jpg")
            _write_image(out / folder / names[-1], cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
            rows += [{"ImageId": names[-1], "ClassId": c + 1, "EncodedPixels": encode_rle(m, COLUMN_MAJOR)}
                     for c, m in enumerate(masks) if m.any()]
        _write_csv(out / csv, pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"]))
    sample = [{"ImageId": n, "EncodedPixels": "1 1", "ClassId": c} for n in names for c in range(1, 5)]
    _write_csv(out / "sample_submission.csv", pd.DataFrame(sample))
    return out


GENERATORS: dict[str, Callable[..., Path]] = {"tgs": generate_tgs, "airbus": generate_airbus,
                                              "severstal": generate_severstal}
# Overrides of each example config under which the hidden test masks read as training data
# (ternaus.evaluate.score_against_truth).
TRUTH = {"tgs": ["data.train_dir=test/images", "data.masks_dir=test_masks"],
         "airbus": ["data.train_dir=test_v2", "data.masks_csv=test_ship_segmentations.csv"],
         "severstal": ["data.train_dir=test_images", "data.masks_csv=test.csv"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ternaus.competitions", description=__doc__.split("\n\n")[0])
    parser.add_argument("competition", choices=list(GENERATORS))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--images", type=int, default=40, help="training images")
    parser.add_argument("--test-images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = GENERATORS[args.competition](args.out, images=args.images, test_images=args.test_images, seed=args.seed)
    print(f"wrote a synthetic {args.competition} dataset to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
