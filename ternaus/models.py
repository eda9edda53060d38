"""The TernausNet family, exactly as the original code defines each model, and one registry of them.

- ``unet11``: UNet11 (TernausNet), VGG11 ``features`` encoder, transposed-convolution decoder (the paper's).
- ``unet16``: UNet16, VGG16 ``features`` encoder, decoder blocks that upsample 2x bilinearly, or with a
  transposed convolution (``model.transposed``).
- ``albunet34``: AlbuNet, ResNet34 encoder, the same decoder as UNet16.

Each module tree matches the original's, aliases included: ``encoder`` is the torchvision encoder and
``conv1 … conv5`` register some of its layers a second time, so ``state_dict()`` has the original's keys
and a checkpoint of the original code loads here (and for UNet11 and UNet16, one written here loads there).
Shared parameters are counted once by ``parameters()``: 22,927,393 for UNet11 with one class.

``MODELS`` maps each name to its ``ModelSpec``: the class, the encoder, torchvision's ImageNet weight files
and the config options the class takes. Weights are never downloaded: ImageNet weights come from an
explicit file or torchvision's cache.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ternaus.errors import WeightsError

__all__ = [
    "UNet11",
    "UNet16",
    "AlbuNet",
    "TernausNet",
    "ConvRelu",
    "DecoderBlock",
    "UpsampleDecoderBlock",
    "lecun_uniform_",
    "load_weights",
    "fit_state_dict",
    "load_imagenet_encoder",
    "imagenet_weight_candidates",
    "build_model",
    "new_model",
    "set_encoder_frozen",
    "spec_of",
    "MODELS",
    "ModelSpec",
    "ImageNetWeights",
    "WeightsError",
    "ENCODER_ALIASES",
]


# ---------------------------------------------------------------- building blocks


class ConvRelu(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x))


class DecoderBlock(nn.Module):
    """UNet11's: ConvRelu then a stride-2 transposed convolution: doubles height and width."""

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            ConvRelu(in_channels, middle_channels),
            nn.ConvTranspose2d(middle_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UpsampleDecoderBlock(nn.Module):
    """UNet16's and AlbuNet's (the original ``DecoderBlockV2``): doubles height and width.

    Bilinear: ``[0]`` 2x bilinear upsampling (no parameters), ``[1]`` ConvRelu(in, mid), ``[2]`` ConvRelu(mid, out).
    Transposed: ``[0]`` ConvRelu(in, mid), ``[1]`` ConvTranspose2d(mid, out, 4, stride 2, padding 1), ``[2]`` ReLU;
    the kernel of 4 is a multiple of the stride, which avoids checkerboard artefacts.
    """

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int, transposed: bool = False):
        super().__init__()
        if transposed:
            self.block = nn.Sequential(
                ConvRelu(in_channels, middle_channels),
                nn.ConvTranspose2d(middle_channels, out_channels, kernel_size=4, stride=2, padding=1),
                nn.ReLU(inplace=True),
            )
        else:
            self.block = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                ConvRelu(in_channels, middle_channels),
                ConvRelu(middle_channels, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


# ---------------------------------------------------------------- encoders (structure only: never downloaded)

# torchvision's VGG configurations "A" (VGG11) and "D" (VGG16): channels, "M" = max-pool.
VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg_features(layout: tuple) -> nn.Sequential:
    """The same Sequential as torchvision's ``vggNN().features``, without building (and randomly
    initialising) the 120-million-parameter classifier that the U-Nets throw away."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = item
    return nn.Sequential(*layers)


def vgg11_features() -> nn.Sequential:
    return vgg_features(VGG11_LAYOUT)


def resnet34_trunk() -> nn.Module:
    """torchvision's ResNet34 without its pooling and classifier head, which AlbuNet never uses.

    The original kept ``fc`` registered (its checkpoints hold ``encoder.fc.*``, ignored when loaded here);
    a parameter that gets no gradient would stop DistributedDataParallel, so it is not part of this model."""
    from torchvision.models import resnet34

    trunk = resnet34(weights=None)
    del trunk.maxpool, trunk.avgpool, trunk.fc  # AlbuNet pools with its own 2x2 max-pool instead
    return trunk


# ---------------------------------------------------------------- the family


class TernausNet(nn.Module):
    """What UNet11, UNet16 and AlbuNet share: the input-size rule, encoder freezing, their original layout.

    ``ALIASES`` maps each original alias prefix to the encoder's own prefix for the same tensors;
    ``UNUSED_ORIGINAL_KEYS`` are prefixes of original checkpoint tensors this model does not have."""

    SIZE_MULTIPLE = 32
    HALVINGS = "five"
    ALIASES: dict[str, str] = {}
    UNUSED_ORIGINAL_KEYS: tuple[str, ...] = ()
    encoder: nn.Module
    encoder_frozen = False

    def check_input_size(self, x: torch.Tensor) -> None:
        m = self.SIZE_MULTIPLE
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"{type(self).__name__} needs height and width that are multiples of {m}, got "
                             f"{tuple(x.shape[-2:])}; pad the input (data.input_size: null pads automatically)")

    def train(self, mode: bool = True) -> "TernausNet":
        super().train(mode)
        if self.encoder_frozen:
            # A frozen encoder is frozen whole: BatchNorm keeps its ImageNet statistics too.
            self.encoder.eval()
        return self

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """UNet11's and UNet16's way back up from the encoder's outputs ``skips`` (conv1 ... conv5): the centre,
        then each decoder block on the previous output joined with its skip, deepest first; ``final`` last."""
        x = self.center(self.pool(skips[-1]))
        for block, skip in zip((self.dec5, self.dec4, self.dec3, self.dec2, self.dec1), reversed(skips)):
            x = block(torch.cat([x, skip], 1))
        return self.final(x)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.center, self.dec5, self.dec4, self.dec3, self.dec2, self.dec1, self.final]


# Original alias name -> index in vgg11().features.
ENCODER_ALIASES = {
    "conv1": 0, "conv2": 3, "conv3s": 6, "conv3": 8, "conv4s": 11, "conv4": 13, "conv5s": 16, "conv5": 18,
}


class UNet11(TernausNet):
    """TernausNet UNet11. Input: normalised RGB, height and width multiples of 32. Output: logits."""

    ALIASES = {f"{alias}.": f"encoder.{index}." for alias, index in ENCODER_ALIASES.items()}

    def __init__(self, num_classes: int = 1, num_filters: int = 32):
        super().__init__()
        nf = num_filters
        self.num_classes = num_classes
        self.pool = nn.MaxPool2d(2, 2)
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
        self.check_input_size(x)
        conv1 = self.relu(self.conv1(x))
        conv2 = self.relu(self.conv2(self.pool(conv1)))
        conv3 = self.relu(self.conv3(self.relu(self.conv3s(self.pool(conv2)))))
        conv4 = self.relu(self.conv4(self.relu(self.conv4s(self.pool(conv3)))))
        conv5 = self.relu(self.conv5(self.relu(self.conv5s(self.pool(conv4)))))
        return self.decode([conv1, conv2, conv3, conv4, conv5])


# Original stage name -> indices in vgg16().features of its convolutions (each followed by the shared ReLU).
VGG16_STAGES = {"conv1": (0, 2), "conv2": (5, 7), "conv3": (10, 12, 14), "conv4": (17, 19, 21), "conv5": (24, 26, 28)}


class UNet16(TernausNet):
    """UNet16: VGG16 encoder, upsampling decoder. Input: normalised RGB, multiples of 32. Output: logits.

    The original applied ``log_softmax`` over the classes when ``num_classes > 1``; this one returns logits
    always, as UNet11 does (the pipeline's losses take logits; the argmax over classes is the same)."""

    ALIASES = {f"{stage}.{2 * k}.": f"encoder.{index}."
               for stage, indices in VGG16_STAGES.items() for k, index in enumerate(indices)}

    def __init__(self, num_classes: int = 1, num_filters: int = 32, transposed: bool = False):
        super().__init__()
        nf = num_filters
        self.num_classes, self.transposed = num_classes, transposed
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = vgg_features(VGG16_LAYOUT)
        self.relu = nn.ReLU(inplace=True)
        for stage, indices in VGG16_STAGES.items():
            setattr(self, stage, nn.Sequential(*[m for index in indices for m in (self.encoder[index], self.relu)]))
        self.center = UpsampleDecoderBlock(512, nf * 8 * 2, nf * 8, transposed)
        self.dec5 = UpsampleDecoderBlock(512 + nf * 8, nf * 8 * 2, nf * 8, transposed)
        self.dec4 = UpsampleDecoderBlock(512 + nf * 8, nf * 8 * 2, nf * 8, transposed)
        self.dec3 = UpsampleDecoderBlock(256 + nf * 8, nf * 4 * 2, nf * 2, transposed)
        self.dec2 = UpsampleDecoderBlock(128 + nf * 2, nf * 2 * 2, nf, transposed)
        self.dec1 = ConvRelu(64 + nf, nf)
        self.final = nn.Conv2d(nf, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        conv1 = self.conv1(x)
        conv2 = self.conv2(self.pool(conv1))
        conv3 = self.conv3(self.pool(conv2))
        conv4 = self.conv4(self.pool(conv3))
        conv5 = self.conv5(self.pool(conv4))
        return self.decode([conv1, conv2, conv3, conv4, conv5])


class AlbuNet(TernausNet):
    """AlbuNet (Alexander Buslaev's): ResNet34 encoder, the UNet16 decoder one level deeper.

    The encoder's stem (7x7 stride-2 convolution, then a 2x2 max-pool) works at 1/4 and ``layer4`` at 1/32;
    the centre pools once more, so height and width must be multiples of 64. Output: logits (the original
    applied ``log_softmax`` when ``num_classes > 1``, see UNet16)."""

    SIZE_MULTIPLE = 64
    HALVINGS = "six"
    ALIASES = {"conv1.0.": "encoder.conv1.", "conv1.1.": "encoder.bn1.", "conv2.": "encoder.layer1.",
               "conv3.": "encoder.layer2.", "conv4.": "encoder.layer3.", "conv5.": "encoder.layer4."}
    UNUSED_ORIGINAL_KEYS = ("encoder.fc.",)

    def __init__(self, num_classes: int = 1, num_filters: int = 32, transposed: bool = False):
        super().__init__()
        nf = num_filters
        self.num_classes, self.transposed = num_classes, transposed
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = resnet34_trunk()
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Sequential(self.encoder.conv1, self.encoder.bn1, self.encoder.relu, self.pool)
        self.conv2 = self.encoder.layer1
        self.conv3 = self.encoder.layer2
        self.conv4 = self.encoder.layer3
        self.conv5 = self.encoder.layer4
        self.center = UpsampleDecoderBlock(512, nf * 8 * 2, nf * 8, transposed)
        self.dec5 = UpsampleDecoderBlock(512 + nf * 8, nf * 8 * 2, nf * 8, transposed)
        self.dec4 = UpsampleDecoderBlock(256 + nf * 8, nf * 8 * 2, nf * 8, transposed)
        self.dec3 = UpsampleDecoderBlock(128 + nf * 8, nf * 4 * 2, nf * 2, transposed)
        self.dec2 = UpsampleDecoderBlock(64 + nf * 2, nf * 2 * 2, nf * 2 * 2, transposed)
        self.dec1 = UpsampleDecoderBlock(nf * 2 * 2, nf * 2 * 2, nf, transposed)
        self.dec0 = ConvRelu(nf, nf)
        self.final = nn.Conv2d(nf, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        conv1 = self.conv1(x)
        conv2 = self.conv2(conv1)
        conv3 = self.conv3(conv2)
        conv4 = self.conv4(conv3)
        conv5 = self.conv5(conv4)
        center = self.center(self.pool(conv5))
        dec5 = self.dec5(torch.cat([center, conv5], 1))
        dec4 = self.dec4(torch.cat([dec5, conv4], 1))
        dec3 = self.dec3(torch.cat([dec4, conv3], 1))
        dec2 = self.dec2(torch.cat([dec3, conv2], 1))
        dec1 = self.dec1(dec2)
        dec0 = self.dec0(dec1)
        return self.final(dec0)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.center, self.dec5, self.dec4, self.dec3, self.dec2, self.dec1, self.dec0, self.final]


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


@dataclass(frozen=True)
class ImageNetWeights:
    """torchvision's ImageNet file for an encoder: its names (newest first) and which of its tensors to take."""

    files: tuple[str, ...]
    torchvision_model: str  # how the file is fetched on a machine with internet: torchvision.models.<this>
    prefix: str  # the encoder's tensors in the file: "features." for VGG, "" for ResNet
    unused: tuple[str, ...]  # the file's classifier, which the U-Nets do not have

    def encoder_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The encoder's tensors under the encoder's own names; anything unknown is left to be reported."""
        return {k.removeprefix(self.prefix): v for k, v in state.items() if not k.startswith(self.unused)}


def imagenet_weight_candidates(explicit: str | None = None,
                               files: tuple[str, ...] = ("vgg11-8a719046.pth", "vgg11-bbd30ac9.pth")) -> list[Path]:
    """Where the ImageNet weights are looked for, in order: the explicit file, else torchvision's cache."""
    if explicit:
        return [Path(explicit).expanduser()]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return [cache / name for name in files]


def _missing_imagenet_message(spec: "ModelSpec", tried: list[Path]) -> str:
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


def load_imagenet_encoder(model: TernausNet, explicit: str | None = None) -> Path:
    """Copy torchvision's ImageNet weights into ``model.encoder``, strictly; returns the file used."""
    spec = spec_of(model)
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


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class ModelSpec:
    """One ``model.name``: the class, its encoder, torchvision's ImageNet file, the config options it takes."""

    model_class: type[TernausNet]
    encoder: str
    imagenet: ImageNetWeights
    options: tuple[str, ...] = ()  # ModelConfig fields passed to the class besides num_classes

    @property
    def size_multiple(self) -> int:
        return self.model_class.SIZE_MULTIPLE

    def new(self, model_cfg: Any) -> TernausNet:
        """The architecture alone, with PyTorch's default initialisation."""
        options = {name: getattr(model_cfg, name) for name in self.options}
        # Softmax over exclusive classes has a background channel besides them.
        extra = 1 if getattr(model_cfg, "activation", "sigmoid") == "softmax" else 0
        return self.model_class(num_classes=model_cfg.num_classes + extra, **options)


VGG_UNUSED = ("classifier.",)
MODELS: dict[str, ModelSpec] = {
    "unet11": ModelSpec(UNet11, "VGG11", ImageNetWeights(("vgg11-8a719046.pth", "vgg11-bbd30ac9.pth"), "vgg11",
                                                         "features.", VGG_UNUSED)),
    "unet16": ModelSpec(UNet16, "VGG16", ImageNetWeights(("vgg16-397923af.pth",), "vgg16", "features.", VGG_UNUSED),
                        options=("transposed",)),
    "albunet34": ModelSpec(AlbuNet, "ResNet34", ImageNetWeights(("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
                                                                "resnet34", "", ("fc.",)),
                           options=("transposed",)),
}


def spec_of(model: nn.Module) -> ModelSpec:
    for spec in MODELS.values():
        if type(model) is spec.model_class:
            return spec
    raise TypeError(f"{type(model).__name__} is not in the model registry ({', '.join(MODELS)})")


def new_model(model_cfg: Any) -> TernausNet:
    """The architecture ``model_cfg.name`` selects, uninitialised: for loading a checkpoint into."""
    return MODELS[model_cfg.name].new(model_cfg)


def build_model(model_cfg: Any) -> TernausNet:
    """The model named by ``model_cfg.name``, initialised per ``model_cfg.init``."""
    model = new_model(model_cfg)
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


# ---------------------------------------------------------------- fine-tuning


def set_encoder_frozen(model: TernausNet, frozen: bool) -> bool:
    """Freeze (or release) the encoder's parameters, and keep its BatchNorm statistics as they are while
    frozen; returns whether anything changed. The optimizer keeps holding the frozen parameters: they get
    no gradient, so Adam leaves them (and their state) untouched until they are released."""
    changed = model.encoder_frozen != frozen
    model.encoder_frozen = frozen
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(not frozen)
    model.train(model.training)
    return changed
