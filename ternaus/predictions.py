"""A predictions folder: which PNGs a run wrote, which it may keep or delete, and who may write it at a time.

Every writer (``predict.py``, or one shard of it) keeps a record in the folder, ``.predict.json`` or
``.predict-<i>-of-<n>.json``: the fingerprint of what makes its PNGs (``inference.prediction_fingerprint``),
the ids it writes, and a sequence number one above every record already there. The record is written before
the first PNG, so every PNG a writer makes is listed; the newest record listing an id owns that id's PNG.

- A PNG whose owner has the same fingerprint (and is complete) is kept on resume; one whose owner differs is
  deleted and predicted again. A PNG no record lists was not written here: it is neither deleted nor
  overwritten, and the writer refuses to start.
- Locks (``ternaus.io.claim``): each writer holds its shard's lock (``.<folder>.shard-<i>-of-<n>.lock`` beside
  the folder) for its whole run and the folder's lock (``.<folder>.lock``) while it reads and writes the
  records. A single writer (shard 0 of 1) and a reader (``make_submission.py``) hold the folder's lock for
  their whole run, and refuse while any shard runs; shards of one count run side by side, shards of
  another count are refused.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ternaus.errors import BusyError, DataError
from ternaus.io import (
    atomic_write_text,
    claim,
    holder_of,
    lock_path,
    remove_stale_temporaries,
)

__all__ = ["Record", "read_records", "png_complete", "keep_or_redo", "claim_writer", "claim_reader", "made_by",
           "searched_key", "fingerprints_of", "owners_of"]

_RECORD = re.compile(r"^\.predict(-\d+-of-\d+)?\.json$")
_SHARD_LOCK = re.compile(r"\.shard-(\d+)-of-(\d+)\.lock$")
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with


@dataclass
class Record:
    name: str
    fingerprint: dict | None = None
    ids: list[str] = field(default_factory=list)
    sequence: int = 0
    inputs: dict[str, str | None] | None = None  # id -> content fingerprint of the image predicted (lineage)
    sources: dict = field(default_factory=dict)  # where the inputs live: checkpoints' files, members' folders


def read_records(folder: Path) -> list[Record]:
    """Every writer's record in ``folder``; one that cannot be read lists nothing."""
    records = []
    for path in sorted(folder.glob(".predict*.json")) if folder.is_dir() else []:
        if not _RECORD.match(path.name):
            continue
        try:
            data = json.loads(path.read_text())
            inputs = data.get("inputs")
            records.append(Record(path.name, data["fingerprint"], [str(i) for i in data["ids"]],
                                  int(data["sequence"]), dict(inputs) if isinstance(inputs, dict) else None,
                                  dict(data.get("sources") or {})))
        except (OSError, ValueError, KeyError, TypeError):
            records.append(Record(path.name))
    return records


def owners_of(records: list[Record]) -> dict[str, Record]:
    """Each id's newest record."""
    owners = {}
    for record in sorted(records, key=lambda r: r.sequence):
        owners.update(dict.fromkeys(record.ids, record))
    return owners


def png_complete(path: Path) -> bool:
    """A whole PNG ends with its IEND chunk; a file cut short (a power cut before the disk caught up) does not."""
    try:
        with open(path, "rb") as f:
            f.seek(-len(PNG_END), os.SEEK_END)
            return f.read() == PNG_END
    except OSError:
        return False


def keep_or_redo(folder: Path, ids: list[str], fingerprint: dict, resume: bool, record_name: str,
                 inputs: dict[str, str | None] | None = None, sources: dict | None = None) -> set[str]:
    """Make ``folder`` ready for a writer of ``ids``: returns the ids whose PNG it keeps. Deletes the PNGs of
    ``ids`` that an earlier writer made with another fingerprint or from another input (``inputs``: id -> the
    content fingerprint of the image it reads, ``lineage.content_fingerprint``), all of them when not
    ``resume``, then writes this writer's record (with ``inputs`` and ``sources``, where its inputs live, for
    ``lineage.prediction_problems``). Raises DataError, having touched nothing, when a PNG of ``ids`` is not
    listed by any record. Call it holding the folder's lock (``claim_writer``)."""
    folder.mkdir(parents=True, exist_ok=True)
    records = read_records(folder)
    remove_stale_temporaries(folder, {f"{i}.png" for i in ids} | {record_name})
    owners = owners_of(records)
    keep, redo, foreign = set(), [], []
    for image_id in ids:
        path = folder / f"{image_id}.png"
        if not path.exists():
            continue
        owner = owners.get(image_id)
        if owner is None:
            foreign.append(path.name)
        elif resume and owner.fingerprint == fingerprint and _same_input(owner, image_id, inputs) \
                and png_complete(path):
            keep.add(image_id)
        else:
            redo.append(path)
    if foreign:
        raise DataError(f"{folder} holds {len(foreign)} PNG(s) of test images that no prediction record there "
                        f"lists, e.g. {sorted(foreign)[:3]}: predict.py did not write them, so it neither replaces nor "
                        "deletes them. Move them away, or set predict.out_dir to another folder")
    if redo:
        why = "predict.resume=false" if not resume else ("they were made by other models or settings, or from "
                                                        "images that changed since")
        print(f"removing {len(redo)} earlier predictions from {folder}: {why}")
    for path in redo:  # before the new record is written, so a kill here cannot mix the two
        path.unlink(missing_ok=True)
    sequence = 1 + max((r.sequence for r in records), default=0)
    record = {"fingerprint": fingerprint, "sequence": sequence, "ids": ids}
    if inputs is not None:
        record.update(inputs={i: inputs.get(i) for i in ids}, sources=sources or {})
    atomic_write_text(folder / record_name, json.dumps(record, sort_keys=True) + "\n")
    return keep


