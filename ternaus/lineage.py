"""What an output was made from, recorded when it is written and checked when it is read.

Two kinds of record:

- a predictions folder's records (``predictions.Record``): besides the fingerprint of the models and settings,
  each lists the content fingerprint of every test image it predicted (``inputs``) and where its inputs live
  (``sources``: the checkpoints' files, or an ensemble's members' predictions folders);
- ``{output_dir}/oof_lineage.json`` (``RunFiles.oof_lineage``), beside the out-of-fold files (``oof.csv``,
  ``oof_predictions/``, ``postprocess.json``): the checkpoints, ``folds.csv``, the training images and masks
  they were computed from, or an ensemble's members' own out-of-fold records.

A reader (``make_submission.py``, ``ensemble.py``, ``report.py``, ``ternaus.evaluate``) compares the record with
what is there now and refuses, naming what changed and what to run again. A content fingerprint is the file's
size and a hash of its first and last 64 KiB: cheap on a 100,000-image test set, and it changes with any
re-encoding, resize or other image under the same name. Checkpoints are hashed whole (sha256), once per file
and process, and not at all while their size, modification time and inode are those recorded.

Records written before lineage was kept (no ``inputs``) cannot be checked: readers say so and go on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ternaus.errors import DataError
from ternaus.io import atomic_write_text
from ternaus.predictions import Record, fingerprints_of, owners_of, read_records

__all__ = ["content_fingerprint", "file_digest", "image_fingerprints", "file_source", "source_changed",
           "prediction_problems", "check_predictions", "folds_digest", "oof_lineage", "write_oof_lineage",
           "mark_oof_pending", "oof_problems", "check_oof", "RERUN"]

EDGE = 64 * 1024  # bytes hashed at each end of a file
PENDING = {"complete": False}
# What to run again, by the stage that wrote an output.
RERUN = {"predict": "predict.py", "ensemble": "ensemble.py"}


def content_fingerprint(path: str | Path) -> str | None:
    """``"<size>:<blake2b of the first and last 64 KiB>"`` of the file at ``path``; None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.blake2b(f.read(EDGE), digest_size=16)
            if size > EDGE:
                f.seek(max(EDGE, size - EDGE))
                digest.update(f.read(EDGE))
    except OSError:
        return None
    return f"{size}:{digest.hexdigest()}"


_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> sha256: a file is hashed once per process


def file_digest(path: str | Path) -> str | None:
    """The sha256 of the whole file at ``path`` (None when it is missing)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _DIGESTS[key]


def file_source(path: str | Path, base: Path) -> dict:
    """Where a file read whole lives, relative to ``base`` (the folder of the record, so that a run copied or
    moved whole refers to its own checkpoints), with its sha256 and the stat that spares hashing it again."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": os.path.relpath(path, Path(base).resolve()), "sha256": file_digest(path),
            "stat": [stat.st_size, stat.st_mtime_ns, stat.st_ino]}


def source_path(source: dict, base: Path) -> Path:
    return Path(os.path.normpath(Path(base).resolve() / source["path"]))


def source_changed(source: dict, base: Path) -> str | None:
    """How the file a ``file_source`` (recorded in the folder ``base``) describes differs now ("no longer exists",
    "changed"); None when it does not."""
    path = source_path(source, base)
    try:
        stat = path.stat()
    except OSError:
        return "no longer exists"
    if [stat.st_size, stat.st_mtime_ns, stat.st_ino] == source.get("stat"):
        return None
    return None if file_digest(path) == source.get("sha256") else "changed"


def image_fingerprints(rows: list[dict], key: str = "image") -> dict[str, str | None]:
    """Each row's id -> the content fingerprint of its file ``row[key]`` (rows without one are left out)."""
    return {str(row["id"]): content_fingerprint(row[key]) for row in rows if row.get(key)}


def _examples(ids: list[str]) -> str:
    return ", ".join(sorted(ids)[:3]) + (", ..." if len(ids) > 3 else "")


# ---------------------------------------------------------------- a predictions folder


