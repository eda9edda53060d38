"""LinkNet34 (``linknet34``): the 1st-place Carvana team's full-resolution family, module for module as its code.

Encoder: torchvision's ResNet34 (7x7 stride-2 stem with BatchNorm, 3x3 stride-2 max-pool, ``layer1`` ...
``layer4``), ImageNet weights found offline as for AlbuNet. Decoder: four LinkNet blocks, each a 1x1
convolution to a quarter of its input channels, a 3x3 stride-2 transposed convolution and a 1x1 convolution
to the next width, each followed by BatchNorm and ReLU; the encoder's outputs are added to (not concatenated
with) the decoder's. Head: a 3x3 stride-2 transposed convolution to 32 channels, a 3x3 convolution, a 2x2
convolution (padding 1) to the logits, which brings the size back to the input's exactly. Height and width
must be multiples of 32.

As in UNet11, ``encoder`` is the torchvision module and the original's names (``firstconv``, ``firstbn``,
``encoder1`` ... ``encoder4``) register its layers a second time, so ``state_dict()`` holds the original's keys.
"""

from __future__ import annotations

import torch
from torch import nn

from ternaus.models.ternausnet import TernausNet, resnet34_trunk

__all__ = ["LinkNet34", "LinkNetDecoderBlock", "LINKNET_ALIASES"]

# Original name -> the torchvision resnet34 module it registers a second time.
LINKNET_ALIASES = {"firstconv": "conv1", "firstbn": "bn1", "encoder1": "layer1", "encoder2": "layer2",
                   "encoder3": "layer3", "encoder4": "layer4"}
RESNET34_WIDTHS = (64, 128, 256, 512)  # layer1 ... layer4


class LinkNetDecoderBlock(nn.Module):
    """Doubles height and width: 1x1 to in/4, 3x3 stride-2 transposed, 1x1 to ``out_channels``; BN + ReLU each."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = in_channels // 4
        self.conv1, self.norm1 = nn.Conv2d(in_channels, mid, 1), nn.BatchNorm2d(mid)
        self.deconv2 = nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv3, self.norm3 = nn.Conv2d(mid, out_channels, 1), nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm1(self.conv1(x)))
        x = self.relu(self.norm2(self.deconv2(x)))
        return self.relu(self.norm3(self.conv3(x)))


class LinkNet34(TernausNet):
    """LinkNet34. Input: normalised RGB, height and width multiples of 32. Output: logits."""

    SIZE_MULTIPLE = 32
    ALIASES = {f"{alias}.": f"encoder.{module}." for alias, module in LINKNET_ALIASES.items()}

    def __init__(self, num_classes: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = resnet34_trunk(keep_maxpool=True)
        for alias, module in LINKNET_ALIASES.items():
            setattr(self, alias, getattr(self.encoder, module))
        w1, w2, w3, w4 = RESNET34_WIDTHS
        self.decoder4 = LinkNetDecoderBlock(w4, w3)
        self.decoder3 = LinkNetDecoderBlock(w3, w2)
        self.decoder2 = LinkNetDecoderBlock(w2, w1)
        self.decoder1 = LinkNetDecoderBlock(w1, w1)
        self.finaldeconv1 = nn.ConvTranspose2d(w1, 32, 3, stride=2)
        self.finalconv2 = nn.Conv2d(32, 32, 3)
        self.finalconv3 = nn.Conv2d(32, num_classes, 2, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        stem = self.encoder.maxpool(self.encoder.relu(self.firstbn(self.firstconv(x))))
        e1 = self.encoder1(stem)
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)
        d4 = self.decoder4(e4) + e3
        d3 = self.decoder3(d4) + e2
        d2 = self.decoder2(d3) + e1
        d1 = self.decoder1(d2)
        head = self.relu(self.finaldeconv1(d1))  # (H/2 - 1) * 2 + 3 = H + 1
        head = self.relu(self.finalconv2(head))  # H - 1
        return self.finalconv3(head)  # H - 1 + 2 - 1 = H

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder4, self.decoder3, self.decoder2, self.decoder1, self.finaldeconv1, self.finalconv2,
                self.finalconv3]
