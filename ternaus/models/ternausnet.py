"""The TernausNet family, exactly as the original code defines each model.

- ``UNet11`` (``unet11``): TernausNet, VGG11 ``features`` encoder, transposed-convolution decoder (the paper's).
- ``UNet16`` (``unet16``): VGG16 ``features`` encoder, decoder blocks that upsample 2x bilinearly, or with a
  transposed convolution (``model.transposed``).
- ``AlbuNet`` (``albunet34``): ResNet34 encoder, the same decoder as UNet16.

Each module tree matches the original's, aliases included: ``encoder`` is the torchvision encoder and
``conv1 … conv5`` register some of its layers a second time, so ``state_dict()`` has the original's keys
and a checkpoint of the original code loads here (and for UNet11 and UNet16, one written here loads there).
Shared parameters are counted once by ``parameters()``: 22,927,393 for UNet11 with one class.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet11", "UNet16", "AlbuNet", "TernausNet", "ConvRelu", "DecoderBlock", "UpsampleDecoderBlock",
           "ENCODER_ALIASES", "VGG11_SKIPS", "vgg_features", "vgg11_features", "resnet34_trunk"]


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


def resnet34_trunk(keep_maxpool: bool = False) -> nn.Module:
    """torchvision's ResNet34 without its pooling and classifier head, which AlbuNet never uses (LinkNet34
    keeps the stem's 3x3 max-pool: ``keep_maxpool``).

    The original kept ``fc`` registered (its checkpoints hold ``encoder.fc.*``, ignored when loaded here);
    a parameter that gets no gradient would stop DistributedDataParallel, so it is not part of this model."""
    from torchvision.models import resnet34

    trunk = resnet34(weights=None)
    del trunk.avgpool, trunk.fc
    if not keep_maxpool:
        del trunk.maxpool  # AlbuNet pools with its own 2x2 max-pool instead
    return trunk


# ---------------------------------------------------------------- the family


class TernausNet(nn.Module):
    """What UNet11, UNet16 and AlbuNet share: the input-size rule, encoder freezing, their original layout.

    ``ALIASES`` maps each original alias prefix to the encoder's own prefix for the same tensors;
    ``UNUSED_ORIGINAL_KEYS`` are prefixes of original checkpoint tensors this model does not have."""

    SIZE_MULTIPLE = 32
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


# The channels of UNet11's skips conv1 ... conv5 (VGG11's stages).
VGG11_SKIPS = (64, 128, 256, 512, 512)

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
        self.num_classes, self.num_filters = num_classes, num_filters
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = vgg11_features()
        self.relu = self.encoder[1]
        for name, index in ENCODER_ALIASES.items():
            setattr(self, name, self.encoder[index])
        # The skips' widths are VGG11's (conv1 64 ... conv5 512), whatever the decoder's base width: the
        # original wrote them as multiples of num_filters, which holds for its 32 only.
        c1, c2, c3, c4, c5 = VGG11_SKIPS
        self.center = DecoderBlock(c5, nf * 8 * 2, nf * 8)
        self.dec5 = DecoderBlock(c5 + nf * 8, nf * 8 * 2, nf * 8)
        self.dec4 = DecoderBlock(c4 + nf * 8, nf * 8 * 2, nf * 4)
        self.dec3 = DecoderBlock(c3 + nf * 4, nf * 4 * 2, nf * 2)
        self.dec2 = DecoderBlock(c2 + nf * 2, nf * 2 * 2, nf)
        self.dec1 = ConvRelu(c1 + nf, nf)
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
