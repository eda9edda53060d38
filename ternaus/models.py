"""UNet11 (TernausNet): a U-Net whose encoder is VGG11's ``features``, exactly as the original code.

The module tree matches the original, aliases included: ``encoder`` is VGG11's ``features`` and
``conv1 … conv5`` are the same layers registered a second time, so ``state_dict()`` has the original's
56 keys and a checkpoint written here loads in the original code (and vice versa). Shared parameters
are counted once by ``parameters()``: 22,927,393 for one class.

Weights are never downloaded. ImageNet weights come from an explicit file or torchvision's cache.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "UNet11",
    "ConvRelu",
    "DecoderBlock",
    "lecun_uniform_",
    "load_weights",
    "fit_state_dict",
    "load_imagenet_encoder",
    "imagenet_weight_candidates",
    "build_model",
    "WeightsError",
    "ENCODER_ALIASES",
]

# Original alias name -> index in vgg11().features.
ENCODER_ALIASES = {
    "conv1": 0, "conv2": 3, "conv3s": 6, "conv3": 8, "conv4s": 11, "conv4": 13, "conv5s": 16, "conv5": 18,
}
IMAGENET_FILES = ("vgg11-8a719046.pth", "vgg11-bbd30ac9.pth")


class WeightsError(RuntimeError):
    """A weights file is absent, unreadable or does not fit the model; the message says which and why."""


# torchvision's VGG11 configuration "A": channels, "M" = max-pool.
VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11_features() -> nn.Sequential:
    """The same 21-slot Sequential as ``torchvision.models.vgg11().features``, without building (and randomly
    initialising) VGG11's 120-million-parameter classifier that UNet11 throws away."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG11_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = item
    return nn.Sequential(*layers)


class ConvRelu(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x))


class DecoderBlock(nn.Module):
    """ConvRelu then a stride-2 transposed convolution: doubles height and width."""

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            ConvRelu(in_channels, middle_channels),
            nn.ConvTranspose2d(middle_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UNet11(nn.Module):
    """TernausNet UNet11. Input: normalised RGB, height and width multiples of 32. Output: logits."""

    def __init__(self, num_classes: int = 1, num_filters: int = 32):
        super().__init__()
        nf = num_filters
        self.num_classes = num_classes
        self.pool = nn.MaxPool2d(2, 2)
        # The structure only; ImageNet weights are loaded from a local file, never downloaded.
        self.encoder = vgg11_features()
        self.relu = self.encoder[1]
        for name, index in ENCODER_ALIASES.items():
            setattr(self, name, self.encoder[index])
        self.center = DecoderBlock(nf * 8 * 2, nf * 8 * 2, nf * 8)
        self.dec5 = DecoderBlock(nf * (16 + 8), nf * 8 * 2, nf * 8)
        self.dec4 = DecoderBlock(nf * (16 + 8), nf * 8 * 2, nf * 4)
        self.dec3 = DecoderBlock(nf * (8 + 4), nf * 4 * 2, nf * 2)
        self.dec2 = DecoderBlock(nf * (4 + 2), nf * 2 * 2, nf)
        self.dec1 = ConvRelu(nf * (2 + 1), nf)
        self.final = nn.Conv2d(nf, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"UNet11 needs height and width that are multiples of 32, got {tuple(x.shape[-2:])}; "
                             "pad the input (data.input_size: null pads automatically)")
        conv1 = self.relu(self.conv1(x))
        conv2 = self.relu(self.conv2(self.pool(conv1)))
        conv3 = self.relu(self.conv3(self.relu(self.conv3s(self.pool(conv2)))))
        conv4 = self.relu(self.conv4(self.relu(self.conv4s(self.pool(conv3)))))
        conv5 = self.relu(self.conv5(self.relu(self.conv5s(self.pool(conv4)))))
        center = self.center(self.pool(conv5))
        dec5 = self.dec5(torch.cat([center, conv5], 1))
        dec4 = self.dec4(torch.cat([dec5, conv4], 1))
        dec3 = self.dec3(torch.cat([dec4, conv3], 1))
        dec2 = self.dec2(torch.cat([dec3, conv2], 1))
        dec1 = self.dec1(torch.cat([dec2, conv1], 1))
        return self.final(dec1)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.center, self.dec5, self.dec4, self.dec3, self.dec2, self.dec1, self.final]


