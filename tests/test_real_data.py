"""The real competition files, where they are at hand (beside the clone, in ``../shared/data``; CI has them):
64 Carvana photos with their palette GIF masks (16 cars), and TGS Salt's 2,989 training pairs (16-bit and
8-bit masks, train.csv) with its 1,011 test images. Every mask must read as its competition's RLE says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ternaus.data.source import DataSource
from ternaus.config import load_config
from ternaus.data.files import image_size, read_image, read_mask
from ternaus.data.layouts import test_rows as listed_test_rows
from ternaus.prepare import prepare_folds
from ternaus.rle import CARVANA_RLE, RleFormat, decode_rle, encode_rle

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data"
CARVANA, TGS = REAL / "carvana-real", REAL / "tgs-real"


def needs(folder: Path):
    return pytest.mark.skipif(not folder.is_dir(), reason=f"{folder} is absent: the real competition files are "
                                                           "not beside this clone (CI puts them in ../shared/data)")


@needs(CARVANA)
def test_every_real_carvana_mask_reads_as_0_1_at_1918_x_1280_and_survives_its_rle_round_trip():
    gifs = sorted((CARVANA / "train_masks").glob("*_mask.gif"))
    assert len(gifs) == 64
    for gif in gifs:
        mask = read_mask(gif)
        assert mask.shape == (1280, 1918) and mask.dtype == np.uint8, gif.name
        with Image.open(gif) as img:  # index 0 black, 1 white: read exactly by index, as before palettes counted
            assert img.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
            assert np.array_equal(mask, np.array(img)), gif.name
        assert np.array_equal(np.flatnonzero(np.bincount(mask.ravel())), [0, 1]), gif.name
        assert np.array_equal(decode_rle(encode_rle(mask, CARVANA_RLE), mask.shape, CARVANA_RLE), mask), gif.name
        assert image_size(CARVANA / "train" / gif.name.replace("_mask.gif", ".jpg")) == (1280, 1918)
    assert read_image(CARVANA / "train" / gifs[0].name.replace("_mask.gif", ".jpg")).shape == (1280, 1918, 3)


@needs(TGS)
def test_every_real_tgs_mask_equals_its_train_csv_row_decoded_column_major():
    table = pd.read_csv(TGS / "train.csv", dtype=str, keep_default_na=False)
    assert len(table) == 2989
    column_major, bit_depths = RleFormat(order="F"), []
    for image_id, rle in zip(table["id"], table["rle_mask"]):
        path = TGS / "train" / "masks" / f"{image_id}.png"
        bit_depths.append(path.read_bytes()[24])  # the PNG header's bit depth
        assert np.array_equal(read_mask(path), decode_rle(rle, (101, 101), column_major)), image_id
    # Non-empty masks are 16-bit {0, 65535}, empty ones 8-bit zeros, as Kaggle shipped them.
    assert np.array_equal(np.array(bit_depths) == 8, table["rle_mask"] == "") and set(bit_depths) == {8, 16}


@needs(CARVANA)
def test_prepare_folds_on_the_real_carvana_folder_keeps_each_car_in_one_fold(tmp_path):
    cfg = load_config(ROOT / "configs" / "carvana.yaml", [f"data.root={CARVANA}", f"output_dir={tmp_path}"])
    folds = pd.read_csv(prepare_folds(cfg), dtype={"id": str})
    assert sorted(folds["id"]) == sorted(p.stem for p in (CARVANA / "train").glob("*.jpg"))
    assert folds.groupby("car_id")["fold"].nunique().max() == 1
    assert folds["car_id"].nunique() == 16 and sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]


@needs(TGS)
def test_prepare_folds_and_the_test_listing_on_the_real_tgs_folder_with_the_tgs_config(tmp_path):
    cfg = load_config(ROOT / "configs" / "tgs.yaml", [f"data.root={TGS}", f"output_dir={tmp_path}"])
    folds = pd.read_csv(prepare_folds(cfg), dtype={"id": str, "group": str})
    assert len(folds) == 2989 and folds["id"].is_unique and (folds["group"] == folds["id"]).all()
    assert folds["fold"].value_counts().between(590, 608).all()
    empty_share = (folds["mask_area"] == 0).groupby(folds["fold"]).mean()
    assert empty_share.max() - empty_share.min() < 0.05  # stratified by mask area: about 39 % empty in each
    sample = pd.read_csv(TGS / "sample_submission.csv", dtype=str)
    assert sorted(row["id"] for row in listed_test_rows(DataSource.of(cfg))) == sorted(sample["id"]) and len(sample) == 1011
