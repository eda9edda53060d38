"""Any timm encoder under a U-Net or LinkNet decoder (``model.name: unet`` / ``linknet`` with ``model.encoder``),
composed the way segmentation_models.pytorch composes them.

The encoder is ``timm.create_model(model.encoder, pretrained=False, features_only=True)``: its feature maps at
reductions such as 2, 4, 8, 16, 32 (EfficientNet, ResNet) or 4, 8, 16, 32 (ConvNeXt). Nothing is downloaded:
ImageNet weights come from a file (``ternaus.weights.load_timm_imagenet``). Height and width must be multiples
of the encoder's total reduction (``feature_info.reduction()``'s largest; 32 for EfficientNet).

- ``TimmUNet``: from the deepest map, one block per halving: 2x nearest upsampling, the encoder's map at that
  reduction joined in front (none at the full size, nor where the encoder has no map), two 3x3 convolution +
  BatchNorm + ReLU to that block's width (``model.decoder_widths``, default 256, 128, 64, 32, 16); a 3x3
  convolution gives the logits.
- ``TimmLinkNet``: from the deepest map, one LinkNet block per halving (1x1 convolution to a quarter of the
  channels, 4x4 stride-2 transposed convolution (padding 1), 1x1 convolution to the next map's channels, each
  with BatchNorm and ReLU), the encoder's map added; the last block goes to 32 channels at the full size; a 1x1
  convolution gives the logits.
"""

from __future__ import annotations

import torch
from torch import nn

from ternaus.encoders import is_pyramid
from ternaus.errors import ConfigError
from ternaus.models.ternausnet import TernausNet

__all__ = ["TimmUNet", "TimmLinkNet", "timm_encoder", "UNET_WIDTHS", "LINKNET_HEAD_WIDTH"]

UNET_WIDTHS = (256, 128, 64, 32, 16)
LINKNET_HEAD_WIDTH = 32


def timm_encoder(name: str) -> nn.Module:
    """timm's feature pyramid of ``name``, randomly initialised: never ``pretrained=True`` (it would download).

    Raises ConfigError when timm does not list the name, cannot build it with ``features_only``, or its maps do
    not halve in size one after another (a plain ViT's are all at 1/16: no pyramid to decode)."""
    import timm

    if name not in timm.list_models():
        raise ConfigError(f"model.encoder: {name!r} is not a model timm {timm.__version__} lists")
    try:
        encoder = timm.create_model(name, pretrained=False, features_only=True)
    except Exception as err:  # noqa: BLE001 - timm has no one error for "no feature extraction"
        raise ConfigError(f"model.encoder: timm cannot build {name} as a feature pyramid (features_only=True: "
                          f"{type(err).__name__}: {str(err)[:200]}); pick another encoder, e.g. "
                          "tf_efficientnet_lite0 or resnet34") from None
    reductions = list(encoder.feature_info.reduction())
    if not is_pyramid(reductions):
        raise ConfigError(f"model.encoder: {name}'s feature maps are at reductions {reductions}, not a pyramid whose "
                          "maps halve in size one after another; a U-Net or LinkNet decoder needs one (pick a CNN or "
                          "a hierarchical transformer such as convnext_tiny or swin_tiny_patch4_window7_224)")
    return encoder


class _TimmNet(TernausNet):
    """What both decoders share: the timm encoder, its maps by reduction, the size multiple, the original layout."""

    SIZE_MULTIPLE = 32  # EfficientNet's and ResNet's; each instance sets its encoder's own

    def _build_encoder(self, encoder: str) -> None:
        self.encoder_name = encoder
        self.encoder = timm_encoder(encoder)
        self.reductions = tuple(self.encoder.feature_info.reduction())
        self.channels = tuple(self.encoder.feature_info.channels())
        self.SIZE_MULTIPLE = self.reductions[-1]
        self.halvings = self.SIZE_MULTIPLE.bit_length() - 1

    def skip_channels(self, reduction: int) -> int:
        """The channels of the encoder's map at ``reduction``; 0 where it has none."""
        return dict(zip(self.reductions, self.channels)).get(reduction, 0)

    def features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """The encoder's maps by reduction."""
        return dict(zip(self.reductions, self.encoder(x)))

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder, self.final]


class UNetBlock(nn.Module):
    """2x nearest upsampling, the skip joined in front (if any), two 3x3 convolution + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Sequential(nn.Conv2d(cin, out_channels, 3, padding=1, bias=False),
                                                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
                                     for cin in (in_channels + skip_channels, out_channels)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.convs(x if skip is None else torch.cat([x, skip], 1))


class TimmUNet(_TimmNet):
    """U-Net on a timm encoder. Input: normalised RGB, height and width multiples of the encoder's reduction.
    Output: logits. ``decoder_widths``: one width per halving of the encoder, deepest first."""

    def __init__(self, num_classes: int = 1, encoder: str = "tf_efficientnet_lite0",
                 decoder_widths: tuple[int, ...] | list[int] = UNET_WIDTHS):
        super().__init__()
        self.num_classes, self.decoder_widths = num_classes, tuple(decoder_widths)
        self._build_encoder(encoder)
        if len(self.decoder_widths) != self.halvings:
            raise ConfigError(f"model.decoder_widths: {list(self.decoder_widths)} has {len(self.decoder_widths)} "
                              f"width(s), and {encoder} halves the size {self.halvings} times: give one per halving")
        blocks, in_channels = [], self.channels[-1]
        for level, width in enumerate(self.decoder_widths, start=1):
            blocks.append(UNetBlock(in_channels, self.skip_channels(self.SIZE_MULTIPLE >> level), width))
            in_channels = width
        self.decoder = nn.ModuleList(blocks)
        self.final = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        maps = self.features(x)
        y = maps[self.SIZE_MULTIPLE]
        for level, block in enumerate(self.decoder, start=1):
            y = block(y, maps.get(self.SIZE_MULTIPLE >> level))
        return self.final(y)


class LinkNetBlock(nn.Module):
    """Doubles height and width: 1x1 to in/4, 4x4 stride-2 transposed, 1x1 to ``out_channels``; BN + ReLU each."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = max(in_channels // 4, 1)
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(mid, mid, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class TimmLinkNet(_TimmNet):
    """LinkNet on a timm encoder. Input: normalised RGB, multiples of the encoder's reduction. Output: logits."""

    def __init__(self, num_classes: int = 1, encoder: str = "tf_efficientnet_lite0"):
        super().__init__()
        self.num_classes = num_classes
        self._build_encoder(encoder)
        blocks, in_channels = [], self.channels[-1]
        for level in range(1, self.halvings + 1):
            # Each block ends at the channels of the map it is added to; where there is none, at the head's width.
            out_channels = self.skip_channels(self.SIZE_MULTIPLE >> level) or LINKNET_HEAD_WIDTH
            blocks.append(LinkNetBlock(in_channels, out_channels))
            in_channels = out_channels
        self.decoder = nn.ModuleList(blocks)
        self.final = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        maps = self.features(x)
        y = maps[self.SIZE_MULTIPLE]
        for level, block in enumerate(self.decoder, start=1):
            y = block(y)
            skip = maps.get(self.SIZE_MULTIPLE >> level)
            y = y if skip is None else y + skip
        return self.final(y)
