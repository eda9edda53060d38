"""The 1st-place Carvana submission's other families next to UNet11: the scratch U-Net, LinkNet34 and UNet11 with
the decoder's width doubled ("vgg11v1"). Parameter counts worked out by hand, output shapes at each family's
input size (on the meta device), a forward and backward pass on the CPU, the original layout's keys,
LinkNet34's ImageNet encoder planted offline (and missing), and the config's checks of their settings."""

from pathlib import Path

import pytest
import torch
from test_family import conv, meta_model, plant, resnet34_file_state, resnet34_trunk_parameters

from bench.models import forward_flops, parameter_count
from ternaus.config import ModelConfig, load_config
from ternaus.data.geometry import geometry_of
from ternaus.errors import ConfigError, WeightsError
from ternaus.models import LinkNet34, ScratchUNet, UNet11, build_model
from ternaus.registry import MODELS
from ternaus.weights import fit_state_dict, load_imagenet_encoder

# ---------------------------------------------------------------- parameters, by hand


def batch_norm(channels: int) -> int:
    return 2 * channels  # weight and bias; the running statistics are buffers


def scratch_parameters(widths: list[int], center: int, classes: int = 1) -> int:
    """Each down level and the centre: two 3x3 convolutions with BatchNorm. Each up level: a 2x2 transposed
    convolution keeping its input's channels, then two 3x3 convolutions (skip + input -> width -> width)."""
    total, cin = 0, 3
    for width in widths:
        total += conv(cin, width) + conv(width, width) + 2 * batch_norm(width)
        cin = width
    total += conv(widths[-1], center) + conv(center, center) + 2 * batch_norm(center)
    for incoming, width in zip([*widths[1:], center], widths):
        total += incoming * incoming * 4 + incoming
        total += conv(width + incoming, width) + conv(width, width) + 2 * batch_norm(width)
    return total + conv(widths[0], classes, 1)


def linknet_parameters(classes: int = 1) -> int:
    """ResNet34 without its head; four decoder blocks (1x1 to in/4, 3x3 transposed, 1x1 out, each with BatchNorm);
    the head: 3x3 transposed 64 -> 32, 3x3 convolution, 2x2 convolution."""
    decoder = 0
    for cin, cout in ((512, 256), (256, 128), (128, 64), (64, 64)):
        mid = cin // 4
        decoder += conv(cin, mid, 1) + conv(mid, mid) + conv(mid, cout, 1) + 2 * batch_norm(mid) + batch_norm(cout)
    return resnet34_trunk_parameters() + decoder + conv(64, 32) + conv(32, 32) + conv(32, classes, 2)


def unet11_parameters(nf: int, classes: int = 1) -> int:
    """VGG11's features (9,220,480) and the decoder: its skips keep VGG11's widths 64 ... 512 whatever ``nf``."""
    blocks = [(512, nf * 16, nf * 8), (512 + nf * 8, nf * 16, nf * 8), (512 + nf * 8, nf * 16, nf * 4),
              (256 + nf * 4, nf * 8, nf * 2), (128 + nf * 2, nf * 4, nf)]
    decoder = sum(conv(cin, mid) + conv(mid, cout) for cin, mid, cout in blocks)  # a 3x3 transposed is a 3x3 count
    return 9_220_480 + decoder + conv(64 + nf, nf) + conv(nf, classes, 1)


CARVANA = [32, 64, 128, 256, 512, 1024]


def test_parameter_counts_match_the_hand_counts():
    assert unet11_parameters(32) == 22_927_393  # TernausNet's own count: the formula is UNet11's
    assert parameter_count("unet11", num_filters=64) == unet11_parameters(64) == 48_375_489
    assert parameter_count("scratch") == scratch_parameters(CARVANA, 1024) == 88_437_185
    assert parameter_count("linknet34") == linknet_parameters() == 21_642_401
    small = ScratchUNet(num_classes=3, widths=[4, 8, 16], center_width=12)
    assert sum(p.numel() for p in small.parameters()) == scratch_parameters([4, 8, 16], 12, 3)
    assert sum(p.numel() for p in family_model("linknet34", num_classes=3).parameters()) == linknet_parameters(3)


def family_model(name: str, **options):
    with torch.device("meta"):
        return MODELS[name].new(ModelConfig(name=name, init="pytorch", **options))


@pytest.mark.parametrize("name,options,size", [("scratch", {}, (1024, 1024)),
                                               ("unet11", {"num_filters": 64}, (1024, 1024)),
                                               ("linknet34", {}, (1280, 1920)), ("unet11", {}, (1280, 1920))])
def test_each_family_gives_one_map_per_class_at_its_input_size(name, options, size):
    model = family_model(name, num_classes=2, **options)
    assert model(torch.empty(1, 3, *size, device="meta")).shape == (1, 2, *size)


