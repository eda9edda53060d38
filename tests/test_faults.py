"""Fault injection: train.py and predict.py really killed (SIGKILL) at several points, NaN losses, a full disk,
checkpoints of the wrong model. The resumed result must equal an uninterrupted run's; nothing good is lost.
"""

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY_NET

from ternaus.checkpoint import read_checkpoint, save_checkpoint
from ternaus.config import load_config
from ternaus.errors import TrainingError, WeightsError
from ternaus.io import atomic_write, atomic_write_text
from ternaus.losses import SegmentationLoss
from ternaus.models import UNet11
from ternaus.prepare import prepare_folds
from ternaus.training import train
from ternaus.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic.yaml"
TEMPORARY = re.compile(r"^\..+\.tmp(\.[^.]+)?$")

# Dies with SIGKILL in the middle of the Nth write: after half the bytes of a temporary file are on disk.
# ``torch.save`` writes checkpoints; ``Path.write_bytes`` writes prediction PNGs (on writer threads).
DIE_MID_WRITE = """
import os, pathlib, runpy, signal, sys, threading
import torch
N, calls, lock = int(os.environ["DIE_AT_WRITE"]), [0], threading.Lock()
def nth():
    with lock:
        calls[0] += 1
        return calls[0] == N
def die(target):
    if hasattr(target, "flush"):  # checkpoints are saved through an open file
        target.flush()
    path = target if isinstance(target, (str, os.PathLike)) else target.name
    os.truncate(path, os.path.getsize(path) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
real_save, real_write = torch.save, pathlib.Path.write_bytes
def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if nth():
        die(f)
def write_bytes(self, data):
    real_write(self, data)
    if nth():
        die(self)
torch.save, pathlib.Path.write_bytes = save, write_bytes
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"output_dir={out}", *TINY_NET, "folds.n_folds=2", "data.input_size=null",
            "data.num_workers=0", "train.batch_size=4", "runtime.deterministic=true", *extra]


def stage(script: str, root: Path, out: Path, *extra: str) -> list[str]:
    return [str(ROOT / script), "--config", str(CONFIG), *overrides(root, out, *extra)]


def environment(**extra: str) -> dict:
    # Unbuffered, so that what a killed process printed is in its log.
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def run(args: list[str], log: Path) -> str:
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env=environment(), timeout=600).returncode
    text = log.read_text()
    assert code == 0, text[-3000:]
    return text


def run_and_kill(args: list[str], log: Path, should_kill, timeout: float = 300) -> str:
    """Start a stage and SIGKILL it as soon as ``should_kill()`` is true; it must not finish first."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=environment())
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not should_kill() and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
    text = log.read_text()
    assert code == -signal.SIGKILL, f"the run ended ({code}) before the kill point:\n{text[-3000:]}"
    return text


def run_dying_mid_write(args: list[str], log: Path, nth_write: int) -> str:
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-c", DIE_MID_WRITE, *args], cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT, env=environment(DIE_AT_WRITE=str(nth_write)),
                              timeout=600).returncode
    text = log.read_text()
    assert code == -signal.SIGKILL, f"the run ended ({code}) before write {nth_write}:\n{text[-3000:]}"
    return text


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMPORARY.match(p.name)]


class Replacements:
    """Counts how often a file was replaced (each atomic rename gives it a new inode)."""

    def __init__(self, path: Path):
        self.path, self.count = path, 0
        self.seen = self._inode()

    def _inode(self):
        try:
            return self.path.stat().st_ino
        except FileNotFoundError:
            return None

    def __call__(self) -> int:
        inode = self._inode()
        if inode is not None and inode != self.seen:
            self.seen, self.count = inode, self.count + 1
        return self.count


# ---------------------------------------------------------------- train.py killed


