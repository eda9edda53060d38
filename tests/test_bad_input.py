"""Bad input is refused early and clearly (issue 3, points 4, 5 and 8).

Every kind of bad input gets one case here. Each runs a stage script in-process through its ``main``
and asserts: exit status 2, a message that names the file (or key) and says what to do, no traceback,
and that whatever an earlier successful run wrote into the same output folder is still there, unchanged,
with no temporary file left behind.

One tiny real run (prepare, one epoch of fold 0, predict) is made once for the module; cases that need
it work on a clone of its output folder whose checkpoints are hard links (they are ~280 MB each), so a
checkpoint that was rewritten shows up as a new inode.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY  # the shared tiny run's settings
from PIL import Image

import predict
import prepare_folds
import train
from ternaus.config import load_config
from ternaus.data.files import read_mask
from ternaus.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synthetic.yaml")
TEMPORARY = re.compile(r"^\..+\.tmp(\.[^.]+)?$")  # ternaus.io's ".<stem>.<random>.tmp<suffix>"


# ---------------------------------------------------------------- helpers


def run(stage, root: Path, out: Path, *extra: str) -> int:
    return stage.main(["--config", CONFIG, f"data.root={root}", f"output_dir={out}", *TINY, *extra])


def refusal(capsys, code: int) -> str:
    """The stage's one-message refusal: exit 2, ``error: ...`` on stderr, no traceback of any kind."""
    return refusal_in(capsys.readouterr(), code)


def refusal_in(captured, code: int) -> str:
    err = captured.err
    assert code == 2, f"expected exit status 2, got {code}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert "error: " in err, err[-3000:]
    return err[err.index("error: "):]


def assert_mentions(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} not in the message:\n{message}"