def _record_problems(folder: Path, record: Record, ids: list[str], images: dict[str, str | None],
                     seen: set[str]) -> list[str]:
    problems = []
    changed = [i for i in ids if record.inputs.get(i) != images.get(i)]
    if changed:
        problems.append(f"{len(changed)} of the {len(ids)} test image(s) it predicted are not the images there now "
                        f"(changed, or data.root points at other files): {_examples(changed)}")
    for fold, source in sorted(record.sources.get("checkpoints", {}).items()):
        how = source_changed(source, folder)
        if how:
            problems.append(f"fold {fold}'s checkpoint {source_path(source, folder)} {how} since (a fold trained "
                            "again?)")
    recorded = {m["name"]: m.get("made_by") for m in (record.fingerprint or {}).get("members", [])}
    for name, folder in sorted(record.sources.get("members", {}).items()):
        folder = Path(folder)
        if fingerprints_of(folder, ids) != recorded.get(name):
            problems.append(f"member {name}: its predictions in {folder} were made again (other models or settings) "
                            "since they were merged")
        elif str(folder.resolve()) not in seen:
            seen.add(str(folder.resolve()))
            problems += [f"member {name}: {p}" for p in _folder_problems(folder, ids, images, seen)]
    return problems


def _folder_problems(folder: Path, ids: list[str], images: dict[str, str | None], seen: set[str]) -> list[str]:
    owners = owners_of(read_records(folder))
    unlisted = [i for i in ids if i not in owners]
    problems = [f"{len(unlisted)} test image(s) have no record of what predicted them: {_examples(unlisted)}"] \
        if unlisted else []
    by_record: dict[str, tuple[Record, list[str]]] = {}
    for image_id in ids:
        if image_id in owners:
            record = owners[image_id]
            by_record.setdefault(record.name, (record, []))[1].append(image_id)
    for record, listed in by_record.values():
        if record.inputs is None:
            print(f"note: {folder / record.name} was written before predictions recorded their inputs: what made "
                  "them cannot be checked; run its stage again to record it")
            continue
        problems += _record_problems(folder, record, listed, images, seen)
    return problems


def prediction_problems(folder: Path, ids: list[str], images: dict[str, str | None]) -> list[str]:
    """How the predictions of ``ids`` in ``folder`` differ from what would make them now: test images whose
    content fingerprint (``images``: id -> ``content_fingerprint`` of the current file) is not the one
    predicted, checkpoints changed or gone, ensemble members predicted again (and, through them, their own
    checkpoints and images). Empty when they are current."""
    return _folder_problems(Path(folder), list(ids), images, set())


def _stage_of(folder: Path, ids: list[str]) -> str:
    owners = owners_of(read_records(folder))
    stages = {(owners[i].sources or {}).get("stage", "predict") for i in ids if i in owners}
    return "ensemble" if stages == {"ensemble"} else "predict"


def check_predictions(folder: Path, ids: list[str], images: dict[str, str | None], reader: str) -> None:
    """Raise DataError when the predictions of ``ids`` in ``folder`` are stale (``prediction_problems``), naming
    what changed and the stage to run again before ``reader`` (the command that refuses)."""
    problems = prediction_problems(folder, ids, images)
    if problems:
        stage = RERUN[_stage_of(Path(folder), ids)]
        raise DataError(f"the predictions in {folder} are stale, so {reader} does not use them:\n  - "
                        + "\n  - ".join(problems[:20]) + f"\nRun {stage} again with the config and overrides you give "
                        f"{reader} (it predicts exactly the stale images again), then {reader}")


# ---------------------------------------------------------------- the out-of-fold files


def folds_digest(path: Path) -> str | None:
    return file_digest(path) if Path(path).is_file() else None


def oof_lineage(stage: str, train_rows: list[dict], settings: dict | None, checkpoints: dict | None = None,
                folds: Path | None = None, members: dict[str, Path] | None = None, base: Path = Path(".")) -> dict:
    """The record of out-of-fold files made by ``stage`` (predict or ensemble) on ``train_rows`` (list_train's
    rows: id, image, mask) with ``settings`` (``predictions.searched_key``): ``checkpoints`` (fold -> file) and
    ``folds`` (folds.csv) for predict.py, ``members`` (name -> output_dir) for ensemble.py; the run's own files
    are recorded relative to ``base`` (its output_dir, where the record lives)."""
    record = {"complete": True, "stage": stage, "settings": settings,
              "images": image_fingerprints(train_rows), "masks": image_fingerprints(train_rows, "mask")}
    if checkpoints is not None:
        record["checkpoints"] = {str(fold): file_source(path, base) for fold, path in checkpoints.items()}
    if folds is not None:
        record["folds"] = folds_digest(folds)
        record["folds_path"] = os.path.relpath(Path(folds).resolve(), Path(base).resolve())
    if members is not None:
        record["members"] = {name: {"run": str(Path(run).resolve()),
                                    "lineage": file_digest(Path(run) / OOF_LINEAGE)} for name, run in members.items()}
    return json.loads(json.dumps(record))