@pytest.mark.slow
def test_training_killed_at_four_points_ends_exactly_as_an_uninterrupted_run(tiny_dataset, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # Resized to 32 x 32: a quarter of the padded 64 x 64's work, and resuming does not depend on the geometry.
    settings = ("train.epochs=2", "train.checkpoint_every=1", "train.folds=[0]", "data.input_size=[32,32]")
    for out in (whole, killed):
        prepare_folds(load_config(CONFIG, overrides(tiny_dataset, out)))
    run(stage("train.py", tiny_dataset, whole, *settings), tmp_path / "whole.log")

    args = stage("train.py", tiny_dataset, killed, *settings)
    fold = killed / "fold_0"
    # 1. SIGKILL as soon as the first step checkpoint exists: inside epoch 1.
    run_and_kill(args, tmp_path / "kill1.log", lambda: (fold / "last.pt").exists())
    assert read_checkpoint(fold / "last.pt")["step"] >= 1
    # 2. SIGKILL in the middle of writing the resumed run's third checkpoint.
    text = run_dying_mid_write(args, tmp_path / "kill2.log", nth_write=3)
    assert "resuming from" in text
    assert temporaries(fold), "the kill should have left a half-written temporary file"
    read_checkpoint(fold / "last.pt")  # the previous good checkpoint is intact
    # 3. SIGKILL as soon as epoch 1's log.csv is written: at the epoch boundary.
    text = run_and_kill(args, tmp_path / "kill3.log", lambda: (fold / "log.csv").exists())
    assert "removed 1 partly written file(s)" in text
    # 4. SIGKILL once the resumed run has replaced last.pt twice: inside epoch 2.
    replaced = Replacements(fold / "last.pt")
    run_and_kill(args, tmp_path / "kill4.log", lambda: replaced() >= 2)
    assert read_checkpoint(fold / "last.pt")["epoch"] == 1
    text = run(args, tmp_path / "final.log")
    assert "resuming from" in text

    for name in ("last.pt", "best.pt"):
        a, b = read_checkpoint(whole / "fold_0" / name), read_checkpoint(fold / name)
        assert (a["epoch"], a["step"], a["best_score"]) == (b["epoch"], b["step"], b["best_score"])
        for key, tensor in a["model"].items():
            assert torch.equal(tensor, b["model"][key]), f"{name}: {key}"
    a, b = read_checkpoint(whole / "fold_0" / "last.pt"), read_checkpoint(fold / "last.pt")
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][index]["exp_avg_sq"])
    logs = [pd.read_csv(out / "fold_0" / "log.csv").drop(columns="time_s") for out in (whole, killed)]
    pd.testing.assert_frame_equal(*logs)
    assert logs[0]["epoch"].tolist() == [1, 2]
    assert temporaries(fold) == []


# ---------------------------------------------------------------- predict.py killed


# Resized to 32 x 32: what a killed prediction leaves behind does not depend on the size.
SMALL = ("data.input_size=[32,32]",)


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    cfg = load_config(CONFIG, overrides(tiny_dataset, out, "train.epochs=1", *SMALL))
    prepare_folds(cfg)
    train(cfg)
    return out


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png")) if not p.name.startswith(".")}


@pytest.mark.slow
def test_prediction_killed_mid_write_resumes_to_byte_identical_pngs(tiny_dataset, trained, tmp_path):
    settings = ("predict.batch_size=2", "predict.writer_threads=2", "predict.oof=false", *SMALL)
    run(stage("predict.py", tiny_dataset, trained, *settings, "predict.out_dir=reference"), tmp_path / "ref.log")
    reference = pngs(trained / "reference")
    assert len(reference) == 16

    args = stage("predict.py", tiny_dataset, trained, *settings, "predict.out_dir=killed")
    out = trained / "killed"
    # 1. Killed while writing its 5th PNG: some PNGs done, one half-written temporary file.
    run_dying_mid_write(args, tmp_path / "kill1.log", nth_write=5)
    first = pngs(out)
    assert 0 < len(first) < 16 and temporaries(out)
    assert all(reference[name] == data for name, data in first.items())
    # 2. The resumed run, killed at its 4th PNG.
    text = run_dying_mid_write(args, tmp_path / "kill2.log", nth_write=4)
    assert f"resuming: {len(first)} of 16 predictions" in text
    # 3. A PNG cut short under its final name (a power cut before the disk caught up) is not taken as done.
    victim = out / sorted(pngs(out))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    done = len(pngs(out)) - 1
    text = run(args, tmp_path / "final.log")
    assert f"resuming: {done} of 16 predictions" in text
    assert pngs(out) == reference
    assert temporaries(out) == []

    # Other settings: the earlier PNGs are not reused.
    text = run(stage("predict.py", tiny_dataset, trained, *settings, "predict.out_dir=killed", "predict.tta=none"),
               tmp_path / "other.log")
    assert "removing 16 earlier predictions" in text and "resuming" not in text
    assert pngs(out) != reference


# ---------------------------------------------------------------- numerical faults


def small_config(root: Path, out: Path, *extra: str):
    return load_config(CONFIG, overrides(root, out, "train.folds=[0]", *extra))


def poison_loss(monkeypatch, at_call: int, value: float) -> None:
    real, calls = SegmentationLoss.forward, [0]

    def forward(self, logits, targets):
        calls[0] += 1
        loss = real(self, logits, targets)
        return loss * value if calls[0] == at_call else loss

    monkeypatch.setattr(SegmentationLoss, "forward", forward)