def copy_data(tiny_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    return root


def clone_run(src: Path, dst: Path) -> Path:
    """Small files copied, checkpoints hard-linked (atomic writes replace them, never edit them in place)."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pt":
            try:
                os.link(path, target)
                continue
            except OSError:
                pass
        shutil.copy2(path, target)
    return dst


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file: (size, mtime_ns, inode, bytes); bytes are left out for checkpoints. Locks (``.<name>.lock``,
    which each run rewrites with its own pid) are bookkeeping, not outputs, and are left out."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(".lock"):
            st = path.stat()
            files[path.relative_to(folder).as_posix()] = (
                st.st_size, st.st_mtime_ns, st.st_ino, None if path.suffix == ".pt" else path.read_bytes())
    return files


def assert_nothing_lost(folder: Path, before: dict[str, tuple], rewritten: tuple[str, ...] = (),
                        ignored: tuple[str, ...] = ()) -> None:
    """Same files, untouched; ``rewritten`` ones may have been written again with the same bytes."""
    after = snapshot(folder)
    leftovers = [name for name in after if TEMPORARY.match(Path(name).name)]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert sorted(set(after) - set(ignored)) == sorted(set(before) - set(ignored)), "files appeared or vanished"
    for name, old in before.items():
        if name in ignored:
            continue
        new = after[name]
        if name in rewritten:
            assert new[0] == old[0] and new[3] == old[3], f"{name} changed"
        else:
            assert new == old, f"{name} was rewritten or changed"


def save_mask_gif(path: Path, mask: np.ndarray) -> None:
    """A palette GIF whose pixel indices are exactly ``mask`` (a grey palette, no optimisation)."""
    image = Image.fromarray(mask.astype(np.uint8), "P")
    image.putpalette([v for i in range(256) for v in (i, i, i)])
    image.save(path, format="GIF", optimize=False)
    with Image.open(path) as saved:  # Pillow may remap a palette when saving: make sure it did not
        assert np.array_equal(np.array(saved), mask), f"{path} did not keep the mask's values"


# A JPEG whose structure is whole (start, frame header, scan, end marker) but which has no quantisation or
# Huffman tables: it passes every check made before decoding (train.py's included), and decoding fails.
UNDECODABLE_JPEG = (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x28\x00\x3e\x03\x01\x11\x00\x02\x11\x00\x03\x11\x00"
                    b"\xff\xda\x00\x0c\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00" + b"junk" * 200 + b"\xff\xd9")


def first(folder: Path, pattern: str = "*.jpg") -> Path:
    return sorted(folder.glob(pattern))[0]


# ---------------------------------------------------------------- prepare_folds refuses bad training data


@pytest.fixture
def prepared(tiny_dataset, tmp_path):
    """A copy of the data and a good folds.csv prepared from it, ready to be broken."""
    root, out = copy_data(tiny_dataset, tmp_path), tmp_path / "run"
    assert run(prepare_folds, root, out) == 0
    assert (out / "folds.csv").is_file()
    return root, out, snapshot(out)


def empty_jpeg(root):
    path = first(root / "train")
    path.write_bytes(b"")
    return [str(path), "is empty (0 bytes)", "replace it with the original image"]


def truncated_jpeg(root):
    path = first(root / "train")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return [str(path), "is truncated", "copy or download it again"]


def text_in_jpeg(root):
    path = first(root / "train")
    path.write_text("<html>404 Not Found</html>\n")
    return [str(path), "is not a readable image", "replace it"]


def jpeg_markers_around_junk(root):
    # Start and end markers, junk between: the header's segments do not chain.
    path = first(root / "train")
    path.write_bytes(b"\xff\xd8" + b"junk" * 200 + b"\xff\xd9")
    return [str(path), "is not a readable image (its JPEG header is broken)", "replace it"]



def missing_mask(root):
    image = first(root / "train")
    (root / "train_masks" / f"{image.stem}_mask.gif").unlink()
    (root / "train_masks.csv").unlink()
    return [str(image), f"no mask (neither {image.stem}_mask.gif nor a row in the masks CSV)",
            "add it or remove the image"]


def mask_of_another_size(root):
    gif = first(root / "train_masks", "*_mask.gif")
    save_mask_gif(gif, np.ones((20, 31), np.uint8))
    return [str(gif), "mask is 31x20, its image 62x40", "the mask must have its image's size"]


def mask_values_0_3(root):
    gif = first(root / "train_masks", "*_mask.gif")
    save_mask_gif(gif, read_mask(gif) * 3)
    return [str(gif), "holds values [0, 3]", "expected 0/1 or 0/255", "save it with exactly two values"]


def repeat_line(path, index):
    """Append a copy of line ``index`` of a CSV file; returns that line's first field (the id)."""
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[index]]) + "\n")
    return lines[index].split(",")[0]


def duplicate_id_in_masks_csv(root):
    path = root / "train_masks.csv"
    repeated = repeat_line(path, 5)
    return [str(path), "lists 1 image(s) more than once", repeated, "keep one row per image"]


def png_in_train_folder(root):
    Image.fromarray(np.zeros((40, 62, 3), np.uint8)).save(root / "train" / "x.png")
    return [str(root / "train"), "'x.png'", "would be skipped", "convert them to .jpg or move them out"]


def empty_train_folder(root):
    for path in (root / "train").iterdir():
        path.unlink()
    return [str(root / "train"), "no training images", "put the training images there", "data.root"]


@pytest.mark.parametrize("breaker", [
    empty_jpeg, truncated_jpeg, text_in_jpeg, jpeg_markers_around_junk, missing_mask, mask_of_another_size,
    mask_values_0_3, duplicate_id_in_masks_csv, png_in_train_folder, empty_train_folder,
], ids=lambda f: f.__name__)
def test_prepare_folds_refuses_bad_training_data(prepared, capsys, breaker):
    root, out, before = prepared
    expected = breaker(root)
    message = refusal(capsys, run(prepare_folds, root, out))
    assert_mentions(message, *expected)
    assert_nothing_lost(out, before)


