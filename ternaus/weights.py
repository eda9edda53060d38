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

from ternaus.errors import WeightsError
from ternaus.registry import MODELS, ModelSpec

__all__ = ["load_weights", "fit_state_dict", "load_imagenet_encoder", "imagenet_weight_candidates", "spec_of",
           "unreadable_weights"]


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


def spec_of(model: nn.Module) -> ModelSpec:
    """The registry entry of a model's class."""
    for spec in MODELS.values():
        if type(model) is spec.model_class:
            return spec
    raise TypeError(f"{type(model).__name__} is not in the model registry ({', '.join(MODELS)})")
