"""Carvana's data layout: listing, reading, checking, geometry (pad or resize) and the Dataset.

Images are read with OpenCV (RGB uint8), masks with Pillow (Carvana's masks are palette GIFs, which
OpenCV cannot read). Masks are 0/1; 0/255 files are accepted and normalised; anything else is refused.
Images travel to the device as uint8 and are normalised there: a quarter of the bytes of float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from ternaus.config import Config, resolve
from ternaus.errors import DataError
from ternaus.rle import rle_decode

__all__ = [
    "DataError", "Geometry", "SegmentationDataset", "car_id_of", "read_image", "read_mask",
    "list_train", "list_test", "check_train", "check_train_row", "train_items", "image_size", "image_file_problem",
    "check_image_files", "listing", "duplicates", "CSV_ERRORS", "test_rows", "pad_collate",
    "prediction_image", "read_prediction",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def car_id_of(image_id: str) -> str:
    """``00087a6bd4dc_01`` -> ``00087a6bd4dc``: the views of one car share everything but the angle."""
    return image_id.rsplit("_", 1)[0]


# ---------------------------------------------------------------- reading files


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
TAIL = 4096  # a JPEG's end marker is within its last bytes; entropy-coded data never contains FF D9


def _bytes_problem(path: Path, size: int, head: bytes, tail: bytes) -> str | None:
    if size == 0:
        return f"{path} is empty (0 bytes); replace it with the original image"
    if head.startswith(JPEG_START) and JPEG_END not in tail:
        return f"{path} is truncated (the JPEG has no end marker); copy or download it again"
    return None


def image_file_problem(path: str | Path) -> str | None:
    """What is wrong with an image file, from its first and last bytes (no decoding), or None."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(max(0, size - TAIL))
            tail = f.read()
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as err:
        return f"{path} cannot be read ({err.strerror})"
    problem = _bytes_problem(path, size, head, tail)
    if problem is None and not head.startswith(JPEG_START):
        try:  # not JPEG bytes under a .jpg name: fine if it is an image at all (a PNG, say)
            image_size(path)
        except DataError as err:
            problem = str(err)
    return problem


def check_image_files(paths: list[Path]) -> None:
    """Refuse, before any long work, image files that are missing, empty, truncated or not images."""
    problems = [p for p in map(image_file_problem, paths) if p]
    if problems:
        raise DataError(listing(f"{len(problems)} of {len(paths)} image file(s) cannot be used", problems))


def listing(title: str, problems: list[str], limit: int = 50) -> str:
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{title}:\n  {shown}{more}"


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 array (H, W, 3); a truncated JPEG is refused as such, by the same test the early check uses."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    problem = _bytes_problem(path, len(data), data[:2], data[-TAIL:])
    if problem:
        raise DataError(problem)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"image {path} cannot be decoded (not an image); replace or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def normalise_mask_values(mask: np.ndarray, source: str) -> np.ndarray:
    values = np.unique(mask)
    if np.isin(values, (0, 1)).all():
        return mask.astype(np.uint8, copy=False)
    if np.isin(values, (0, 255)).all():
        return (mask == 255).astype(np.uint8)
    raise DataError(f"mask {source} holds values {values[:8].tolist()}; expected 0/1 or 0/255 "
                    "(a binary mask: save it with exactly two values)")


