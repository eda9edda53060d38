"""Every choice the configuration offers by name: networks, losses, optimisers, learning-rate schedules, metrics,
test-time augmentations, data layouts and the ensemble's rules, one dict each, keyed by the config's name for the
choice.

An entry says where its code lives (``Ref``) and loads it on first use, as transformers' auto classes map a
name to a class: loading and checking a config reads these dicts without importing torch, so a mistyped key
is reported at once. ``ternaus.config`` takes its lists of choices from here. Adding a choice is its code in
its own module and one line here; ``tests/test_architecture.py`` loads every entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Ref", "ImageNetWeights", "ModelSpec", "MetricSpec", "MODELS", "LOSSES", "LOSS_OPTIONS", "OPTIMIZERS",
           "SCHEDULES", "RULES", "METRICS", "TTAS", "LAYOUTS", "REGISTRIES"]


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
    """One ``model.name``: the class, its encoder, torchvision's ImageNet file (None: trained from scratch), the
    size multiple its input must have, and the config options the class takes besides ``num_classes``."""

    model: Ref
    encoder: str
    imagenet: ImageNetWeights | None
    size_multiple: int = 32  # 2 ** (the number of times the network halves the input)
    options: tuple[str, ...] = ()
    depth_option: str | None = None  # an option whose length is the number of halvings (scratch's widths)

    @property
    def model_class(self) -> type:
        return self.model.load()

    @property
    def halvings(self) -> int:
        return self.size_multiple.bit_length() - 1

    def multiple_for(self, model_cfg: Any) -> int:
        """The size multiple of the network ``model_cfg`` builds: ``size_multiple`` unless its depth is a setting."""
        depth = getattr(model_cfg, self.depth_option, None) if self.depth_option else None
        return 2 ** len(depth) if isinstance(depth, list | tuple) and depth else self.size_multiple

    def new(self, model_cfg: Any) -> Any:
        """The architecture alone, with PyTorch's default initialisation; an option left null (None) takes the
        class's own default."""
        options = {name: getattr(model_cfg, name) for name in self.options if getattr(model_cfg, name) is not None}
        # Softmax over exclusive classes has a background channel besides them.
        extra = 1 if getattr(model_cfg, "activation", "sigmoid") == "softmax" else 0
        return self.model_class(num_classes=model_cfg.num_classes + extra, **options)


_VGG_UNUSED = ("classifier.",)
_TERNAUSNET = "ternaus.models.ternausnet"
_RESNET34 = ImageNetWeights(("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"), "resnet34", "", ("fc.",))

# model.name
MODELS: dict[str, ModelSpec] = {
    "unet11": ModelSpec(Ref(_TERNAUSNET, "UNet11"), "VGG11",
                        ImageNetWeights(("vgg11-8a719046.pth", "vgg11-bbd30ac9.pth"), "vgg11", "features.",
                                        _VGG_UNUSED),
                        options=("num_filters",)),
    "unet16": ModelSpec(Ref(_TERNAUSNET, "UNet16"), "VGG16",
                        ImageNetWeights(("vgg16-397923af.pth",), "vgg16", "features.", _VGG_UNUSED),
                        options=("transposed",)),
    "albunet34": ModelSpec(Ref(_TERNAUSNET, "AlbuNet"), "ResNet34", _RESNET34, size_multiple=64,
                           options=("transposed",)),
    "linknet34": ModelSpec(Ref("ternaus.models.linknet", "LinkNet34"), "ResNet34", _RESNET34),
    "scratch": ModelSpec(Ref("ternaus.models.scratch", "ScratchUNet"), "none (trained from scratch)", None,
                         size_multiple=64, options=("widths", "center_width"), depth_option="widths"),
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
    "bce_dice_edge": Ref("ternaus.losses", "bce_dice_edge_loss"),
}

# The settings (keys of train.loss) each loss takes besides weight and activation, by train.loss.name.
LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "bce_dice_edge": ("edge_window", "edge_weight"),
}

# train.optimizer: functions (parameters, train config) -> torch.optim.Optimizer
OPTIMIZERS: dict[str, Ref] = {
    "adam": Ref("ternaus.optim", "adam"),
    "sgd": Ref("ternaus.optim", "sgd"),
    "rmsprop": Ref("ternaus.optim", "rmsprop"),
}

# train.schedule: functions (epoch counted from 0, train config) -> the learning rate's factor
SCHEDULES: dict[str, Ref] = {
    "carvana": Ref("ternaus.optim", "carvana_factor"),
    "constant": Ref("ternaus.optim", "constant_factor"),
    "step": Ref("ternaus.optim", "step_factor"),
    "cycle": Ref("ternaus.optim", "cycle_factor"),
    "step_then_cycle": Ref("ternaus.optim", "step_then_cycle_factor"),
}

# ensemble.rules: functions (merged (C, H, W) uint8, members' maps by name, ensemble config) -> merged map
RULES: dict[str, Ref] = {
    "top_unreliable": Ref("ternaus.merge", "top_unreliable"),
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
    "train.optimizer": OPTIMIZERS,
    "train.schedule": SCHEDULES,
    "ensemble.rules": RULES,
    "postprocess.metric": METRICS,
    "predict.tta": TTAS,
    "data.layout": LAYOUTS,
}