OOF_LINEAGE = "oof_lineage.json"  # RunFiles.oof_lineage's name, for members known by their folder only


def mark_oof_pending(path: Path) -> None:
    """Before the out-of-fold files are rewritten: a kill part-way leaves a record that says so."""
    atomic_write_text(path, json.dumps(PENDING) + "\n")


def write_oof_lineage(path: Path, record: dict) -> None:
    """Once every out-of-fold file is written."""
    atomic_write_text(path, json.dumps(record, sort_keys=True) + "\n")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def oof_problems(path: Path, train_rows: list[dict] | None, seen: set[str] | None = None) -> list[str] | None:
    """How the out-of-fold files recorded at ``path`` (``oof_lineage.json``) differ from what would make them now,
    against the training set ``train_rows`` (list_train's rows; None: the recorded files only). None when there
    is no record (written before lineage was kept)."""
    if not path.is_file():
        return None
    record, seen = _read(path), seen if seen is not None else set()
    if not isinstance(record, dict) or not record.get("complete"):
        return [f"{path} says the out-of-fold phase did not finish (stopped part-way)"]
    problems = []
    if train_rows is not None:
        now, then = image_fingerprints(train_rows), record.get("images", {})
        masks_now, masks_then = image_fingerprints(train_rows, "mask"), record.get("masks", {})
        gone, new = sorted(set(then) - set(now)), sorted(set(now) - set(then))
        changed = [i for i in now if i in then and (now[i] != then[i] or masks_now.get(i) != masks_then.get(i))]
        for count, what, which in ((len(gone), "scored image(s) are not in the training set now", gone),
                                   (len(new), "training image(s) were not scored", new),
                                   (len(changed), "training image(s) or mask(s) changed since they were scored",
                                    changed)):
            if count:
                problems.append(f"{count} {what} (data.root or the data changed): {_examples(which)}")
    base = path.parent
    for fold, source in sorted(record.get("checkpoints", {}).items()):
        how = source_changed(source, base)
        if how:
            problems.append(f"fold {fold}'s checkpoint {source_path(source, base)} {how} since the out-of-fold pass")
    folds = base / record.get("folds_path", "folds.csv")
    if "folds" in record and folds_digest(folds) != record["folds"]:
        problems.append(f"{folds} changed since the out-of-fold pass (the folds were split again)")
    for name, member in sorted(record.get("members", {}).items()):
        lineage = Path(member["run"]) / OOF_LINEAGE
        if file_digest(lineage) != member.get("lineage"):
            problems.append(f"member {name}: its out-of-fold files in {member['run']} were made again since")
        elif str(lineage) not in seen:
            seen.add(str(lineage))
            problems += [f"member {name}: {p}" for p in oof_problems(lineage, train_rows, seen) or []]
    return problems


def check_oof(path: Path, train_rows: list[dict] | None, reader: str) -> None:
    """Raise DataError when the out-of-fold files recorded at ``path`` are stale (``oof_problems``); a run without
    the record (made before it was kept) is let through with a note."""
    problems = oof_problems(path, train_rows)
    if problems is None:
        print(f"note: no {path}: the out-of-fold files were made before their lineage was recorded and cannot be "
              "checked")
        return
    if problems:
        record = _read(path) or {}
        stage = RERUN.get(record.get("stage"), "predict.py")
        raise DataError(f"the out-of-fold files in {path.parent} (oof.csv, oof_predictions/, postprocess.json) are "
                        f"stale, so {reader} does not use them:\n  - " + "\n  - ".join(problems[:20])
                        + f"\nRun {stage} again with the config and overrides you give {reader}"
                        + (" (predict.oof=true)" if stage == "predict.py" else "") + f", then {reader}")