def _same_input(owner: Record, image_id: str, inputs: dict[str, str | None] | None) -> bool:
    """The PNG was made from the image there now (a writer that records no inputs compares none)."""
    return inputs is None or (owner.inputs is not None and owner.inputs.get(image_id) == inputs.get(image_id))


# ---------------------------------------------------------------- locks


def _shard_part(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}"


def _running_shards(folder: Path, own: Path | None, other_count_only: int | None = None) -> list[str]:
    """The other writers of ``folder`` that run now, described; with ``other_count_only``, only those of
    another shard count (shards of one count write disjoint ids)."""
    busy = []
    for lock in sorted(folder.parent.glob(f".{glob.escape(folder.name)}.shard-*-of-*.lock")):
        match = _SHARD_LOCK.search(lock.name)
        if match is None or lock == own:
            continue
        if other_count_only is not None and int(match[2]) == other_count_only:
            continue
        holder = holder_of(lock)
        if holder:
            busy.append(f"shard {match[1]}/{match[2]}, {holder}" if match[2] != "1" else holder)
    return busy


def _refuse_if_running(folder: Path, busy: list[str]) -> None:
    if busy:
        raise BusyError(f"the predictions in {folder} are being written by {busy[0]}. Two runs writing them at "
                        "once would mix their files: wait for that run to end (or stop it), then run this command "
                        "again")


@contextmanager
def claim_writer(folder: Path, index: int = 0, count: int = 1) -> Iterator[ExitStack]:
    """Claim ``folder`` for writer ``index`` of ``count`` for the whole block. Yields the stack that holds the
    folder's lock: call ``keep_or_redo`` inside it; a shard of several then closes it (``.close()``) to let the
    other shards in, a single writer keeps it."""
    what = f"the predictions in {folder}" + (f" (shard {index}/{count})" if count > 1 else "")
    own = lock_path(folder, _shard_part(index, count))
    with claim(folder, what, _shard_part(index, count)), ExitStack() as setup:
        setup.enter_context(claim(folder, f"the predictions in {folder}"))
        _refuse_if_running(folder, _running_shards(folder, own, count if count > 1 else None))
        yield setup


@contextmanager
def claim_reader(folder: Path) -> Iterator[None]:
    """Hold ``folder`` against every writer while the block reads it (make_submission.py)."""
    with claim(folder, f"the predictions in {folder}"):
        _refuse_if_running(folder, _running_shards(folder, None))
        yield


# ---------------------------------------------------------------- what made the PNGs


# What a fingerprint records about how the PNGs were computed rather than what they hold: the batch size and
# batching, and the device and precision that ran them. Every other field (predict.py's weights, TTA, input size,
# image scaling and resize, ensemble.py's members, weights and rules) changes the probabilities, so it is part of
# what a searched threshold depends on, new fields included.
NOT_SEARCHED = ("batch_size", "batches", "runtime")


def searched_key(fingerprint: dict | None) -> dict | None:
    """What a threshold searched on out-of-fold predictions depends on: the fingerprint without ``NOT_SEARCHED``."""
    if not isinstance(fingerprint, dict):
        return None
    return {k: v for k, v in fingerprint.items() if k not in NOT_SEARCHED}


def fingerprints_of(folder: Path, ids: list[str]) -> list[dict]:
    """The distinct fingerprints of the records that own the PNGs of ``ids`` (what made them), in a fixed order."""
    owners = owners_of(read_records(folder))
    found = {json.dumps(owners[i].fingerprint, sort_keys=True) for i in ids if i in owners}
    return [json.loads(text) for text in sorted(found)]


def made_by(folder: Path, ids: list[str]) -> dict | None:
    """``searched_key`` of the fingerprint that made the PNGs of ``ids``; None when no record lists them.
    Raises DataError when they come from different models or settings (shards run with different ones)."""
    owners = owners_of(read_records(folder))
    keys = {json.dumps(searched_key(owners[i].fingerprint), sort_keys=True) for i in ids if i in owners}
    if len(keys) > 1:
        raise DataError(f"the predictions in {folder} were made by {len(keys)} different sets of models or "
                        "settings (shards run with different ones); run predict.py again for the whole test set")
    return json.loads(keys.pop()) if keys else None
