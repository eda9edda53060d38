"""Every choice the configuration offers by name: networks, losses, metrics, test-time augmentations and data
layouts, one dict each, keyed by the config's name for the choice.

An entry says where its code lives (``Ref``) and loads it on first use, as transformers' auto classes map a
name to a class: loading and checking a config reads these dicts without importing torch, so a mistyped key
is reported at once. ``ternaus.config`` takes its lists of choices from here. Adding a choice is its code in
its own module and one line here; ``tests/test_architecture.py`` loads every entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Ref", "ImageNetWeights", "ModelSpec", "MetricSpec", "MODELS", "LOSSES", "METRICS", "TTAS", "LAYOUTS",
           "REGISTRIES"]


@dataclass(frozen=True)
class Ref:
    """The attribute ``name`` of the module ``module`` (or the module itself), imported when first loaded."""

    module: str
    name: str | None = None  # None: the module itself

    def load(self) -> Any:
        module = importlib.import_module(self.module)
        return module if self.name is None else getattr(module, self.name)


@dataclass(frozen=True)
class ImageNetWeights:
    """torchvision's ImageNet file for an encoder: its names (newest first) and which of its tensors to take."""

    files: tuple[str, ...]
    torchvision_model: str  # how the file is fetched on a machine with internet: torchvision.models.<this>
    prefix: str  # the encoder's tensors in the file: "features." for VGG, "" for ResNet
    unused: tuple[str, ...]  # the file's classifier, which the U-Nets do not have

    def encoder_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The encoder's tensors under the encoder's own names; anything unknown is left to be reported."""
        return {k.removeprefix(self.prefix): v for k, v in state.items() if not k.startswith(self.unused)}


@dataclass(frozen=True)
class ModelSpec:
    """One ``model.name``: the class, its encoder, torchvision's ImageNet file, the size multiple its input must
    have, and the config options the class takes besides ``num_classes``."""

    model: Ref
    encoder: str
    imagenet: ImageNetWeights
    size_multiple: int = 32  # 2 ** (the number of times the network halves the input)
    options: tuple[str, ...] = ()

    @property
    def model_class(self) -> type:
        return self.model.load()

    @property
    def halvings(self) -> int:
        return self.size_multiple.bit_length() - 1

    def new(self, model_cfg: Any) -> Any:
        """The architecture alone, with PyTorch's default initialisation."""
        options = {name: getattr(model_cfg, name) for name in self.options}
        # Softmax over exclusive classes has a background channel besides them.
        extra = 1 if getattr(model_cfg, "activation", "sigmoid") == "softmax" else 0
        return self.model_class(num_classes=model_cfg.num_classes + extra, **options)


_VGG_UNUSED = ("classifier.",)
_TERNAUSNET = "ternaus.models.ternausnet"

# model.name
MODELS: dict[str, ModelSpec] = {
    "unet11": ModelSpec(Ref(_TERNAUSNET, "UNet11"), "VGG11",
                        ImageNetWeights(("vgg11-8a719046.pth", "vgg11-bbd30ac9.pth"), "vgg11", "features.",
                                        _VGG_UNUSED)),
    "unet16": ModelSpec(Ref(_TERNAUSNET, "UNet16"), "VGG16",
                        ImageNetWeights(("vgg16-397923af.pth",), "vgg16", "features.", _VGG_UNUSED),
                        options=("transposed",)),
    "albunet34": ModelSpec(Ref(_TERNAUSNET, "AlbuNet"), "ResNet34",
                           ImageNetWeights(("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"), "resnet34", "",
                                           ("fc.",)),
                           size_multiple=64, options=("transposed",)),
}

@dataclass(frozen=True)
class MetricSpec:
    """One ``postprocess.metric``: its per-image function in ``ternaus.metrics`` and the form it takes.

    ``"counts"``: ``(overlap, predicted, target)`` pixel counts (numpy arrays of any shape) -> scores of that
    shape; the out-of-fold search then scores every threshold exactly from level histograms. ``"objects"``:
    ``(predicted, truth)``, lists of boolean object masks -> one image's score; the search tries a coarser grid
    of thresholds on the out-of-fold probabilities."""

    score: Ref
    form: Literal["counts", "objects"]
    title: str  # how the logs and the report name it


# train.loss.name: functions (logits, targets, weight, activation) -> scalar loss
LOSSES: dict[str, Ref] = {
    "bce_dice": Ref("ternaus.losses", "bce_dice_loss"),
    "bce_jaccard": Ref("ternaus.losses", "bce_jaccard_loss"),
    "lovasz_hinge": Ref("ternaus.losses", "lovasz_hinge_loss"),
    "lovasz_hinge_elu": Ref("ternaus.losses", "lovasz_hinge_elu_loss"),
}

# postprocess.metric: the competition's per-image metric, averaged over images (or (image, class) pairs)
_METRICS = "ternaus.metrics"
METRICS: dict[str, MetricSpec] = {
    "dice": MetricSpec(Ref(_METRICS, "dice_from_counts"), "counts", "Dice"),
    "jaccard": MetricSpec(Ref(_METRICS, "jaccard_from_counts"), "counts", "IoU"),
    "iou_ap": MetricSpec(Ref(_METRICS, "iou_ap_from_counts"), "counts", "mean precision over IoU 0.50-0.95"),
    "f2_instances": MetricSpec(Ref(_METRICS, "f2_instances"), "objects", "F2 over IoU 0.50-0.95, per object"),
}

# predict.tta: ternaus.tta.TTA objects
TTAS: dict[str, Ref] = {
    "hflip": Ref("ternaus.tta", "HFLIP"),
    "none": Ref("ternaus.tta", "NO_TTA"),
}

# data.layout: modules with the functions of ternaus.data.layouts.Layout
LAYOUTS: dict[str, Ref] = {
    "carvana": Ref("ternaus.data.carvana"),
    "folders": Ref("ternaus.data.folders"),
    "rle_csv": Ref("ternaus.data.rle_csv"),
}

# The config key each registry serves.
REGISTRIES: dict[str, dict[str, Any]] = {
    "model.name": MODELS,
    "train.loss.name": LOSSES,
    "postprocess.metric": METRICS,
    "predict.tta": TTAS,
    "data.layout": LAYOUTS,
}