def test_a_mask_gif_holding_0_and_255_is_accepted_and_normalised(tiny_dataset, tmp_path, capsys):
    root = copy_data(tiny_dataset, tmp_path)
    gif = first(root / "train_masks", "*_mask.gif")
    truth = read_mask(gif)
    assert set(np.unique(truth)) == {0, 1}
    save_mask_gif(gif, truth * 255)
    with Image.open(gif) as saved:
        assert set(np.unique(np.array(saved))) == {0, 255}
    assert run(prepare_folds, root, tmp_path / "run") == 0, capsys.readouterr().err[-3000:]
    assert len(pd.read_csv(tmp_path / "run" / "folds.csv")) == 48
    normalised = read_mask(gif)
    assert normalised.dtype == np.uint8 and np.array_equal(normalised, truth)


@pytest.mark.parametrize("size, padded", [([100, 150], "[128, 160]"), ([96, 130], "[96, 160]")],
                         ids=["100x150", "96x130"])
def test_an_input_size_not_a_multiple_of_32_is_refused_with_the_padded_size(prepared, capsys, size, padded):
    root, out, before = prepared
    message = refusal(capsys, run(prepare_folds, root, out, f"data.input_size=[{size[0]},{size[1]}]"))
    assert_mentions(message, "data.input_size", f"{size} is not a multiple of 32", f"use {padded}")
    assert_nothing_lost(out, before)


def test_every_config_problem_is_listed_at_once(tmp_path, capsys):
    overrides = ["train.batchsize=4", "train.epochs=abc", "train.lr=-1"]
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG, overrides)
    message = str(err.value)
    assert_mentions(message, "3 problem(s)", CONFIG,
                    "unknown key 'train.batchsize' (did you mean 'batch_size'?)",
                    "train.epochs: expected int, got 'abc'",
                    "train.lr: must be positive, got -1.0")
    code = train.main(["--config", CONFIG, f"output_dir={tmp_path / 'run'}", *overrides])
    assert_mentions(refusal(capsys, code), "3 problem(s)", "train.batchsize", "train.epochs", "train.lr")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- one tiny real run, shared


@pytest.fixture
def trained(tiny_run):
    """prepare_folds, one epoch of fold 0, predict: the output folder of a good run on the intact data
    (conftest.tiny_run, shared with tests/test_hostile.py)."""
    return tiny_run


@pytest.fixture
def broken_run(trained, tiny_dataset, tmp_path):
    """A fresh copy of the data to break and a clone of the trained run's outputs."""
    return copy_data(tiny_dataset, tmp_path), clone_run(trained, tmp_path / "run")


# ---------------------------------------------------------------- predict refuses a bad test set


def missing_test_jpeg(root):
    path = first(root / "test")
    path.unlink()
    return [str(root / "sample_submission.csv"), str(root / "test"), path.stem, "are not in",
            "copy them there"]


def empty_test_jpeg(root):
    path = first(root / "test")
    path.write_bytes(b"")
    return [str(path), "is empty (0 bytes)", "replace it with the original image"]


