"""The networks: building a model from the config and the three initialisations of the paper's experiment.

``model.name`` picks an entry of ``ternaus.registry.MODELS``; each family's classes live in a module of this
package (``ternausnet``: UNet11, UNet16, AlbuNet; ``linknet``: LinkNet34; ``scratch``: the plain U-Net trained
from scratch; ``timm_unet``: a U-Net or LinkNet decoder on any timm encoder). ``build_model`` initialises the network as ``model.init`` says: LeCun uniform, PyTorch's own
default, the ImageNet encoder (with a LeCun decoder), or a whole-network checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ternaus.models.linknet import LinkNet34
from ternaus.models.scratch import ScratchUNet
from ternaus.models.ternausnet import AlbuNet, ConvRelu, DecoderBlock, TernausNet, UNet11, UNet16, UpsampleDecoderBlock
from ternaus.models.timm_unet import TimmLinkNet, TimmUNet
from ternaus.registry import MODELS
from ternaus.weights import load_imagenet_encoder, load_weights

__all__ = ["UNet11", "UNet16", "AlbuNet", "LinkNet34", "ScratchUNet", "TimmUNet", "TimmLinkNet", "TernausNet", "ConvRelu", "DecoderBlock",
           "UpsampleDecoderBlock", "lecun_uniform_", "new_model", "build_model", "set_encoder_frozen"]


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


def new_model(model_cfg: Any) -> TernausNet:
    """The architecture ``model_cfg.name`` selects, uninitialised: for loading a checkpoint into."""
    return MODELS[model_cfg.name].new(model_cfg)


def build_model(model_cfg: Any) -> TernausNet:
    """The model named by ``model_cfg.name``, initialised per ``model_cfg.init``."""
    model = new_model(model_cfg)
    init = model_cfg.init
    if init == "lecun":
        lecun_uniform_(model)
    elif init == "pytorch":
        pass  # each layer's own reset_parameters(), as built
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
