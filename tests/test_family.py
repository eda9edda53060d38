"""UNet16 and AlbuNet next to UNet11: the registry, parameter counts worked out by hand, shapes, the input-size
rule, the original code's checkpoint layout (loaded, and computing what the original computes), ImageNet
encoders planted offline, FLOPs, and encoder freezing."""

import pytest
import torch
import torch.nn.functional as F

from bench.models import forward_flops, parameter_count
from ternaus.config import ModelConfig, choices, load_config
from ternaus.data.geometry import geometry_of
from ternaus.errors import ConfigError, WeightsError
from ternaus.models import AlbuNet, UNet11, UNet16, build_model, lecun_uniform_, set_encoder_frozen
from ternaus.registry import MODELS
from ternaus.weights import fit_state_dict

# ---------------------------------------------------------------- the architectures, by hand


def conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


# vgg16().features: slot index -> (in, out) of each 3x3 convolution; the original's stages alias them.
VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
               14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
               28: (512, 512)}
VGG16_STAGES = {"conv1": (0, 2), "conv2": (5, 7), "conv3": (10, 12, 14), "conv4": (17, 19, 21),
                "conv5": (24, 26, 28)}
# (in, mid, out) of each upsampling decoder block with num_filters = 32, from the original code.
UNET16_DECODER = {"center": (512, 512, 256), "dec5": (768, 512, 256), "dec4": (768, 512, 256),
                  "dec3": (512, 256, 64), "dec2": (192, 128, 32)}
ALBUNET_DECODER = {"center": (512, 512, 256), "dec5": (768, 512, 256), "dec4": (512, 512, 256),
                   "dec3": (384, 256, 64), "dec2": (128, 128, 128), "dec1": (128, 128, 32)}
RESNET34_LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (channels, blocks, first stride)


def resnet34_trunk_parameters() -> int:
    """7x7 stem + BatchNorm, then BasicBlocks (two 3x3 convolutions, each with BatchNorm; a 1x1 projection
    where the channels change). torchvision's resnet34 has 21,797,672 with its 513,000-parameter classifier."""
    total, cin = conv(3, 64, 7, bias=False) + 2 * 64, 64
    for cout, blocks, _ in RESNET34_LAYERS:
        for _ in range(blocks):
            total += conv(cin, cout, bias=False) + conv(cout, cout, bias=False) + 4 * cout
            if cin != cout:
                total += conv(cin, cout, 1, bias=False) + 2 * cout
            cin = cout
    return total


def upsampling_decoder_parameters(blocks: dict, transposed: bool) -> int:
    second = (lambda mid, out: mid * out * 16 + out) if transposed else conv
    return sum(conv(cin, mid) + second(mid, cout) for cin, mid, cout in blocks.values())


VGG16_ENCODER = sum(conv(cin, cout) for cin, cout in VGG16_CONVS.values())
HAND_COUNTS = {
    "unet16": lambda t, n: VGG16_ENCODER + upsampling_decoder_parameters(UNET16_DECODER, t) + conv(96, 32)
    + conv(32, n, 1),
    "albunet34": lambda t, n: resnet34_trunk_parameters() + upsampling_decoder_parameters(ALBUNET_DECODER, t)
    + conv(32, 32) + conv(32, n, 1),
}
PARAMETERS = {("unet11", False): 22_927_393, ("unet16", False): 29_306_465, ("unet16", True): 32_202_337,
              ("albunet34", False): 34_604_897, ("albunet34", True): 37_615_457}


def meta_model(name: str, transposed: bool = False, num_classes: int = 1):
    """The structure alone: no memory, no initialisation, shapes propagate through forward."""
    with torch.device("meta"):
        return MODELS[name].new(ModelConfig(name=name, num_classes=num_classes, transposed=transposed))


# ---------------------------------------------------------------- registry, counts, shapes, sizes


def test_the_registry_names_each_model_once_and_the_config_offers_exactly_those():
    assert isinstance(MODELS, dict)
    assert set(choices("model.name")) == set(MODELS) == {"unet11", "unet16", "albunet34", "linknet34", "scratch", "unet",
                                                         "linknet"}
    assert [MODELS[n].model_class for n in ("unet11", "unet16", "albunet34")] == [UNet11, UNet16, AlbuNet]
    assert [MODELS[n].size_multiple for n in ("unet11", "unet16", "albunet34")] == [32, 32, 64]
    assert MODELS["unet16"].imagenet.files == ("vgg16-397923af.pth",)
    assert MODELS["albunet34"].imagenet.files == ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth")


