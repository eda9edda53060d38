"""ensemble.py: the weighted mean of hand-made prediction PNGs byte for byte, the rules after it, a kill and a
resume, the refusals, ensembles of ensembles, and two small families trained with different folds, merged and
submitted, with the ensemble's out-of-fold CV beside each family's."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from test_faults import pngs, run_dying_mid_write, temporaries

from ternaus.data.source import DataSource
from ternaus.config import TopRuleConfig, load_config
from ternaus.data import layouts
from ternaus.ensemble import ensemble
from ternaus.errors import ConfigError, DataError
from ternaus.merge import top_unreliable, unreliable_top_box, weighted_mean

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (40, 62)  # the tiny dataset's images: every prediction PNG has their size


def listed_test_ids(root: Path) -> list[str]:
    return [row["id"] for row in layouts.test_rows(DataSource.of(load_config(None, [f"data.root={root}"])))]


def train_ids(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "train").glob("*.jpg"))


def make_member(runs: Path, name: str, levels: np.ndarray, ids: list[str], oof_ids: list[str] = (),
                num_classes: int = 1, made_by: str | None = None) -> Path:
    """A run folder as predict.py leaves it: its saved config, the record of what made its PNGs, the PNGs."""
    run_dir = runs / name
    (run_dir / "configs").mkdir(parents=True, exist_ok=True)
    saved = {"predict": {"out_dir": "predictions"}, "model": {"num_classes": num_classes}}
    (run_dir / "configs" / "predict.yaml").write_text(yaml.safe_dump(saved))
    for folder, names in (("predictions", ids), ("oof_predictions", oof_ids)):
        (run_dir / folder).mkdir(exist_ok=True)
        for image_id in names:
            cv2.imwrite(str(run_dir / folder / f"{image_id}.png"), levels)
    record = {"fingerprint": {"checkpoints": {"0": made_by or name}}, "ids": list(ids), "sequence": 1}
    (run_dir / "predictions" / ".predict.json").write_text(json.dumps(record))
    return run_dir


def ensemble_config(root: Path, out: Path, members: list[dict], *extra: str):
    listed = yaml.safe_dump(members, default_flow_style=True).strip()
    return load_config(None, [f"data.root={root}", f"output_dir={out}", f"ensemble.members={listed}",
                              "predict.writer_threads=2", "ensemble.oof=false", *extra])


def striped(*rows: int) -> np.ndarray:
    """A 40 x 62 map whose four 10-row stripes hold the given levels under a first stripe of ``rows[0]``."""
    levels = np.empty(SHAPE, np.uint8)
    for k, level in enumerate(rows):
        levels[10 * k: 10 * (k + 1)] = level
    return levels


# ---------------------------------------------------------------- the weighted mean, byte for byte


def test_the_weighted_mean_of_hand_made_pngs_byte_for_byte(tiny_dataset, tmp_path):
    ids = listed_test_ids(tiny_dataset)
    a = make_member(tmp_path, "a", striped(255, 10, 2, 6), ids)
    b = make_member(tmp_path, "b", striped(0, 11, 0, 0), ids)
    cfg = ensemble_config(tiny_dataset, tmp_path / "ens", [{"run": str(a), "weight": 1}, {"run": str(b), "weight": 3}])
    out = ensemble(cfg)["predictions"]
    # (a + 3 b) / 4: 63.75 -> 64, 10.75 -> 11, 0.5 -> 0 and 1.5 -> 2 (halves to even, as to_uint8 rounds)
    expected = cv2.imencode(".png", striped(64, 11, 0, 2))[1].tobytes()
    assert sorted(pngs(out)) == sorted(f"{i}.png" for i in ids)
    assert all(data == expected for data in pngs(out).values())
    assert weighted_mean([np.array([100], np.uint8), np.array([201], np.uint8)], [1, 3]).tolist() == [176]


def test_make_submission_reads_the_ensemble_like_any_run(tiny_dataset, tmp_path):
    from ternaus.submission import make_submission

    ids = listed_test_ids(tiny_dataset)
    a = make_member(tmp_path, "a", striped(200, 200, 0, 0), ids)
    b = make_member(tmp_path, "b", striped(100, 0, 0, 0), ids)
    cfg = ensemble_config(tiny_dataset, tmp_path / "ens", [{"run": str(a)}, {"run": str(b)}],
                          "postprocess.threshold=0.5", "postprocess.use_searched=false", "submission.processes=1")
    ensemble(cfg)  # rows 0-9: 150, rows 10-19: 100 -> only the first stripe is >= 128
    submission = pd.read_csv(make_submission(cfg))
    assert submission["img"].tolist() == [f"{i}.jpg" for i in ids]
    assert set(submission["rle_mask"]) == {f"1 {10 * 62}"}


# ---------------------------------------------------------------- the rule


def test_the_top_is_unreliable_rule_by_hand():
    reference = np.zeros((100, 100), np.uint8)
    reference[10:40, 20:60] = 100  # uncertain (30 < 100 < 210): 1,200 pixels in the top half
    reference[60:90, 10:90] = 250  # the confident body, below
    reference[40:45, 20:25] = 250  # a corner that makes the hull of the region above `level` differ from it
    rule = TopRuleConfig(reference="albu", erode_iterations=0, min_area=1000, margin=5, level=55)
    assert unreliable_top_box(reference, rule) == (5, 45, 15, 65)  # rows 10..39, cols 20..59, grown by 5
    merged = np.full((1, 100, 100), 90, np.uint8)
    settings = type("Settings", (), {"top_unreliable": rule})()
    out = top_unreliable(merged, {"albu": reference[None]}, settings)
    # Above 55 the biggest region is the body (2,400 px); it lies below the box, so the box is emptied...
    assert (out[0, 5:45, 15:65] == 0).all() and (out[0, 45:, :] == 90).all() and (out[0, :5] == 90).all()
    reference[60:90, 10:90] = 0
    out = top_unreliable(merged, {"albu": reference[None]}, settings)
    # ...and without it, the box holds the convex hull of the uncertain block and the corner below it, one region
    # (rows 10..44): its corners (10, 20), (10, 59), (39, 59), (44, 24), (44, 20) as (row, column).
    hull = out[0, 5:45, 15:65] == 255  # box coordinates: row - 5, column - 15
    assert hull[5:35, 5:45].all() and not hull[:5].any() and not hull[:, :5].any() and not hull[:, 45:].any()
    assert hull[44 - 5, 22 - 15] and reference[44, 22] > 55  # the corner
    # Row 41 of the hull reaches column 59 - 35 * 2 / 5 = 45: (41, 30) is in it though neither region covers it;
    # row 43 reaches column 31 only.
    assert hull[41 - 5, 30 - 15] and reference[41, 30] == 0
    assert not hull[43 - 5, 50 - 15]
    assert (out[0, 45:] == 90).all()
    assert top_unreliable(merged, {"albu": reference[None]},
                          type("S", (), {"top_unreliable": TopRuleConfig(reference="albu", min_area=5000)})()) is merged


# ---------------------------------------------------------------- refusals


def test_mismatched_members_are_refused_before_anything_is_written(tiny_dataset, tmp_path):
    ids = listed_test_ids(tiny_dataset)
    good = make_member(tmp_path, "good", striped(1, 2, 3, 4), ids)
    fewer = make_member(tmp_path, "fewer", striped(1, 2, 3, 4), ids[1:])
    more = make_member(tmp_path, "more", striped(1, 2, 3, 4), [*ids, "another_01"])
    two = make_member(tmp_path, "two", np.zeros((80, 62), np.uint8), ids, num_classes=2)
    cfg = ensemble_config(tiny_dataset, tmp_path / "ens", [{"run": str(p)} for p in (good, fewer, more, two)])
    with pytest.raises(DataError) as err:
        ensemble(cfg)
    message = str(err.value)
    assert f"fewer: 1 test image(s) without a prediction in {fewer / 'predictions'}, e.g. ['{ids[0]}']" in message
    assert "more: 1 prediction(s) of images not in this test set" in message and "another_01" in message
    assert "two: 2 class(es) (its model.num_classes), this ensemble's model.num_classes=1" in message
    assert not (tmp_path / "ens").exists()

    cv2.imwrite(str(fewer / "predictions" / f"{ids[0]}.png"), np.zeros((40, 60), np.uint8))
    cfg = ensemble_config(tiny_dataset, tmp_path / "ens", [{"run": str(good)}, {"run": str(fewer)}])
    with pytest.raises(DataError, match=rf"{ids[0]}: the members' PNGs are \(height, width\) \{{'good': \(40, 62\), "
                                        r"'fewer': \(40, 60\)\}"):
        ensemble(cfg)
    with pytest.raises(DataError, match=r"neither .*configs/predict.yaml nor .*configs/ensemble.yaml exists"):
        ensemble(ensemble_config(tiny_dataset, tmp_path / "ens", [{"run": str(tmp_path / "nothing")}]))


def test_the_ensemble_settings_are_checked_together():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["ensemble.members=[{run: runs/a}, {run: runs/b/a, weight: -1}, {weight: 1}]",
                           "ensemble.rules=[top_unreliable, smooth]", "ensemble.top_unreliable.level=300"])
    message = str(err.value)
    assert "ensemble.rules: must be one of top_unreliable, got 'smooth'" in message
    assert "ensemble.members: the name(s) ['a'] are used twice" in message
    assert "ensemble.members[1].weight: must be 0 or more, got -1.0" in message
    assert "ensemble.members[2].run: the output_dir of a run" in message
    assert "ensemble.top_unreliable.reference: None is not a member's name" in message
    assert "level must be uint8 levels (0..255), got 30, 210, 300" in message
    with pytest.raises(ConfigError, match=r"unknown key 'ensemble.members\[0\].wieght' \(did you mean 'weight'\?\)"):
        load_config(None, ["ensemble.members=[{run: runs/a, wieght: 2}]"])
    with pytest.raises(ConfigError, match="ensemble.members lists no run"):
        ensemble(load_config(None, []))


# ---------------------------------------------------------------- killed, resumed; nested


@pytest.mark.slow
def test_a_killed_merge_resumes_to_byte_identical_pngs(tiny_dataset, tmp_path, capsys):
    ids = listed_test_ids(tiny_dataset)
    members = [{"run": str(make_member(tmp_path, name, striped(*levels), ids)), "weight": weight}
               for name, levels, weight in (("a", (255, 10, 2, 6), 1), ("b", (0, 11, 0, 0), 2))]
    config = tmp_path / "ensemble.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(tiny_dataset)}, "predict": {"writer_threads": 2},
                                      "ensemble": {"members": members, "oof": False}}))
    reference = pngs(ensemble(load_config(config, [f"output_dir={tmp_path / 'reference'}"]))["predictions"])
    assert len(reference) == len(ids) == 16

    # ensemble.py really killed (SIGKILL) while writing its 6th PNG: a half-written temporary file is left.
    args = [str(ROOT / "ensemble.py"), "--config", str(config), f"output_dir={tmp_path / 'killed'}"]
    run_dying_mid_write(args, tmp_path / "kill.log", nth_write=6)
    out = tmp_path / "killed" / "predictions"
    first = pngs(out)
    assert 0 < len(first) < 16 and temporaries(out)
    assert all(reference[name] == data for name, data in first.items())
    victim = out / sorted(first)[0]  # and a PNG cut short under its final name is not taken as done
    victim.write_bytes(victim.read_bytes()[:40])
    capsys.readouterr()
    ensemble(load_config(config, [f"output_dir={tmp_path / 'killed'}"]))
    assert f"resuming: {len(first) - 1} of 16 merged predictions were already written" in capsys.readouterr().out
    assert pngs(out) == reference and temporaries(out) == []
    ensemble(load_config(config, [f"output_dir={tmp_path / 'killed'}", "ensemble.members=[%s]" % members[0]["run"]
                                  .join(["{run: ", ", weight: 1}"])]))
    text = capsys.readouterr().out
    assert "removing 16 earlier predictions" in text and "resuming" not in text


def test_an_ensemble_is_a_member_of_another_with_its_out_of_fold_maps(tiny_dataset, tmp_path):
    ids, oof = listed_test_ids(tiny_dataset), train_ids(tiny_dataset)
    a = make_member(tmp_path, "a", striped(200, 100, 0, 0), ids, oof)
    b = make_member(tmp_path, "b", striped(100, 100, 0, 0), ids, oof)
    inner = ensemble_config(tiny_dataset, tmp_path / "inner", [{"run": str(a)}, {"run": str(b)}], "ensemble.oof=true")
    ensemble(inner)
    assert len(pngs(tmp_path / "inner" / "oof_predictions")) == len(oof) == 48
    c = make_member(tmp_path, "c", striped(0, 0, 0, 0), ids, oof)
    outer = ensemble_config(tiny_dataset, tmp_path / "outer", [{"run": str(tmp_path / "inner"), "name": "inner"},
                                                                {"run": str(c), "weight": 2}], "ensemble.oof=true")
    table = ensemble(outer)["cv"].set_index("run")
    assert list(table.index) == ["inner", "c", "ensemble"]
    expected = cv2.imencode(".png", striped(50, 33, 0, 0))[1].tobytes()  # (150 + 2 * 0) / 3, (100 + 0) / 3
    assert set(pngs(tmp_path / "outer" / "predictions").values()) == {expected}
    assert table.loc["c", "cv"] == pytest.approx(0.0)  # an empty prediction of the synthetic cars: Dice 0


def test_the_ensembles_cv_and_search_use_a_metric_of_objects(tiny_dataset, tmp_path):
    """Under f2_instances (the objects are each mask's connected components): a member whose out-of-fold maps are
    the true masks scores 1, an empty one 0 (every synthetic image has a car), their mean (128 on the car, at
    threshold 0.5) scores 1 again."""
    from ternaus.data.files import read_mask

    ids, oof = listed_test_ids(tiny_dataset), train_ids(tiny_dataset)
    exact = make_member(tmp_path, "exact", striped(0, 0, 0, 0), ids)
    empty = make_member(tmp_path, "empty", striped(0, 0, 0, 0), ids, oof)
    for image_id in oof:
        truth = read_mask(tiny_dataset / "train_masks" / f"{image_id}_mask.gif")
        cv2.imwrite(str(exact / "oof_predictions" / f"{image_id}.png"), truth * 255)
    cfg = ensemble_config(tiny_dataset, tmp_path / "ens", [{"run": str(exact)}, {"run": str(empty)}],
                          "ensemble.oof=true", "postprocess.metric=f2_instances")
    table = ensemble(cfg)["cv"].set_index("run")
    assert table.loc["exact", "cv"] == pytest.approx(1.0) and table.loc["empty", "cv"] == pytest.approx(0.0)
    assert table.loc["ensemble", "cv"] == pytest.approx(1.0)
    post = json.loads((tmp_path / "ens" / "postprocess.json").read_text())
    assert post["metric"] == "f2_instances" and post["default_score"] == pytest.approx(1.0)
    oof_csv = pd.read_csv(tmp_path / "ens" / "oof.csv")
    assert len(oof_csv) == 48 and oof_csv["f2_instances"].eq(1.0).all()


def test_make_submission_refuses_the_searched_values_of_an_ensemble_whose_members_changed(tiny_dataset, tmp_path):
    from ternaus.submission import make_submission

    ids, oof = listed_test_ids(tiny_dataset), train_ids(tiny_dataset)
    a = make_member(tmp_path, "a", striped(200, 100, 0, 0), ids, oof)
    b = make_member(tmp_path, "b", striped(100, 100, 0, 0), ids, oof, made_by="first models")
    members = [{"run": str(a)}, {"run": str(b)}]
    cfg = ensemble_config(tiny_dataset, tmp_path / "ens", members, "ensemble.oof=true", "submission.processes=1")
    ensemble(cfg)
    make_submission(cfg)  # the searched values belong to these predictions
    make_member(tmp_path, "b", striped(0, 100, 0, 0), ids, oof, made_by="second models")
    ensemble(ensemble_config(tiny_dataset, tmp_path / "ens", members, "submission.processes=1"))  # oof not redone
    with pytest.raises(DataError, match="postprocess.json was searched on the out-of-fold predictions of other"):
        make_submission(cfg)


# ---------------------------------------------------------------- two families, end to end


def family_config(root: Path, out: Path, *extra: str):
    return load_config(ROOT / "configs" / "carvana_scratch.yaml", [
        f"data.root={root}", f"output_dir={out}", "data.num_workers=0", "train.epochs=1", "runtime.amp=false",
        "train.val_batch_size=16", "train.checkpoint_every=0", "predict.batch_size=16", "predict.writer_threads=2",
        "submission.processes=1", *extra])


@pytest.mark.slow
def test_two_families_with_different_folds_merged_and_submitted(tiny_dataset, tmp_path, capsys):
    from PIL import Image

    from ternaus.inference import predict
    from ternaus.prepare import prepare_folds
    from ternaus.submission import make_submission
    from ternaus.training import train

    cars = sorted({i.rsplit("_", 1)[0] for i in train_ids(tiny_dataset)})
    team = tmp_path / "folds.csv"
    pd.DataFrame({"id": [*cars, "elsewhere"], "fold": [0, 1, 2, 0]}).to_csv(team, index=False)
    families = {  # resized with the logits resized back, SGD, edge loss, 2 x 2 accumulated; padded, Adam, 3 folds
        "small": family_config(tiny_dataset, tmp_path / "small", "folds.n_folds=2", "folds.seed=1",
                               "model.widths=[4,8]", "model.center_width=8", "data.input_size=[32,32]",
                               "train.batch_size=2", "train.accumulate=2", "train.loss.edge_window=5", "train.lr=0.05"),
        "wide": family_config(tiny_dataset, tmp_path / "wide", "folds.n_folds=3", f"folds.from_file={team}",
                              "model.widths=[8,16]", "model.center_width=16", "data.input_size=null",
                              "train.optimizer=adam", "train.lr=0.01", "train.schedule=constant",
                              "train.loss.name=bce_dice", "train.batch_size=8", "train.accumulate=1"),
    }
    for cfg in families.values():
        prepare_folds(cfg)
        train(cfg)
        predict(cfg)
    splits = [pd.read_csv(tmp_path / name / "folds.csv").set_index("id")["fold"] for name in families]
    assert splits[0].nunique() == 2 and splits[1].nunique() == 3

    members = [{"run": str(tmp_path / name), "name": name} for name in families]
    cfg = ensemble_config(tiny_dataset, tmp_path / "ensemble", members, "ensemble.oof=true",
                          "postprocess.use_searched=true", "submission.processes=1")
    capsys.readouterr()
    table = ensemble(cfg)["cv"].set_index("run")
    printed = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + printed[printed.index("out-of-fold CV"):])
    assert list(table.index) == ["small", "wide", "ensemble"]
    for name in families:  # each family's CV here is what its own predict.py reported
        assert table.loc[name, "cv"] == pytest.approx(pd.read_csv(tmp_path / name / "oof.csv")["dice"].mean())

    # The ensemble's CV at 0.5, recomputed from the two families' out-of-fold PNGs and the GIF masks.
    scores = []
    for image_id in train_ids(tiny_dataset):
        maps = [cv2.imread(str(tmp_path / name / "oof_predictions" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
                for name in families]
        predicted = np.rint((maps[0].astype(float) + maps[1]) / 2) >= 127.5
        truth = np.array(Image.open(tiny_dataset / "train_masks" / f"{image_id}_mask.gif")) > 0
        total = predicted.sum() + truth.sum()
        scores.append(2 * (predicted & truth).sum() / total if total else 1.0)
    assert table.loc["ensemble", "cv"] == pytest.approx(np.mean(scores))
    searched = json.loads((tmp_path / "ensemble" / "postprocess.json").read_text())
    assert searched["score"] == pytest.approx(table.loc["ensemble", "cv_searched"])

    submission = make_submission(cfg)  # written, then checked against the sample's rows and the RLE rules
    assert len(pd.read_csv(submission)) == len(listed_test_ids(tiny_dataset))
