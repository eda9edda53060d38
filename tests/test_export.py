"""ONNX and TorchScript exports compute what PyTorch computes, at sizes and batch sizes other than the traced one.

Tolerances: ONNX Runtime's CPU kernels sum in another order than PyTorch's, so outputs are compared with
atol 1e-5 / rtol 1e-4 (logits here are about 0.1 to 1; the differences measured were at most 1e-6).
TorchScript runs PyTorch's own kernels: the same tolerance holds with room to spare.
"""

import pytest
import torch

import export as export_script
from ternaus.checkpoint import save_checkpoint
from ternaus.data.dataset import normalise_on_device
from ternaus.export import export_model

TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}
# Each model in both formats; across them every combination of the two options, each format with and without.
CASES = [("unet11", "onnx", True, True), ("unet11", "torchscript", False, False),
         ("unet16", "onnx", False, False), ("unet16", "torchscript", True, True),
         ("albunet34", "onnx", True, False), ("albunet34", "torchscript", False, True)]
# (batch, height, width): the traced size (one size multiple square), then another batch and height. (The ONNX
# graph's width is checked to be symbolic too; larger inputs would only make the test slower.)
SIZES = {32: [(1, 32, 32), (2, 64, 32)], 64: [(1, 64, 64), (2, 128, 64)]}


def inputs(multiple: int, normalise: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(multiple)
    if normalise:
        return [torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g) for b, h, w in SIZES[multiple]]
    return [torch.randn(b, 3, h, w, generator=g) for b, h, w in SIZES[multiple]]


@torch.no_grad()
def pytorch_output(model, image: torch.Tensor, normalise: bool, sigmoid: bool) -> torch.Tensor:
    logits = model(normalise_on_device(image) if normalise else image)
    return torch.sigmoid(logits) if sigmoid else logits


def run_onnx(path, image: torch.Tensor) -> tuple[torch.Tensor, object]:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (requirements.txt) runs the exported ONNX graph")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": image.numpy()})
    return torch.from_numpy(out), session


def run_torchscript(path, image: torch.Tensor) -> tuple[torch.Tensor, object]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the format is what was asked for
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(image), module


@pytest.mark.parametrize("name,fmt,normalise,sigmoid", CASES)
def test_the_export_computes_what_pytorch_computes(family, tmp_path, name, fmt, normalise, sigmoid):
    model = family(name)
    path = export_model(model, fmt, tmp_path / f"{name}.{fmt}", normalise, sigmoid)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # written under a temporary name, then renamed
    runner = run_onnx if fmt == "onnx" else run_torchscript
    for image in inputs(type(model).SIZE_MULTIPLE, normalise):
        got, handle = runner(path, image)
        want = pytorch_output(model, image, normalise, sigmoid)
        assert got.shape == want.shape == (image.shape[0], 1, *image.shape[2:])
        assert want.std() > 1e-3  # outputs that vary, so that agreeing means something
        torch.testing.assert_close(got, want, **TOLERANCE)
        if sigmoid:
            assert 0 <= got.min() and got.max() <= 1
    if fmt == "onnx":
        (given,), (returned,) = handle.get_inputs(), handle.get_outputs()
        assert (given.name, given.shape) == ("image", ["batch", 3, "height", "width"])
        assert given.type == ("tensor(uint8)" if normalise else "tensor(float)")
        assert returned.name == ("probability" if sigmoid else "logits")
        assert returned.shape == ["batch", 1, "height", "width"]


def test_export_script_writes_next_to_the_checkpoint_and_user_errors_are_messages(family, tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "fold_0" / "best.pt", model=family("unet11"))
    args = ["--config", "configs/synthetic.yaml", "--checkpoint", str(checkpoint)]
    assert export_script.main([*args, "--format", "torchscript", "--normalise", "--sigmoid"]) == 0
    written = tmp_path / "fold_0" / "best.torchscript.pt"
    assert f"wrote {written}" in capsys.readouterr().out
    image = inputs(32, True)[1]
    got, _ = run_torchscript(written, image)
    torch.testing.assert_close(got, pytorch_output(family("unet11"), image, True, True), **TOLERANCE)

    assert export_script.main([*args, "--format", "onnx", "model.name=unet16"]) == 2
    assert "best.pt was trained as UNet11 with 1 class(es), but this config builds UNet16" in capsys.readouterr().err
    assert export_script.main(["--config", "configs/synthetic.yaml", "--checkpoint", str(tmp_path / "none.pt"),
                               "--format", "onnx"]) == 2
    assert "error: checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_script.main([*args, "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
