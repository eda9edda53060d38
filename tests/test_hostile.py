"""What another run, a stray path or a hostile file can do, and what the user sees instead (docs/reliability.md,
"Hostile input and concurrent runs"). Five kinds:

1. deleting or replacing what the pipeline did not write;
2. two runs on one output (locks, tested with real second processes; postprocess.json tied to its predictions);
3. inputs refused cleanly (exit 2, one message, no traceback) before long work;
4. ids that name the same image twice, or another image;
5. temporaries left behind by a SIGTERM or a kill.

Each case builds its hostile input in tmp_path. The cases that need trained models work on clones of the
session's tiny real run (conftest.tiny_run: prepare, one epoch of fold 0, predict), with a submission added.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

import conftest
import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import export
import make_submission
import predict
import prepare_folds
import report
import train
from ternaus.config import config_to_dict, load_config
from ternaus.data.files import declared_size_problem, image_file_problem, jpeg_problem
from ternaus.data.ids import normalise_ids
from ternaus.data.source import DataSource
from ternaus.errors import BusyError, ConfigError, DataError
from ternaus.io import atomic_write, atomic_write_bytes, claim, lock_path, remove_stale_temporaries
from ternaus.predictions import claim_reader, claim_writer, keep_or_redo
from ternaus.submission import _sample, submission_format

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synthetic.yaml")
TINY = [*conftest.TINY, "submission.processes=1"]


def run(stage, root: Path, out: Path, *extra: str) -> int:
    return stage.main(["--config", CONFIG, f"data.root={root}", f"output_dir={out}", *TINY, *extra])


def refusal(capsys, code: int, *parts: str) -> str:
    """Exit 2, one ``error: ...`` message naming every part, and no traceback."""
    err = capsys.readouterr().err
    assert code == 2, f"expected exit status 2, got {code}:\n{err[-3000:]}"
    assert "Traceback" not in err and err.count("error: ") == 1, err[-3000:]
    message = err[err.index("error: "):]
    for part in parts:
        assert part in message, f"{part!r} not in:\n{message}"
    return message


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes; locks (bookkeeping that each run rewrites) left out."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def copy_data(tiny_dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


def jpeg_bytes(height: int = 40, width: int = 62) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def start_process(code: str, *args: str) -> subprocess.Popen:
    """A second real process running ``code`` (after ``import sys``); it prints 'ready' once set up."""
    proc = subprocess.Popen([sys.executable, "-c", f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{code}", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.stderr.read()
    return proc


HOLD = textwrap.dedent("""
    import time
    from pathlib import Path
    from ternaus.io import claim
    with claim(Path(sys.argv[1]), "the test's output", sys.argv[2] if len(sys.argv) > 2 else ""):
        print("ready", flush=True)
        time.sleep(60)
""")


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def clone_run(src: Path, dst: Path) -> Path:
    """Checkpoints hard-linked (atomic writes replace them, never edit them in place), the rest copied."""
    link = lambda a, b: os.link(a, b) if a.endswith(".pt") else shutil.copy2(a, b)  # noqa: E731
    return Path(shutil.copytree(src, dst, copy_function=link))


@pytest.fixture(scope="module")
def done(tiny_run, tiny_dataset, tmp_path_factory) -> Path:
    """The session's tiny run with its submission: test and out-of-fold predictions, postprocess.json."""
    out = clone_run(tiny_run, tmp_path_factory.mktemp("hostile") / "run")
    assert run(make_submission, tiny_dataset, out) == 0
    return out


@pytest.fixture
def clone(done, tmp_path) -> Path:
    return clone_run(done, tmp_path / "run")


# ================================================================ 1. deleting what the pipeline did not write


def temporary(folder: Path, name: str) -> Path:
    """A real temporary of ``name``, made exactly as ternaus.io.atomic_write makes it."""
    stem, suffix = Path(name).stem, Path(name).suffix
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=f".tmp{suffix}")
    os.close(fd)
    return Path(tmp)


def test_only_the_temporaries_of_the_named_files_are_removed(tmp_path):
    ours = [temporary(tmp_path, n) for n in ("last.pt", "best.pt", "log.csv", "submission.csv.gz")]
    theirs = [tmp_path / n for n in (".notes.draft.tmp", ".notes.abcd1234.tmp", ".last.abc.tmp.pt",
                                     ".other.abcd1234.tmp.pt", ".last.abcd1234.tmp.csv", "last.pt")]
    theirs += [temporary(tmp_path, "notes.txt")]
    for path in theirs:
        path.write_text("a user's file")
    (tmp_path / ".best.abcd1234.tmp.pt").mkdir()  # a folder named like a temporary is not a temporary file
    removed = remove_stale_temporaries(tmp_path, {"last.pt", "best.pt", "log.csv", "submission.csv.gz"})
    assert sorted(removed) == sorted(ours)
    assert all(p.exists() for p in theirs) and (tmp_path / ".best.abcd1234.tmp.pt").is_dir()


