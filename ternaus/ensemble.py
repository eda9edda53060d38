"""``ensemble.py``: several runs' test predictions merged into one predictions folder, and the ensemble's CV.

Each member is a run that ``predict.py`` finished (``ensemble.members``: its ``output_dir``, a weight, a name).
The stage writes, under this config's ``output_dir``, the weighted mean of the members' probability PNGs
(``ternaus.merge.weighted_mean``), with the ``ensemble.rules`` applied after it, as ``predictions/<id>.png``:
the folder ``make_submission.py`` reads, so the ensemble is submitted like any single run.

Before the first file is written it refuses members whose test ids, class counts or PNG sizes differ from
each other or from this config's test set. It streams (one image per writer thread in memory) and resumes as
``predict.py`` does, with the same record of what made the folder: a rerun keeps every complete PNG made by
the same members and settings and merges the rest, byte-identical to an uninterrupted run.

Out of fold: every member's ``oof_predictions/<id>.png`` holds each training image predicted by the model that
did not train on it, whatever that member's folds were, so the members' maps of one image can be averaged
like the test maps. The CV of each member and of the ensemble is printed and written to ``ensemble_cv.csv``;
the threshold / minimum-area search runs on the ensemble and writes ``postprocess.json``, which
``make_submission.py`` then uses.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ternaus.data.source import DataSource
from ternaus.analysis import TrueObjects, search_thresholds, true_objects, write_oof_analysis
from ternaus.config import (Config, EnsembleConfig, EnsembleMember, PostprocessConfig, PredictConfig, member_name,
                            read_yaml, save_config, thresholds)
from ternaus.data.files import image_size, listing, png_shape, prediction_image, read_prediction
from ternaus.data.layouts import MaskSpec, list_train, load_masks, mask_spec, test_rows
from ternaus.errors import ConfigError, DataError
from ternaus.evaluation import Evaluator, ImageScores
from ternaus.inference import PngWriter, oof_outputs, remove_oof_temporaries, write_png
from ternaus.io import atomic_write
from ternaus.lineage import (check_oof, image_fingerprints, mark_oof_pending, oof_lineage, prediction_problems,
                             write_oof_lineage)
from ternaus.merge import weighted_mean
from ternaus.predictions import claim_reader, claim_writer, fingerprints_of, keep_or_redo, png_complete, searched_key
from ternaus.registry import RULES
from ternaus.run_files import RunFiles, predictions_record
from ternaus.stage import ConfigFile, StageOutputs, out_of_fold_lock

__all__ = ["ensemble", "EnsembleRun", "Member", "load_member", "check_members", "merge_maps", "merge_test", "score_oof",
           "ensemble_fingerprint"]

ENSEMBLE = "ensemble"  # the CV table's name for the merged maps


@dataclass(frozen=True)
class EnsembleRun:
    """What the ensemble stage's internals take, built once at its entry (``EnsembleRun.from_config``): this run's
    files, its data (the test set the members must cover, the training set the out-of-fold maps are scored on),
    with the classes, and the ``ensemble``, ``predict`` (resume, writer_threads) and
    ``postprocess`` (metric, threshold) sections."""

    files: RunFiles
    source: DataSource
    settings: EnsembleConfig
    predict: PredictConfig
    post: PostprocessConfig

    @classmethod
    def from_config(cls, cfg: Config) -> "EnsembleRun":
        return cls(RunFiles.of(cfg), DataSource.of(cfg), cfg.ensemble, cfg.predict, cfg.postprocess)

    @property
    def num_classes(self) -> int:
        """``model.num_classes``: the data's classes (``data.class_names`` has one name per class)."""
        return self.source.num_classes

    @property
    def scores_oof(self) -> bool:
        """Whether the out-of-fold maps are scored: ``ensemble.oof``, and one class (all the search covers)."""
        return self.settings.oof and self.num_classes == 1


@dataclass(frozen=True)
class Member:
    """A run of the ensemble: its name, weight, files and class count."""

    name: str
    weight: float
    files: RunFiles
    num_classes: int

    def prediction(self, image_id: str) -> Path:
        return self.files.predictions / f"{image_id}.png"

    def oof(self, image_id: str) -> Path:
        return self.files.oof_predictions / f"{image_id}.png"