# ---------------------------------------------------------------- initialisation


@torch.no_grad()
def lecun_uniform_(module: nn.Module) -> nn.Module:
    """LeCun uniform, U(-sqrt(3/fan_in), +sqrt(3/fan_in)), biases zero, for every (transposed) convolution.

    fan_in follows PyTorch's (and Keras's) convention: ``weight.size(1) * kernel area``, which for a
    transposed convolution is its output channels times the kernel area.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(layer.weight)
            bound = math.sqrt(3.0 / fan_in)
            layer.weight.uniform_(-bound, bound)
            if layer.bias is not None:
                layer.bias.zero_()
    return module


# ---------------------------------------------------------------- checkpoints


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same, clear message
        raise WeightsError(f"cannot read weights file {path}: {err}") from None


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


def _expand_aliases(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Fill whichever of ``encoder.N.*`` / ``convK.*`` is absent from the other; both must agree."""
    state = dict(state)
    for alias, index in ENCODER_ALIASES.items():
        for kind in ("weight", "bias"):
            a, e = f"{alias}.{kind}", f"encoder.{index}.{kind}"
            if a in state and e in state:
                if state[a].shape != state[e].shape or not torch.equal(state[a], state[e]):
                    raise WeightsError(f"{path}: '{a}' and '{e}' must be the same tensor but differ")
            elif a in state:
                state[e] = state[a]
            elif e in state:
                state[a] = state[e]
    return state


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
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
        raise WeightsError(f"{path} does not fit {type(model).__name__}:\n  " + "\n  ".join(problems[:20]) + hint)


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


def fit_state_dict(model: nn.Module, obj: Any, path: str | Path) -> nn.Module:
    """Load what a checkpoint file held into ``model``, strictly, after checking that it was built for it."""
    path = Path(path)
    _check_arch(model, obj, path)
    state = _expand_aliases(_extract_state_dict(obj, path), path)
    _check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a whole-network checkpoint: the original TernausNet layout or this project's, strictly."""
    return fit_state_dict(model, _torch_load(Path(path)), path)


def imagenet_weight_candidates(explicit: str | None = None) -> list[Path]:
    """Where VGG11 ImageNet weights are looked for, in order."""
    if explicit:
        return [Path(explicit).expanduser()]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return [cache / name for name in IMAGENET_FILES]


def _missing_imagenet_message(tried: list[Path]) -> str:
    listed = "\n  ".join(str(p) for p in tried)
    return (
        "VGG11 ImageNet weights not found (nothing is downloaded). Looked for:\n  " + listed + "\n"
        "To fix: on a machine with internet run\n"
        "  python -c \"import torchvision; torchvision.models.vgg11(weights='IMAGENET1K_V1')\"\n"
        f"and copy ~/.cache/torch/hub/checkpoints/{IMAGENET_FILES[0]} into "
        f"{os.environ.get('TORCH_HOME', '~/.cache/torch')}/hub/checkpoints/ here, "
        "or set model.encoder_weights=PATH, or train from scratch with model.init=lecun."
    )


def load_imagenet_encoder(model: UNet11, explicit: str | None = None) -> Path:
    """Copy torchvision's VGG11 ``features`` weights into ``model.encoder``; returns the file used."""
    tried = imagenet_weight_candidates(explicit)
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise WeightsError(_missing_imagenet_message(tried))
    state = _torch_load(found)
    if not isinstance(state, dict):
        raise WeightsError(f"{found} is not a torchvision VGG11 state_dict")
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    _check_state_dict(model.encoder, features, found)
    model.encoder.load_state_dict(features, strict=True)
    return found


MODELS = {"unet11": UNet11}


def build_model(model_cfg: Any) -> nn.Module:
    """The model named by ``model_cfg.name``, initialised per ``model_cfg.init``."""
    model = MODELS[model_cfg.name](num_classes=model_cfg.num_classes)
    init = model_cfg.init
    if init == "lecun":
        lecun_uniform_(model)
    elif init == "imagenet":
        for module in model.decoder_modules():
            lecun_uniform_(module)
        load_imagenet_encoder(model, model_cfg.encoder_weights)
    else:
        load_weights(model, init)
    return model
