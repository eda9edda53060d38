"""Every choice the configuration offers by name: networks, losses, optimisers, learning-rate schedules, metrics,
test-time augmentations, data layouts and the ensemble's rules, one dict each, keyed by the config's name for the
choice.

An entry says where its code lives (``Ref``) and loads it on first use, as transformers' auto classes map a
name to a class: loading and checking a config reads these dicts without importing torch, so a mistyped key
is reported at once. ``ternaus.config`` takes its lists of choices from here. Adding a choice is its code in
its own module and one line here; ``tests/test_architecture.py`` loads every entry.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from ternaus.encoders import encoder_multiple
from ternaus.schema import AtLeast, Between, Odd, Positive

__all__ = ["Ref", "Choice", "ImageNetWeights", "TimmImageNetWeights", "TIMM_IMAGENET", "ModelSpec",
           "MetricSpec", "MODELS", "LOSSES", "OPTIMIZERS",
           "SCHEDULES", "RULES", "METRICS", "TTAS", "LAYOUTS", "REGISTRIES", "OverlapLoss", "LovaszLoss", "EdgeLoss",
           "AdamSettings", "MomentumSettings", "CarvanaSchedule", "ConstantSchedule", "StepSchedule", "CycleSchedule",
           "StepThenCycleSchedule", "settings_of"]


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
class TimmImageNetWeights:
    """A timm encoder's ImageNet weights: ``model.encoder_weights`` (a state dict of timm's classifier or
    torchvision's, loaded strictly), else, for the encoders ``ternaus.encoders.PACKAGED_IMAGENET`` lists, the file
    their pip package installs. Never downloaded."""


TIMM_IMAGENET = TimmImageNetWeights()


@dataclass(frozen=True)
class ModelSpec:
    """One ``model.name``: the class, its encoder, torchvision's ImageNet file (None: trained from scratch), the
    size multiple its input must have, and the config options the class takes besides ``num_classes``."""

    model: Ref
    encoder: str
    imagenet: ImageNetWeights | TimmImageNetWeights | None
    size_multiple: int = 32  # 2 ** (the number of times the network halves the input)
    options: tuple[str, ...] = ()
    depth_option: str | None = None  # an option whose length is the number of halvings (scratch's widths)
    encoder_option: str | None = None  # the option naming a timm encoder, whose reduction is the size multiple
    # On a CPU, NHWC (channels_last) against NCHW, measured by bench/cpu_memory_format.py: 1.3-1.6x faster for
    # EfficientNet's depthwise convolutions, slightly slower for VGG's plain ones.
    cpu_channels_last: bool = False

    @property
    def model_class(self) -> type:
        return self.model.load()

    @property
    def halvings(self) -> int:
        return self.size_multiple.bit_length() - 1

    def multiple_for(self, model_cfg: Any) -> int:
        """The size multiple of the network ``model_cfg`` builds: ``size_multiple`` unless its depth is a setting."""
        if self.encoder_option and isinstance(getattr(model_cfg, self.encoder_option, None), str):
            return encoder_multiple(getattr(model_cfg, self.encoder_option))
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
_TIMM = "ternaus.models.timm_unet"
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
    # Any timm encoder (model.encoder) under a U-Net or LinkNet decoder, as segmentation_models.pytorch composes them.
    "unet": ModelSpec(Ref(_TIMM, "TimmUNet"), "timm (model.encoder)", TIMM_IMAGENET,
                      options=("encoder", "decoder_widths"), encoder_option="encoder", cpu_channels_last=True),
    "linknet": ModelSpec(Ref(_TIMM, "TimmLinkNet"), "timm (model.encoder)", TIMM_IMAGENET,
                         options=("encoder",), encoder_option="encoder", cpu_channels_last=True),
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
    # Keyword arguments the function takes besides its inputs: one function serves a family of metrics
    # (``instance_ap``: the DSB ratio, or F-beta with its beta).
    settings: tuple[tuple[str, Any], ...] = ()

    def load(self) -> Any:
        """The per-image function with this entry's settings bound."""
        function = self.score.load()
        if not self.settings:
            return function
        return functools.partial(function, **dict(self.settings))


@dataclass(frozen=True)
class Choice:
    """A choice that owns its settings: the code (``Ref``) and the dataclass of the keys its config section takes
    besides ``name``. The settings' types and rules (``ternaus.schema``) check them when the config loads."""

    code: Ref
    settings: type

    def load(self) -> Any:
        return self.code.load()


def settings_of(choice: Any) -> dict[str, Any]:
    """A choice's settings as keyword arguments: every field but ``name``."""
    return {k: v for k, v in vars(choice).items() if k != "name"}


_POSITIVE = Positive()


# ---------------------------------------------------------------- train.loss: {name: ..., its settings}


@dataclass
class OverlapLoss:
    """bce_dice: BCE - w * log(soft Dice), the Carvana model; bce_jaccard: BCE - w * log(soft Jaccard), the paper."""

    name: str = "bce_dice"
    weight: Annotated[float, AtLeast(0)] = 1.0


@dataclass
class LovaszLoss:
    """w * Lovasz hinge + (1 - w) * BCE, a surrogate of each image's IoU (w in [0, 1]; 1: the hinge alone);
    lovasz_hinge_elu: elu(e) + 1 in place of the hinge max(e, 0). One class or sigmoid classes."""

    name: str = "lovasz_hinge"
    weight: Annotated[float, Between(0, 1, what="blends w * Lovasz + (1 - w) * BCE, w")] = 1.0


