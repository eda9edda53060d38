"""Joint image + mask augmentation of the Carvana recipe, composed with ``torchvision.transforms.v2``.

Horizontal flip; shift-scale-rotate; with probability ``color_p`` an HSV shift or a greyscale copy.
Geometric transforms move image and mask together (the mask with nearest-neighbour interpolation);
colour transforms touch the image only.

The two costly transforms run on OpenCV's uint8 kernels inside v2 transforms: at 1920 x 1280, v2's own
``ColorJitter`` (float HSV in torch) takes about half a second per image and ``RandomAffine`` a quarter, which
would take dozens of loader workers to feed one GPU (docs/benchmarks.md). Their random draws still come from
torch's generator, so an item's augmentation follows its seed as before. ``HSVShift`` is the uint8 HSV shift
the Carvana winners used (albumentations' HueSaturationValue): hue steps of 2 degrees, OpenCV's resolution.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ternaus.config import AugmentConfig

__all__ = ["build_train_transform", "JointTransform", "HSVShift", "ShiftScaleRotate", "hsv_shift", "shift_scale_rotate"]


class JointTransform:
    """Apply a v2 pipeline to a dataset item's ``image`` and ``mask``, leaving the other keys alone."""

    def __init__(self, pipeline: v2.Transform):
        self.pipeline = pipeline

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        image, mask = self.pipeline(tv_tensors.Image(item["image"]), tv_tensors.Mask(item["mask"]))
        return {**item, "image": image.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor)}


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def to_hwc(tensor: torch.Tensor) -> np.ndarray:
    """(C, H, W) uint8 -> (H, W, C) array for OpenCV; free when the tensor views H x W x C memory (the dataset's)."""
    return np.ascontiguousarray(tensor.permute(1, 2, 0).numpy())


def from_hwc(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Back to (C, H, W), as a view of the array, with ``like``'s tv_tensor type."""
    array = array[..., None] if array.ndim == 2 else array  # OpenCV drops a single channel
    return tv_tensors.wrap(torch.from_numpy(array).permute(2, 0, 1), like=like)


class HSVShift(v2.Transform):
    """Shift hue by up to ``hue`` of the colour wheel, scale saturation and brightness by up to ``1 +- saturation``
    and ``1 +- brightness``, in OpenCV's uint8 HSV with one lookup table per channel; masks are left alone."""

    def __init__(self, hue: float, saturation: float, brightness: float):
        super().__init__()
        self.hue, self.saturation, self.brightness = hue, saturation, brightness

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"hue": _uniform(-self.hue, self.hue), "saturation": _uniform(1 - self.saturation, 1 + self.saturation),
                "brightness": _uniform(1 - self.brightness, 1 + self.brightness)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        return from_hwc(hsv_shift(to_hwc(inpt), **params), like=inpt)


def hsv_shift(rgb: np.ndarray, hue: float, saturation: float, brightness: float) -> np.ndarray:
    """uint8 RGB (H, W, 3) with hue turned by ``hue`` (a fraction of the wheel), saturation and value scaled."""
    levels = np.arange(256, dtype=np.float32)
    table = np.stack([(levels + round(hue * 180)) % 180,  # OpenCV's uint8 hue runs 0..179
                      np.clip(levels * saturation, 0, 255),
                      np.clip(levels * brightness, 0, 255)], axis=-1)
    hsv = cv2.LUT(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV), table.round().astype(np.uint8)[:, None, :])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


class ShiftScaleRotate(v2.Transform):
    """Rotate by up to ``rotate`` degrees and scale by up to ``1 +- scale`` about the centre, shift by up to
    ``shift`` of the size; image bilinear, mask nearest, both reflected at the borders (as the padding is)."""

    def __init__(self, shift: float, scale: float, rotate: float):
        super().__init__()
        self.shift, self.scale, self.rotate = shift, scale, rotate

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = flat_inputs[0].shape[-2:]
        return {"angle": _uniform(-self.rotate, self.rotate), "scale": _uniform(1 - self.scale, 1 + self.scale),
                "dx": round(_uniform(-self.shift, self.shift) * width),
                "dy": round(_uniform(-self.shift, self.shift) * height)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        nearest = isinstance(inpt, tv_tensors.Mask)
        return from_hwc(shift_scale_rotate(to_hwc(inpt), nearest=nearest, **params), like=inpt)


def shift_scale_rotate(array: np.ndarray, angle: float, scale: float, dx: int, dy: int,
                       nearest: bool = False) -> np.ndarray:
    """(H, W[, C]) rotated counter-clockwise by ``angle`` degrees and scaled about the centre, then moved by
    (``dx``, ``dy``) pixels."""
    height, width = array.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, scale)
    matrix[:, 2] += (dx, dy)
    return cv2.warpAffine(array, matrix, (width, height), flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def build_train_transform(aug: AugmentConfig) -> JointTransform:
    colour = v2.RandomChoice([HSVShift(aug.hue, aug.saturation, aug.brightness), v2.Grayscale(num_output_channels=3)],
                             p=[0.75, 0.25])
    return JointTransform(v2.Compose([
        v2.RandomHorizontalFlip(aug.hflip),
        v2.RandomApply([ShiftScaleRotate(aug.shift, aug.scale, aug.rotate)], p=aug.ssr_p),
        v2.RandomApply([colour], p=aug.color_p),
    ]))