def test_train_keeps_a_users_draft_in_the_fold_folder_and_clears_its_own(tiny_dataset, clone, capsys):
    fold = clone / "fold_0"
    drafts = [fold / ".notes.draft.tmp", fold / ".notes.abcd1234.tmp"]
    for path in drafts:
        path.write_text("my notes")
    ours = temporary(fold, "last.pt")
    # The fold is finished (1 of 1 epochs): train.py resumes, cleans up and has nothing left to do.
    assert run(train, tiny_dataset, clone) == 0, capsys.readouterr().err[-2000:]
    assert "removed 1 partly written file(s)" in capsys.readouterr().out
    assert not ours.exists() and all(p.read_text() == "my notes" for p in drafts)


def record(folder: Path, name: str, fingerprint: dict, ids: list[str], sequence: int) -> None:
    (folder / name).write_text(json.dumps({"fingerprint": fingerprint, "ids": ids, "sequence": sequence}))


def png(folder: Path, image_id: str, value: int = 1) -> Path:
    path = folder / f"{image_id}.png"
    path.write_bytes(cv2.imencode(".png", np.full((4, 4), value, np.uint8))[1].tobytes())
    return path


def test_a_writer_deletes_only_the_pngs_a_record_lists_and_refuses_any_other(tmp_path):
    old, new = {"tta": "hflip"}, {"tta": "none"}
    record(tmp_path, ".predict.json", old, ["a", "b"], 1)
    record(tmp_path, ".predict-1-of-2.json", new, ["b"], 2)  # newer: it owns b
    a, b = png(tmp_path, "a"), png(tmp_path, "b")
    assert keep_or_redo(tmp_path, ["a", "b", "c"], new, True, ".predict.json") == {"b"}
    assert not a.exists() and b.exists()  # a: listed, made with other settings; b: kept; c: never there
    assert json.loads((tmp_path / ".predict.json").read_text())["sequence"] == 3
    assert keep_or_redo(tmp_path, ["a", "b"], new, False, ".predict.json") == set() and not b.exists()
    # A PNG no record lists was not written here: nothing is deleted, nothing is written.
    foreign = [png(tmp_path, "a", 7), png(tmp_path, "x", 7)]
    record(tmp_path, ".predict.json", new, ["b"], 4)
    with pytest.raises(DataError, match=r"1 PNG\(s\) of test images that no prediction record there lists.*'a.png'"):
        keep_or_redo(tmp_path, ["a", "b"], old, True, ".predict.json")
    assert all(p.exists() for p in foreign)
    assert json.loads((tmp_path / ".predict.json").read_text())["sequence"] == 4


def test_a_predictions_folder_of_someone_elses_pngs_is_refused_before_a_byte_changes(clone, tiny_dataset, capsys):
    theirs = clone / "theirs"
    theirs.mkdir()
    ids = [p.stem for p in (tiny_dataset / "test").glob("*.jpg")]
    for image_id in ids[:3]:
        png(theirs, image_id, 9)
    before = files_of(theirs)
    refusal(capsys, run(predict, tiny_dataset, clone, "predict.out_dir=theirs"), str(theirs),
            "3 PNG(s) of test images that no prediction record there lists", "set predict.out_dir to another folder")
    assert files_of(theirs) == before


def overlaps(root: Path, out: Path) -> list[tuple]:
    """(stage, extra arguments, output dir, the words of the refusal): an output that is, lies in or contains data."""
    return [
        (predict, [f"predict.out_dir={root / 'test'}"], out,
         ["predict.out_dir", "is the data folder", "(data.test_dir)"]),
        (prepare_folds, [], root, ["output_dir", "contains the data folder", "(data.train_dir)"]),
        (train, [], root / "train_masks" / "run", ["output_dir", "lies inside the data folder", "(data.masks_dir)"]),
        (make_submission, [f"submission.filename={root / 'sample_submission.csv'}"], out,
         ["submission.filename", "contains the data folder", "is the data file data.sample_submission"]),
        (report, [f"report.out_dir={root}"], out, ["report.out_dir", "contains the data folder"]),
    ]


@pytest.mark.parametrize("case", range(5), ids=["predict_into_test", "prepare_into_root", "train_inside_masks",
                                                "submission_over_sample", "report_over_root"])
def test_an_output_that_overlaps_the_data_is_refused_before_anything_runs(tiny_dataset, tmp_path, capsys, case):
    root = copy_data(tiny_dataset, tmp_path)
    stage, extra, out, words = overlaps(root, tmp_path / "run")[case]
    before = files_of(root)
    refusal(capsys, run(stage, root, out, *extra), "outputs and data overlap", *words, "outside the data")
    assert files_of(root) == before


