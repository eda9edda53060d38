"""Export a trained model for use outside Python: ONNX (onnxruntime, TensorRT, OpenVINO, ...) or TorchScript
(libtorch, C++).

The exported graph takes ``image`` (B, 3, H, W) and returns ``logits``, or ``probability`` with the sigmoid
included. With the normalisation included the input is what the pipeline itself reads, uint8 RGB (0..255,
not BGR as OpenCV's ``imread`` gives), normalised inside the graph exactly as ``normalise_on_device`` does;
without it the input is float32 already normalised with ImageNet's mean and std. Batch, height and width
are dynamic; height and width must be multiples of the model's size multiple (32, or 64 for AlbuNet), which
the exported graph cannot check.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ternaus.data.source import DataSource
from ternaus.config import Config
from ternaus.data.dataset import normalise_on_device
from ternaus.errors import ConfigError
from ternaus.io import atomic_write
from ternaus.models import TernausNet, new_model
from ternaus.registry import MODELS
from ternaus.run_files import RunFiles
from ternaus.stage import Lock, StageOutputs
from ternaus.weights import load_weights

__all__ = ["Deployable", "export", "export_model", "FORMATS", "default_output"]

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
# ONNX opset 17: onnxruntime, TensorRT 8.6+ and OpenVINO 2023+ all read it.
OPSET = 17


class Deployable(nn.Module):
    """The model with, optionally, the pipeline's input normalisation before it and a sigmoid after it."""

    def __init__(self, model: TernausNet, normalise: bool, sigmoid: bool):
        super().__init__()
        self.model, self.normalise, self.sigmoid = model, normalise, sigmoid

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = normalise_on_device(image) if self.normalise else image
        out = self.model(x)
        return torch.sigmoid(out) if self.sigmoid else out

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """The smallest valid input: one size multiple square; the traced graph works at any valid size."""
        size = self.model.SIZE_MULTIPLE  # an instance's own: a timm network's is its encoder's reduction
        if self.normalise:
            return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        return torch.randn(batch, 3, size, size)

    @property
    def output_name(self) -> str:
        return "probability" if self.sigmoid else "logits"


@contextmanager
def _quiet_tracing():
    """Both exporters trace the model. Tracing warns that the Python size check becomes a constant (the graph
    documents the size rule instead) and that TorchScript and the TorchScript-based ONNX exporter are
    deprecated: they are the formats asked for, and torch is pinned."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
        yield


def _write_onnx(deployable: Deployable, tmp: Path) -> None:
    # The TorchScript-based exporter (dynamo=False): measured here it exports UNet11 in about 2 s against
    # 16 s for the torch.export-based one, and it needs no onnxscript. These networks have no control flow
    # that tracing could miss (the tests compare the outputs at other sizes than the traced one).
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(deployable, (deployable.example_input(),), str(tmp), dynamo=False, opset_version=OPSET,
                      input_names=["image"], output_names=[deployable.output_name],
                      dynamic_axes={"image": axes, deployable.output_name: axes})


def _write_torchscript(deployable: Deployable, tmp: Path) -> None:
    traced = torch.jit.trace(deployable, deployable.example_input(), check_trace=False)
    torch.jit.save(traced, str(tmp))


WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript}


@torch.no_grad()
def export_model(model: TernausNet, fmt: str, out: str | Path, normalise: bool = False,
                 sigmoid: bool = False) -> Path:
    """Write ``model`` (on the CPU, float32, eval mode) as ``fmt`` to ``out``, atomically."""
    if fmt not in WRITERS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(WRITERS)}")
    deployable = Deployable(model.cpu().float(), normalise, sigmoid).eval()
    with _quiet_tracing():
        return atomic_write(out, lambda tmp: WRITERS[fmt](deployable, tmp))


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """``fold_0/best.pt`` -> ``fold_0/best.onnx`` (or ``.pt`` for TorchScript: ``best.torchscript.pt``)."""
    checkpoint = Path(checkpoint)
    suffix = FORMATS[fmt] if fmt == "onnx" else f".torchscript{FORMATS[fmt]}"
    return checkpoint.with_name(checkpoint.stem + suffix)


def is_export_name(path: Path) -> bool:
    """A name export.py writes (``.onnx``, ``.torchscript.pt``): the only existing files it replaces."""
    return path.name.endswith(".onnx") or path.name.endswith(".torchscript.pt")


def _run_file_problem(out: Path, files: RunFiles) -> str | None:
    """What ``out`` is among the files other stages write in the run ``files`` (None: none of them)."""
    root = files.root.resolve()
    target = out.resolve()
    if root not in target.parents:
        return None
    relative = target.relative_to(root)
    named = {files.folds_csv, files.oof_csv, files.oof_levels, files.postprocess, files.postprocess_search,
             files.ensemble_cv, files.oof_lineage, files.submission}
    if target in {p.resolve() for p in named} or relative.parts[0] in ("configs", files.predictions_dir,
                                                                       files.report_dir, "oof_predictions"):
        return f"is {relative}, a file of the run {files.root} that another stage wrote or writes"
    if target.suffix in (".pt", ".csv", ".yaml", ".json") and not is_export_name(target):
        return f"is {relative}, a file of the run {files.root} (a checkpoint, log or record of a stage)"
    return None


def _refuse_out(out: Path, checkpoint: Path, files: RunFiles) -> None:
    """``--out`` names a new file, or an earlier export: never a folder, the checkpoint, another stage's file."""
    if out.is_dir():
        example = out / default_output(checkpoint, "onnx").name
        raise ConfigError(f"--out {out} is a folder; name the file to write, e.g. {example}")
    if out.exists() and out.samefile(checkpoint):
        raise ConfigError(f"--out {out} is the checkpoint itself; name another file")
    problem = _run_file_problem(out, files)
    if problem:
        raise ConfigError(f"--out {out} {problem}: export.py replaces only its own exports (.onnx, .torchscript.pt); "
                          "name another file")
    if out.exists() and not is_export_name(out):
        raise ConfigError(f"--out {out} exists and is not an export (.onnx or .torchscript.pt): export.py does not "
                          "replace what it did not write; name a new file, or move that one away")


def export(cfg: Config, checkpoint: str | Path, fmt: str, out: str | Path | None = None, normalise: bool = False,
           sigmoid: bool = False) -> Path:
    """Load ``checkpoint`` into the model ``cfg.model`` describes and export it; returns the file written."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist (train.py writes fold_K/best.pt)")
    out = Path(out) if out is not None else default_output(checkpoint, fmt)
    outputs = StageOutputs("export", DataSource.of(cfg).places(), folders={"--out": out.parent}, files={"--out": out},
                           claims=[Lock(out, str(out))], temporaries={out.parent: {out.name}})
    _refuse_out(out, checkpoint, RunFiles.of(cfg))
    model = load_weights(new_model(cfg.model), checkpoint)
    with outputs:
        path = export_model(model, fmt, out, normalise, sigmoid)
    multiple = MODELS[cfg.model.name].multiple_for(cfg.model)
    given = "uint8 RGB 0..255" if normalise else "float32, ImageNet-normalised RGB"
    print(f"wrote {path} ({fmt}): input 'image' (batch, 3, H, W) {given}, H and W multiples of {multiple}; "
          f"output '{'probability' if sigmoid else 'logits'}' (batch, {cfg.model.num_classes}, H, W)")
    return path