def test_the_new_families_forward_flops_are_counted():
    # Convolutions only: the count grows with the pixels (exactly, but for LinkNet's unpadded head convolutions,
    # which work on (H + 1) x (W + 1) and (H - 1) x (W - 1)), and doubling UNet11's decoder costs more.
    assert forward_flops("scratch", 1024, 1024) == 4 * forward_flops("scratch", 512, 512) > 0
    assert forward_flops("linknet34", 1024, 1024) == pytest.approx(4 * forward_flops("linknet34", 512, 512), rel=1e-3)
    assert forward_flops("unet11", 256, 256, num_filters=64) > forward_flops("unet11", 256, 256)


def forward_and_backward(model: torch.nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)  # two images: BatchNorm needs more than one value per channel at 1 x 1
    out = model.train()(x)
    assert out.shape == (2, 1, 32, 32)
    torch.nn.functional.binary_cross_entropy_with_logits(out, (x[:, :1] > 0).float()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_forward_and_backward_pass_of_the_scratch_unet_on_the_cpu():
    # LinkNet34's is below; UNet11's width is a setting of a network whose passes other tests run.
    forward_and_backward(ScratchUNet(widths=[4, 8], center_width=8))


def test_the_scratch_depth_sets_the_size_multiple_everywhere():
    model = ScratchUNet(widths=[4, 8, 16], center_width=16)
    assert model.SIZE_MULTIPLE == 8 and ScratchUNet.SIZE_MULTIPLE == 64
    with pytest.raises(ValueError, match=r"multiples of 8, got \(36, 40\)"):
        model(torch.empty(1, 3, 36, 40, device="meta"))
    settings = ["model.name=scratch", "model.init=pytorch", "model.widths=[4, 8, 16]"]
    assert geometry_of(load_config(None, settings)).pads(30, 33) == (1, 1, 3, 4)  # to 32 x 40
    with pytest.raises(ConfigError, match=r"data.input_size: \[36, 40\] is not a multiple of 8 .* use \[40, 40\]"):
        load_config(None, [*settings, "data.input_size=[36, 40]"])
    assert geometry_of(load_config(None, ["model.name=scratch", "model.init=pytorch"])).multiple == 64


def test_each_setting_is_refused_on_a_model_without_it():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.name=scratch", "model.num_filters=64", "model.widths=[]"])
    message = str(err.value)
    assert "model.num_filters: scratch has no such setting (it is unet11's): remove it" in message
    assert "model.init: scratch has no pre-trained encoder; use model.init=pytorch" in message
    assert "model.widths: expected a non-empty list of positive channel counts, got []" in message
    with pytest.raises(ConfigError, match="model.widths: unet11 has no such setting"):
        load_config(None, ["model.widths=[8, 16]"])


# ---------------------------------------------------------------- the original layouts


def test_unet11_keeps_the_original_keys_at_any_width():
    assert list(UNet11(num_filters=64).state_dict()) == list(UNet11().state_dict())


def test_linknet34_has_the_original_keys_loads_a_checkpoint_that_holds_only_them_and_trains(family):
    model = family("linknet34")
    keys = set(model.state_dict())
    original = {k for k in keys if not k.startswith("encoder.")}
    assert {"firstconv.weight", "firstbn.running_mean", "encoder4.2.bn2.weight", "decoder4.deconv2.weight",
            "finaldeconv1.weight", "finalconv3.bias"} <= original
    assert {k.replace("firstconv.", "encoder.conv1.") for k in original if k.startswith("firstconv.")} <= keys
    saved = {k: v for k, v in model.state_dict().items() if k in original}
    other = fit_state_dict(LinkNet34(), saved, "linknet34_fold0.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))
    forward_and_backward(other)


def test_linknet34_encoder_from_the_torch_cache_and_a_missing_file_named(torch_home):
    with pytest.raises(WeightsError) as err:
        load_imagenet_encoder(family_model("linknet34"))  # the structure alone: the message comes first
    message = str(err.value)
    assert "ResNet34 ImageNet weights not found" in message
    for name in ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"):
        assert str(torch_home / "hub" / "checkpoints" / name) in message
    planted = plant(torch_home / "hub" / "checkpoints" / "resnet34-b627a593.pth", resnet34_file_state())
    model = build_model(ModelConfig(name="linknet34", init="imagenet"))
    assert torch.equal(model.encoder.layer2[1].conv1.weight, planted["layer2.1.conv1.weight"])
    assert torch.equal(model.firstbn.running_var, planted["bn1.running_var"])  # the alias is the same layer
    assert torch.all(model.decoder2.conv3.bias == 0)  # the decoder freshly (LeCun) initialised


def test_the_scratch_unet_starts_from_pytorchs_own_initialisation():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="scratch", init="pytorch", widths=[4, 8], center_width=8))
    conv0 = model.encoder[0].convs[0][0]
    assert conv0.bias.abs().sum() > 0  # LeCun would have zeroed it
    assert conv0.weight.abs().max() <= 1 / (3 * 9) ** 0.5  # kaiming_uniform(a=sqrt 5): U(+-1/sqrt(fan_in))
    assert meta_model("unet11").num_filters == 32


def test_the_docs_gpu_hour_projection_is_what_the_bench_prints():
    from bench.carvana_projection import table

    page = (Path(__file__).resolve().parents[1] / "docs" / "carvana-1st-place.md").read_text()
    assert table() in page
