"""Several processes: torchrun + DDP training (gloo on CPU), sharded prediction, one fold per process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY_NET, tiny_net

from ternaus.data.source import DataSource
from ternaus.checkpoint import read_checkpoint
from ternaus.config import load_config
from ternaus.data.geometry import geometry_of
from ternaus.data.layouts import train_items
from ternaus.distributed import World
from ternaus.inference import Shard, fixed_batches
from ternaus.losses import SegmentationLoss
from ternaus.prepare import prepare_folds
from ternaus.run_files import RunFiles, read_folds
from ternaus.runtime import Runtime
from ternaus.training import EpochSampler, TrainingRun, fold_data, validate
from ternaus.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic.yaml"
# Processes side by side on a small machine: one thread each, as torchrun sets it.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------- how the work is split


def test_each_rank_gets_an_equal_share_and_the_augmentation_follows_the_position():
    single = list(EpochSampler(7, seed=3))
    assert sorted(i for i, _ in single) == list(range(7))
    shares = [list(EpochSampler(7, seed=3, rank=r, world=2)) for r in (0, 1)]
    assert [len(s) for s in shares] == [4, 4]  # 7 padded to 8 by wrapping around, as DistributedSampler does
    interleaved = [pair for pairs in zip(*shares) for pair in pairs]
    assert interleaved[:7] == single  # rank r takes positions r, r + 2, ...: same images, same seeds
    assert interleaved[7] == (single[0][0], interleaved[7][1])
    resumed = list(EpochSampler(7, seed=3, start=2, rank=1, world=2))
    assert resumed == shares[1][2:]


def test_shards_split_the_fixed_batches_without_overlap():
    ids = [f"i{k}" for k in range(11)]
    batches = fixed_batches(ids, 3)
    parts = [Shard(k, 3).take(batches) for k in range(3)]
    assert sorted(i for part in parts for batch in part for i in batch) == sorted(ids)
    assert parts[1] == [["i3", "i4", "i5"]]
    assert Shard.parse("1/4") == Shard(1, 4)
    for bad in ("4/4", "x/2", "1", "-1/2"):
        with pytest.raises(Exception, match="expected i/n"):
            Shard.parse(bad)


# ---------------------------------------------------------------- torchrun


def overrides(root: Path, out: Path, *extra: str) -> list[str]:
    # Resized to 32 x 32: a quarter of the padded 64 x 64's work; what is distributed does not depend on the size.
    return [f"data.root={root}", f"output_dir={out}", *TINY_NET, "folds.n_folds=2", "data.input_size=[32,32]",
            "data.num_workers=0", "train.batch_size=4", "train.val_batch_size=1", *extra]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def torchrun(script: str, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(ROOT / script), "--config", str(CONFIG), *args])


@pytest.fixture(scope="module")
def odd_dataset(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny dataset less one training image: 47 images, so one fold validates an odd number of them."""
    root = tmp_path_factory.mktemp("odd") / "data"
    shutil.copytree(tiny_dataset, root)
    victim = sorted((root / "train").iterdir())[-1]
    victim.unlink()
    (root / "train_masks" / victim.name.replace(".jpg", "_mask.gif")).unlink()
    masks = pd.read_csv(root / "train_masks.csv", dtype=str, keep_default_na=False)
    masks[masks["img"] != victim.name].to_csv(root / "train_masks.csv", index=False)
    return root


@pytest.fixture(scope="module")
def ddp_run(odd_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    prepare_folds(load_config(CONFIG, overrides(odd_dataset, out)))
    folds = pd.read_csv(out / "folds.csv")
    fold = int(next(k for k, n in folds["fold"].value_counts().items() if n % 2))
    first = torchrun("train.py", *overrides(odd_dataset, out, f"train.folds=[{fold}]", "train.epochs=1"))
    second = torchrun("train.py", *overrides(odd_dataset, out, f"train.folds=[{fold}]", "train.epochs=2"))
    return out, fold, first, second


@pytest.mark.slow
def test_torchrun_trains_one_fold_with_rank_0_alone_writing(ddp_run):
    out, fold, first, second = ddp_run
    assert "2 processes" in first.stdout
    assert first.stdout.count(f"fold {fold} epoch 1/1:") == 1  # printed by rank 0 only
    assert second.stdout.count("resuming from") == 1 and "at the end of epoch 1" in second.stdout
    assert sorted(p.name for p in (out / f"fold_{fold}").iterdir()) == ["best.pt", "last.pt", "log.csv"]
    assert pd.read_csv(out / f"fold_{fold}" / "log.csv")["epoch"].tolist() == [1, 2]
    ckpt = read_checkpoint(out / f"fold_{fold}" / "last.pt")
    assert ckpt["world_size"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])
    load_weights(tiny_net(), out / f"fold_{fold}" / "last.pt")  # loads in a single process


