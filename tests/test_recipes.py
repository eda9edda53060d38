"""What the 1st-place Carvana families' recipes need from training and prediction: the edge-weighted loss worked
out by hand, the optimisers and schedules epoch by epoch, gradient accumulation and clipping, a resume inside an
accumulation, the logits resized before the sigmoid, and folds read from a file (the team's own, on the real
cars)."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ternaus.checkpoint import FoldState, read_checkpoint
from ternaus.config import load_config
from ternaus.data.geometry import Geometry
from ternaus.errors import ConfigError, DataError, TrainingError
from ternaus.folds import folds_from_file
from ternaus.inference import image_probabilities
from ternaus.losses import SegmentationLoss, bce_dice_edge_loss, edge_weights
from ternaus.optim import build_optimizer, build_scheduler, cycle_factor, step_factor, step_then_cycle_factor
from ternaus.prepare import prepare_folds
from ternaus.runtime import Runtime
from ternaus.training import accumulation_group, train, train_step

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data"

# ---------------------------------------------------------------- the edge-weighted loss


def square_mask() -> torch.Tensor:
    target = torch.zeros(1, 1, 6, 6)
    target[..., 2:4, 2:4] = 1  # a 2 x 2 car in a 6 x 6 image
    return target


def test_the_edge_band_by_hand():
    # The 3 x 3 average (zeros beyond the border counted) is above 0.01 wherever the window touches the square:
    # rows and columns 1 to 4, 16 pixels. It never reaches 0.99: no 3 x 3 window fits inside a 2 x 2 square.
    # 16 pixels weigh 3, the other 20 weigh 1; then all scaled by 36 / (16 * 3 + 20) to a mean of 1.
    scale = 36 / 68
    expected = torch.full((6, 6), scale)
    expected[1:5, 1:5] = 3 * scale
    torch.testing.assert_close(edge_weights(square_mask(), window=3, edge_weight=3.0)[0, 0], expected)
    assert torch.equal(edge_weights(square_mask(), window=1), torch.ones(1, 1, 6, 6))  # a 1 x 1 average is 0 or 1
    full = torch.ones(1, 1, 9, 9)  # inside a big mask the average is 1, not strictly below 0.99: no band there
    assert edge_weights(full, window=3)[0, 0, 4, 4] < edge_weights(full, window=3)[0, 0, 0, 0]


def test_the_edge_weighted_loss_by_hand():
    logits = torch.zeros(1, 1, 6, 6)
    logits[0, 0, 1, 1] = 4.0  # a confident mistake on the band (its target is 0)
    s = 36 / 68
    w_band, w_out = 3 * s, s
    p = torch.sigmoid(torch.tensor(4.0)).item()
    # BCE: ln 2 for every pixel at logit 0; softplus(4) for the mistake; weighted mean with the weights' sum 36.
    bce = (20 * w_out * math.log(2) + 15 * w_band * math.log(2) + w_band * math.log1p(math.exp(4.0))) / 36
    # Dice: the 4 car pixels (all on the band) at p = 0.5; the other 12 band pixels at 0.5 but one at p.
    overlap = 4 * w_band ** 2 * 0.5
    predicted = 15 * w_band ** 2 * 0.5 + w_band ** 2 * p + 20 * w_out ** 2 * 0.5
    dice = (2 * overlap + 1) / (predicted + 4 * w_band ** 2 + 1)
    loss = bce_dice_edge_loss(logits, square_mask(), weight=1.0, edge_window=3, edge_weight=3.0)
    assert loss.item() == pytest.approx(bce + 1 - dice, rel=1e-6)
    module = SegmentationLoss("bce_dice_edge", 0.5, edge_window=3, edge_weight=3.0)
    assert module(logits, square_mask()).item() == pytest.approx(bce + 0.5 * (1 - dice), rel=1e-6)


def test_the_edge_loss_settings_are_checked():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.loss.name=bce_dice_edge", "train.loss.edge_window=40", "model.activation=softmax"])
    assert "train.loss.edge_window: 40 is even" in str(err.value) and "use 41" in str(err.value)
    assert "bce_dice_edge weighs sigmoid outputs" in str(err.value)


# ---------------------------------------------------------------- optimisers and schedules


def test_the_families_schedules_epoch_by_epoch():
    vgg = load_config(ROOT / "configs" / "carvana_vgg11_1024.yaml").train
    cycle = [1.0] * 10 + [0.1] * 5 + [0.01] * 5
    assert [cycle_factor(e, vgg.schedule) for e in range(60)] == pytest.approx(cycle * 3)
    scratch = load_config(ROOT / "configs" / "carvana_scratch.yaml").train
    assert [step_factor(e, scratch.schedule) for e in (0, 99, 100, 199, 200, 249)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    albu = load_config(ROOT / "configs" / "carvana_linknet34.yaml").train
    restart = [1.0, 1.0, 0.1, 0.1, 0.01]
    expected = [1.0] * 12 + [0.1] * 11 + (restart * 4)[:17]
    assert [step_then_cycle_factor(e, albu.schedule) for e in range(40)] == pytest.approx(expected)


def test_sgd_with_momentum_and_weight_decay_follows_its_schedule_through_the_scheduler():
    train_cfg = load_config(ROOT / "configs" / "carvana_scratch.yaml", ["train.schedule.step_epochs=2"]).train
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer([parameter], train_cfg.optimizer, train_cfg.lr, train_cfg.weight_decay)
    assert isinstance(optimizer, torch.optim.SGD)
    assert (optimizer.defaults["momentum"], optimizer.defaults["weight_decay"]) == (0.9, 5e-4)
    scheduler = build_scheduler(optimizer, train_cfg.schedule)
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.005, 0.005, 0.0025, 0.0025, 0.00125])


def test_accumulation_groups_by_hand():
    # 7 batches, 3 per step: steps after batches 2, 5 and 6 (the epoch's last group holds the one left).
    groups = [accumulation_group(step, 7, 3) for step in range(7)]
    assert groups == [(3, False), (3, False), (3, True), (3, False), (3, False), (3, True), (1, True)]
    assert [accumulation_group(step, 4, 1) for step in range(4)] == [(1, True)] * 4
    with pytest.raises(ConfigError, match="train.checkpoint_every: 250 is not a multiple of train.accumulate=4"):
        load_config(None, ["train.accumulate=4", "train.checkpoint_every=250"])


def one_layer_state(lr: float, clip: float | None = None, momentum: float = 0.0) -> FoldState:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    train_cfg = load_config(None, ["train.optimizer=sgd", f"train.lr={lr}", f"train.optimizer.momentum={momentum}"]).train
    optimizer = build_optimizer(model.parameters(), train_cfg.optimizer, train_cfg.lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    # BCE alone (a Dice weight of 0): a mean over pixels, so two images' mean is the mean of their means.
    return FoldState(model, optimizer, build_scheduler(optimizer, train_cfg.schedule), scaler, SegmentationLoss("bce_dice", 0.0))


def batch_of(images: torch.Tensor, masks: torch.Tensor) -> dict:
    return {"image": images, "mask": masks}


def test_two_accumulated_batches_of_one_step_as_one_batch_of_two():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 8, 8), generator=g, dtype=torch.uint8)
    masks = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    runtime = Runtime.detect(amp=False)
    whole, accumulated = one_layer_state(0.5), one_layer_state(0.5)
    train_step(whole, batch_of(images, masks), runtime)
    train_step(accumulated, batch_of(images[:1], masks[:1]), runtime, share=0.5, step=False)
    assert torch.equal(accumulated.model.weight, whole.model.weight) is False  # not stepped yet
    train_step(accumulated, batch_of(images[1:], masks[1:]), runtime, share=0.5, step=True)
    for a, b in zip(whole.model.parameters(), accumulated.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in accumulated.model.parameters())  # cleared for the next group


def test_gradient_clipping_bounds_the_steps_norm():
    images = torch.randint(0, 256, (1, 3, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    masks = torch.ones(1, 1, 8, 8)
    runtime = Runtime.detect(amp=False)
    moved = []
    for clip in (None, 1e-3):
        state = one_layer_state(1.0, clip)
        before = [p.detach().clone() for p in state.model.parameters()]
        train_step(state, batch_of(images, masks), runtime, clip_grad_norm=clip)
        moved.append(math.sqrt(sum(((p - b) ** 2).sum().item() for p, b in zip(state.model.parameters(), before))))
    assert moved[0] > 1e-2  # unclipped, plain SGD at lr 1 moves by the gradient's norm
    assert moved[1] == pytest.approx(1e-3, rel=1e-4)


class Interrupted(Exception):
    """Stands for a kill: raised from inside a training step."""


def scratch_config(root: Path, out: Path, *extra: str):
    return load_config(ROOT / "configs" / "carvana_scratch.yaml", [
        f"data.root={root}", f"output_dir={out}", "data.num_workers=0", "data.input_size=[32,32]", "folds.n_folds=2",
        "model.widths=[4,8]", "model.center_width=8", "train.epochs=1", "train.batch_size=1", "train.accumulate=2",
        "train.val_batch_size=16", "train.loss.edge_window=5", "runtime.amp=false", "runtime.deterministic=true",
        "train.lr=0.05", *extra])


def test_a_run_killed_inside_an_accumulation_resumes_to_the_uninterrupted_weights(tiny_dataset, tmp_path,
                                                                                  monkeypatch):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for out in (whole, resumed):
        prepare_folds(scratch_config(tiny_dataset, out))
    folds = pd.read_csv(whole / "folds.csv")
    fold = int(folds["fold"].value_counts().idxmax())  # the smaller training set
    train(scratch_config(tiny_dataset, whole), fold=fold)

    calls, real_loss = [0], SegmentationLoss.forward

    def loss_then_stop(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 6:  # batch 6: the second of the third group, after the checkpoint at batch 4
            raise Interrupted
        return real_loss(self, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(SegmentationLoss, "forward", loss_then_stop)
        train(scratch_config(tiny_dataset, resumed, "train.checkpoint_every=4"), fold=fold)
    assert read_checkpoint(resumed / f"fold_{fold}" / "last.pt")["step"] == 4
    with pytest.raises(TrainingError, match="with train.accumulate=2; resume with train.accumulate=2"):
        train(scratch_config(tiny_dataset, resumed, "train.accumulate=4", "train.checkpoint_every=4"), fold=fold)
    train(scratch_config(tiny_dataset, resumed, "train.checkpoint_every=4"), fold=fold)

    a, b = (read_checkpoint(out / f"fold_{fold}" / "last.pt") for out in (whole, resumed))
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
    logs = [pd.read_csv(out / f"fold_{fold}" / "log.csv").drop(columns="time_s") for out in (whole, resumed)]
    pd.testing.assert_frame_equal(*logs)


# ---------------------------------------------------------------- logits resized before the sigmoid


class ScaledFirstChannel(torch.nn.Module):
    """A stand-in network: logits = 10 x the image's first channel (flipping the image flips its logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * x[:, :1]


