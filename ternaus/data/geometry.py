"""How an image becomes network input and how a prediction goes back to the image's own size: reflect-padding
to the model's size multiple (the Carvana recipe: 1918 -> 1920), or resizing to ``data.input_size``."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ternaus.config import Config
from ternaus.registry import MODELS

__all__ = ["Geometry", "geometry_of"]


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

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """The network input's (h, w) for an image of (H, W): ``input_size``, or the size padded to the multiple."""
        if self.input_size is not None:
            return tuple(self.input_size)
        return _round_up(height, self.multiple), _round_up(width, self.multiple)

    def _to_input(self, array: np.ndarray, interpolation: int) -> np.ndarray:
        if self.input_size is not None:
            return cv2.resize(array, self.input_size[::-1], interpolation=interpolation)
        top, bottom, left, right = self.pads(*array.shape[:2])
        return cv2.copyMakeBorder(array, top, bottom, left, right, cv2.BORDER_REFLECT_101)

    def image_to_input(self, image: np.ndarray) -> np.ndarray:
        return self._to_input(image, cv2.INTER_AREA)

    def mask_to_input(self, mask: np.ndarray) -> np.ndarray:
        """A 0/1 mask on its image's network grid: padded as the image is, or resized as the image is (by pixel
        area) and thresholded at one half, so that a network reproducing it exactly restores to the original
        mask up to the resize's own loss. (OpenCV's nearest neighbour takes source pixel floor(i * s) for target
        pixel i, the corner of the area it covers rather than its centre: the mask would land (s - 1) / 2 source
        pixels lower and further right than its image. Its "exact" variant picks one of the two middle pixels
        at even scales: half a pixel off.)"""
        if self.input_size is None:
            return self._to_input(mask, cv2.INTER_NEAREST)
        area = cv2.resize(mask.astype(np.float32), self.input_size[::-1], interpolation=cv2.INTER_AREA)
        return (area >= 0.5).astype(mask.dtype)

    def masks_to_input(self, masks: np.ndarray) -> np.ndarray:
        """(C, H, W) -> (C, h, w): OpenCV works on (H, W, C) and drops a single channel."""
        if masks.shape[0] == 1:
            return self.mask_to_input(masks[0])[None]
        planes_last = np.ascontiguousarray(masks.transpose(1, 2, 0))
        return np.ascontiguousarray(self.mask_to_input(planes_last).transpose(2, 0, 1))

    def restore(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(C, h, w) network-sized maps -> (C, H, W) at the image's own size: crop padding or resize back."""
        height, width = size
        if self.input_size is not None:
            return torch.nn.functional.interpolate(maps[None], size=(height, width), mode="bilinear",
                                                   align_corners=False)[0]
        top, _, left, _ = self.pads(height, width)
        return maps[:, top: top + height, left: left + width]


def geometry_of(cfg: Config) -> Geometry:
    """The configured geometry (a stage entry's constructor): ``data.input_size``, and the model's size multiple
    for padding."""
    return geometry_for(cfg.data.input_size, cfg.model)


def geometry_for(input_size: list[int] | None, model: object) -> Geometry:
    """``input_size`` ([H, W] or None: pad) and the size multiple of the network ``model`` (the model section)."""
    return Geometry(tuple(input_size) if input_size else None, MODELS[model.name].multiple_for(model))