def truncated_test_jpeg(root):
    path = sorted((root / "test").glob("*.jpg"))[-1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return ["1 of 16 image file(s) cannot be used", str(path), "is truncated", "copy or download it again"]


def duplicate_row_in_sample(root):
    path = root / "sample_submission.csv"
    repeated = repeat_line(path, 3)
    return [str(path), "more than once", repeated, "keep one row per image"]


def unlisted_test_image(root):
    extra = root / "test" / "ffffffffffff_01.jpg"
    shutil.copy(first(root / "test"), extra)
    return [str(root / "test"), str(root / "sample_submission.csv"), "ffffffffffff_01", "are not in",
            "use the one that belongs to this test set"]


def sample_without_rows(root):
    path = root / "sample_submission.csv"
    path.write_text("img,rle_mask\n")
    return [str(path), "lists no test images", "use the competition's sample_submission.csv"]


def sample_with_a_wrong_header(root):
    path = root / "sample_submission.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["image,mask"] + lines[1:]) + "\n")
    return [str(path), "expected the header 'img'", "got 'image,mask'"]


def text_file_in_test_folder(root):
    (root / "test" / "notes.txt").write_text("the test images\n")
    return [str(root / "test"), "'notes.txt'", "would be skipped", "move them out"]


@pytest.mark.parametrize("breaker", [
    missing_test_jpeg, empty_test_jpeg, truncated_test_jpeg, duplicate_row_in_sample, unlisted_test_image,
    sample_without_rows, sample_with_a_wrong_header, text_file_in_test_folder,
], ids=lambda f: f.__name__)
def test_predict_refuses_a_bad_test_set_before_writing_anything(broken_run, capsys, breaker):
    root, out = broken_run
    expected = breaker(root)
    before = snapshot(out)
    message = refusal(capsys, run(predict, root, out))
    assert_mentions(message, *expected)
    # The earlier run's PNGs, its .predict.json, oof.csv and configs are all still there, untouched.
    assert sum(name.startswith("predictions/") and name.endswith(".png") for name in before) == 16
    assert_nothing_lost(out, before)


# ---------------------------------------------------------------- train refuses a folds.csv that does not match


def new_car_after_prepare(root):
    source = first(root / "train")
    shutil.copy(source, root / "train" / "ffffffffffff_01.jpg")
    shutil.copy(root / "train_masks" / f"{source.stem}_mask.gif", root / "train_masks" / "ffffffffffff_01_mask.gif")
    return ["folds.csv does not match the data", str(root), "ffffffffffff_01", "run prepare_folds.py again"]


def image_deleted_after_prepare(root):
    path = sorted((root / "train").glob("*.jpg"))[-1]
    path.unlink()
    return ["folds.csv does not match the data", str(root), path.stem, "run prepare_folds.py again"]


@pytest.mark.parametrize("breaker", [new_car_after_prepare, image_deleted_after_prepare], ids=lambda f: f.__name__)
def test_train_refuses_a_folds_file_that_does_not_match_the_data(broken_run, capsys, breaker):
    root, out = broken_run
    expected = breaker(root)
    before = snapshot(out)
    message = refusal(capsys, run(train, root, out, "train.epochs=2"))
    assert_mentions(message, *expected)
    assert_nothing_lost(out, before)


def test_train_refuses_a_folds_file_with_a_repeated_row(broken_run, capsys):
    root, out = broken_run
    path = out / "folds.csv"
    repeated = repeat_line(path, 7)
    before = snapshot(out)
    message = refusal(capsys, run(train, root, out, "train.epochs=2"))
    assert_mentions(message, str(path), "lists 1 id(s) more than once", repeated,
                    "run prepare_folds.py again")
    assert_nothing_lost(out, before)


# ---------------------------------------------------------------- an image only found bad when it is decoded


@pytest.mark.parametrize("workers", [0, 1], ids=["in_process", "loader_worker"])
def test_an_undecodable_image_met_during_training_stops_it_cleanly(broken_run, capsys, workers):
    root, out = broken_run
    folds = pd.read_csv(out / "folds.csv", dtype={"id": str})
    # Every image fold 0 trains on: whichever the shuffled epoch meets first is bad, so it stops at once.
    broken = [root / "train" / f"{image_id}.jpg" for image_id in folds.loc[folds["fold"] != 0, "id"]]
    for path in broken:
        path.write_bytes(UNDECODABLE_JPEG)
    before = snapshot(out)
    # The completed one-epoch run is asked for a second epoch: it resumes from last.pt, then meets the image.
    code = run(train, root, out, "train.epochs=2", f"data.num_workers={workers}")
    captured = capsys.readouterr()
    assert "fold 0: resuming from" in captured.out and "at the end of epoch 1" in captured.out
    message = refusal_in(captured, code)
    assert "Original Traceback" not in message and "DataLoader worker" not in message
    named = re.search(r"image (\S+) cannot be decoded", message)
    assert named, message
    assert Path(named.group(1)) in broken
    assert_mentions(message, "replace or remove it")
    # last.pt and best.pt are the very files of the first run; log.csv is written again on resume with
    # the same rows; configs/train.yaml records the settings of the latest command by design.
    assert before["fold_0/last.pt"] == snapshot(out)["fold_0/last.pt"]
    assert_nothing_lost(out, before, rewritten=("fold_0/log.csv",), ignored=("configs/train.yaml",))