def test_resize_back_logits_resizes_each_views_logits_then_takes_the_sigmoid():
    images = torch.randn(2, 3, 2, 4, generator=torch.Generator().manual_seed(3))
    sizes = [(4, 8), (3, 5)]  # two images of different sizes in one batch
    geometry, runtime, model = Geometry(input_size=(2, 4)), Runtime.detect(amp=False), ScaledFirstChannel()

    def resized(t, size):
        return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]

    got = image_probabilities([model], images, sizes, runtime, geometry, "hflip", resize_back="logits")
    plain = image_probabilities([model], images, sizes, runtime, geometry, "hflip")
    for i, size in enumerate(sizes):
        logits = 10 * images[i, :1]
        torch.testing.assert_close(got[i], torch.sigmoid(resized(logits, size)))
        torch.testing.assert_close(plain[i], resized(torch.sigmoid(logits), size))
        assert not torch.allclose(got[i], plain[i], atol=1e-3)
    padded = Geometry(None, 2)  # padding: cropped either way, the same numbers
    a, b = (image_probabilities([model], images, [(2, 3)] * 2, runtime, padded, "none", resize_back=mode)
            for mode in ("logits", "probabilities"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------- folds from a file


def fold_file(path: Path, folds: dict[str, int]) -> Path:
    table = pd.DataFrame({"id": list(folds), "square": range(len(folds)), "fold": list(folds.values())})
    table.to_csv(path, index=False)
    return path


def cars_of(root: Path) -> list[str]:
    return sorted({p.name.rsplit("_", 1)[0] for p in (root / "train").glob("*.jpg")})


def test_folds_from_a_file_are_taken_as_they_are_and_a_missing_car_is_named(tiny_dataset, tmp_path):
    cars = cars_of(tiny_dataset)
    given = {car: k for k, car in enumerate(cars)} | {"not_in_the_data": 1}
    path = fold_file(tmp_path / "team.csv", given)
    cfg = load_config(None, [f"data.root={tiny_dataset}", f"output_dir={tmp_path / 'run'}", "folds.n_folds=3",
                             f"folds.from_file={path}", "folds.stratify=mask_area"])
    folds = pd.read_csv(prepare_folds(cfg), dtype={"car_id": str})
    assert folds.groupby("car_id")["fold"].first().to_dict() == {car: given[car] for car in cars}
    assert len(folds) == 16 * len(cars)

    fold_file(path, {car: k for k, car in enumerate(cars[1:])} | {"other": 2})
    with pytest.raises(DataError, match=rf"does not name 1 car_id value\(s\) of the data, e.g. \['{cars[0]}'\]"):
        prepare_folds(cfg)
    fold_file(path, {car: 0 for car in cars} | {"other": 1, "more": 2})
    with pytest.raises(DataError, match=r"fold\(s\) \[1, 2\] of .* hold none of this data's car_id values"):
        prepare_folds(cfg)
    with pytest.raises(DataError, match=r"holds folds \[0, 1, 2\], folds.n_folds=5: set folds.n_folds=3"):
        prepare_folds(load_config(None, [f"data.root={tiny_dataset}", f"output_dir={tmp_path / 'run'}",
                                         f"folds.from_file={path}"]))


@pytest.mark.skipif(not (REAL / "carvana-real").is_dir(), reason="../shared/data (the real Carvana cars and the "
                    "1st-place team's fold files) is not beside this clone")
def test_the_teams_fold_files_split_the_real_cars_as_they_say(tmp_path):
    files = REAL / "carvana-1st-place-folds"
    cfg = load_config(None, [f"data.root={REAL / 'carvana-real'}", f"output_dir={tmp_path}",
                             f"folds.from_file={files / 'unet11_folds.csv'}"])
    by_prepare = pd.read_csv(prepare_folds(cfg), dtype={"car_id": str})  # the whole stage, its checks included
    table = by_prepare[["id", "car_id"]]
    for name in ("unet11_folds.csv", "linknet34_fma.csv"):
        team = pd.read_csv(files / name, dtype={"id": str}).set_index("id")["fold"]
        folds = by_prepare if name == "unet11_folds.csv" else folds_from_file(table, files / name, 5)
        cars = folds.groupby("car_id")["fold"].agg(["first", "nunique", "size"])
        assert len(cars) == 16 and (cars["nunique"] == 1).all() and (cars["size"] == 4).all()
        assert cars["first"].to_dict() == team[cars.index].to_dict()
        assert sorted(cars["first"].unique()) == [0, 1, 2, 3, 4]
