"""A plain U-Net trained from scratch (``scratch``): the 1st-place Carvana team's network without a pre-trained
encoder.

Each of its down levels is two 3x3 convolution + BatchNorm + ReLU, then a 2x2 max-pool; the centre is two more
at ``center_width``; each up level is a 2x2 stride-2 transposed convolution (keeping its channels), its skip
joined in front, and two 3x3 convolution + BatchNorm + ReLU down to that level's width; a 1x1 convolution
gives the logits. The depth is the number of ``widths``: the Carvana configuration's six levels of 32, 64,
128, 256, 512 and 1024 channels with a 1024-channel centre halve a 1024 x 1024 input down to 16 x 16, so
height and width must be multiples of 2 ** depth (64).
"""

from __future__ import annotations

import torch
from torch import nn

from ternaus.models.ternausnet import TernausNet

__all__ = ["ScratchUNet", "ConvBnRelu2", "CARVANA_WIDTHS", "CARVANA_CENTER"]

CARVANA_WIDTHS = (32, 64, 128, 256, 512, 1024)
CARVANA_CENTER = 1024


class ConvBnRelu2(nn.Module):
    """Two (3x3 convolution, BatchNorm, ReLU); the size is kept."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Sequential(nn.Conv2d(cin, out_channels, 3, padding=1),
                                                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
                                     for cin in (in_channels, out_channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class UpBlock(nn.Module):
    """Doubles the size with a transposed convolution, joins the skip in front, then ``ConvBnRelu2``."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
        self.conv = ConvBnRelu2(skip_channels + in_channels, out_channels)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], 1))


class ScratchUNet(TernausNet):
    """Input: normalised RGB, height and width multiples of 2 ** len(widths). Output: logits.

    ``encoder`` holds the down levels (what encoder freezing freezes), ``decoder`` the up levels, deepest first."""

    SIZE_MULTIPLE = 2 ** len(CARVANA_WIDTHS)

    def __init__(self, num_classes: int = 1, widths: tuple[int, ...] | list[int] = CARVANA_WIDTHS,
                 center_width: int = CARVANA_CENTER):
        super().__init__()
        widths = tuple(widths)
        self.num_classes, self.widths, self.center_width = num_classes, widths, center_width
        self.SIZE_MULTIPLE = 2 ** len(widths)
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = nn.ModuleList(ConvBnRelu2(cin, cout) for cin, cout in zip((3, *widths[:-1]), widths))
        self.center = ConvBnRelu2(widths[-1], center_width)
        deeper = (*widths[1:], center_width)  # what comes up into each level
        self.decoder = nn.ModuleList(UpBlock(cin, width, width) for cin, width in reversed(list(zip(deeper, widths))))
        self.final = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        skips = []
        for level in self.encoder:
            skips.append(level(x))
            x = self.pool(skips[-1])
        x = self.center(x)
        for block, skip in zip(self.decoder, reversed(skips)):
            x = block(skip, x)
        return self.final(x)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.center, self.decoder, self.final]
