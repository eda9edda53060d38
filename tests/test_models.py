import math

import pytest
import torch
import torch.nn.functional as F

from ternaus.config import ModelConfig
from ternaus.errors import WeightsError
from ternaus.models import UNet11, build_model, lecun_uniform_
from ternaus.models.ternausnet import ENCODER_ALIASES
from ternaus.weights import load_imagenet_encoder, load_weights

DECODER = {  # name: (in, mid, out) as in the original code with num_filters=32
    "center": (512, 512, 256), "dec5": (768, 512, 256), "dec4": (768, 512, 128),
    "dec3": (384, 256, 64), "dec2": (192, 128, 32),
}


def original_state_dict(num_classes: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """The 56-key state_dict the original TernausNet code saves, built by hand from the fact sheet."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.05  # noqa: E731
    channels = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    state = {}
    for (alias, index), (cin, cout) in zip(ENCODER_ALIASES.items(), channels):
        weight, bias = rand(cout, cin, 3, 3), rand(cout)
        state[f"encoder.{index}.weight"] = state[f"{alias}.weight"] = weight
        state[f"encoder.{index}.bias"] = state[f"{alias}.bias"] = bias
    for name, (cin, mid, cout) in DECODER.items():
        state[f"{name}.block.0.conv.weight"], state[f"{name}.block.0.conv.bias"] = rand(mid, cin, 3, 3), rand(mid)
        state[f"{name}.block.1.weight"], state[f"{name}.block.1.bias"] = rand(mid, cout, 3, 3), rand(cout)
    state["dec1.conv.weight"], state["dec1.conv.bias"] = rand(32, 96, 3, 3), rand(32)
    state["final.weight"], state["final.bias"] = rand(num_classes, 32, 1, 1), rand(num_classes)
    return state


def reference_forward(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """UNet11's forward pass written out with torch.nn.functional from the original's keys."""
    conv = lambda name, t: F.relu(F.conv2d(t, s[f"{name}.weight"], s[f"{name}.bias"], padding=1))  # noqa: E731
    pool = lambda t: F.max_pool2d(t, 2, 2)  # noqa: E731

    def decoder(name, t):
        t = F.relu(F.conv2d(t, s[f"{name}.block.0.conv.weight"], s[f"{name}.block.0.conv.bias"], padding=1))
        t = F.conv_transpose2d(t, s[f"{name}.block.1.weight"], s[f"{name}.block.1.bias"], stride=2, padding=1,
                               output_padding=1)
        return F.relu(t)

    c1 = conv("conv1", x)
    c2 = conv("conv2", pool(c1))
    c3 = conv("conv3", conv("conv3s", pool(c2)))
    c4 = conv("conv4", conv("conv4s", pool(c3)))
    c5 = conv("conv5", conv("conv5s", pool(c4)))
    center = decoder("center", pool(c5))
    d5 = decoder("dec5", torch.cat([center, c5], 1))
    d4 = decoder("dec4", torch.cat([d5, c4], 1))
    d3 = decoder("dec3", torch.cat([d4, c3], 1))
    d2 = decoder("dec2", torch.cat([d3, c2], 1))
    d1 = F.relu(F.conv2d(torch.cat([d2, c1], 1), s["dec1.conv.weight"], s["dec1.conv.bias"], padding=1))
    return F.conv2d(d1, s["final.weight"], s["final.bias"])


def test_parameter_count_and_original_state_dict_layout():
    model = UNet11()
    assert sum(p.numel() for p in model.parameters()) == 22_927_393
    assert sum(p.numel() for p in model.encoder.parameters()) == 9_220_480
    assert set(model.state_dict()) == set(original_state_dict())
    assert len(model.state_dict()) == 56


@pytest.mark.parametrize("num_classes", [1, 3])
def test_output_shape_is_logits_at_input_size(num_classes):
    out = UNet11(num_classes=num_classes)(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, num_classes, 64, 96)
    assert out.min() < 0 or out.max() > 1 or num_classes  # logits: no sigmoid applied inside


def test_sizes_that_are_not_multiples_of_32_are_refused():
    with pytest.raises(ValueError, match="multiples of 32"):
        UNet11()(torch.randn(1, 3, 64, 100))


def _save(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("wrap", ["bare", "model_dict", "dataparallel", "encoder_keys_only", "alias_keys_only"])
def test_original_checkpoint_loads_and_computes_what_the_original_computes(tmp_path, wrap):
    state = original_state_dict()
    saved = dict(state)
    if wrap == "dataparallel":
        saved = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 12, "step": 34}
    elif wrap == "model_dict":
        saved = {"model": state, "epoch": 52, "step": 1000}
    elif wrap == "encoder_keys_only":
        saved = {k: v for k, v in state.items() if k.split(".")[0] not in ENCODER_ALIASES}
    elif wrap == "alias_keys_only":
        saved = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    model = load_weights(UNet11(), _save(saved, tmp_path / "original.pth")).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), reference_forward(state, x), atol=1e-5)


def test_a_missing_tensor_is_named(tmp_path):
    state = original_state_dict()
    del state["dec3.block.1.weight"]
    with pytest.raises(WeightsError, match=r"missing tensor 'dec3.block.1.weight'"):
        load_weights(UNet11(), _save(state, tmp_path / "x.pth"))


def test_a_misshaped_tensor_is_named(tmp_path):
    state = original_state_dict()
    state["dec1.conv.bias"] = torch.zeros(31)
    with pytest.raises(WeightsError, match=r"'dec1.conv.bias' has shape \(31,\)"):
        load_weights(UNet11(), _save(state, tmp_path / "x.pth"))


def test_a_checkpoint_for_another_number_of_classes_is_refused(tmp_path):
    path = _save(original_state_dict(num_classes=3), tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="num_classes"):
        load_weights(UNet11(num_classes=1), path)


def test_alias_and_encoder_tensors_must_agree(tmp_path):
    state = original_state_dict()
    state["conv2.bias"] = state["conv2.bias"] + 1
    with pytest.raises(WeightsError, match="conv2.bias"):
        load_weights(UNet11(), _save(state, tmp_path / "x.pth"))


def test_our_own_checkpoint_round_trips(tmp_path):
    from ternaus.checkpoint import save_checkpoint

    model = lecun_uniform_(UNet11())
    path = save_checkpoint(tmp_path / "best.pt", model=model, epoch=3, best_score=0.9)
    loaded = load_weights(UNet11(), path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_lecun_uniform_statistics():
    model = lecun_uniform_(UNet11())
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 8 + 5 * 2 + 2
    for layer in convs:
        w = layer.weight
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        bound = math.sqrt(3 / fan_in)
        assert w.abs().max() <= bound
        assert torch.all(layer.bias == 0)
        if w.numel() > 10_000:  # enough samples for the moments to be tight
            assert abs(w.var().item() * fan_in - 1.0) < 0.05  # Var U(-b, b) = b^2 / 3 = 1 / fan_in
            assert abs(w.mean().item()) < 0.05 * bound
            assert w.abs().max() > 0.95 * bound


# ---------------------------------------------------------------- ImageNet encoder, offline


def plant_vgg11(path, seed: int = 0, bad_shape: bool = False):
    """A file with torchvision's VGG11 key layout: features.* at the true shapes, small classifier stand-ins."""
    state = {k.replace("encoder.", "features."): v.clone() for k, v in original_state_dict(seed=seed).items()
             if k.startswith("encoder.")}
    if bad_shape:
        state["features.8.weight"] = torch.zeros(256, 128, 3, 3)
    state.update({"classifier.0.weight": torch.zeros(4, 4), "classifier.0.bias": torch.zeros(4)})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("name", ["vgg11-8a719046.pth", "vgg11-bbd30ac9.pth"])
def test_imagenet_encoder_from_the_torch_cache(torch_home, name):
    planted = plant_vgg11(torch_home / "hub" / "checkpoints" / name)
    model = build_model(ModelConfig(init="imagenet"))
    assert torch.equal(model.encoder[8].weight, planted["features.8.weight"])
    assert torch.equal(model.conv3.weight, planted["features.8.weight"])  # the alias is the same layer
    assert torch.all(model.dec2.block[0].conv.bias == 0)  # decoder freshly (LeCun) initialised


def test_the_current_file_name_is_preferred(torch_home):
    cache = torch_home / "hub" / "checkpoints"
    new = plant_vgg11(cache / "vgg11-8a719046.pth", seed=1)
    plant_vgg11(cache / "vgg11-bbd30ac9.pth", seed=2)
    found = load_imagenet_encoder(UNet11())
    assert found.name == "vgg11-8a719046.pth"
    model = build_model(ModelConfig(init="imagenet"))
    assert torch.equal(model.conv1.weight, new["features.0.weight"])


def test_explicit_encoder_weights_path(torch_home, tmp_path):
    planted = plant_vgg11(tmp_path / "my" / "vgg.pth", seed=3)
    model = build_model(ModelConfig(init="imagenet", encoder_weights=str(tmp_path / "my" / "vgg.pth")))
    assert torch.equal(model.conv5.bias, planted["features.18.bias"])


def test_no_weights_gives_every_path_tried_and_how_to_get_them(torch_home):
    with pytest.raises(WeightsError) as err:
        build_model(ModelConfig(init="imagenet"))
    message = str(err.value)
    cache = torch_home / "hub" / "checkpoints"
    assert str(cache / "vgg11-8a719046.pth") in message
    assert str(cache / "vgg11-bbd30ac9.pth") in message
    assert "IMAGENET1K_V1" in message and "model.init=lecun" in message


def test_wrong_vgg_file_is_refused_with_the_tensor_named(torch_home):
    plant_vgg11(torch_home / "hub" / "checkpoints" / "vgg11-8a719046.pth", bad_shape=True)
    with pytest.raises(WeightsError, match=r"'8.weight' has shape \(256, 128, 3, 3\)"):
        build_model(ModelConfig(init="imagenet"))


def test_whole_network_init_from_a_checkpoint(tmp_path):
    state = original_state_dict(seed=5)
    path = _save({"model": state}, tmp_path / "carvana.pth")
    model = build_model(ModelConfig(init=str(path)))
    assert torch.equal(model.final.weight, state["final.weight"])


def test_encoder_is_torchvisions_vgg11_features():
    from torchvision.models import vgg11

    reference = vgg11(weights=None).features
    ours = UNet11().encoder
    assert [type(m) for m in ours] == [type(m) for m in reference]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert str(ours) == str(reference)