@dataclass
class EdgeLoss:
    """BCE + w * (1 - soft Dice), both weighted by ``edge_weight`` on the band where the mask average-pooled over
    ``edge_window`` x ``edge_window`` pixels (odd; 41 at 1024 x 1024) lies strictly between 0.01 and 0.99 (the
    1st-place team's 1024 x 1024 families; sigmoid only)."""

    name: str = "bce_dice_edge"
    weight: Annotated[float, AtLeast(0)] = 1.0
    edge_window: Annotated[int, AtLeast(1), Odd()] = 41
    edge_weight: Annotated[float, _POSITIVE] = 3.0


# functions (logits, targets, weight, activation, **settings) -> scalar loss
LOSSES: dict[str, Choice] = {
    "bce_dice": Choice(Ref("ternaus.losses", "bce_dice_loss"), OverlapLoss),
    "bce_jaccard": Choice(Ref("ternaus.losses", "bce_jaccard_loss"), OverlapLoss),
    "lovasz_hinge": Choice(Ref("ternaus.losses", "lovasz_hinge_loss"), LovaszLoss),
    "lovasz_hinge_elu": Choice(Ref("ternaus.losses", "lovasz_hinge_elu_loss"), LovaszLoss),
    "bce_dice_edge": Choice(Ref("ternaus.losses", "bce_dice_edge_loss"), EdgeLoss),
}


# ---------------------------------------------------------------- train.optimizer: {name: ..., its settings}


@dataclass
class AdamSettings:
    name: str = "adam"


@dataclass
class MomentumSettings:
    """SGD (Nesterov off) and RMSprop: their momentum (0.0 is PyTorch's default for RMSprop)."""

    name: str = "sgd"
    momentum: Annotated[float, Between(0, 1, open_high=True)] = 0.9


# functions (parameters, lr, weight_decay, settings) -> torch.optim.Optimizer
OPTIMIZERS: dict[str, Choice] = {
    "adam": Choice(Ref("ternaus.optim", "adam"), AdamSettings),
    "sgd": Choice(Ref("ternaus.optim", "sgd"), MomentumSettings),
    "rmsprop": Choice(Ref("ternaus.optim", "rmsprop"), MomentumSettings),
}


# ---------------------------------------------------------------- train.schedule: {name: ..., its settings}


@dataclass
class CarvanaSchedule:
    """Halved every ``cycle_step`` epochs inside cycles of ``cycle_len`` epochs (TernausNet's Carvana recipe)."""

    name: str = "carvana"
    cycle_len: Annotated[int, AtLeast(1)] = 5
    cycle_step: Annotated[int, AtLeast(1)] = 2


@dataclass
class ConstantSchedule:
    name: str = "constant"


@dataclass
class StepSchedule:
    """Times ``gamma`` every ``step_epochs`` epochs (torch's StepLR)."""

    name: str = "step"
    gamma: Annotated[float, _POSITIVE] = 0.5
    step_epochs: Annotated[int, AtLeast(1)] = 100


def _milestone_problems(name: str, cycle_len: int, milestones: list[int]) -> list[str]:
    if any(not 0 <= m < cycle_len for m in milestones):
        return [f"train.schedule.milestones: {milestones} must lie in 0 .. {cycle_len - 1} (train.schedule.cycle_len "
                f"- 1, schedule {name})"]
    return []


@dataclass
class CycleSchedule:
    """Inside cycles of ``cycle_len`` epochs, times ``gamma`` at each of ``milestones`` (20, [10, 15], 0.1: the
    1st-place VGG family's lr, lr/10, lr/100)."""

    name: str = "cycle"
    cycle_len: Annotated[int, AtLeast(1)] = 5
    milestones: list[int] = field(default_factory=lambda: [2, 4])
    gamma: Annotated[float, _POSITIVE] = 0.5

    def problems(self) -> list[str]:
        return _milestone_problems(self.name, self.cycle_len, self.milestones)


@dataclass
class StepThenCycleSchedule:
    """``step`` before epoch ``cycle_start``, ``cycle`` counted from it (the 1st-place LinkNet34 family)."""

    name: str = "step_then_cycle"
    gamma: Annotated[float, _POSITIVE] = 0.5
    step_epochs: Annotated[int, AtLeast(1)] = 100
    cycle_start: Annotated[int, AtLeast(0)] = 0
    cycle_len: Annotated[int, AtLeast(1)] = 5
    milestones: list[int] = field(default_factory=lambda: [2, 4])

    def problems(self) -> list[str]:
        return _milestone_problems(self.name, self.cycle_len, self.milestones)


# functions (epoch counted from 0, settings) -> the learning rate's factor
SCHEDULES: dict[str, Choice] = {
    "carvana": Choice(Ref("ternaus.optim", "carvana_factor"), CarvanaSchedule),
    "constant": Choice(Ref("ternaus.optim", "constant_factor"), ConstantSchedule),
    "step": Choice(Ref("ternaus.optim", "step_factor"), StepSchedule),
    "cycle": Choice(Ref("ternaus.optim", "cycle_factor"), CycleSchedule),
    "step_then_cycle": Choice(Ref("ternaus.optim", "step_then_cycle_factor"), StepThenCycleSchedule),
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
    "dsb_ap": MetricSpec(Ref(_METRICS, "instance_ap"), "objects", "TP/(TP+FP+FN) over IoU 0.50-0.95, per object",
                         (("formula", "dsb"),)),
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
    "instance_folders": Ref("ternaus.data.instance_folders"),
}

# The config key each registry serves.
REGISTRIES: dict[str, dict[str, Any]] = {
    "model.name": MODELS,
    "train.loss.name": LOSSES,
    "train.optimizer.name": OPTIMIZERS,
    "train.schedule.name": SCHEDULES,
    "ensemble.rules": RULES,
    "postprocess.metric": METRICS,
    "predict.tta": TTAS,
    "data.layout": LAYOUTS,
}