def test_export_refuses_to_write_into_the_data_or_over_its_checkpoint(done, tiny_dataset, tmp_path, capsys):
    checkpoint = str(done / "fold_0" / "best.pt")
    args = ["--config", CONFIG, f"data.root={tiny_dataset}", *TINY, "--checkpoint", checkpoint, "--format", "onnx"]
    refusal(capsys, export.main([*args, "--out", str(tiny_dataset / "test" / "x.onnx")]), "--out:",
            "is the data folder")
    refusal(capsys, export.main([*args, "--out", checkpoint]), "is the checkpoint itself")
    assert not (tiny_dataset / "test" / "x.onnx").exists()


# ================================================================ 2. two runs on one output


def test_a_lock_names_its_holder_and_a_killed_holders_lock_is_free_at_once(tmp_path):
    target = tmp_path / "fold_0"
    holder = start_process(HOLD, str(target))
    try:
        with pytest.raises(BusyError) as err, claim(target, "fold 0"):
            pass
        message = str(err.value)
        for part in ("fold 0: in use by", f"pid {holder.pid} on {os.uname().nodename}", "started ", "-c",
                     "wait for that run to end (or stop it)"):
            assert part in message, message
    finally:
        stop(holder)  # SIGKILL: no clean-up runs; the kernel drops the lock
    assert json.loads(lock_path(target).read_text())["pid"] == holder.pid  # the dead holder's record is still there
    with claim(target, "fold 0"):
        assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()