def test_encoder_counts_are_torchvisions():
    assert VGG16_ENCODER == 14_714_688
    assert resnet34_trunk_parameters() == 21_797_672 - 513_000
    assert sum(p.numel() for p in meta_model("unet16").encoder.parameters()) == VGG16_ENCODER
    assert sum(p.numel() for p in meta_model("albunet34").encoder.parameters()) == resnet34_trunk_parameters()


@pytest.mark.parametrize("name,transposed", list(PARAMETERS))
def test_parameter_counts(name, transposed):
    assert parameter_count(name, transposed) == PARAMETERS[name, transposed]
    if name in HAND_COUNTS:
        assert PARAMETERS[name, transposed] == HAND_COUNTS[name](transposed, 1)
        three = sum(p.numel() for p in meta_model(name, transposed, num_classes=3).parameters())
        assert three == HAND_COUNTS[name](transposed, 3)
    assert round(PARAMETERS["unet16", False] / 1e6, 1) == 29.3  # the reference sheet: 29.3 M (bilinear)


@pytest.mark.parametrize("name,transposed", list(PARAMETERS))
def test_output_is_one_map_per_class_at_the_input_size(name, transposed):
    out = meta_model(name, transposed, num_classes=3)(torch.empty(2, 3, 64, 128, device="meta"))
    assert out.shape == (2, 3, 64, 128)


@pytest.mark.parametrize("name,size,multiple", [("unet16", (48, 64), 32), ("unet16", (64, 80), 32),
                                                ("albunet34", (96, 128), 64), ("albunet34", (128, 160), 64)])
def test_the_size_rule_is_a_clear_message(name, size, multiple):
    with pytest.raises(ValueError, match=rf"needs height and width that are multiples of {multiple}, got \({size[0]}"):
        meta_model(name)(torch.empty(1, 3, *size, device="meta"))


def test_the_config_checks_the_input_size_against_the_model():
    load_config(None, ["model.name=unet16", "data.input_size=[96, 160]"])
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.name=albunet34", "data.input_size=[96, 160]"])
    message = str(err.value)
    assert "data.input_size: [96, 160] is not a multiple of 64" in message
    assert "model.name=albunet34" in message and "use [128, 192]" in message


def test_full_resolution_pads_to_the_models_multiple():
    assert geometry_of(load_config(None, ["model.name=unet16"])).pads(100, 130) == (14, 14, 15, 15)  # 128 x 160
    assert geometry_of(load_config(None, ["model.name=albunet34"])).pads(100, 130) == (14, 14, 31, 31)  # 128 x 192


def test_flops_match_the_reference_sheet():
    assert forward_flops("unet11", 1024, 1024) / 1e9 == pytest.approx(823, rel=1e-3)
    assert forward_flops("unet11", 256, 256) / 1e9 == pytest.approx(51.4, rel=1e-3)
    for name in ("unet16", "albunet34"):  # convolutions only: the count grows exactly with the pixels
        assert forward_flops(name, 1024, 1024) == 4 * forward_flops(name, 512, 512) > 0


# ---------------------------------------------------------------- the original code's layout


def _rand(g: torch.Generator, *shape: int, scale: float | None = None) -> torch.Tensor:
    fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
    return torch.randn(*shape, generator=g) * (scale if scale is not None else fan_in ** -0.5)


def _decoder_tensors(g, blocks: dict, transposed: bool) -> dict[str, torch.Tensor]:
    """Keys of the original ``DecoderBlockV2``: [1] and [2] ConvRelu after the Interpolate, or [0] ConvRelu and
    [1] the transposed convolution (weight [mid, out, 4, 4])."""
    state = {}
    for name, (cin, mid, cout) in blocks.items():
        if transposed:
            state[f"{name}.block.0.conv.weight"], state[f"{name}.block.0.conv.bias"] = _rand(g, mid, cin, 3, 3), \
                _rand(g, mid, scale=0.05)
            state[f"{name}.block.1.weight"], state[f"{name}.block.1.bias"] = _rand(g, mid, cout, 4, 4, scale=0.02), \
                _rand(g, cout, scale=0.05)
        else:
            state[f"{name}.block.1.conv.weight"], state[f"{name}.block.1.conv.bias"] = _rand(g, mid, cin, 3, 3), \
                _rand(g, mid, scale=0.05)
            state[f"{name}.block.2.conv.weight"], state[f"{name}.block.2.conv.bias"] = _rand(g, cout, mid, 3, 3), \
                _rand(g, cout, scale=0.05)
    return state


