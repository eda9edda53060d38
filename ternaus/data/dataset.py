"""The PyTorch side of the data: the Dataset, its collation, and the normalisation done on the device.

Images travel to the device as uint8 and are normalised there: a quarter of the bytes of float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ternaus.data.files import read_image
from ternaus.data.geometry import Geometry
from ternaus.data.layouts import MaskSpec, load_masks
from ternaus.errors import DataError

__all__ = ["SegmentationDataset", "pad_collate", "normalise_on_device", "IMAGENET_MEAN", "IMAGENET_STD"]

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
    predictions are restored exactly (``Geometry.restore`` crops from the top left)."""
    for key in ("image", "mask"):
        if key in items[0] and len({tuple(item[key].shape) for item in items}) > 1:
            items = [{**item, key: padded} for item, padded in zip(items, _pad_to_largest([i[key] for i in items]))]
    return default_collate(items)


class SegmentationDataset(Dataset):
    """Items are dicts: ``image`` uint8 (3, H, W), ``mask`` uint8 (C, H, W) when known, ``id``, ``size``.

    ``rows`` hold ``id``, ``image`` and the layout's mask keys; ``masks`` (a MaskSpec) says how to read them.
    ``transform`` is a joint transforms.v2 pipeline applied to the network-sized image and mask. With
    ``mask_at_input_size`` false the mask keeps the image's own size (for scoring at the original resolution).
    """

    def __init__(self, rows: list[dict], geometry: Geometry, with_masks: bool, transform: Any = None,
                 mask_at_input_size: bool = True, masks: MaskSpec = MaskSpec()):
        self.rows, self.geometry, self.with_masks, self.transform = rows, geometry, with_masks, transform
        self.mask_at_input_size = mask_at_input_size
        self.masks = masks

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