def load_member(entry: EnsembleMember) -> Member:
    """The member ``entry`` names, from the configuration its ``predict.py`` saved (``configs/predict.yaml``), or
    its ``ensemble.py`` (``configs/ensemble.yaml``): an ensemble can be a member of another."""
    run, name = Path(entry.run), member_name(entry)
    saved = next((p for p in map(RunFiles(run).config, ("predict", "ensemble")) if p.is_file()), None)
    if saved is None:
        raise DataError(f"ensemble member {name}: neither {RunFiles(run).config('predict')} nor "
                        f"{RunFiles(run).config('ensemble')} exists; run predict.py for {run} first")
    settings = read_yaml(saved)
    files = RunFiles(run, predictions_dir=settings.get("predict", {}).get("out_dir", "predictions"))
    if not any(files.predictions.glob(".predict*.json")):
        raise DataError(f"ensemble member {name}: {files.predictions} holds no record of predict.py "
                        "(.predict.json); run predict.py for that run")
    return Member(name, float(entry.weight), files, int(settings.get("model", {}).get("num_classes", 1)))


# ---------------------------------------------------------------- refusals, before anything is written


def _id_problems(member: Member, ids: list[str]) -> list[str]:
    present = {p.stem for p in member.files.predictions.glob("*.png") if not p.name.startswith(".")}
    missing = [i for i in ids if i not in present]
    extra = sorted(present - set(ids))
    broken = [i for i in ids if i in present and not png_complete(member.prediction(i))]
    problems = []
    for count, what, examples in ((len(missing), "test image(s) without a prediction", missing),
                                  (len(extra), "prediction(s) of images not in this test set", extra),
                                  (len(broken), "prediction(s) cut short", broken)):
        if count:
            problems.append(f"{member.name}: {count} {what} in {member.files.predictions}, e.g. {examples[:3]}")
    return problems


def _size_problems(members: list[Member], ids: list[str]) -> list[str]:
    problems = []
    for image_id in ids:
        shapes = {m.name: png_shape(m.prediction(image_id)) for m in members}
        if len(set(shapes.values())) > 1:
            problems.append(f"{image_id}: the members' PNGs are (height, width) {shapes}")
    return problems


def _stale_problems(members: list[Member], ids: list[str], images: dict[str, str | None]) -> list[str]:
    """Members whose predictions were made from other test images or checkpoints than those there now."""
    problems = []
    for member in members:
        problems += [f"{member.name}: {p}" for p in prediction_problems(member.files.predictions, ids, images)]
    return problems


def check_members(members: list[Member], ids: list[str], num_classes: int,
                  images: dict[str, str | None] | None = None) -> None:
    """Refuse, listing every problem, members whose class count, test ids or PNG sizes differ, or (with
    ``images``: each test id's content fingerprint now) whose predictions are stale (``lineage``)."""
    problems = [f"{m.name}: {m.num_classes} class(es) (its model.num_classes), this ensemble's model.num_classes="
                f"{num_classes}" for m in members if m.num_classes != num_classes]
    for member in members:
        problems += _id_problems(member, ids)
    if not problems:
        problems = _size_problems(members, ids)
    if not problems and images is not None:
        problems = _stale_problems(members, ids, images)
    if problems:
        raise DataError(listing(f"{len(problems)} problem(s) with the ensemble's members; run predict.py on the same "
                                "test set for each, or leave the odd one out", problems))


def _check_oof_files(members: list[Member], rows: list[dict]) -> None:
    """Every member has a current out-of-fold map of each training image of ``rows``, at that image's size."""
    ids = [row["id"] for row in rows]
    missing = [str(m.oof(i)) for m in members for i in ids if not m.oof(i).is_file()]
    if missing:
        raise DataError(listing(f"{len(missing)} out-of-fold prediction(s) missing: run predict.py with predict.oof="
                                "true and every fold in train.folds for each member, or set ensemble.oof=false",
                                missing, limit=5))
    for member in members:
        check_oof(member.files.oof_lineage, rows, f"ensemble.py (member {member.name})")
    sizes = [(m, row, png_shape(m.oof(row["id"])), image_size(row["image"])) for row in rows for m in members]
    wrong = [f"{m.name}: {m.oof(row['id'])} is (height, width) {shape}, the image {row['image']} is {size}"
             for m, row, shape, size in sizes if shape != size]
    if wrong:
        raise DataError(listing(f"{len(wrong)} out-of-fold prediction(s) are not at their training image's size (made "
                                "from other data, e.g. another data.root): run predict.py for those members on this "
                                "training set, or set ensemble.oof=false", wrong, limit=5))


# ---------------------------------------------------------------- merging