def original_unet16_state(transposed: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """The original UNet16's state_dict, by hand: ``encoder.N`` and its stage aliases ``convK.2j`` share tensors."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for stage, indices in VGG16_STAGES.items():
        for j, index in enumerate(indices):
            cin, cout = VGG16_CONVS[index]
            state[f"encoder.{index}.weight"] = state[f"{stage}.{2 * j}.weight"] = _rand(g, cout, cin, 3, 3)
            state[f"encoder.{index}.bias"] = state[f"{stage}.{2 * j}.bias"] = _rand(g, cout, scale=0.05)
    state.update(_decoder_tensors(g, UNET16_DECODER, transposed))
    state["dec1.conv.weight"], state["dec1.conv.bias"] = _rand(g, 32, 96, 3, 3), _rand(g, 32, scale=0.05)
    state["final.weight"], state["final.bias"] = _rand(g, 1, 32, 1, 1), _rand(g, 1, scale=0.05)
    return state


# Original alias -> the torchvision resnet34 module it registers a second time.
ALBUNET_ALIASES = {"conv1.0": "conv1", "conv1.1": "bn1", "conv2": "layer1", "conv3": "layer2", "conv4": "layer3",
                   "conv5": "layer4"}


def original_albunet_state(transposed: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """The original AlbuNet's state_dict: the whole torchvision resnet34 under ``encoder.`` (its unused ``fc``
    included), the aliases ``conv1.0`` (conv1), ``conv1.1`` (bn1), ``conv2`` … ``conv5`` (layer1 … layer4)."""
    from torchvision.models import resnet34

    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in resnet34().state_dict().items()}
    resnet = {}
    for key, (shape, dtype) in shapes.items():
        if key.endswith("num_batches_tracked"):
            resnet[key] = torch.tensor(1000, dtype=dtype)
        elif key.endswith("running_var"):
            resnet[key] = torch.rand(*shape, generator=g) + 0.5
        elif key.endswith(("running_mean", "bias")):
            resnet[key] = torch.randn(*shape, generator=g) * 0.1
        elif len(shape) == 1:  # BatchNorm's weight
            resnet[key] = 1 + torch.randn(*shape, generator=g) * 0.1
        else:
            resnet[key] = _rand(g, *shape, scale=0.03 if key.startswith("fc.") else None)
    state = {f"encoder.{k}": v for k, v in resnet.items()}
    for alias, module in ALBUNET_ALIASES.items():
        state.update({f"{alias}{k[len(module):]}": v for k, v in resnet.items() if k.startswith(f"{module}.")})
    state.update(_decoder_tensors(g, ALBUNET_DECODER, transposed))
    state["dec0.conv.weight"], state["dec0.conv.bias"] = _rand(g, 32, 32, 3, 3), _rand(g, 32, scale=0.05)
    state["final.weight"], state["final.bias"] = _rand(g, 1, 32, 1, 1), _rand(g, 1, scale=0.05)
    return state


# The original forward passes, with torch.nn.functional on the original's own (alias) keys.


def conv_relu(s, name, t):
    return F.relu(F.conv2d(t, s[f"{name}.weight"], s[f"{name}.bias"], padding=1))


def pool(t):
    return F.max_pool2d(t, 2, 2)


def decoder_v2(s, name, t, transposed):
    if transposed:
        t = conv_relu(s, f"{name}.block.0.conv", t)
        return F.relu(F.conv_transpose2d(t, s[f"{name}.block.1.weight"], s[f"{name}.block.1.bias"], stride=2,
                                         padding=1))
    t = F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
    return conv_relu(s, f"{name}.block.2.conv", conv_relu(s, f"{name}.block.1.conv", t))


def reference_unet16(s, x, transposed):
    def stage(name, t):
        for j in range(len(VGG16_STAGES[name])):
            t = conv_relu(s, f"{name}.{2 * j}", t)
        return t

    c1 = stage("conv1", x)
    c2 = stage("conv2", pool(c1))
    c3 = stage("conv3", pool(c2))
    c4 = stage("conv4", pool(c3))
    c5 = stage("conv5", pool(c4))
    center = decoder_v2(s, "center", pool(c5), transposed)
    d5 = decoder_v2(s, "dec5", torch.cat([center, c5], 1), transposed)
    d4 = decoder_v2(s, "dec4", torch.cat([d5, c4], 1), transposed)
    d3 = decoder_v2(s, "dec3", torch.cat([d4, c3], 1), transposed)
    d2 = decoder_v2(s, "dec2", torch.cat([d3, c2], 1), transposed)
    d1 = conv_relu(s, "dec1.conv", torch.cat([d2, c1], 1))
    return F.conv2d(d1, s["final.weight"], s["final.bias"])


def batch_norm(s, name, t):
    return F.batch_norm(t, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                        s[f"{name}.bias"], training=False, eps=1e-5)


def basic_block(s, name, t, stride):
    out = F.relu(batch_norm(s, f"{name}.bn1", F.conv2d(t, s[f"{name}.conv1.weight"], stride=stride, padding=1)))
    out = batch_norm(s, f"{name}.bn2", F.conv2d(out, s[f"{name}.conv2.weight"], padding=1))
    if f"{name}.downsample.0.weight" in s:
        t = batch_norm(s, f"{name}.downsample.1", F.conv2d(t, s[f"{name}.downsample.0.weight"], stride=stride))
    return F.relu(out + t)


def reference_albunet(s, x, transposed):
    c1 = pool(F.relu(batch_norm(s, "conv1.1", F.conv2d(x, s["conv1.0.weight"], stride=2, padding=3))))
    features = [c1]
    for k, (_, blocks, stride) in enumerate(RESNET34_LAYERS):
        t = features[-1]
        for b in range(blocks):
            t = basic_block(s, f"conv{k + 2}.{b}", t, stride if b == 0 else 1)
        features.append(t)
    _, c2, c3, c4, c5 = features
    center = decoder_v2(s, "center", pool(c5), transposed)
    d5 = decoder_v2(s, "dec5", torch.cat([center, c5], 1), transposed)
    d4 = decoder_v2(s, "dec4", torch.cat([d5, c4], 1), transposed)
    d3 = decoder_v2(s, "dec3", torch.cat([d4, c3], 1), transposed)
    d2 = decoder_v2(s, "dec2", torch.cat([d3, c2], 1), transposed)
    d1 = decoder_v2(s, "dec1", d2, transposed)
    d0 = conv_relu(s, "dec0.conv", d1)
    return F.conv2d(d0, s["final.weight"], s["final.bias"])


ORIGINALS = {"unet16": (UNet16, original_unet16_state, reference_unet16),
             "albunet34": (AlbuNet, original_albunet_state, reference_albunet)}


def as_saved(state: dict, wrap: str, aliases: tuple[str, ...]) -> object:
    if wrap == "dataparallel":
        return {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}
    if wrap == "alias_keys_only":
        return {k: v for k, v in state.items() if not k.startswith("encoder.") or k.startswith("encoder.fc.")}
    if wrap == "encoder_keys_only":
        return {k: v for k, v in state.items() if not k.startswith(aliases)}
    return state


@pytest.mark.parametrize("name,transposed,wrap", [("unet16", False, "bare"), ("unet16", True, "alias_keys_only"),
                                                  ("albunet34", False, "dataparallel"),
                                                  ("albunet34", True, "encoder_keys_only")])
def test_original_checkpoints_load_and_compute_what_the_original_computes(name, transposed, wrap):
    model_class, original_state, reference = ORIGINALS[name]
    state = original_state(transposed)
    model = model_class(transposed=transposed)
    expected_keys = set(state) - {"encoder.fc.weight", "encoder.fc.bias"}  # AlbuNet's unused classifier
    assert set(model.state_dict()) == expected_keys
    aliases = tuple(f"{stage}." for stage in (*VGG16_STAGES, *ALBUNET_ALIASES))
    fit_state_dict(model, as_saved(state, wrap, aliases), f"original_{name}.pth").eval()
    size = (64, 64) if name == "albunet34" else (32, 64)  # the smallest inputs, one not square
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x), reference(state, x, transposed)
    assert theirs.abs().max() > 1e-3  # a test on all-zero outputs would prove nothing
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_a_checkpoint_of_our_unet16_has_the_original_keys_and_aliases_that_disagree_are_named():
    state = original_unet16_state(transposed=False)
    ours = UNet16()
    fit_state_dict(ours, state, "x.pth")
    assert ours.state_dict().keys() == state.keys()  # so the original code loads it with strict=True
    state = dict(state)
    state["conv3.4.bias"] = state["conv3.4.bias"] + 1
    with pytest.raises(WeightsError, match=r"'conv3.4.bias' and 'encoder.14.bias' must be the same tensor"):
        fit_state_dict(UNet16(), state, "x.pth")


def test_a_unet16_checkpoint_with_the_other_decoder_is_refused_with_the_option_named(tmp_path):
    from ternaus.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "bilinear.pt", model=meta_model("unet16"))  # the record, without the bytes
    with pytest.raises(WeightsError, match="trained with model.transposed=False, but this config sets "
                                           "model.transposed=True"):
        build_model(ModelConfig(name="unet16", transposed=True, init=str(path)))
    with pytest.raises(WeightsError, match="was trained as UNet16 with 1 class"):
        build_model(ModelConfig(name="albunet34", init=str(path)))


# ---------------------------------------------------------------- ImageNet encoders, offline


def plant(path, state: dict) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def vgg16_file_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision's vgg16 file: ``features.N`` at the true shapes, a small stand-in for the classifier."""
    state = {k.replace("encoder.", "features."): v for k, v in original_unet16_state(False, seed).items()
             if k.startswith("encoder.")}
    return {**state, "classifier.0.weight": torch.zeros(4, 4), "classifier.0.bias": torch.zeros(4)}