@pytest.mark.slow
def test_the_ddp_validation_score_counts_every_image_once(ddp_run, odd_dataset):
    out, fold, _, _ = ddp_run
    cfg = load_config(CONFIG, overrides(odd_dataset, out, f"train.folds=[{fold}]"))
    items = train_items(DataSource.of(cfg), read_folds(RunFiles.of(cfg).folds_csv, cfg.folds.n_folds), RunFiles.of(cfg).folds_csv)
    assert (items["fold"] == fold).sum() % 2 == 1
    runtime = Runtime(torch.device("cpu"), None, False)
    model = load_weights(tiny_net(), out / f"fold_{fold}" / "last.pt")
    data = fold_data(TrainingRun.from_config(cfg), items, fold, runtime, World())
    scores = validate(model, data.val_loader, runtime, SegmentationLoss(), geometry_of(cfg), 0.5)
    logged = pd.read_csv(out / f"fold_{fold}" / "log.csv").iloc[-1]
    assert scores["val_dice"] == pytest.approx(logged["val_dice"], rel=1e-12)
    assert scores["val_jaccard"] == pytest.approx(logged["val_jaccard"], rel=1e-12)


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png")) if not p.name.startswith(".")}


@pytest.mark.slow
def test_sharded_and_torchrun_prediction_write_what_one_process_writes(ddp_run, odd_dataset):
    out, fold, _, _ = ddp_run
    args = ["--config", str(CONFIG), *overrides(odd_dataset, out, f"train.folds=[{fold}]", "predict.batch_size=3",
                                                "predict.oof=false")]
    run([sys.executable, str(ROOT / "predict.py"), *args, "predict.out_dir=single"])
    shards = [subprocess.Popen([sys.executable, str(ROOT / "predict.py"), *args, "predict.out_dir=sharded",
                                "--shard", f"{k}/2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=ONE_THREAD)
              for k in (0, 1)]  # side by side, into one folder
    assert [p.wait(timeout=600) for p in shards] == [0, 0]
    torchrun("predict.py", *args[2:], "predict.out_dir=torchrun")
    single = pngs(out / "single")
    assert len(single) == 16
    assert pngs(out / "sharded") == single
    assert pngs(out / "torchrun") == single


# ---------------------------------------------------------------- one fold per process


@pytest.mark.slow
def test_folds_trained_side_by_side_into_one_folder_do_not_collide(tiny_dataset, tmp_path):
    prepare_folds(load_config(CONFIG, overrides(tiny_dataset, tmp_path)))
    args = ["--config", str(CONFIG), *overrides(tiny_dataset, tmp_path, "train.epochs=1")]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "--fold", str(k)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
             for k in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for k in (0, 1):
        assert sorted(p.name for p in (tmp_path / f"fold_{k}").iterdir()) == ["best.pt", "last.pt", "log.csv"]
        assert read_checkpoint(tmp_path / f"fold_{k}" / "last.pt")["fold"] == k
    assert {"train_fold_0.yaml", "train_fold_1.yaml"} <= {p.name for p in (tmp_path / "configs").iterdir()}


@pytest.mark.slow
def test_ddp_killed_mid_epoch_resumes_to_the_uninterrupted_result(odd_dataset, tmp_path):
    from test_faults import DIE_MID_WRITE, temporaries

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for out in (whole, killed):
        prepare_folds(load_config(CONFIG, overrides(odd_dataset, out)))
    folds = pd.read_csv(whole / "folds.csv")
    fold = int(folds["fold"].value_counts().idxmin())  # the larger training set: 4 steps per rank
    settings = (f"train.folds=[{fold}]", "train.epochs=1", "train.checkpoint_every=1")
    torchrun("train.py", *overrides(odd_dataset, whole, *settings))
    # Rank 0 kills itself halfway through writing its 2nd step checkpoint; torchrun then stops rank 1.
    dying = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "--no-python", sys.executable, "-c", DIE_MID_WRITE, str(ROOT / "train.py"),
                            "--config", str(CONFIG), *overrides(odd_dataset, killed, *settings)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "DIE_AT_WRITE": "2"})
    assert dying.returncode != 0
    assert read_checkpoint(killed / f"fold_{fold}" / "last.pt")["step"] == 1
    resumed = torchrun("train.py", *overrides(odd_dataset, killed, *settings))
    assert "at epoch 1, step 1" in resumed.stdout
    a, b = (read_checkpoint(out / f"fold_{fold}" / "last.pt") for out in (whole, killed))
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    logs = [pd.read_csv(out / f"fold_{fold}" / "log.csv").drop(columns="time_s") for out in (whole, killed)]
    pd.testing.assert_frame_equal(*logs)  # the train loss too: the partial sum of both ranks was kept
    assert temporaries(killed / f"fold_{fold}") == []


@pytest.mark.slow
def test_torchrun_refused_by_another_runs_lock_stops_every_rank_with_the_message(odd_dataset, tmp_path):
    from test_hostile import HOLD, start_process, stop

    prepare_folds(load_config(CONFIG, overrides(odd_dataset, tmp_path)))
    holder = start_process(HOLD, str(tmp_path / "fold_0"))
    try:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 str(ROOT / "train.py"), "--config", str(CONFIG),
                                 *overrides(odd_dataset, tmp_path, "train.folds=[0]", "train.epochs=1")],
                                cwd=ROOT, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    finally:
        stop(holder)
    # Rank 0 cannot claim fold 0; both ranks learn it at once and stop with status 2, nothing trained.
    assert result.returncode != 0
    assert f"error: fold 0 ({tmp_path / 'fold_0'}): in use by" in result.stderr and f"pid {holder.pid}" in result.stderr
    assert "error: rank 0 could not claim the folds' folders" in result.stderr
    assert "exitcode  : 2" in result.stderr and not (tmp_path / "fold_0").exists()