def prediction_image(levels: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 probabilities -> the prediction PNG's one greyscale (C * H, W) image: the classes stacked
    top to bottom, any number of them (read_prediction takes them apart); one class is the plain (H, W) map."""
    return levels.reshape(-1, levels.shape[-1])


def read_prediction(path: str | Path, num_classes: int) -> np.ndarray | None:
    """(C, H, W) uint8 probabilities from a prediction PNG, or None when it cannot be read."""
    stacked = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if stacked is None or stacked.ndim != 2 or stacked.shape[0] % num_classes:
        return None
    return stacked.reshape(num_classes, -1, stacked.shape[1])


def read_mask(path: str | Path) -> np.ndarray:
    """uint8 0/1 array (H, W) from a GIF or PNG mask."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            mask = np.array(img.convert("L") if img.mode not in ("P", "L", "1") else img)
    except FileNotFoundError:
        raise DataError(f"mask {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise DataError(f"mask {path} cannot be read ({err}); replace it") from None
    return normalise_mask_values(mask, str(path))


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path} is not a readable image ({err}); replace it") from None
    return height, width


# ---------------------------------------------------------------- listing the data


def _ids_in(folder: Path, suffix: str) -> list[str]:
    """The ids of ``*{suffix}`` files; any other file is refused rather than silently skipped."""
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist; check data.root and the data.*_dir keys")
    names = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    others = sorted(n for n in names if not n.endswith(suffix))
    if others:
        raise DataError(f"{folder} holds {len(others)} file(s) that are not *{suffix} and would be skipped, "
                        f"e.g. {others[:3]}; convert them to {suffix} or move them out")
    return sorted(n[: -len(suffix)] for n in names)


# What pandas raises for a file that is not a readable CSV.
CSV_ERRORS = (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError)


def duplicates(values: pd.Series) -> list[str]:
    """The values that occur more than once, each named once."""
    counts = values.value_counts()
    return sorted(counts[counts > 1].index.tolist())


def _read_id_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """A CSV keyed by image name, with its header and the uniqueness of its ids checked."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except CSV_ERRORS as err:
        raise DataError(f"{path} is not a readable CSV ({str(err).strip()[:200]}); replace it") from None
    if list(table.columns[: len(columns)]) != columns:
        raise DataError(f"{path}: expected the header '{','.join(columns)}', got '{','.join(table.columns)}'")
    repeated = duplicates(table[columns[0]])
    if repeated:
        raise DataError(f"{path} lists {len(repeated)} image(s) more than once, e.g. {repeated[:3]}; "
                        "keep one row per image")
    return table


def _read_rle_csv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    table = _read_id_csv(path, ["img", "rle_mask"])
    return dict(zip(table["img"].str.removesuffix(".jpg"), table["rle_mask"]))


def list_train(cfg: Config) -> pd.DataFrame:
    """One row per training image: id, image path, mask path ('' if none), RLE ('' if none); Carvana's layout
    adds car_id, the RLE CSV layout ``runs`` (see ternaus.sources)."""
    if cfg.data.layout != "carvana":
        from ternaus import sources  # it builds on this module

        return (sources.list_folders_layout if cfg.data.layout == "folders" else sources.list_rle_csv_layout)(cfg)
    image_dir, mask_dir = resolve(cfg, cfg.data.train_dir), resolve(cfg, cfg.data.masks_dir)
    ids = _ids_in(image_dir, ".jpg")
    if not ids:
        raise DataError(f"no training images (*.jpg) in {image_dir}; put the training images there, "
                        "or point data.root (or data.train_dir) at the folder that holds them")
    rles = _read_rle_csv(resolve(cfg, cfg.data.masks_csv))
    rows = []
    for image_id in ids:
        mask_path = mask_dir / f"{image_id}_mask.gif"
        rows.append({
            "id": image_id,
            "car_id": car_id_of(image_id),
            "image": str(image_dir / f"{image_id}.jpg"),
            "mask": str(mask_path) if mask_path.is_file() else "",
            "rle": rles.get(image_id, ""),
        })
    return pd.DataFrame(rows)


def list_test(cfg: Config) -> list[str]:
    """Test ids in ``sample_submission.csv`` order, checked against the images in ``test/``."""
    test_dir = resolve(cfg, cfg.data.test_dir)
    on_disk = set(_ids_in(test_dir, ".jpg"))
    sample = resolve(cfg, cfg.data.sample_submission)
    if not sample.is_file():
        raise DataError(f"{sample} does not exist; it fixes the submission's rows (set data.sample_submission)")
    ids = _read_id_csv(sample, ["img"])["img"].str.removesuffix(".jpg").tolist()
    if not ids:
        raise DataError(f"{sample} lists no test images; use the competition's sample_submission.csv")
    missing = [i for i in ids if i not in on_disk]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {sample} are not in {test_dir}, e.g. {missing[:3]}; "
                        "copy them there, or use the sample submission that belongs to this test set")
    unlisted = sorted(on_disk - set(ids))
    if unlisted:
        raise DataError(f"{len(unlisted)} image(s) in {test_dir} are not in {sample}, e.g. {unlisted[:3]}; "
                        "the submission's rows come from the sample: use the one that belongs to this test set")
    return ids


def test_rows(cfg: Config) -> list[dict[str, str]]:
    """The test images as rows (id, image path): Carvana's in sample order, other layouts' sorted by id."""
    if cfg.data.layout != "carvana":
        from ternaus.sources import list_test_images

        return list_test_images(cfg)
    test_dir = resolve(cfg, cfg.data.test_dir)
    return [{"id": i, "image": str(test_dir / f"{i}.jpg")} for i in list_test(cfg)]


def load_train_mask(row: Any, shape: tuple[int, int]) -> np.ndarray:
    if row["mask"]:
        return read_mask(row["mask"])
    try:
        return rle_decode(row["rle"], shape)
    except ValueError as err:
        raise DataError(f"RLE mask of {row['id']} in the masks CSV is invalid: {err}") from None


def check_train_row(row: dict, spec: Any = None) -> list[str]:
    """Every problem with one training image and its mask; the mask is decoded to check its values.

    ``spec`` (a ternaus.sources.MaskSpec) reads the other layouts' masks; None: Carvana's."""
    problem = image_file_problem(row["image"])
    if problem:
        return [problem]
    if not row["mask"] and not row["rle"] and not isinstance(row.get("runs"), tuple):
        where = f"{row['id']}_mask.gif nor a row in the masks CSV" if spec is None else \
            f"{row['id']}.png nor {row['id']}.gif in data.masks_dir"
        return [f"{row['image']}: no mask (neither {where}); add it or remove the image"]
    try:
        height, width = image_size(row["image"])
        if spec is not None:
            from ternaus.sources import load_masks

            mask = load_masks(row, (height, width), spec)[0]
        else:
            mask = load_train_mask(row, (height, width))
    except DataError as err:
        return [str(err)]
    if mask.shape != (height, width):
        return [f"{row['mask']}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {width}x{height}; "
                "the mask must have its image's size"]
    return []


def check_train(table: pd.DataFrame, processes: int = 1, spec: Any = None) -> list[str]:
    """Every problem with the training data, one line each; an empty list means ready to train."""
    rows = table.to_dict("records")
    check = partial(check_train_row, spec=spec)
    if processes > 1 and len(rows) > 64:
        with Pool(processes) as pool:
            found = pool.map(check, rows, chunksize=16)
    else:
        found = [check(row) for row in rows]
    return [problem for problems in found for problem in problems]


def train_items(cfg: Config, folds: pd.DataFrame) -> pd.DataFrame:
    """The training table joined with ``folds.csv``; refuses a folds file that does not match the data."""
    table = list_train(cfg)
    merged = table.merge(folds[["id", "fold"]], on="id", how="outer", indicator=True)
    stale = merged[merged["_merge"] != "both"]
    if len(stale):
        raise DataError(f"{Path(cfg.output_dir) / 'folds.csv'} does not match the data in {cfg.data.root} "
                        f"({len(stale)} ids differ, e.g. {stale['id'].iloc[0]}); run prepare_folds.py again")
    return merged.drop(columns="_merge").astype({"fold": int})


# ---------------------------------------------------------------- geometry: pad to /32 (/64) or resize


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Geometry:
    """How an image becomes network input and how a prediction goes back to the image's size."""

    input_size: tuple[int, int] | None = None  # None: pad; (H, W): resize
    multiple: int = 32  # padding rounds up to this: the model's size multiple (64 for AlbuNet)

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right): split evenly, as Carvana's 1918 -> 1920 (1 px each side)."""
        if self.input_size is not None:
            return (0, 0, 0, 0)
        dh, dw = _round_up(height, self.multiple) - height, _round_up(width, self.multiple) - width
        return dh // 2, dh - dh // 2, dw // 2, dw - dw // 2

    def _to_input(self, array: np.ndarray, interpolation: int) -> np.ndarray:
        if self.input_size is not None:
            return cv2.resize(array, self.input_size[::-1], interpolation=interpolation)
        top, bottom, left, right = self.pads(*array.shape[:2])
        return cv2.copyMakeBorder(array, top, bottom, left, right, cv2.BORDER_REFLECT_101)

    def image_to_input(self, image: np.ndarray) -> np.ndarray:
        return self._to_input(image, cv2.INTER_AREA)

    def mask_to_input(self, mask: np.ndarray) -> np.ndarray:
        # Nearest neighbour keeps a resized mask binary.
        return self._to_input(mask, cv2.INTER_NEAREST)

    def masks_to_input(self, masks: np.ndarray) -> np.ndarray:
        """(C, H, W) -> (C, h, w): OpenCV works on (H, W, C) and drops a single channel."""
        if masks.shape[0] == 1:
            return self.mask_to_input(masks[0])[None]
        return np.ascontiguousarray(self.mask_to_input(np.ascontiguousarray(masks.transpose(1, 2, 0))).transpose(2, 0, 1))

    def restore(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(C, h, w) network-sized maps -> (C, H, W) at the image's own size: crop padding or resize back."""
        height, width = size
        if self.input_size is not None:
            return torch.nn.functional.interpolate(maps[None], size=(height, width), mode="bilinear",
                                                   align_corners=False)[0]
        top, _, left, _ = self.pads(height, width)
        return maps[:, top: top + height, left: left + width]


def normalise_on_device(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32, ImageNet mean/std, on whatever device the batch is on."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _pad_to_largest(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    height, width = max(t.shape[-2] for t in tensors), max(t.shape[-1] for t in tensors)
    return [torch.nn.functional.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2])) for t in tensors]


