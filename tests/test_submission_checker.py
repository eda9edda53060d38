"""The submission checker (issue 3, point 8): header, every test image exactly once, each RLE string valid;
every problem reported on its own line, with the line number where one applies, never a traceback."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

import make_submission
from ternaus.config import load_config
from ternaus.submission import check_submission

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synthetic.yaml")
PIXELS = 62 * 40  # tiny_dataset's test images
# Valid strings of every shape, the image's edges included: empty, one run, the last pixel, the whole image.
GOOD_RLES = ["1 10", "", f"{PIXELS} 1", f"1 {PIXELS}", "5 3 9 2", f"{PIXELS - 1} 2", "1 1 3 1 5 1"]


@pytest.fixture
def names(tiny_dataset) -> list[str]:
    return pd.read_csv(tiny_dataset / "sample_submission.csv", dtype=str)["img"].tolist()


@pytest.fixture
def cfg(tiny_dataset):
    return load_config(None, [f"data.root={tiny_dataset}"])


def good_rows(names: list[str]) -> list[tuple[str, str]]:
    return [(name, GOOD_RLES[i % len(GOOD_RLES)]) for i, name in enumerate(names)]


def write(path: Path, rows: list[tuple[str, str]], header: str = "img,rle_mask") -> Path:
    text = "\n".join([header] + [f"{name},{rle}" for name, rle in rows]) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("filename", ["submission.csv", "submission.csv.gz"])
def test_a_good_submission_has_no_problems(cfg, names, tmp_path, filename):
    assert len(names) == 16
    path = write(tmp_path / filename, good_rows(names))
    assert check_submission(path, cfg) == []
    # And in another order than the sample's: Kaggle matches rows by name.
    path = write(tmp_path / filename, good_rows(names)[::-1])
    assert check_submission(path, cfg) == []


def rle_at(row: int, rle: str):
    """Break the RLE of data row ``row`` (file line ``row + 2``)."""
    def breaker(rows):
        rows[row] = (rows[row][0], rle)
        return rows
    return breaker


# (RLE, what the checker says about it)
BAD_RLES = {
    "odd_number_of_tokens": ("1 2 3", "has an odd number of values (3); expected 'start length' pairs"),
    "non_integer_token": ("1 x", "holds something other than integers: '1 x'"),
    "decimal_token": ("1.5 2", "holds something other than integers: '1.5 2'"),
    "zero_start": ("0 3", "has a start or length that is not a positive integer"),
    "negative_start": ("-4 3", "has a start or length that is not a positive integer"),
    "zero_length": ("5 0", "has a start or length that is not a positive integer"),
    "negative_length": ("5 -2", "has a start or length that is not a positive integer"),
    "starts_not_increasing": ("10 2 5 2", "has starts that do not increase"),
    "same_start_twice": ("10 2 10 2", "has starts that do not increase"),
    "overlapping_runs": ("1 5 3 2", "has overlapping runs"),
    "run_past_the_end": (f"{PIXELS} 2", f"runs past the end of the image ({PIXELS} pixels)"),
    "start_past_the_end": (f"{PIXELS + 1} 1", f"runs past the end of the image ({PIXELS} pixels)"),
    "number_beyond_int64": ("99999999999999999999 1",
                            "holds a number too large to be a pixel index: '99999999999999999999 1'"),
}


@pytest.mark.parametrize("kind", list(BAD_RLES))
def test_each_bad_rle_is_reported_with_its_line(cfg, names, tmp_path, kind):
    rle, problem = BAD_RLES[kind]
    rows = good_rows(names)
    rows[4] = (rows[4][0], rle)
    path = write(tmp_path / "submission.csv", rows)
    assert check_submission(path, cfg) == [f"{path} line 6 ({names[4]}): the RLE {problem}"]


def test_line_numbers_are_the_file_s_own_after_blank_lines(cfg, names, tmp_path):
    rows = good_rows(names)
    path = tmp_path / "submission.csv"
    lines = ["img,rle_mask"] + [f"{name},{rle}" for name, rle in rows]
    lines[10] = f"{rows[9][0]},7 1 3 1"  # file line 11
    path.write_text("\n".join(lines[:5] + ["", ""] + lines[5:] + [""]) + "\n")  # two blank lines after line 5
    assert check_submission(path, cfg) == [f"{path} line 13 ({names[9]}): the RLE has starts that do not increase"]


def wrong_header(path, rows):
    write(path, rows, header="ImageId,EncodedPixels")
    return [f"{path}: header is ['ImageId', 'EncodedPixels'], expected ['img', 'rle_mask']"]


def header_with_an_extra_column(path, rows):
    write(path, [(name, f"{rle},0") for name, rle in rows], header="img,rle_mask,score")
    return [f"{path}: header is ['img', 'rle_mask', 'score'], expected ['img', 'rle_mask']"]


def missing_image(path, rows):
    write(path, rows[:7] + rows[8:])
    return [f"{path}: {rows[7][0]} is missing"]


def image_twice(path, rows):
    write(path, rows + [rows[2]])
    return [f"{path}: {rows[2][0]} appears 2 times"]


def not_a_test_image(path, rows):
    write(path, rows + [("0000000000aa_01.jpg", "1 2")])
    return [f"{path}: '0000000000aa_01.jpg' is not a test image"]


def id_without_jpg(path, rows):
    name = rows[0][0]
    write(path, [(name.removesuffix(".jpg"), rows[0][1])] + rows[1:])
    return [f"{path}: {name} is missing", f"{path}: {name.removesuffix('.jpg')!r} is not a test image"]


def empty_file(path, rows):
    path.write_bytes(b"")
    return [f"{path} is not a readable CSV (EmptyDataError: No columns to parse from file)"]


def header_only(path, rows):
    write(path, [])
    return [f"{path}: {name} is missing" for name, _ in rows]


def binary_garbage(path, rows):
    path.write_bytes(bytes(range(256)) * 8)
    return [f"{path} is not a readable CSV ("]  # pandas' ParserError or UnicodeDecodeError, named


def row_with_too_many_fields(path, rows):
    write(path, rows[:3] + [(rows[3][0], "1 2,extra")] + rows[4:])
    return [(f"{path} is not a readable CSV (ParserError: Error tokenizing data. "
             "C error: Expected 2 fields in line 5, saw 3")]


def truncated_gzip(path, rows):
    gz = write(path.with_name("full.csv.gz"), rows)
    path.write_bytes(gz.read_bytes()[:-20])
    return [f"{path} is not a readable CSV ("]


def missing_file(path, rows):
    return [f"{path} does not exist"]


@pytest.mark.parametrize("breaker", [
    wrong_header, header_with_an_extra_column, missing_image, image_twice, not_a_test_image, id_without_jpg,
    empty_file, header_only, binary_garbage, row_with_too_many_fields, truncated_gzip, missing_file,
], ids=lambda f: f.__name__)
def test_each_broken_file_is_reported_not_raised(cfg, names, tmp_path, breaker):
    suffix = ".csv.gz" if breaker is truncated_gzip else ".csv"
    path = tmp_path / f"submission{suffix}"
    expected = breaker(path, good_rows(names))
    problems = check_submission(path, cfg)
    assert len(problems) == len(expected), problems
    for found, wanted in zip(sorted(problems), sorted(expected)):
        assert found.startswith(wanted), f"{found!r} does not start with {wanted!r}"


def test_check_prints_every_problem_line_by_line_and_exits_1(tiny_dataset, names, tmp_path, capsys):
    rows = good_rows(names)
    rows[0] = (rows[0][0], "5 3 2 1")
    rows[1] = (rows[1][0], "1 2 3")
    rows[5] = (rows[5][0], f"{PIXELS} 2")
    rows = rows[:-1] + [rows[2]]  # the last image missing, the third twice
    path = write(tmp_path / "broken.csv", rows)
    argv = ["--config", CONFIG, f"data.root={tiny_dataset}", f"output_dir={tmp_path / 'run'}", "--check", str(path)]
    with pytest.raises(SystemExit) as exit_:
        make_submission.main(argv)
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.out.splitlines()
    assert sorted(lines[:-1]) == sorted([
        f"{path}: {names[2]} appears 2 times",
        f"{path}: {names[-1]} is missing",
        f"{path} line 2 ({names[0]}): the RLE has starts that do not increase",
        f"{path} line 3 ({names[1]}): the RLE has an odd number of values (3); expected 'start length' pairs",
        f"{path} line 7 ({names[5]}): the RLE runs past the end of the image ({PIXELS} pixels)",
    ])
    assert lines[-1] == f"{path}: 5 problem(s)"
    assert not (tmp_path / "run").exists()  # checking writes nothing

    good = write(tmp_path / "good.csv.gz", good_rows(names))
    assert make_submission.main(argv[:-1] + [str(good)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{good}: OK"]