def resnet34_file_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision's resnet34 file: every tensor at its true shape, a small stand-in for ``fc``."""
    state = {k.removeprefix("encoder."): v for k, v in original_albunet_state(False, seed).items()
             if k.startswith("encoder.") and not k.startswith("encoder.fc.")}
    return {**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}


def test_unet16_encoder_from_the_torch_cache(torch_home):
    planted = plant(torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth", vgg16_file_state())
    model = build_model(ModelConfig(name="unet16", init="imagenet"))
    assert torch.equal(model.encoder[12].weight, planted["features.12.weight"])
    assert torch.equal(model.conv3[2].weight, planted["features.12.weight"])  # the alias is the same layer
    assert torch.all(model.dec2.block[1].conv.bias == 0)  # decoder freshly (LeCun) initialised


def test_albunet_encoder_from_the_older_file_name_and_a_wrong_file_named(torch_home, tmp_path):
    planted = plant(torch_home / "hub" / "checkpoints" / "resnet34-333f7ec4.pth", resnet34_file_state())
    model = build_model(ModelConfig(name="albunet34", init="imagenet"))
    assert torch.equal(model.encoder.layer3[5].conv2.weight, planted["layer3.5.conv2.weight"])
    assert torch.equal(model.conv1[1].running_var, planted["bn1.running_var"])  # BatchNorm statistics too
    assert torch.all(model.dec0.conv.bias == 0)
    wrong = tmp_path / "vgg16.pth"
    plant(wrong, vgg16_file_state())
    with pytest.raises(WeightsError, match=r"vgg16.pth does not fit AlbuNet's ResNet34 encoder:\n  missing tensor "
                                           r"'conv1.weight' \(64, 3, 7, 7\)"):
        build_model(ModelConfig(name="albunet34", init="imagenet", encoder_weights=str(wrong)))


def test_missing_imagenet_weights_name_the_files_and_the_torchvision_call(torch_home):
    with pytest.raises(WeightsError) as err:
        build_model(ModelConfig(name="albunet34", init="imagenet"))
    message = str(err.value)
    assert "ResNet34 ImageNet weights not found" in message
    for name in ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"):
        assert str(torch_home / "hub" / "checkpoints" / name) in message
    assert "torchvision.models.resnet34(weights='IMAGENET1K_V1')" in message and "model.init=lecun" in message


def test_encoders_are_torchvisions():
    from torchvision.models import vgg

    reference = vgg.make_layers(vgg.cfgs["D"])  # vgg16().features, without the 120-million-parameter head
    assert str(meta_model("unet16").encoder) == str(reference)
    stem = meta_model("albunet34").encoder
    assert str(stem.conv1) == "Conv2d(3, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)"
    assert not hasattr(stem, "fc") and not hasattr(stem, "maxpool")


# ---------------------------------------------------------------- encoder freezing


def test_a_frozen_encoder_gets_no_gradient_keeps_its_batchnorm_statistics_and_is_released():
    torch.manual_seed(0)
    model = lecun_uniform_(AlbuNet())
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = model.dec0.conv.weight.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert set_encoder_frozen(model, True) and not set_encoder_frozen(model, True)
    model.train()
    assert not model.encoder.training and not model.conv1[1].training and model.dec0.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model(torch.randn(1, 3, 64, 64)).mean().backward()
    optimizer.step()
    assert all(p.grad is None for p in model.encoder.parameters())
    for key, value in model.encoder.state_dict().items():  # weights and running statistics alike
        assert torch.equal(value, encoder_before[key]), key
    assert not torch.equal(model.dec0.conv.weight, decoder_before)
    assert set_encoder_frozen(model, False)  # training then changes it: tests/test_training.py
    assert model.encoder.training and model.conv1[1].training
    assert all(p.requires_grad for p in model.encoder.parameters())
    model.eval()
    assert not model.dec0.training
