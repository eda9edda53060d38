"""One typed configuration: YAML mapped onto dataclasses, ``KEY=VALUE`` overrides, strict checks.

Every stage reads the same file. Unknown keys, wrong types and impossible values are reported together,
with the closest valid key suggested, before any work starts. The resolved configuration is saved next
to the run's outputs so a result can always be traced back to the settings that made it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ternaus import __version__
from ternaus.errors import ConfigError
from ternaus.io import atomic_write_text, claim, remove_stale_temporaries
from ternaus.registry import MODELS, REGISTRIES
from ternaus.rle import RleFormat

__all__ = ["Config", "DataConfig", "MasksCsvConfig", "FoldsConfig", "ModelConfig", "LossConfig", "AugmentConfig",
           "TrainConfig", "PredictConfig", "SubmissionConfig", "PostprocessConfig", "ReportConfig", "EnsembleMember",
           "TopRuleConfig", "EnsembleConfig", "member_name", "read_yaml", "RANDOM_INITS", "load_config",
           "save_config", "config_yaml", "config_to_dict", "parse_overrides", "class_names", "thresholds", "choices",
           "resolve", "submission_rows_problem"]

RANDOM_INITS = ("lecun", "pytorch")  # model.init values that start every weight at random


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
    # "rle_csv": images in train_dir, masks as RLE rows of masks_csv (data.csv, data.rle), test images in test_dir.
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
    num_workers: int = 2
    csv: MasksCsvConfig = field(default_factory=MasksCsvConfig)
    rle: RleFormat = field(default_factory=RleFormat)  # the convention of masks_csv
    # The classes' names as the CSVs and the submission write them; null: "1", "2", ... up to model.num_classes.
    class_names: list[str] | None = None
    # Images and masks whose header declares more pixels are refused before any work (a decompression bomb, or
    # a file that would need gigabytes): 25 million is ten Carvana photos. Raise it for larger images.
    max_image_pixels: int = 25_000_000


@dataclass
class FoldsConfig:
    n_folds: int = 5
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
    # BatchNorm and no pre-trained encoder; sizes multiples of 2 ** len(widths)).
    name: str = "unet11"
    num_classes: int = 1
    # "sigmoid": one independent probability per class (multi-label, Severstal); "softmax": exclusive classes,
    # the network then has num_classes + 1 outputs, the first for the background.
    activation: Literal["sigmoid", "softmax"] = "sigmoid"
    # "lecun", "pytorch" (PyTorch's own default initialisation), "imagenet", or a path to a whole-network
    # checkpoint to fine-tune from.
    init: str = "imagenet"
    # Explicit ImageNet file of the encoder (vgg11-8a719046.pth, ...) for init=imagenet; else torchvision's cache.
    encoder_weights: str | None = None
    # unet16 and albunet34: the decoder upsamples with ConvTranspose2d(k=4, s=2) instead of bilinear
    # interpolation. (unet11's decoder always uses its own transposed convolutions.)
    transposed: bool = False
    # unet11: the decoder's base width (null: 32, TernausNet's; 64: the 1st-place team's "vgg11v1").
    num_filters: int | None = None
    # scratch: the channels of each down level, its depth their count (null: [32, 64, 128, 256, 512, 1024]),
    # and of the centre (null: 1024).
    widths: list[int] | None = None
    center_width: int | None = None
    # Train the decoder alone for the first N epochs, the encoder's weights (and BatchNorm statistics) frozen,
    # then the whole network: a fresh decoder's large early gradients then cannot wreck a pre-trained encoder.
    freeze_encoder_epochs: int = 0


@dataclass
class LossConfig:
    # A key of ternaus.registry.LOSSES: "bce_dice": BCE - w*log(soft Dice), the Carvana model; "bce_jaccard":
    # A key of ternaus.registry.LOSSES: "bce_dice": BCE - w*log(soft Dice), the Carvana model; "bce_jaccard":
    # BCE - w*log(soft Jaccard), the paper; "lovasz_hinge": w*Lovasz hinge + (1-w)*BCE, a surrogate of each
    # image's IoU (w in [0, 1]; 1: the Lovasz hinge alone; one class or sigmoid classes); "lovasz_hinge_elu":
    # the same with elu(e) + 1 in place of the hinge max(e, 0); "bce_dice_edge": BCE + w*(1 - soft Dice), both
    # weighted by edge_weight on a band around each mask's edge (the 1st-place team's 1024 x 1024 families;
    # sigmoid only).
    name: str = "bce_dice"
    weight: float = 1.0
    # bce_dice_edge: the band is where the mask average-pooled over edge_window x edge_window pixels (odd; 41 at
    # 1024 x 1024) lies strictly between 0.01 and 0.99.
    edge_window: int = 41
    edge_weight: float = 3.0


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    # Shift-scale-rotate: applied with probability ssr_p, limits as fractions / degrees.
    ssr_p: float = 0.5
    shift: float = 0.0625
    scale: float = 0.1
    rotate: float = 10.0
    # With probability color_p, an HSV shift or (1 in 4) a greyscale copy.
    color_p: float = 0.5
    hue: float = 0.05
    saturation: float = 0.3
    brightness: float = 0.2


@dataclass
class TrainConfig:
    epochs: int = 52
    # Per process (per GPU under torchrun): N processes step on N * batch_size images.
    batch_size: int = 4
    val_batch_size: int = 4
    # Not scaled with the number of processes: for N GPUs, N * lr (the linear scaling rule) is a start.
    lr: float = 1e-4
    # A key of ternaus.registry.OPTIMIZERS: "adam", "sgd" (with `momentum`, Nesterov off) or "rmsprop" (with
    # `momentum`; 0.0 is PyTorch's default).
    optimizer: str = "adam"
    momentum: float = 0.9
    # A key of ternaus.registry.SCHEDULES, the learning rate's factor by epoch (counted from 0):
    # "carvana": halved every `cycle_step` epochs inside cycles of `cycle_len` epochs; "constant";
    # "step": times `gamma` every `step_epochs` epochs; "cycle": inside cycles of `cycle_len` epochs, times
    # `gamma` at each of `cycle_milestones` (20, [10, 15], 0.1: the VGG cycle lr, lr/10, lr/100);
    # "step_then_cycle": "step" before epoch `cycle_start`, "cycle" counted from it.
    schedule: str = "carvana"
    cycle_len: int = 5
    cycle_step: int = 2
    gamma: float = 0.5
    step_epochs: int = 100
    cycle_milestones: list[int] = field(default_factory=lambda: [2, 4])
    cycle_start: int = 0
    weight_decay: float = 0.0
    # Gradients of `accumulate` batches are averaged before each optimiser step: batch_size 1, accumulate 4
    # steps as batch 4 would, in a quarter of the memory (BatchNorm still sees batches of 1).
    accumulate: int = 1
    # Clip the gradients' global L2 norm to this before each step; null: no clipping.
    clip_grad_norm: float | None = None
    # null: every fold; else the list of folds `train.py` trains and `predict.py` averages.
    folds: list[int] | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Mixed precision on CUDA only ("bfloat16" falls back to "float16" where unsupported).
    amp: bool = True
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    channels_last: bool = True
    seed: int = 0
    # Continue from fold_K/last.pt when it exists; false starts the fold over.
    resume: bool = True
    # Also write last.pt every N training steps (0: at the end of each epoch only). A Carvana epoch is
    # ~1,000 steps; 200 bounds the work a crash can cost at a fifth of an epoch.
    checkpoint_every: int = 0
    # Deterministic kernels (slower on GPUs): a resumed run then matches an uninterrupted one bit for bit.
    deterministic: bool = False
    # torch.compile the model for training (the first steps of each fold then wait for the compiler).
    # Off by default: see docs/benchmarks.md for what it gains on each device.
    compile: bool = False
    threshold: float | list[float] = 0.5  # or one per class
    # How often the progress bar's loss is refreshed: each refresh synchronises with the GPU.
    log_every: int = 10


@dataclass
class PredictConfig:
    # A key of ternaus.registry.TTAS: "hflip": average the image and its mirror (one batched forward pass); "none".
    tta: str = "hflip"
    batch_size: int = 4
    checkpoint: str = "best.pt"
    out_dir: str = "predictions"
    writer_threads: int = 4
    oof: bool = True
    # Keep the PNGs an interrupted run already wrote with the same models and settings; false redoes all.
    resume: bool = True


@dataclass
class SubmissionConfig:
    # null: the value predict.py searched on the out-of-fold predictions ({output_dir}/postprocess.json),
    # else 0.5. A value here (or make_submission.py --threshold) overrides the searched one. One number, or
    # one per class (the search covers one class).
    threshold: float | list[float] | None = None
    # Empty a prediction with fewer pixels than this; null: the searched value, else 0 (never).
    min_area: int | None = None
    filename: str = "submission.csv.gz"
    processes: int = 0  # 0: one per CPU core
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
    # object per image), "f2_instances" (Airbus: F2 over IoU thresholds 0.50-0.95, objects matched one to one).
    metric: str = "dice"


@dataclass
class ReportConfig:
    # report.py writes {output_dir}/{out_dir}/index.html and its PNGs.
    out_dir: str = "report"
    worst: int = 8  # out-of-fold images shown, lowest score first
    best: int = 4
    test_images: int = 4
    tile_height: int = 128  # pixels of each picture in the montages


@dataclass
class EnsembleMember:
    # A run's output_dir once predict.py (or ensemble.py: ensembles nest) has written its predictions there,
    # and its out-of-fold PNGs for the CV.
    run: str = ""
    weight: float = 1.0  # the weights are normalised to sum to 1
    name: str | None = None  # how the rules and the CV table name it; null: the run folder's name


@dataclass
class TopRuleConfig:
    """The 1st-place team's "the top is unreliable" rule (``ensemble.rules: [top_unreliable]``)."""

    reference: str | None = None  # the member whose map the rule reads (the team used LinkNet34's)
    uncertain_low: int = 30  # the reference is uncertain where its level is strictly between these two
    uncertain_high: int = 210
    erode_iterations: int = 10  # 3 x 3 erosions of the uncertain band before its regions are measured
    top_fraction: float = 0.5  # the part of the image, from the top, where the band is looked for
    min_area: int = 40_000  # pixels the band's biggest region must exceed for the rule to fire
    margin: int = 50  # pixels the region's bounding box is grown by on each side
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
    predict: PredictConfig = field(default_factory=PredictConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


# ---------------------------------------------------------------- reading YAML safely

MAX_CONFIG_BYTES = 1 << 20  # a configuration is a few KB
MAX_YAML_NODES = 10_000  # values after aliases are expanded; the shipped configs hold about 150
MAX_YAML_DEPTH = 50  # the configuration is 3 levels deep
_SHORT = reprlib.Repr()  # (Python 3.11's takes no arguments)
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 3, 6, 6, 6
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 80, 80, 40


def _quote(value: Any) -> str:
    """A value as a message quotes it: its repr, shortened (a value can be huge; the message stays a line)."""
    return _SHORT.repr(value)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document whose aliases expand to more than MAX_YAML_NODES values (a
    few hundred bytes of nested aliases can stand for billions of values), that refers to itself, or that is
    nested deeper than MAX_YAML_DEPTH (the composer recurses)."""

    depth = 0

    def compose_document(self):
        node = super().compose_document()
        _check_expanded_size(node)
        return node

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"it is nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values ``root`` stands for with every alias expanded, without expanding any."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise yaml.YAMLError(f"its aliases (*name) expand to more than {MAX_YAML_NODES:,} values; "
                                     "write the values out")
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise yaml.YAMLError("an alias (*name) refers to the value that contains it")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with aliases and nesting bounded (what yaml.load does, with this safe loader)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


# ---------------------------------------------------------------- mapping dicts onto dataclasses


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # Cached: evaluating the annotations is half the cost of loading a config.
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    if _is_dataclass_type(tp):  # a list's items can be sections too (ensemble.members)
        return _from_dict(tp, value, f"{key}.", errors)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            trial: list[str] = []
            out = _coerce(value, arg, key, trial)
            if not trial:
                return out
        errors.append(f"{key}: expected {_type_name(tp)}, got {_quote(value)}")
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not any(value == a and type(value) is type(a) for a in allowed):
            errors.append(f"{key}: must be one of {', '.join(map(str, allowed))}, got {_quote(value)}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            errors.append(f"{key}: expected a list, got {_quote(value)}")
            return value
        return [_coerce(v, item_tp, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; it is meant as a number.
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        errors.append(f"{key}: expected {tp.__name__}, got {_quote(value)}")
    return value


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _from_dict(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    if not isinstance(data, dict):
        errors.append(f"{prefix[:-1] or 'config'}: expected a mapping of keys, got {_quote(data)}")
        return cls()
    hints = _type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            errors.append(f"unknown key '{full}'{_suggest(str(key), list(hints))}")
            continue
        if _is_dataclass_type(hints[key]):
            kwargs[key] = _from_dict(hints[key], value, f"{full}.", errors)
            continue
        found: list[str] = []
        coerced = _coerce(value, hints[key], full, found)
        if found:  # reported; the default stands in, so that a dataclass never holds a value of the wrong kind
            errors += found
        else:
            kwargs[key] = coerced
    return cls(**kwargs)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- overrides


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=3", "data.input_size=[128,192]"]`` -> pairs; values are parsed as YAML."""
    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {_quote(item)} is not KEY=VALUE (for example train.epochs=10)")
        try:
            value = _load_yaml(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {_quote(item)}: the value is not valid YAML ({_yaml_problem(err)}); "
                              "correct it, or put a text value in quotes") from None
        pairs.append((key.strip(), value))
    return pairs


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message on one line, shortened."""
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:200] + " ..."


# ---------------------------------------------------------------- validation of values


def _validate_values(cfg: Config) -> list[str]:
    errors = []
    flat = _flatten(config_to_dict(cfg))
    for key, registry in REGISTRIES.items():
        for value in flat[key] if isinstance(flat[key], list) else [flat[key]]:  # a list: each item (ensemble.rules)
            if not (isinstance(value, str) and value in registry):
                errors.append(f"{key}: must be one of {', '.join(registry)}, got {_quote(value)}")
    positive = ["folds.n_folds", "train.epochs", "train.batch_size", "train.val_batch_size", "train.cycle_len",
                "train.cycle_step", "train.log_every", "predict.batch_size", "predict.writer_threads",
                "model.num_classes", "report.tile_height", "train.accumulate", "train.step_epochs",
                "train.loss.edge_window", "model.num_filters", "model.center_width", "data.max_image_pixels"]
    errors += [f"{k}: must be at least 1, got {flat[k]}" for k in positive if isinstance(flat[k], int) and flat[k] < 1]
    if isinstance(cfg.folds.n_folds, int) and cfg.folds.n_folds < 2:
        errors.append(f"folds.n_folds: cross-validation needs at least 2 folds, got {cfg.folds.n_folds}")
    errors += [f"{k}: must be a finite number, got {v}" for k, v in flat.items()
               if isinstance(v, float) and not math.isfinite(v)]
    if isinstance(cfg.train.lr, float) and cfg.train.lr <= 0:
        errors.append(f"train.lr: must be positive, got {cfg.train.lr}")
    for key in ("train.augment.hflip", "train.augment.ssr_p", "train.augment.color_p"):
        if isinstance(flat[key], float) and not 0.0 <= flat[key] <= 1.0:
            errors.append(f"{key}: must lie in [0, 1], got {flat[key]}")
    for key in ("train.threshold", "submission.threshold"):
        errors += _validate_threshold(key, flat[key], cfg.model.num_classes)
    for key in ("data.num_workers", "train.checkpoint_every", "submission.processes", "model.freeze_encoder_epochs",
                "submission.min_area", "report.worst", "report.best", "report.test_images", "train.cycle_start",
                *(f"ensemble.top_unreliable.{k}" for k in ("erode_iterations", "min_area", "margin"))):
        if isinstance(flat[key], int) and flat[key] < 0:
            errors.append(f"{key}: must be 0 or more, got {flat[key]}")
    if isinstance(cfg.train.weight_decay, float) and cfg.train.weight_decay < 0:
        errors.append(f"train.weight_decay: must be 0 or more, got {cfg.train.weight_decay}")
    errors += _validate_lovasz(cfg)
    errors += _validate_input_size(cfg.data.input_size, cfg.model)
    if isinstance(cfg.data.image_max, int) and not 1 <= cfg.data.image_max <= 65535:
        errors.append(f"data.image_max: a 16-bit value from 1 to 65535, got {cfg.data.image_max}")
    errors += _validate_model_options(cfg.model)
    if isinstance(cfg.model.init, str) and cfg.model.init not in (*RANDOM_INITS, "imagenet") \
            and not Path(cfg.model.init).is_file():
        errors.append(f"model.init: {_quote(cfg.model.init)} is neither 'lecun', 'pytorch', 'imagenet' nor an existing "
                      "checkpoint file")
    errors += _validate_folds_list(cfg.train.folds, cfg.folds.n_folds)
    errors += _validate_competition(cfg)
    errors += _validate_optimisation(cfg.train, cfg.model.activation)
    errors += _validate_ensemble(cfg.ensemble)
    return errors


def _validate_lovasz(cfg: Config) -> list[str]:
    loss = cfg.train.loss
    if not (isinstance(loss.name, str) and loss.name.startswith("lovasz")):
        return []
    errors = []
    if isinstance(loss.weight, float) and not 0.0 <= loss.weight <= 1.0:
        errors.append(f"train.loss.weight: {loss.name} blends w * Lovasz + (1 - w) * BCE, w must lie in [0, 1], "
                      f"got {loss.weight}")
    if cfg.model.activation == "softmax":
        errors.append(f"train.loss.name: {loss.name} is the binary Lovasz hinge, for model.activation=sigmoid; "
                      "with softmax use bce_dice or bce_jaccard")
    return errors


def _validate_optimisation(train: TrainConfig, activation: Any) -> list[str]:
    """The optimiser, schedule, accumulation and loss settings of the 1st-place recipes."""
    errors = []
    checks = [("train.momentum", train.momentum, lambda v: 0.0 <= v < 1.0, "lie in [0, 1)"),
              ("train.gamma", train.gamma, lambda v: v > 0, "be positive"),
              ("train.clip_grad_norm", train.clip_grad_norm, lambda v: v > 0, "be positive (or null: no clipping)"),
              ("train.loss.edge_weight", train.loss.edge_weight, lambda v: v > 0, "be positive")]
    errors += [f"{key}: must {what}, got {value}" for key, value, ok, what in checks
               if isinstance(value, float) and not ok(value)]
    milestones = train.cycle_milestones
    if isinstance(milestones, list) and isinstance(train.cycle_len, int) and any(
            isinstance(m, int) and not 0 <= m < train.cycle_len for m in milestones):
        errors.append(f"train.cycle_milestones: {milestones} must lie in 0 .. {train.cycle_len - 1} "
                      "(train.cycle_len - 1)")
    every, accumulate = train.checkpoint_every, train.accumulate
    if isinstance(every, int) and isinstance(accumulate, int) and accumulate > 0 and every % accumulate:
        errors.append(f"train.checkpoint_every: {every} is not a multiple of train.accumulate={accumulate}; a "
                      "checkpoint inside an accumulation would lose its gradients: use a multiple of it")
    window = train.loss.edge_window
    if isinstance(window, int) and window > 0 and window % 2 == 0:
        errors.append(f"train.loss.edge_window: {window} is even; the pooled mask keeps its size only with an odd "
                      f"window: use {window + 1}")
    if train.loss.name == "bce_dice_edge" and activation == "softmax":
        errors.append("train.loss.name: bce_dice_edge weighs sigmoid outputs; with model.activation=softmax use "
                      "bce_dice or bce_jaccard")
    return errors


def _validate_ensemble(ens: EnsembleConfig) -> list[str]:
    errors = []
    names = [member_name(m) for m in ens.members if isinstance(m, EnsembleMember)]
    for index, member in enumerate(ens.members):
        if isinstance(member, EnsembleMember) and not (isinstance(member.run, str) and member.run):
            errors.append(f"ensemble.members[{index}].run: the output_dir of a run that predict.py finished")
        if isinstance(member, EnsembleMember) and isinstance(member.weight, float) and member.weight < 0:
            errors.append(f"ensemble.members[{index}].weight: must be 0 or more, got {member.weight}")
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
    if isinstance(top.top_fraction, float) and not 0 < top.top_fraction <= 1:
        errors.append(f"ensemble.top_unreliable.top_fraction: must lie in (0, 1], got {top.top_fraction}")
    return errors


def member_name(member: EnsembleMember) -> str:
    """An ensemble member's name: ``name``, else its run folder's name."""
    return member.name or Path(str(member.run)).name


def _validate_threshold(key: str, value: Any, num_classes: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if isinstance(value, float) and not math.isfinite(value):
        return []  # reported as not finite
    if any(isinstance(v, float) and not 0.0 <= v <= 1.0 for v in values):
        return [f"{key}: must lie in [0, 1], got {_quote(value)}"]
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
        errors.append(f"submission.values: exactly one column must be '{{rle}}' alone, got {_quote(sub.values)}")
    if sub.rows == "image_class" and not any("class" in f for f in fields):
        errors.append("submission.rows=image_class: a column must name the class ({class}), or rows repeat")
    if sub.encode_size is not None and (len(sub.encode_size) != 2 or min(sub.encode_size) < 1):
        errors.append(f"submission.encode_size: expected null or [H, W], got {_quote(sub.encode_size)}")
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
    if cfg.folds.group_by == "pattern":
        errors += _validate_pattern(cfg.folds.group_pattern)
    errors += _validate_submission_format(cfg.submission, classes)
    return errors


def _validate_pattern(pattern: Any) -> list[str]:
    import re

    try:
        groups = re.compile(pattern).groups if isinstance(pattern, str) else 0
    except re.error as err:
        return [f"folds.group_pattern: {_quote(pattern)} is not a regular expression ({err})"]
    if groups < 1:
        return [f"folds.group_pattern: {_quote(pattern)} needs a group, e.g. '^([^_]+)_' (folds.group_by=pattern)"]
    return []


# ---------------------------------------------------------------- derived settings


def choices(key: str) -> tuple:
    """The values a dotted key accepts: a registry's names (ternaus.registry) or the options its type lists."""
    if key in REGISTRIES:
        return tuple(REGISTRIES[key])
    cls: Any = Config
    *sections, name = key.split(".")
    for section in sections:
        cls = _type_hints(cls)[section]
    annotation = _type_hints(cls)[name]
    if typing.get_origin(annotation) is not Literal:
        raise KeyError(f"{key} is not a key with a fixed list of choices")
    return typing.get_args(annotation)


def class_names(cfg: Config) -> list[str]:
    return list(cfg.data.class_names or [str(k + 1) for k in range(cfg.model.num_classes)])


def thresholds(value: float | list[float], num_classes: int) -> list[float]:
    """One threshold per class from a single number or a list."""
    return list(value) if isinstance(value, list) else [value] * num_classes


def _validate_input_size(size: Any, model: ModelConfig) -> list[str]:
    if size is None or not isinstance(size, list):
        return []
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        return [f"data.input_size: expected null or [H, W] with positive integers, got {_quote(size)}"]
    name = model.name if isinstance(model.name, str) and model.name in MODELS else "unet11"  # else reported alone
    spec = MODELS[name]
    multiple = spec.multiple_for(model)
    if any(v % multiple for v in size):
        padded = [-(-v // multiple) * multiple for v in size]
        return [f"data.input_size: {size} is not a multiple of {multiple} ({spec.model.name}, model.name={name}, "
                f"halves the size {multiple.bit_length() - 1} times); use {padded}"]
    return []


def _validate_model_options(model: ModelConfig) -> list[str]:
    errors = []
    spec = MODELS.get(model.name) if isinstance(model.name, str) else None
    for option in ("num_filters", "widths", "center_width"):
        if spec is not None and getattr(model, option) is not None and option not in spec.options:
            takes = ", ".join(n for n, s in MODELS.items() if option in s.options)
            errors.append(f"model.{option}: {model.name} has no such setting (it is {takes}'s): remove it")
    if isinstance(model.widths, list) and not (model.widths and all(isinstance(w, int) and w > 0
                                                                     for w in model.widths)):
        errors.append(f"model.widths: expected a non-empty list of positive channel counts, got {model.widths}")
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


def _validate_folds_list(folds: Any, n_folds: Any) -> list[str]:
    if not isinstance(folds, list) or not isinstance(n_folds, int):
        return []
    bad = [f for f in folds if isinstance(f, int) and not 0 <= f < n_folds]
    if bad:
        return [f"train.folds: {bad} outside 0..{n_folds - 1} (folds.n_folds={n_folds})"]
    if len(set(folds)) != len(folds) or not folds:
        return [f"train.folds: expected a non-empty list of distinct fold numbers, got {_quote(folds)}"]
    return []


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (output_dir: ..., data: ...), "
                          f"got {_quote(data)}")
    return data or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                names: dict[str, str] | None = None) -> Config:
    """Read ``path`` (or the defaults when None), apply ``KEY=VALUE`` overrides, check everything.

    ``names``: how a problem names a key the user set otherwise ({"submission.threshold": "--threshold
    (submission.threshold)"}, a stage option)."""
    data = read_yaml(path) if path is not None else {}
    for key, value in parse_overrides(overrides or []):
        _set_path(data, key, value)
    errors: list[str] = []
    cfg = _from_dict(Config, data, "", errors)
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


def resolve(cfg: Config, relative: str) -> Path:
    """A data path: absolute paths stay, relative ones are under ``data.root``."""
    return Path(relative) if os.path.isabs(relative) else Path(cfg.data.root) / relative