def test_a_forked_worker_does_not_keep_its_parents_lock(tmp_path):
    # The holder forks a child (as DataLoader and Pool workers are forked) and is killed; the child lives on.
    code = textwrap.dedent("""
        import os, time
        from pathlib import Path
        from ternaus.io import claim
        with claim(Path(sys.argv[1]), "x"):
            child = os.fork()
            if child == 0:
                time.sleep(60)
                os._exit(0)
            print("ready", child, flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{code}",
                             str(tmp_path / "x")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline().split()[1])
    try:
        stop(proc)
        with claim(tmp_path / "x", "x"):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_shards_of_one_count_share_a_predictions_folder_and_nothing_else_does(tmp_path):
    folder = tmp_path / "predictions"
    shard = start_process(textwrap.dedent("""
        import time
        from pathlib import Path
        from ternaus.predictions import claim_writer
        with claim_writer(Path(sys.argv[1]), 0, 2) as setup:
            setup.close()
            print("ready", flush=True)
            time.sleep(60)
    """), str(folder))
    try:
        with claim_writer(folder, 1, 2):  # the other shard of the same count: side by side
            pass
        for index, count in ((1, 3), (0, 1)):
            with pytest.raises(BusyError, match=rf"being written by shard 0/2, .*pid {shard.pid}"), \
                    claim_writer(folder, index, count):
                pass
        with pytest.raises(BusyError, match="shard 0/2"), claim_reader(folder):  # make_submission waits for it
            pass
        with pytest.raises(BusyError, match=r"\(shard 0/2\): in use by"), claim_writer(folder, 0, 2):
            pass
    finally:
        stop(shard)
    with claim_reader(folder):
        pass


def test_a_second_train_of_one_fold_is_refused_naming_the_first(tiny_dataset, clone, capsys):
    holder = start_process(HOLD, str(clone / "fold_0"))
    try:
        before = files_of(clone / "fold_0")
        refusal(capsys, train.main(["--config", CONFIG, f"data.root={tiny_dataset}", f"output_dir={clone}", *TINY,
                                    "--fold", "0"]), f"fold 0 ({clone / 'fold_0'}): in use by", f"pid {holder.pid}")
        assert files_of(clone / "fold_0") == before
    finally:
        stop(holder)


def test_a_second_predict_and_make_submission_wait_for_a_running_predict(tiny_dataset, clone, capsys):
    # predict.py (a single process) holds its shard lock for its whole run, out-of-fold phase included.
    holder = start_process(HOLD, str(clone / "predictions"), "shard-0-of-1")
    try:
        before = files_of(clone)
        refusal(capsys, run(predict, tiny_dataset, clone, "predict.tta=none"),
                f"the predictions in {clone / 'predictions'}: in use by '-c ", f"(pid {holder.pid} on")
        refusal(capsys, run(make_submission, tiny_dataset, clone), f"the predictions in {clone / 'predictions'}",
                "are being written by '-c ", f"(pid {holder.pid} on")
        assert files_of(clone) == before
    finally:
        stop(holder)


@pytest.mark.parametrize("setting", ["predict.tta=none", "data.image_max=4095"])
def test_postprocess_json_is_refused_for_predictions_of_other_settings(tiny_dataset, clone, capsys, setting):
    # New test predictions (other TTA, or another image scaling: any setting of the prediction's fingerprint but
    # the batching and the device) without a new search: as after predict.py killed in its out-of-fold phase.
    assert run(predict, tiny_dataset, clone, setting, "predict.oof=false") == 0
    capsys.readouterr()
    submission = (clone / "submission.csv.gz").read_bytes()
    refusal(capsys, run(make_submission, tiny_dataset, clone), "postprocess.json was searched on the out-of-fold "
            "predictions of other models or settings", "Run predict.py again", "--threshold and --min-area")
    assert (clone / "submission.csv.gz").read_bytes() == submission
    assert run(make_submission, tiny_dataset, clone, "--threshold", "0.5", "--min-area", "0") == 0
    assert "threshold 0.5 from the command line; min_area 0 from the command line" in capsys.readouterr().out


# ================================================================ 3. every input refused cleanly


@pytest.mark.parametrize("option", [["--threshold", "nan"], ["--threshold", "inf"], ["--threshold", "2"],
                                    ["--threshold", "-1"], ["--min-area", "-5"], ["--min-area", "1.5"],
                                    ["--threshold", "abc"]], ids=" ".join)
def test_stage_options_are_checked_like_config_keys(tiny_dataset, tmp_path, capsys, option):
    out = tmp_path / "run"
    refusal(capsys, run(make_submission, tiny_dataset, out, *option), f"{option[0]} (postprocess.")
    assert not out.exists()


SHAPES = ["null", "0", "-1", "2", "1.5", ".nan", "-.inf", "x", "''", "[]", "[1]", "[[0]]", "{}", "{a: 1}", "true",
          "[a, b]", "[0, 5]", "[1.5, 2]", "[null]", "'{x}'", "['{rle}']", "1e400", "99999999999999999999999", "'('"]


def test_every_key_survives_every_yaml_value_shape():
    keys = ["output_dir", "data", "data.rle", "train", "train.loss", *(f"{k}" for k in _flat_keys())]
    for key in keys:
        for shape in SHAPES:
            # Alone, and with the settings other checks read beside it (cross-key checks).
            for extra in ([], ["model.num_classes=2", "folds.group_by=pattern", "data.layout=rle_csv"]):
                try:
                    load_config(None, [f"{key}={shape}", *extra])
                except ConfigError:
                    pass


def _flat_keys() -> list[str]:
    def flat(tree, prefix=""):
        for k, v in tree.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return list(flat(config_to_dict(load_config(None))))


ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh")) + "output_dir: *h\n"


@pytest.mark.parametrize("text, overrides, words", [
    (None, ["data.rle.start=2"], ["data.rle.start: must be one of 0, 1, got 2"]),
    (None, ["train.folds=[[0]]"], ["train.folds: expected list[int] | None, got [[0]]"]),
    (None, ["train.epochs={}"], ["train.epochs: expected int, got {}"]),
    (None, ["model.name=[unet16]"], ["model.name: expected str, got ['unet16']"]),
    (None, ["data.class_names=3"], ["data.class_names: expected list[str] | None, got 3"]),
    (None, ["submission.encode_size=[a,b]"], ["submission.encode_size: expected list[int] | None"]),
    (None, ["train.epochs=[1"], ["override 'train.epochs=[1': the value is not valid YAML", "correct it"]),
    (None, ["data.rle=3"], ["data.rle: expected a mapping of keys, got 3"]),
    (b"train:\n  epochs: 3\n  lr: \xe9\n", [], ["is not UTF-8 text (byte 0xe9 at position 25)", "save it as UTF-8"]),
    (b"- 1\n- 2\n", ["train.epochs=3"], ["must hold a mapping of sections", "got [1, 2]"]),
    (ALIAS_BOMB.encode(), [], ["aliases (*name) expand to more than 10,000 values"]),
    (b"a: &a [1, *a]\n", [], ["an alias (*name) refers to the value that contains it"]),
    (("[" * 5000 + "]" * 5000).encode(), [], ["is not valid YAML: it is nested more than 50 levels deep"]),
    (b"data: {root: [" + b", ".join([b"x" * 100] * 500) + b"]}\n", [], ["data.root: expected str, got ['xxxx"]),
], ids=["rle_start", "folds_nested", "epochs_mapping", "name_list", "class_names_int", "encode_size_words",
        "yaml_syntax", "section_number", "latin1_file", "list_file", "alias_bomb", "alias_cycle", "deep_nesting",
        "huge_value"])
def test_a_bad_config_of_any_shape_is_one_short_message(tmp_path, capsys, text, overrides, words):
    config = CONFIG
    if text is not None:
        config = str(tmp_path / "bad.yaml")
        Path(config).write_bytes(text)
    started = time.perf_counter()
    code = train.main(["--config", config, f"output_dir={tmp_path / 'run'}", *overrides])
    message = refusal(capsys, code, *words)
    assert len(message) < 2000 and time.perf_counter() - started < 10
    assert not (tmp_path / "run").exists()


def read_only_stage(script: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a stage with ``out`` read-only: a read-only bind mount in a namespace of our own (as root, or where
    user namespaces are allowed), else a folder without write permission (a user other than root)."""
    command = [sys.executable, str(ROOT / script), *args]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        shell = f"mount --bind {out} {out} && mount -o remount,bind,ro {out} && exec \"$@\""
        command = ["unshare", "-rm", "sh", "-c", shell, "sh", *command]
    elif os.geteuid() != 0:
        out.chmod(0o555)
    else:
        pytest.skip("no way to make a read-only folder here: running as root without user namespaces")
    try:
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        out.chmod(0o755)


def test_a_read_only_output_folder_is_a_message(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    result = read_only_stage("prepare_folds.py", out, "--config", CONFIG, f"data.root={tiny_dataset}",
                             f"output_dir={out}", *TINY)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error: cannot write" in result.stderr and str(out) in result.stderr
    assert "Make the folder writable" in result.stderr and list(out.iterdir()) == []


def full_disk_at(monkeypatch, stem: str) -> None:
    """A real ENOSPC from the kernel while torch.save writes ``<stem>``'s temporary: the file (and the open file
    torch writes through) is replaced by /dev/full, so that every write fails as on a full disk."""
    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        path = Path(getattr(f, "name", f))  # checkpoints are saved through an open file
        if path.name.startswith(f".{stem}."):
            os.unlink(path)
            os.symlink("/dev/full", path)
            if hasattr(f, "fileno"):  # the open file writes to /dev/full too
                full = os.open("/dev/full", os.O_WRONLY)
                os.dup2(full, f.fileno())
                os.close(full)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def tmpfs_available() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True).returncode == 0


def test_a_full_disk_under_torch_save_is_a_message_and_keeps_the_checkpoint(tiny_dataset, clone, monkeypatch,
                                                                            capsys):
    last = (clone / "fold_0" / "last.pt").read_bytes()
    full_disk_at(monkeypatch, "last")
    # The first step's checkpoint meets the full disk.
    code = run(train, tiny_dataset, clone, "train.epochs=2", "train.checkpoint_every=1")
    refusal(capsys, code, "the disk is full while writing", ".tmp.pt (No space left on device)", "Free some space")
    assert (clone / "fold_0" / "last.pt").read_bytes() == last
    assert not [p for p in (clone / "fold_0").iterdir() if ".tmp" in p.name]


@pytest.mark.skipif(not tmpfs_available(), reason="cannot mount a tmpfs here (no unprivileged user namespaces)")
def test_a_checkpoint_on_a_really_full_tmpfs_is_a_message_and_keeps_the_previous_one(tmp_path):
    # A 2 MB tmpfs: the first checkpoint fits, the second (with Adam's state) does not.
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        import torch
        from ternaus.checkpoint import save_checkpoint
        from ternaus.cli import os_error_message
        model = torch.nn.Linear(300, 300)
        save_checkpoint(sys.argv[1] + "/last.pt", model=model)
        optimizer = torch.optim.Adam(model.parameters())
        model(torch.ones(1, 300)).sum().backward()
        optimizer.step()
        try:
            save_checkpoint(sys.argv[1] + "/last.pt", model=model, optimizer=optimizer, filler=torch.ones(400_000))
        except OSError as err:
            print(os_error_message(err))
        import os
        print(sorted(os.listdir(sys.argv[1])), torch.load(sys.argv[1] + "/last.pt")["optimizer"])
    """)
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=2m tmpfs {mount} && "
                             "exec \"$@\"", "sh", sys.executable, "-c", script, str(mount)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the disk is full while writing" in result.stdout, result.stdout
    assert "No space left on device" in result.stdout and "['last.pt'] None" in result.stdout  # the first one, whole


def test_a_write_failure_that_is_not_the_disks_stays_what_it_was(tmp_path):
    def fails(tmp: Path) -> None:
        tmp.write_bytes(b"x")
        raise RuntimeError("a bug in the writer")

    with pytest.raises(RuntimeError, match="a bug in the writer"):
        atomic_write(tmp_path / "a.bin", fails)
    assert list(tmp_path.iterdir()) == []


def with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) declares ``width`` x ``height``; its pixels are those of ``data``."""
    at = data.index(b"\xff\xc0") + 5
    return data[:at] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[at + 4:]


def png_declaring(width: int, height: int) -> bytes:
    data = cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[24:29]
    return data[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + data[33:]


def gif_declaring(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8), "P").save(buffer, format="GIF")
    data = buffer.getvalue()
    return data[:6] + width.to_bytes(2, "little") + height.to_bytes(2, "little") + data[10:]


def tiff_declaring(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    ifd = int.from_bytes(data[4:8], "little")
    for k in range(int.from_bytes(data[ifd: ifd + 2], "little")):
        entry = ifd + 2 + 12 * k
        tag, kind = (int.from_bytes(data[entry + k: entry + k + 2], "little") for k in (0, 2))
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (type 3) or LONG
            size = 2 if kind == 3 else 4
            data[entry + 8: entry + 8 + size] = (width if tag == 256 else height).to_bytes(size, "little")
    return bytes(data)


@pytest.mark.parametrize("kind, make", [("jpeg", lambda w, h: with_declared_size(jpeg_bytes(), w, h)),
                                        ("png", png_declaring), ("gif", gif_declaring), ("tiff", tiff_declaring)])
def test_the_size_a_header_declares_is_checked_for_every_format(tmp_path, kind, make):
    path = tmp_path / f"x.{kind}"
    path.write_bytes(make(12000, 12000))
    assert "declares 12000 x 12000 = 144,000,000 pixels, more than data.max_image_pixels=25,000,000" in \
        declared_size_problem(path, 25_000_000)
    assert declared_size_problem(path, 200_000_000) is None  # the limit is a setting
    path.write_bytes(make(60000, 60000))
    assert "declares 3,600,000,000 pixels" in declared_size_problem(path, 200_000_000)
    path.write_bytes(make(40, 62))
    assert declared_size_problem(path, 25_000_000) is None


@pytest.mark.parametrize("side", [60000, 12000])
def test_predict_refuses_a_test_jpeg_declaring_a_huge_size_before_writing(tiny_dataset, tmp_path, capsys, side):
    root = copy_data(tiny_dataset, tmp_path)
    victim = sorted((root / "test").glob("*.jpg"))[3]
    victim.write_bytes(with_declared_size(victim.read_bytes(), side, side))
    refusal(capsys, run(predict, root, tmp_path / "run"), "1 of 16 image file(s) cannot be used", str(victim),
            "its header declares", "raise data.max_image_pixels")
    assert not (tmp_path / "run" / "predictions").exists()


def test_prepare_refuses_a_mask_gif_declaring_a_huge_size(tiny_dataset, tmp_path, capsys):
    root = copy_data(tiny_dataset, tmp_path)
    gif = sorted((root / "train_masks").glob("*.gif"))[0]
    gif.write_bytes(gif_declaring(60000, 60000))
    refusal(capsys, run(prepare_folds, root, tmp_path / "run"), str(gif), "declares 3,600,000,000 pixels")


def with_exif_thumbnail(data: bytes) -> bytes:
    """``data`` with an APP1 segment after SOI holding a whole JPEG thumbnail: FF D8 ... FF D9 in the header."""
    thumbnail = jpeg_bytes(8, 8)
    payload = b"Exif\x00\x00" + b"\x00" * 10 + thumbnail
    return data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]


def test_a_truncated_jpeg_with_ff_d9_in_its_header_is_refused(tmp_path):
    whole = with_exif_thumbnail(jpeg_bytes(400, 300))
    path = tmp_path / "x.jpg"
    path.write_bytes(whole)
    assert image_file_problem(path) is None
    scan = whole.index(b"\xff\xda", whole.index(b"\xff\xd9"))  # the image's scan, after the thumbnail's end
    for cut in (scan + 40, scan + 500):  # cut inside the image data, within 4 KiB of the thumbnail's FF D9
        assert b"\xff\xd9" in whole[:cut][-4096:]  # which the first/last-bytes check took for the end
        path.write_bytes(whole[:cut])
        assert "is truncated (the JPEG has no end marker)" in image_file_problem(path), cut
    for cut in (30, whole.index(b"\xff\xd9") + 2, len(whole) - 3):  # inside the header, just before the end
        path.write_bytes(whole[:cut])
        assert "is truncated (the JPEG has no end marker)" in image_file_problem(path), cut
    path.write_bytes(whole + b"\x00" * 100)  # trailing padding after the end marker, as some cameras write
    assert image_file_problem(path) is None
    path.write_bytes(b"\xff\xd8" + b"junk" * 200 + b"\xff\xd9")
    assert "is not a readable image (its JPEG header is broken)" in image_file_problem(path)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "carvana-real").is_dir(),
                    reason="../shared/data/carvana-real is absent (real Carvana photos)")