def pad_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``, except that images (and masks) of different sizes in one batch are padded with zeros
    at the bottom and right to the largest: each item's ``size`` and its own padding are kept, so the
    predictions are restored exactly (``Geometry.restore`` crops from the top left)."""
    for key in ("image", "mask"):
        if key in items[0] and len({tuple(item[key].shape) for item in items}) > 1:
            items = [{**item, key: padded} for item, padded in zip(items, _pad_to_largest([i[key] for i in items]))]
    return default_collate(items)


# ---------------------------------------------------------------- the Dataset


class SegmentationDataset(Dataset):
    """Items are dicts: ``image`` uint8 (3, H, W), ``mask`` uint8 (C, H, W) when known, ``id``, ``size``.

    ``rows`` hold ``id``, ``image`` and optionally ``mask``/``rle``; ``transform`` is a joint
    transforms.v2 pipeline applied to the network-sized image and mask. With ``mask_at_input_size``
    false the mask keeps the image's own size (for scoring at the original resolution).
    """

    def __init__(self, rows: list[dict], geometry: Geometry, with_masks: bool, transform: Any = None,
                 mask_at_input_size: bool = True, masks: Any = None):
        self.rows, self.geometry, self.with_masks, self.transform = rows, geometry, with_masks, transform
        self.mask_at_input_size = mask_at_input_size
        self.masks = masks  # a ternaus.sources.MaskSpec: masks are (C, H, W), one plane per class

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        # (index, seed): the augmentation is drawn from ``seed`` alone (see training.EpochSampler).
        index, seed = key if isinstance(key, tuple) else (key, None)
        row = self.rows[index]
        image = read_image(row["image"])
        size = image.shape[:2]
        item = {"id": row["id"], "size": torch.tensor(size),
                # A (3, H, W) view of the decoded H x W x 3 memory: OpenCV augmentations use that memory as it
                # is, and collating copies it once anyway.
                "image": torch.from_numpy(self.geometry.image_to_input(image)).permute(2, 0, 1)}
        if self.with_masks:
            item["mask"] = torch.from_numpy(self._masks(row, size))
        if self.transform is not None:
            item = self._augment(item, seed)
        return item

    def _masks(self, row: dict, size: tuple[int, int]) -> np.ndarray:
        if self.masks is None:
            masks = load_train_mask(row, size)[None]
        else:
            from ternaus.sources import load_masks

            masks = load_masks(row, size, self.masks)
            if masks.shape[0] != self.masks.num_classes:
                raise DataError(f"{row['id']} has {masks.shape[0]} mask plane(s), model.num_classes="
                                f"{self.masks.num_classes}: Carvana's layout holds one class; for several use "
                                "data.layout folders (class-index PNGs) or rle_csv")
        if masks.shape[1:] != size:
            raise DataError(f"mask of {row['id']} is {masks.shape[:0:-1]}, its image {size[::-1]} (W x H)")
        return self.geometry.masks_to_input(masks) if self.mask_at_input_size else masks

    def _augment(self, item: dict[str, Any], seed: int | None) -> dict[str, Any]:
        if seed is None:
            return self.transform(item)
        # transforms.v2 draws from the global generator; fork it so the caller's stream is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(item)