def merge_maps(maps: dict[str, np.ndarray], members: list[Member], settings: EnsembleConfig) -> np.ndarray:
    """The weighted mean of the members' (C, H, W) uint8 ``maps`` (by name), then each rule in order."""
    merged = weighted_mean([maps[m.name] for m in members], [m.weight for m in members])
    for rule in settings.rules:
        merged = RULES[rule].load()(merged, maps, settings)
    return merged


def _read_maps(members: list[Member], paths: dict[str, Path], num_classes: int) -> dict[str, np.ndarray]:
    maps = {}
    for member in members:
        levels = read_prediction(paths[member.name], num_classes)
        if levels is None:
            raise DataError(f"ensemble member {member.name}: {paths[member.name]} cannot be read as {num_classes} "
                            "class(es); run predict.py for it again")
        maps[member.name] = levels
    return maps


def _merged_test_png(image_id: str, members: list[Member], num_classes: int, settings: EnsembleConfig) -> np.ndarray:
    maps = _read_maps(members, {m.name: m.prediction(image_id) for m in members}, num_classes)
    return prediction_image(merge_maps(maps, members, settings))


def ensemble_fingerprint(members: list[Member], settings: EnsembleConfig, num_classes: int, ids: list[str]) -> dict:
    """Everything the merged PNGs' bytes depend on: what made each member's PNGs of ``ids`` (the fingerprints of
    its records), its name and weight, the class count ``num_classes`` (``model.num_classes``), the rules of the
    ``ensemble`` section ``settings`` and their settings."""
    rules = {rule: asdict(getattr(settings, rule)) for rule in settings.rules}
    made_by = {m.name: fingerprints_of(m.files.predictions, ids) for m in members}
    fingerprint = {"members": [{"name": m.name, "weight": m.weight, "made_by": made_by[m.name]} for m in members],
                   "num_classes": num_classes, "rules": list(settings.rules), "rule_settings": rules}
    return json.loads(json.dumps(fingerprint))


def merge_test(run: EnsembleRun, members: list[Member], ids: list[str], fingerprint: dict,
               images: dict[str, str | None] | None = None) -> Path:
    """Write, into ``run.files.predictions``, the merged PNG of every test id of ``ids`` not already written by
    the same members and settings (``fingerprint``: ``ensemble_fingerprint``) from the same test image
    (``images``: id -> content fingerprint, recorded with the members' folders); returns that folder. Call it
    holding the predictions folder's claim (``predictions.claim_writer``)."""
    out_dir = run.files.predictions
    sources = {"stage": "ensemble", "members": {m.name: str(m.files.predictions.resolve()) for m in members}}
    done = keep_or_redo(out_dir, ids, fingerprint, run.predict.resume, predictions_record(), images, sources)
    todo = [i for i in ids if i not in done]
    if done:
        print(f"resuming: {len(done)} of {len(ids)} merged predictions were already written by the same members "
              f"and settings; merging the remaining {len(todo)}")
    writer = PngWriter(run.predict.writer_threads)
    try:
        for image_id in tqdm(todo, desc="merge test", dynamic_ncols=True):
            writer.submit(out_dir / f"{image_id}.png",
                          partial(_merged_test_png, image_id, members, run.num_classes, run.settings))
    finally:
        writer.close()
    return out_dir


# ---------------------------------------------------------------- out of fold


def _oof_image(row: dict, members: list[Member], settings: EnsembleConfig, out_dir: Path, spec: MaskSpec,
               evaluators: dict[str, Evaluator], truth: TrueObjects | None) -> dict[str, ImageScores]:
    """One training image scored (class 0) by each member and by the ensemble (and, with rules, by the plain
    mean as "<ensemble> (mean)"), each by its own evaluator; pure but for the ensemble's map, which is written
    to ``out_dir`` (this run's ``oof_predictions/``) so that this ensemble can be a member of another.
    ``settings``: the ``ensemble`` section (its rules); ``spec``: how the masks are read."""
    maps = _read_maps(members, {m.name: m.oof(row["id"]) for m in members}, 1)
    target = load_masks(row, maps[members[0].name].shape[1:], spec)[:1] > 0
    merged = {f"{ENSEMBLE} (mean)" if settings.rules else ENSEMBLE:
              weighted_mean([maps[m.name] for m in members], [m.weight for m in members])}
    if settings.rules:
        merged[ENSEMBLE] = merge_maps(maps, members, settings)
    write_png(out_dir / f"{row['id']}.png", prediction_image(merged[ENSEMBLE]))
    objects = truth(row["id"], target.shape[1:]) if truth is not None else None
    return {name: evaluators[name].score(row["id"], levels[:1], target, objects, fold=-1)
            for name, levels in {**maps, **merged}.items()}