def test_a_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path,
                                                                                monkeypatch):
    cfg = small_config(tiny_dataset, tmp_path, "train.epochs=1", "train.checkpoint_every=1")
    prepare_folds(cfg)
    poison_loss(monkeypatch, at_call=3, value=float("nan"))
    with pytest.raises(TrainingError, match=r"fold 0 epoch 1/1, step 3: the training loss became nan"):
        train(cfg)
    kept = read_checkpoint(tmp_path / "fold_0" / "last.pt")
    assert kept["step"] == 2
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


def test_an_inf_loss_between_checks_is_named_by_its_own_step(tiny_dataset, tmp_path, monkeypatch):
    """The loss is not copied to the host at every step; the first bad step is still the one reported."""
    cfg = small_config(tiny_dataset, tmp_path, "train.epochs=1")
    prepare_folds(cfg)
    train(cfg)
    before = (tmp_path / "fold_0" / "last.pt").read_bytes()
    poison_loss(monkeypatch, at_call=2, value=float("inf"))
    with pytest.raises(TrainingError, match=r"fold 0 epoch 2/2, step 2: the training loss became inf"):
        train(small_config(tiny_dataset, tmp_path, "train.epochs=2"))
    assert (tmp_path / "fold_0" / "last.pt").read_bytes() == before


def test_losses_are_reduced_in_float32_under_mixed_precision():
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    images, masks = torch.randn(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images)
        loss = SegmentationLoss("bce_dice")(logits, masks)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.equal(loss, SegmentationLoss("bce_dice")(logits.float(), masks))


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "log.csv", "epoch\n1\n")

    def write_then_fill_the_disk(tmp: Path) -> None:
        tmp.write_text("epoch\n1\n2")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError):
        atomic_write(path, write_then_fill_the_disk)
    assert path.read_text() == "epoch\n1\n" and [p.name for p in tmp_path.iterdir()] == ["log.csv"]


def test_a_full_disk_while_checkpointing_is_a_message_and_keeps_last_pt(tiny_dataset, tmp_path, monkeypatch,
                                                                       capsys):
    import train as train_script

    cfg_args = ["--config", str(CONFIG), *overrides(tiny_dataset, tmp_path, "train.folds=[0]")]
    prepare_folds(load_config(CONFIG, cfg_args[2:]))
    assert train_script.main([*cfg_args, "train.epochs=1"]) == 0
    before = (tmp_path / "fold_0" / "last.pt").read_bytes()
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()  # checkpoints are saved through an open file
        os.truncate(f.name, 1000)
        raise OSError(errno.ENOSPC, "No space left on device", str(f.name))

    monkeypatch.setattr(torch, "save", save)
    assert train_script.main([*cfg_args, "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "error: the disk is full while writing" in err and "run the same command again" in err
    assert "Traceback" not in err
    assert (tmp_path / "fold_0" / "last.pt").read_bytes() == before
    assert temporaries(tmp_path / "fold_0") == []


# ---------------------------------------------------------------- safe loading


class Payload:
    """Any class: unpickling it would run code, so weights_only loading must refuse the file."""


def test_a_checkpoint_holding_code_is_refused(tmp_path):
    torch.save({"model": UNet11().state_dict(), "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="cannot read checkpoint .*evil.pt"):
        read_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="cannot read weights file .*evil.pt"):
        load_weights(UNet11(), tmp_path / "evil.pt")


def test_a_checkpoint_of_another_class_count_is_refused_by_name(tmp_path):
    save_checkpoint(tmp_path / "one.pt", model=UNet11(num_classes=1))
    with pytest.raises(WeightsError, match=r"one.pt was trained as UNet11 with 1 class\(es\), but this config "
                                           r"builds UNet11 with 2: set model.name / model.num_classes"):
        load_weights(UNet11(num_classes=2), tmp_path / "one.pt")


def test_resuming_with_another_class_count_is_a_message(tiny_dataset, tmp_path, capsys):
    import train as train_script

    cfg_args = ["--config", str(CONFIG), *overrides(tiny_dataset, tmp_path, "train.folds=[0]")]
    prepare_folds(load_config(CONFIG, cfg_args[2:]))
    assert train_script.main([*cfg_args, "train.epochs=1"]) == 0
    assert train_script.main([*cfg_args, "train.epochs=2", "model.num_classes=2"]) == 2
    err = capsys.readouterr().err
    assert "last.pt was trained as ScratchUNet with 1 class(es)" in err and "Traceback" not in err


def test_every_load_in_the_package_is_safe():
    source = {p: p.read_text() for p in (ROOT / "ternaus").glob("*.py")}
    for path, text in source.items():
        for call in re.findall(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
            assert "weights_only=True" in call, f"{path.name}: {call}"
        assert not re.search(r"yaml\.(unsafe_)?load\(|pickle\.loads?\(", text), path.name
    assert sum(text.count("torch.load(") for text in source.values()) >= 2