def test_real_carvana_photos_pass_and_every_cut_of_one_is_refused():
    photos = sorted((ROOT.parent / "shared" / "data" / "carvana-real" / "train").glob("*.jpg"))
    assert photos and all(image_file_problem(p) is None for p in photos)
    data = photos[0].read_bytes()
    for cut in range(2, len(data) - 1, len(data) // 97):
        assert jpeg_problem(io.BytesIO(data[:cut]), cut) is not None, cut


# ================================================================ 4. ids that name the same image twice, or another


def test_ids_are_compared_after_one_normalisation():
    assert normalise_ids(["a.jpg", "b", "c.JPG", "d.tar"], "x.csv") == ["a", "b", "c", "d.tar"]
    cases = [(["X_01.jpg", "X_01"], {}, "'X_01' and 'X_01.jpg' name the same image X_01"),
             (["../../../etc/X.jpg", "Y.jpg"], {}, "'../../../etc/X.jpg' is a path, not an image's name"),
             (["a\\X.jpg"], {}, "is a path"), ([".."], {}, "is a path"),
             (["X.png"], {"suffixes": (".jpg",)}, "'X.png' names a .png file, but the images are .jpg"),
             (["X.png"], {"suffixes": {"X": ".jpg"}}, "'X.png' names a .png file, but the image is X.jpg"),
             (["a", "a"], {}, "'a' is listed 2 times")]
    for names, kwargs, words in cases:
        with pytest.raises(DataError, match="x.csv lists images it cannot mean") as err:
            normalise_ids(names, "x.csv", **kwargs)
        assert words in str(err.value)
    assert normalise_ids(["a.jpg", "a.jpg", "b"], "x.csv", unique=False) == ["a", "a", "b"]  # one row per object


def test_a_masks_csv_naming_one_image_twice_is_refused_with_both_spellings(tiny_dataset, tmp_path, capsys):
    root = copy_data(tiny_dataset, tmp_path)
    masks = pd.read_csv(root / "train_masks.csv", dtype=str)
    extra = masks.iloc[[0]].assign(img=masks["img"].iloc[0].removesuffix(".jpg"))
    pd.concat([masks, extra]).to_csv(root / "train_masks.csv", index=False)
    name = masks["img"].iloc[0]
    refusal(capsys, run(prepare_folds, root, tmp_path / "run"), str(root / "train_masks.csv"),
            f"'{name[:-4]}' and '{name}' name the same image {name[:-4]}")


def test_a_carvana_sample_naming_one_image_twice_is_refused_before_predicting(tiny_dataset, tmp_path, capsys):
    root = copy_data(tiny_dataset, tmp_path)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    sample.loc[3, "img"] = sample.loc[2, "img"].removesuffix(".jpg")
    sample.to_csv(root / "sample_submission.csv", index=False)
    refusal(capsys, run(predict, root, tmp_path / "run"), "name the same image")


@pytest.mark.parametrize("name, words", [("../../../etc/{stem}.jpg", "is a path, not an image's name"),
                                         ("{stem}.png", "names a .png file, but the image is {stem}.jpg")])
def test_an_airbus_id_naming_another_place_or_file_is_refused(tmp_path, capsys, name, words):
    from ternaus.fixtures.competitions import generate_airbus

    root = generate_airbus(tmp_path / "data", images=4, test_images=1, size=32, seed=0)
    path = root / "train_ship_segmentations_v2.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    stem = table["ImageId"].iloc[0].removesuffix(".jpg")
    row = table.iloc[[0]].assign(ImageId=name.format(stem=stem))
    pd.concat([table, row]).to_csv(path, index=False)
    code = prepare_folds.main(["--config", str(ROOT / "configs" / "airbus.yaml"), f"data.root={root}",
                               f"output_dir={tmp_path / 'run'}", "folds.n_folds=2"])
    refusal(capsys, code, str(path), name.format(stem=stem), words.format(stem=stem))


def test_a_severstal_csv_listing_an_image_and_class_twice_is_refused(tmp_path, capsys):
    from ternaus.fixtures.competitions import generate_severstal

    root = generate_severstal(tmp_path / "data", images=4, test_images=1, size=(32, 96), seed=0)
    path = root / "train.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    row = table.iloc[[0]].assign(ImageId=table["ImageId"].iloc[0].removesuffix(".jpg"))  # the same, spelled short
    pd.concat([table, row]).to_csv(path, index=False)
    args = ["--config", str(ROOT / "configs" / "severstal.yaml"), f"data.root={root}", f"output_dir={tmp_path / 'run'}",
            "folds.n_folds=2"]
    refusal(capsys, prepare_folds.main(args), "name the same image")
    pd.concat([table, table.iloc[[0]]]).to_csv(path, index=False)
    refusal(capsys, prepare_folds.main(args), str(path), "lists 1 (image, class) pair(s) more than once",
            "keep one row per image and class")


def test_a_sample_listing_a_row_twice_is_refused_for_any_format(tmp_path):
    for config, header, rows in (("tgs.yaml", "id,rle_mask", ["a,1 1", "b,1 1", "a,1 1"]),
                                 ("airbus.yaml", "ImageId,EncodedPixels", ["a.jpg,", "a.jpg,"]),
                                 ("severstal.yaml", "ImageId,EncodedPixels,ClassId", ["a.jpg,,1", "a.jpg,,1"])):
        (tmp_path / "sample.csv").write_text("\n".join([header, *rows]) + "\n")
        cfg = load_config(ROOT / "configs" / config, [f"data.root={tmp_path}", "data.sample_submission=sample.csv"])
        with pytest.raises(DataError, match=r"sample.csv lists 1 row key\(s\) more than once, e\.g\. \['a"):
            _sample(DataSource.of(cfg).sample_submission, submission_format(cfg))


# ================================================================ 5. temporaries left behind; SIGTERM


def temporaries_under(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp*"))


def predict_temporaries(run_dir: Path, tiny_dataset: Path) -> list[Path]:
    """Temporaries a killed predict.py leaves, one in each folder it writes."""
    test_id = sorted(p.stem for p in (tiny_dataset / "test").glob("*.jpg"))[0]
    train_id = pd.read_csv(run_dir / "folds.csv", dtype=str)["id"].iloc[0]
    places = [(run_dir / "predictions", f"{test_id}.png"), (run_dir / "predictions", ".predict.json"),
              (run_dir, "oof.csv"), (run_dir, "postprocess.json"), (run_dir, "oof_levels.npz"),
              (run_dir / "oof_predictions", f"{train_id}.png"), (run_dir / "configs", "predict.yaml")]
    return [temporary(folder, name) for folder, name in places]


@pytest.mark.parametrize("stage, name", [(make_submission, "submission.csv.gz"), (predict, "oof.csv")],
                         ids=["submission", "oof"])
def test_sigterm_during_the_final_rename_leaves_no_temporary_and_says_how_to_resume(tiny_dataset, clone, monkeypatch,
                                                                                   capsys, stage, name):
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):  # SIGTERM arrives just as the final rename starts
        if Path(dst).name == name:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_replace(src, dst, *args, **kwargs)

    before = (clone / name).read_bytes()
    # Also what an earlier killed run left: predict.py clears its own in every folder it writes, and no other.
    left = predict_temporaries(clone, tiny_dataset) if stage is predict else []
    users = temporary(clone / "predictions", "mine.png")
    monkeypatch.setattr(os, "replace", replace)
    assert run(stage, tiny_dataset, clone) == 143
    err = capsys.readouterr().err
    assert "terminated (SIGTERM): run the same command again to resume" in err and "Traceback" not in err
    assert temporaries_under(clone) == [users.name] and (clone / name).read_bytes() == before
    assert not [p for p in left if p.exists()]


def test_every_stage_clears_its_own_temporaries_in_every_folder_it_writes(tiny_dataset, clone, capsys):
    ours = {prepare_folds: [(clone, "folds.csv"), (clone / "configs", "prepare_folds.yaml")],
            make_submission: [(clone, "submission.csv.gz"), (clone / "configs", "make_submission.yaml")],
            report: [(clone / "report", "index.html"), (clone / "report", "worst_01.png")]}  # predict.py: above
    users = [temporary(clone, "notes.csv"), clone / ".oof.draft.tmp.csv", clone / ".folds.csv.tmp"]
    for stage, places in ours.items():
        for folder, _ in places:
            folder.mkdir(exist_ok=True)
        planted = [temporary(folder, name) for folder, name in places]
        for path in users:
            path.write_text("a user's file")
        assert run(stage, tiny_dataset, clone) == 0, capsys.readouterr().err[-3000:]
        assert [p for p in planted if p.exists()] == [], stage.__name__
        assert all(p.read_text() == "a user's file" for p in users)


def test_a_write_interrupted_by_sigterm_in_process_removes_its_temporary(tmp_path):
    from ternaus.cli import run_stage

    def body() -> None:
        atomic_write_bytes(tmp_path / "a.bin", b"old")
        atomic_write(tmp_path / "a.bin", lambda tmp: (tmp.write_bytes(b"new"), os.kill(os.getpid(), signal.SIGTERM),
                                                      time.sleep(5)))

    previous = signal.getsignal(signal.SIGTERM)
    assert run_stage(body) == 143
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"] and (tmp_path / "a.bin").read_bytes() == b"old"
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_disk_error_other_than_full_or_read_only_is_not_hidden():
    from ternaus.cli import os_error_message

    assert os_error_message(OSError(errno.EIO, "Input/output error", "x")) is None
    assert "cannot write x (Read-only file system)" in os_error_message(OSError(errno.EROFS, "Read-only file system",
                                                                                "x"))