def score_oof(run: EnsembleRun, members: list[Member], fingerprint: dict, outputs: StageOutputs) -> pd.DataFrame:
    """Each member's and the ensemble's out-of-fold CV under ``postprocess.metric`` (``run.post``) on the training
    set of ``run.source``; writes ``ensemble_cv.csv``, the ensemble's maps to ``oof_predictions/`` and from them
    ``oof.csv``, ``oof_levels.npz``, ``postprocess_search.csv`` and ``postprocess.json`` (the search, tied to
    ``fingerprint``: what made the merged test predictions), all in ``run.files``. ``outputs``: the stage's,
    holding the out-of-fold files' claim."""
    files, rows = run.files, list_train(run.source).to_dict("records")
    remove_oof_temporaries(outputs, files, [row["id"] for row in rows])  # a killed run's
    mark_oof_pending(files.oof_lineage)
    metric, at = run.post.metric, thresholds(run.post.threshold, 1)[0]
    names = [m.name for m in members] + ([f"{ENSEMBLE} (mean)"] if run.settings.rules else []) + [ENSEMBLE]
    evaluators = {name: Evaluator(metric, ["1"], at, search_thresholds(metric, at)) for name in names}
    truth = true_objects(run.post.metric, run.source, rows)
    job = partial(_oof_image, members=members, settings=run.settings, out_dir=files.oof_predictions,
                  spec=mask_spec(run.source), evaluators=evaluators, truth=truth)
    with ThreadPoolExecutor(run.predict.writer_threads) as pool:
        for found in tqdm(pool.map(job, rows), total=len(rows), desc="out-of-fold", dynamic_ncols=True):
            for name, scores in found.items():  # in the rows' order, whichever thread scored them
                evaluators[name].keep(scores)
    weights = {m.name: m.weight / sum(x.weight for x in members) for m in members}
    table = []
    for name, evaluator in evaluators.items():
        if name == ENSEMBLE:  # the search's result is what make_submission.py uses
            chosen = write_oof_analysis(files, run.post, evaluator.table(), evaluator.histograms(),
                                        evaluator.threshold_scores(), searched_key(fingerprint))
        else:
            chosen = evaluator.search()[0]
        table.append({"run": name, "weight": weights.get(name), "cv": chosen.default_score, "at": at,
                      "cv_searched": chosen.score, "threshold": chosen.threshold, "min_area": chosen.min_area})
    table = pd.DataFrame(table)
    atomic_write(files.ensemble_cv, lambda tmp: table.to_csv(tmp, index=False))
    write_oof_lineage(files.oof_lineage, oof_lineage("ensemble", rows, searched_key(fingerprint),
                                                     members={m.name: m.files.root for m in members}))
    _print_cv(table, metric, at, len(rows), files)
    return table


def _print_cv(table: pd.DataFrame, metric: str, at: float, images: int, files: RunFiles) -> None:
    print(f"out-of-fold CV, mean per-image {metric} over {images} training images:")
    print(f"  {'run':<24} {'weight':>6}  {f'at {at}':>8}  searched (threshold, min_area)")
    for row in table.to_dict("records"):
        weight = "" if pd.isna(row["weight"]) else f"{row['weight']:.3f}"
        print(f"  {row['run']:<24} {weight:>6}  {row['cv']:>8.4f}  {row['cv_searched']:.4f} "
              f"({row['threshold']}, {row['min_area']})")
    print(f"the ensemble's searched threshold and min_area -> {files.postprocess} (make_submission.py uses them); "
          f"the table -> {files.ensemble_cv}")


# ---------------------------------------------------------------- the stage


