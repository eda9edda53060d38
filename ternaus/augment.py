"""Joint image + mask augmentation of the Carvana recipe, with ``torchvision.transforms.v2``.

Horizontal flip; shift-scale-rotate; with probability ``color_p`` an HSV shift or a greyscale copy.
Geometric transforms move image and mask together (the mask with nearest-neighbour interpolation);
colour transforms touch the image only.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ternaus.config import AugmentConfig

__all__ = ["build_train_transform", "JointTransform"]


class JointTransform:
    """Apply a v2 pipeline to a dataset item's ``image`` and ``mask``, leaving the other keys alone."""

    def __init__(self, pipeline: v2.Transform):
        self.pipeline = pipeline

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        image, mask = self.pipeline(tv_tensors.Image(item["image"]), tv_tensors.Mask(item["mask"]))
        return {**item, "image": image.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor)}


def build_train_transform(aug: AugmentConfig) -> JointTransform:
    shift_scale_rotate = v2.RandomAffine(
        degrees=aug.rotate, translate=(aug.shift, aug.shift), scale=(1 - aug.scale, 1 + aug.scale))
    colour = v2.RandomChoice(
        [v2.ColorJitter(brightness=aug.brightness, saturation=aug.saturation, hue=aug.hue),
         v2.Grayscale(num_output_channels=3)],
        p=[0.75, 0.25])
    return JointTransform(v2.Compose([
        v2.RandomHorizontalFlip(aug.hflip),
        v2.RandomApply([shift_scale_rotate], p=aug.ssr_p),
        v2.RandomApply([colour], p=aug.color_p),
    ]))
