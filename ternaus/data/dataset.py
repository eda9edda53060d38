"""The PyTorch side of the data: the Dataset, its collation, and the normalisation done on the device.

Images travel to the device as uint8 and are normalised there: a quarter of the bytes of float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ternaus.data.files import image_size, read_image
from ternaus.data.geometry import Geometry
from ternaus.data.layouts import MaskSpec, load_masks
from ternaus.errors import DataError

__all__ = ["SegmentationDataset", "pad_collate", "normalise_on_device", "input_shapes", "same_size_batches",
           "IMAGENET_MEAN", "IMAGENET_STD", "random_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    predictions are restored exactly (``Geometry.restore`` crops from the top left). Only training batches mix
    sizes; prediction and validation batch images of one size together (``same_size_batches``)."""
    for key in ("image", "mask"):
        if key in items[0] and len({tuple(item[key].shape) for item in items}) > 1:
            items = [{**item, key: padded} for item, padded in zip(items, _pad_to_largest([i[key] for i in items]))]
    return default_collate(items)


def input_shapes(rows: list[dict], geometry: Geometry) -> list[tuple[int, int]]:
    """Each row's network-input (h, w): one size when resizing, else each image's padded size (from its header)."""
    if geometry.input_size is not None:
        return [geometry.input_shape(0, 0)] * len(rows)
    return [geometry.input_shape(*image_size(row["image"])) for row in rows]


def same_size_batches(shapes: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices cut into batches of at most ``batch_size`` whose items share one network-input shape, ordered by
    their first index; with a single shape, plain consecutive batches.

    Zero-padding an image to a bigger batch-mate's size (pad_collate) changes what the convolutions see near its
    edges, so a prediction would depend on its batch-mates; same-size batches never pad. The batches depend
    only on the list, so a resumed or sharded prediction cuts them as one uninterrupted run does."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(index)
    batches = [members[i: i + batch_size] for members in groups.values() for i in range(0, len(members), batch_size)]
    return sorted(batches, key=lambda batch: batch[0])


def _reflect_pad_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, h, w) reflect-padded at the bottom and right to at least (height, width), as OpenCV's
    BORDER_REFLECT_101 (the geometry's padding) does; repeated while the image is less than half the size."""
    while tensor.shape[-2] < height or tensor.shape[-1] < width:
        dh = min(height - tensor.shape[-2], tensor.shape[-2] - 1) if tensor.shape[-2] < height else 0
        dw = min(width - tensor.shape[-1], tensor.shape[-1] - 1) if tensor.shape[-1] < width else 0
        dtype = tensor.dtype
        tensor = torch.nn.functional.pad(tensor[None].float(), (0, dw, 0, dh), mode="reflect")[0].to(dtype)
    return tensor


def random_crop(item: dict[str, Any], crop: tuple[int, int], rng: np.random.Generator) -> dict[str, Any]:
    """The item's ``image`` and ``mask`` cut to one random (h, w) window, the same for both; an image smaller
    than the window is reflect-padded first. ``size`` becomes the window's (the whole window is image)."""
    height, width = crop
    planes = {key: _reflect_pad_to(item[key], height, width) for key in ("image", "mask") if key in item}
    full_h, full_w = planes["image"].shape[-2:]
    top, left = int(rng.integers(0, full_h - height + 1)), int(rng.integers(0, full_w - width + 1))
    cut = {key: plane[:, top: top + height, left: left + width].contiguous() for key, plane in planes.items()}
    return {**item, **cut, "size": torch.tensor([height, width])}


class SegmentationDataset(Dataset):
    """Items are dicts: ``image`` uint8 (3, H, W), ``mask`` uint8 (C, H, W) when known, ``id``, ``size``.

    ``rows`` hold ``id``, ``image`` and the layout's mask keys; ``masks`` (a MaskSpec) says how to read them.
    ``transform`` is a joint transforms.v2 pipeline applied to the network-sized image and mask. With
    ``mask_at_input_size`` false the mask keeps the image's own size (for scoring at the original resolution).
    ``image_max`` (``data.image_max``) scales 16-bit images (``files.read_image``). ``crop`` (h, w)
    (``train.crop``): a random window of the network-sized image and masks, drawn from the item's seed (the
    image reflect-padded first where it is smaller); ``size`` is then the window's.
    """

    def __init__(self, rows: list[dict], geometry: Geometry, with_masks: bool, transform: Any = None,
                 mask_at_input_size: bool = True, masks: MaskSpec = MaskSpec(), image_max: int | None = None,
                 crop: tuple[int, int] | None = None):
        self.rows, self.geometry, self.with_masks, self.transform = rows, geometry, with_masks, transform
        self.crop = tuple(crop) if crop else None
        self.mask_at_input_size = mask_at_input_size
        self.masks = masks
        self.image_max = image_max

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        # (index, seed): the augmentation is drawn from ``seed`` alone (see training.EpochSampler).
        index, seed = key if isinstance(key, tuple) else (key, None)
        row = self.rows[index]
        image = read_image(row["image"], self.image_max)
        size = image.shape[:2]
        item = {"id": row["id"], "size": torch.tensor(size),
                # A (3, H, W) view of the decoded H x W x 3 memory: OpenCV augmentations use that memory as it
                # is, and collating copies it once anyway.
                "image": torch.from_numpy(self.geometry.image_to_input(image)).permute(2, 0, 1)}
        if self.with_masks:
            item["mask"] = torch.from_numpy(self._masks(row, size))
        if self.crop is not None:
            item = random_crop(item, self.crop, np.random.default_rng(seed))
        if self.transform is not None:
            item = self._augment(item, seed)
        return item

    def _masks(self, row: dict, size: tuple[int, int]) -> np.ndarray:
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