def ensemble(cfg: Config) -> dict:
    """The ensemble stage: refuse mismatched members, merge the test predictions, score the out-of-fold maps.

    It holds this run's predictions folder (and out-of-fold files) as ``predict.py`` does, and each member's
    predictions (and out-of-fold files) against their writers while it reads them. Returns the predictions
    folder and the CV table (None with ``ensemble.oof: false`` or several classes, which the search does not
    cover)."""
    _refuse_repeated_runs(cfg.ensemble.members)
    members = [load_member(entry) for entry in cfg.ensemble.members]
    if not members:
        raise ConfigError("ensemble.members lists no run: give each as {run: OUTPUT_DIR, weight: W, name: NAME} "
                          "(configs/carvana_ensemble.yaml is an example)")
    _refuse_weights(members)
    run = EnsembleRun.from_config(cfg)
    files, score = run.files, run.scores_oof
    claims = [partial(claim_writer, files.predictions), *([out_of_fold_lock(files)] if score else [])]
    for member in members:  # read whole: held against their writers
        claims.append(partial(claim_reader, member.files.predictions))
        if score:
            claims.append(out_of_fold_lock(member.files))
    # The predictions folder's own temporaries are cleared by keep_or_redo, the PNGs of oof_predictions/ by
    # score_oof: both know the ids.
    outputs = StageOutputs("ensemble", run.source.places(),
                           folders={"output_dir": files.root, "predict.out_dir": files.predictions}, claims=claims,
                           temporaries={files.root: oof_outputs(files, files.ensemble_cv)} if score else None,
                           config=ConfigFile(files.config("ensemble"), partial(save_config, cfg)))
    _refuse_own_members(files, members)
    ids = [row["id"] for row in test_rows(run.source)]
    _check_inputs(run, members, ids, score)  # before any lock file or folder is made; again once they are held
    with outputs:
        return _ensemble(run, members, ids, score, outputs)


def _refuse_repeated_runs(entries: list[EnsembleMember]) -> None:
    """The same run listed twice (by another spelling or a symlink: resolved paths compared) would be read
    twice and weigh double; it would also wait on its own lock."""
    seen: dict[Path, int] = {}
    for k, entry in enumerate(entries):
        resolved = Path(entry.run).resolve()
        if resolved in seen:
            first = entries[seen[resolved]]
            raise ConfigError(f"ensemble.members[{k}] ({entry.run}) is the run ensemble.members[{seen[resolved]}] "
                              f"({first.run}) already lists (both are {resolved}): list each run once, and give it "
                              "the weight of both")
        seen[resolved] = k


def _refuse_weights(members: list[Member]) -> None:
    """Weights the mean cannot use: not finite, negative, or whose sum is 0 or overflows."""
    for k, member in enumerate(members):
        if not math.isfinite(member.weight) or member.weight < 0:
            raise ConfigError(f"ensemble.members[{k}].weight ({member.name}): {member.weight} is not a finite number "
                              "0 or more; give each member a finite weight")
    total = sum(m.weight for m in members)
    if not math.isfinite(total):
        raise ConfigError(f"ensemble.members[*].weight: the weights {[m.weight for m in members]} add up to more than "
                          "the largest float; they are normalised to sum 1, so give them on a smaller scale (e.g. 1 "
                          "and 3)")
    if total <= 0:
        raise ConfigError("ensemble.members: the weights add up to 0; give at least one member a positive weight")


def _refuse_own_members(files: RunFiles, members: list[Member]) -> None:
    """A member whose files are this run's own would be read while it is written."""
    own = [m.name for m in members if m.files.root.resolve() == files.root.resolve()
           or m.files.predictions.resolve() == files.predictions.resolve()]
    if own:
        raise ConfigError(f"ensemble.members: {own} write(s) into this ensemble's own output_dir {files.root}; give "
                          "the ensemble an output_dir of its own")


def _check_inputs(run: EnsembleRun, members: list[Member], ids: list[str], score: bool) -> None:
    """Refuse members that do not match each other or ``run`` (class count, test ``ids``, PNG sizes) and, when
    ``score``, members missing an out-of-fold map of a training image of ``run.source``."""
    check_members(members, ids, run.num_classes, image_fingerprints(test_rows(run.source)))
    if score:
        _check_oof_files(members, list_train(run.source).to_dict("records"))


def _ensemble(run: EnsembleRun, members: list[Member], ids: list[str], score: bool, outputs: StageOutputs) -> dict:
    _check_inputs(run, members, ids, score)
    outputs.save_config()
    total = sum(m.weight for m in members)
    listed = ", ".join(f"{m.name} ({m.weight / total:.3f})" for m in members)
    print(f"merging {len(ids)} test predictions of {listed}; rules: {', '.join(run.settings.rules) or 'none'}")
    fingerprint = ensemble_fingerprint(members, run.settings, run.num_classes, ids)
    images = image_fingerprints(test_rows(run.source))
    result = {"predictions": merge_test(run, members, ids, fingerprint, images), "cv": None}
    if score:
        result["cv"] = score_oof(run, members, fingerprint, outputs)
    elif run.settings.oof:
        print(f"out-of-fold CV skipped: the search covers one class, model.num_classes={run.num_classes}")
    return result
