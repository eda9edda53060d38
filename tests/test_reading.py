"""How files are read: every pixel where the file puts it.

One frame everywhere (the stored pixel order, whatever an orientation tag says), masks as a viewer shows them
(palettes, alpha channels, 16-bit files), 16-bit images never cut to their top byte, image and mask resized on
one pixel grid, predictions that do not depend on their batch-mates, overlapping objects caught by the
submission check, and the messages for unreadable weight files and mis-named JPEGs."""

from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ternaus.data.source import DataSource
from ternaus.checkpoint import read_checkpoint
from ternaus.config import load_config
from ternaus.data.dataset import SegmentationDataset, input_shapes, same_size_batches
from ternaus.data.files import image_size, read_class_mask, read_image, read_mask
from ternaus.data.geometry import Geometry
from ternaus.data.layouts import check_train, list_train, mask_spec
from ternaus.data.layouts import test_rows as listed_test_rows
from ternaus.errors import ConfigError, DataError, WeightsError
from ternaus.inference import PredictionRun, Shard, fixed_batches, predict_test
from ternaus.models import UNet11
from ternaus.rle import RleFormat, encode_rle
from ternaus.runtime import Runtime
from ternaus.submission import check_submission, overlapping_objects
from ternaus.weights import load_weights

ORIENTATION = 0x0112


def picture(height: int = 64, width: int = 96) -> np.ndarray:
    """An RGB picture no turn or flip maps onto itself: a white box near the top left, a red one lower right."""
    image = np.full((height, width, 3), 40, np.uint8)
    image[5:20, 10:40] = 255
    image[40:60, 70:90] = (200, 0, 0)
    return image


def save_turned(path, array: np.ndarray, orientation: int, **options) -> None:
    """Save ``array`` as stored pixels with an orientation tag that tells viewers to turn or flip it."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(array).save(path, exif=exif, **options)
    with Image.open(path) as saved:
        assert saved.getexif().get(ORIENTATION) == orientation or saved.tag_v2.get(ORIENTATION) == orientation


# ---------------------------------------------------------------- 1. one frame: the stored pixel order


@pytest.mark.parametrize("suffix, tolerance", [(".jpg", 3.0), (".png", 0.0), (".tif", 0.0)])
def test_images_keep_their_stored_pixel_order_whatever_the_orientation_tag(tmp_path, suffix, tolerance):
    stored = picture()
    for orientation in range(1, 9):  # 1 as stored; 2-8 every flip and turn a camera writes
        path = tmp_path / f"o{orientation}{suffix}"
        save_turned(path, stored, orientation, **({"quality": 95} if suffix == ".jpg" else {}))
        image = read_image(path)
        assert image.shape == (64, 96, 3), (orientation, image.shape)
        assert np.abs(image.astype(int) - stored).mean() <= tolerance, orientation
        # 180 degrees keeps the shape: the content tells (a turned copy is ~35 levels off on average).
        assert np.abs(image.astype(int) - stored[::-1, ::-1]).mean() > 20, orientation
        assert image_size(path) == (64, 96), orientation


def test_big_tiff_and_big_endian_16_bit_tiff_keep_their_stored_order(tmp_path):
    stored = picture()
    save_turned(tmp_path / "big.tif", stored, 6, big_tiff=True)
    assert (tmp_path / "big.tif").read_bytes()[:4] == b"II+\x00"
    assert np.array_equal(read_image(tmp_path / "big.tif"), stored)
    grey = (np.arange(64 * 96, dtype=np.uint16).reshape(64, 96) % 4096).astype(">u2")
    save_turned(tmp_path / "mm.tif", grey, 8)
    assert (tmp_path / "mm.tif").read_bytes()[:2] == b"MM"
    assert image_size(tmp_path / "mm.tif") == (64, 96)
    expected = np.round(grey.astype(np.float64) * 255 / 4095).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "mm.tif", image_max=4095)[..., 0], expected)


def test_a_turned_jpeg_and_its_mask_line_up_from_the_check_to_the_network_input(tmp_path):
    """The issue's case: 96 x 64 (W x H) stored, Orientation = 6 (a viewer shows it 64 x 96)."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    stored = picture()
    save_turned(tmp_path / "images" / "a.jpg", stored, 6, quality=95)
    mask = (stored[..., 0] == 255).astype(np.uint8)  # the white box, in the stored frame
    save_turned(tmp_path / "masks" / "a.png", mask * 255, 6)  # a tag on the mask is ignored as well
    cfg = load_config(None, [f"data.root={tmp_path}", "data.layout=folders", "data.train_dir=images",
                             "data.masks_dir=masks", "data.test_dir=images"])
    table = list_train(DataSource.of(cfg))
    assert check_train(table, spec=mask_spec(DataSource.of(cfg))) == []
    item = SegmentationDataset(table.to_dict("records"), Geometry(None, 32), True, masks=mask_spec(DataSource.of(cfg)))[0]
    assert item["size"].tolist() == [64, 96] and item["image"].shape == (3, 64, 96)
    white = item["image"].min(dim=0).values > 200
    assert torch.equal(white, item["mask"][0] > 0) and white.sum() == 15 * 30
    assert [row["id"] for row in listed_test_rows(DataSource.of(cfg))] == ["a"]


# ---------------------------------------------------------------- 3. palette masks: as a viewer shows them


def palette_mask(path, index: np.ndarray, palette: list[int], **options) -> None:
    image = Image.fromarray(index.astype(np.uint8), "P")
    image.putpalette(palette)
    image.save(path, optimize=False, **options)
    with Image.open(path) as saved:
        assert np.array_equal(np.array(saved), index), "the palette was remapped when saving"


SHAPE = np.zeros((6, 8), np.uint8)
SHAPE[1:4, 2:7] = 1


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_a_palette_mask_reads_as_the_viewer_shows_it(tmp_path, suffix):
    black_white, white_black = [0, 0, 0, 255, 255, 255], [255, 255, 255, 0, 0, 0]
    palette_mask(tmp_path / f"carvana{suffix}", SHAPE, black_white)  # index 1 white: Carvana's own GIFs
    assert np.array_equal(read_mask(tmp_path / f"carvana{suffix}"), SHAPE)
    palette_mask(tmp_path / f"inverted{suffix}", 1 - SHAPE, white_black)  # white car on black, indices swapped
    assert np.array_equal(read_mask(tmp_path / f"inverted{suffix}"), SHAPE)
    grey = [v for i in range(256) for v in (i, i, i)]  # index = grey level: 0/255 indices show black and white
    palette_mask(tmp_path / f"grey{suffix}", SHAPE * 255, grey)
    assert np.array_equal(read_mask(tmp_path / f"grey{suffix}"), SHAPE)
    palette_mask(tmp_path / f"empty{suffix}", np.zeros_like(SHAPE), white_black[3:] + white_black[:3])
    assert read_mask(tmp_path / f"empty{suffix}").sum() == 0


def test_a_palette_of_colours_and_class_index_masks_are_read_by_index(tmp_path):
    classes = np.zeros((6, 8), np.uint8)
    classes[1:3, 1:4], classes[4:6, 5:8] = 1, 2
    voc = [0, 0, 0, 128, 0, 0, 0, 128, 0]  # black background, dark red class 1, green class 2
    palette_mask(tmp_path / "voc.png", classes, voc)
    planes = read_class_mask(tmp_path / "voc.png", 2)
    assert np.array_equal(planes[0], classes == 1) and np.array_equal(planes[1], classes == 2)
    palette_mask(tmp_path / "binary_voc.png", SHAPE, voc)  # a binary mask in colours: index 1 is the object
    assert np.array_equal(read_mask(tmp_path / "binary_voc.png"), SHAPE)
    # Class indices whatever the palette shows, even greys that would invert a binary mask.
    palette_mask(tmp_path / "grey_classes.png", classes, [255, 255, 255, 0, 0, 0, 128, 128, 128])
    assert np.array_equal(read_class_mask(tmp_path / "grey_classes.png", 2), planes)


# ---------------------------------------------------------------- 4. alpha channels


def test_the_shape_in_an_alpha_channel_is_the_mask(tmp_path):
    alpha = SHAPE * 255
    white = np.full((6, 8), 255, np.uint8)
    Image.fromarray(np.dstack([white, white, white, alpha]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([white, alpha]), "LA").save(tmp_path / "la.png")
    # Black shape on transparent (an editor's export): the opaque part is the shape, whatever its colour.
    black = np.zeros((6, 8), np.uint8)
    Image.fromarray(np.dstack([black, black, black, alpha]), "RGBA").save(tmp_path / "black.png")
    palette_mask(tmp_path / "transparent.gif", SHAPE, [90, 90, 90, 255, 255, 255], transparency=0)
    for name in ("rgba.png", "la.png", "black.png", "transparent.gif"):
        assert np.array_equal(read_mask(tmp_path / name), SHAPE), name
    # Every pixel opaque: the colours hold the shape, as without an alpha channel.
    opaque = np.full((6, 8), 255, np.uint8)
    Image.fromarray(np.dstack([alpha, alpha, alpha, opaque]), "RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(read_mask(tmp_path / "opaque.png"), SHAPE)


def test_masks_whose_alpha_cannot_be_read_as_a_shape_are_refused_by_name(tmp_path):
    alpha, white = SHAPE * 255, np.full((6, 8), 255, np.uint8)
    both = np.dstack([255 - alpha, 255 - alpha, 255 - alpha, np.where(np.arange(8) < 4, 255, 0)[None].repeat(6, 0)])
    Image.fromarray(both.astype(np.uint8), "RGBA").save(tmp_path / "both.png")
    with pytest.raises(DataError, match=r"both.png draws shapes in its colours and in its alpha channel"):
        read_mask(tmp_path / "both.png")
    soft = np.dstack([white, white, white, SHAPE * 128])  # half-transparent edges: which pixels are in?
    Image.fromarray(soft, "RGBA").save(tmp_path / "soft.png")
    with pytest.raises(DataError, match=r"soft.png \(its alpha channel\) holds values \[0, 128\]"):
        read_mask(tmp_path / "soft.png")
    Image.fromarray(np.dstack([white, alpha]), "LA").save(tmp_path / "classes.png")
    with pytest.raises(DataError, match="class-index mask .*classes.png has transparent pixels"):
        read_class_mask(tmp_path / "classes.png", 2)


# ---------------------------------------------------------------- 7. 16-bit images and masks


def test_a_16_bit_image_is_scaled_by_data_image_max_or_refused(tmp_path):
    values = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 12-bit data (0..4095) in a 16-bit PNG
    cv2.imwrite(str(tmp_path / "g.png"), values)
    with pytest.raises(DataError, match=r"g.png is 16-bit \(largest value 4095\); set data.image_max"):
        read_image(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png", image_max=4095)
    assert image.dtype == np.uint8 and len(np.unique(image)) == 256  # not the 16 levels of the top byte
    # Pixel (r, c) holds 64 r + c; it becomes round(value * 255 / 4095).
    assert image[63, 63, 0] == 255 and image[0, 8, 0] == 0 and image[0, 9, 0] == 1  # 8 -> 0.498, 9 -> 0.560
    assert image[32, 0, 0] == 128 and image[16, 0, 0] == 64  # 2048 -> 127.53, 1024 -> 63.77
    with pytest.raises(DataError, match=r"g.png holds 4095, above data.image_max=4000"):
        read_image(tmp_path / "g.png", image_max=4000)
    colour = np.dstack([values * 16, values * 8, values]).astype(np.uint16)  # BGR as OpenCV writes it
    cv2.imwrite(str(tmp_path / "c.tif"), colour)
    rgb = read_image(tmp_path / "c.tif", image_max=65535)
    assert np.array_equal(rgb[..., 0], np.round(values * (255 / 65535)).astype(np.uint8))
    assert np.array_equal(rgb[..., 2], np.round(values * (16 * 255 / 65535)).astype(np.uint8))
    assert rgb[63, 63].tolist() == [16, 127, 255]  # 4095, 32760 and 65520 of 65535: 15.93, 127.48, 254.77
    eight = np.full((4, 4), 77, np.uint8)  # an 8-bit image is read as it is, whatever data.image_max says
    cv2.imwrite(str(tmp_path / "e.png"), eight)
    assert (read_image(tmp_path / "e.png", image_max=4095) == 77).all()
    with pytest.raises(ConfigError, match="data.image_max: a 16-bit value from 1 to 65535, got 70000"):
        load_config(None, ["data.image_max=70000"])


def test_16_bit_masks_read_as_0_1_and_16_bit_class_masks_by_index(tmp_path):
    Image.fromarray(SHAPE.astype(np.uint16) * 65535).save(tmp_path / "tgs.png")  # TGS's non-empty masks
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "empty.png")  # TGS's empty ones: 8-bit zeros
    Image.fromarray(SHAPE.astype(np.uint16)).save(tmp_path / "ones.png")
    with Image.open(tmp_path / "tgs.png") as saved:
        assert saved.mode == "I;16"
    assert np.array_equal(read_mask(tmp_path / "tgs.png"), SHAPE)
    assert np.array_equal(read_mask(tmp_path / "ones.png"), SHAPE)
    assert read_mask(tmp_path / "empty.png").sum() == 0
    Image.fromarray(SHAPE.astype(np.uint16) * 300).save(tmp_path / "odd.png")
    with pytest.raises(DataError, match=r"odd.png holds values \[0, 300\]"):
        read_mask(tmp_path / "odd.png")
    classes = SHAPE.astype(np.uint16) * 2
    Image.fromarray(classes).save(tmp_path / "classes.png")
    assert np.array_equal(read_class_mask(tmp_path / "classes.png", 2)[1], SHAPE)


# ---------------------------------------------------------------- 2. image and mask on one pixel grid


def centroid(weights: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(weights.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()


def mask_offset(size: tuple[int, int], input_size: tuple[int, int], interpolation: int | None = None) -> np.ndarray:
    """Mean (rows, columns) offset, in source pixels, of a resized box mask from the same box in the resized
    image (the centroid of the white box), over the box shifted pixel by pixel through one whole period of the
    two grids (p source pixels for a scale p / q): every edge meets the target grid at each phase once, so the
    rounding of the edges averages out exactly and only a shift of the grid remains."""
    geometry = Geometry(input_size)
    scale = np.array(size) / np.array(input_size)
    period = math.lcm(*(Fraction(a, b).numerator for a, b in zip(size, input_size)))
    assert all(s // 8 + s // 2 + period <= s for s in size), "the image is too small for the period"
    offsets = []
    for shift in range(period):
        box = np.zeros(size, np.uint8)
        box[size[0] // 8 + shift: size[0] * 5 // 8 + shift, size[1] // 8 + shift: size[1] * 5 // 8 + shift] = 1
        image = geometry.image_to_input(np.dstack([box * 255] * 3))[..., 0].astype(np.float64)
        mask = (geometry.mask_to_input(box) if interpolation is None
                else cv2.resize(box, input_size[::-1], interpolation=interpolation))
        offsets.append((centroid(mask.astype(np.float64)) - centroid(image)) * scale)
    return np.mean(offsets, axis=0)


@pytest.mark.parametrize("size, input_size", [((256, 320), (64, 64)), ((160, 240), (64, 96)),
                                              ((96, 96), (128, 128)), ((96, 144), (64, 64)),
                                              ((300, 200), (96, 64))],
                         ids=["4x_5x", "2.5x", "enlarged_0.75x", "1.5x_2.25x", "3.125x"])
def test_a_resized_mask_sits_where_its_image_does(size, input_size):
    assert np.all(np.abs(mask_offset(size, input_size)) < 0.02)
    # The measure sees the fault: OpenCV's plain nearest neighbour gives target pixel i the source pixel
    # floor(i * s), not the one at the centre (i + 1/2) s - 1/2: for s = p / q the mask lands (s - 1) / 2 plus
    # the mean of floor's cut, (q - 1) / 2q, source pixels lower and further right (1.5 and 2 px at 4x and 5x).
    q = np.array([Fraction(a, b).denominator for a, b in zip(size, input_size)])
    expected = (np.array(size) / np.array(input_size) - 1) / 2 + (q - 1) / (2 * q)
    assert np.allclose(mask_offset(size, input_size, cv2.INTER_NEAREST), expected, atol=0.02)


def perfect_prediction_dice(mask: np.ndarray, geometry: Geometry, to_input) -> float:
    """Dice of the original mask and a perfect network's output (the resized mask) restored to full size."""
    restored = geometry.restore(torch.from_numpy(to_input(mask)).float()[None], mask.shape)[0].numpy() >= 0.5
    return 2 * (restored & (mask > 0)).sum() / (restored.sum() + mask.sum())


def test_a_perfect_prediction_restores_to_the_mask_up_to_the_resize_s_own_loss():
    box = np.zeros((1280, 1918), np.uint8)
    box[300:1000, 400:1500] = 1  # rows 301..1000, columns 401..1500 (counted from 1)
    geometry = Geometry((320, 384))
    nearest = lambda m: cv2.resize(m, (384, 320), interpolation=cv2.INTER_NEAREST)  # noqa: E731 - the old way
    before = perfect_prediction_dice(box, geometry, nearest)
    after = perfect_prediction_dice(box, geometry, geometry.mask_to_input)
    assert round(before, 4) == 0.9964 and round(after, 4) == 0.9991
    shifted = box.copy()
    shifted[300:1000, 400:1500] = 0
    shifted[301:1001, 400:1500] = 1  # one row lower: no longer on the 4-pixel grid
    assert perfect_prediction_dice(shifted, geometry, geometry.mask_to_input) > 0.997
    classes = np.zeros((2, 101, 101), np.uint8)
    classes[0, 10:50, 10:90], classes[1, 50:90, 10:90] = 1, 1
    resized = Geometry((128, 128)).masks_to_input(classes)
    assert set(np.unique(resized)) == {0, 1} and resized.sum(axis=0).max() == 1  # binary, classes exclusive


# ---------------------------------------------------------------- 5. a prediction does not depend on its batch-mates


def test_same_size_batches_group_by_shape_in_a_fixed_order():
    shapes = [(64, 96), (128, 128), (64, 96), (64, 96), (128, 128), (64, 96)]
    assert same_size_batches(shapes, 2) == [[0, 2], [1, 4], [3, 5]]
    assert same_size_batches([(1, 1)] * 5, 2) == [[0, 1], [2, 3], [4]]
    ids = [f"i{k}" for k in range(6)]
    batches = fixed_batches(ids, 2, shapes)
    assert batches == [["i0", "i2"], ["i1", "i4"], ["i3", "i5"]]
    assert [Shard(k, 2).take(batches) for k in (0, 1)] == [[["i0", "i2"], ["i3", "i5"]], [["i1", "i4"]]]


@pytest.fixture
def mixed_sizes(tmp_path):
    """Four test images, 64 x 80 and 101 x 101 in turn (padded to 64 x 96 and 128 x 128)."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(4):
        shape = (64, 80) if k % 2 == 0 else (101, 101)
        cv2.imwrite(str(folder / f"t{k}.png"), rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    return tmp_path


def small_network() -> torch.nn.Module:
    """A few convolutions stand in for UNet11 (the same zero-padding question, a hundredth of the time)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 1, 9, padding=4)).eval()


def test_mixed_sizes_predict_byte_identical_pngs_whatever_the_batch_size(mixed_sizes):
    model, runtime = small_network(), Runtime(torch.device("cpu"), None, False)
    written = {}
    for batch_size in (1, 4):
        cfg = load_config(None, [f"data.root={mixed_sizes}", "data.layout=folders", "data.test_dir=images",
                                 f"output_dir={mixed_sizes / 'run'}", f"predict.out_dir=b{batch_size}",
                                 f"predict.batch_size={batch_size}", "data.num_workers=0"])
        rows = listed_test_rows(DataSource.of(cfg))
        assert input_shapes(rows, Geometry(None, 32)) == [(64, 96), (128, 128)] * 2
        out = predict_test(PredictionRun.from_config(cfg), [model], runtime, rows, {"batch_size": batch_size})
        written[batch_size] = {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}
    assert len(written[1]) == 4 and written[4] == written[1]


def test_validation_and_out_of_fold_batches_hold_one_size(mixed_sizes):
    from ternaus.training import same_size_loader

    rows = [{"id": f"t{k}", "image": str(mixed_sizes / "images" / f"t{k}.png")} for k in range(4)]
    loader = same_size_loader(SegmentationDataset(rows, Geometry(None, 32), False), 3,
                              Runtime(torch.device("cpu"), None, False), 0)
    batches = [(batch["id"], tuple(batch["image"].shape[-2:])) for batch in loader]
    assert batches == [(["t0", "t2"], (64, 96)), (["t1", "t3"], (128, 128))]


# ---------------------------------------------------------------- 6. overlapping objects


def test_overlapping_objects_are_found_pair_by_pair():
    fmt = RleFormat(order="F")
    # Pixels (1-indexed): a 1-10, b 8-12 (overlaps a), c 11-11 (overlaps b only), d 20-25 (alone), e 25 (d).
    rles = ["1 10", "8 5", "11 1", "20 6", "25 1"]
    assert overlapping_objects(rles, fmt) == [(0, 1), (1, 2), (3, 4)]
    assert overlapping_objects(["1 10", "11 5", ""], fmt) == []  # touching is not overlapping
    siim = RleFormat(order="F", start=0, relative=True, empty="-1")
    assert overlapping_objects(["0 4 6 2", "11 1", "-1"], siim) == [(0, 1)]  # pixels 0-3, 10-11; 11


@pytest.fixture
def airbus(tmp_path):
    from ternaus.fixtures.competitions import GENERATORS

    root = GENERATORS["airbus"](tmp_path / "data", images=2, test_images=2, seed=0, size=32)
    cfg = load_config("configs/airbus.yaml", [f"data.root={root}", f"output_dir={tmp_path / 'run'}"])
    return cfg, sorted(row["image"].rsplit("/", 1)[-1] for row in listed_test_rows(DataSource.of(cfg)))


def test_the_checker_names_the_lines_of_overlapping_objects(airbus, tmp_path):
    cfg, (first, second) = airbus
    ship = np.zeros((32, 32), np.uint8)
    ship[5:9, 5:15] = 1
    fmt = RleFormat(order="F")
    moved = np.roll(ship, 2, axis=0)  # one ship's runs shifted by 2 pixels: the two rows share pixels
    other = np.roll(ship, 16, axis=0)
    rows = [(first, encode_rle(ship, fmt)), (first, encode_rle(other, fmt)), (first, encode_rle(moved, fmt)),
            (second, encode_rle(ship, fmt)), (second, encode_rle(other, fmt))]
    path = tmp_path / "sub.csv"
    path.write_text("ImageId,EncodedPixels\n" + "".join(f"{a},{b}\n" for a, b in rows))
    problems = check_submission(path, cfg)
    assert problems == [f"{path} lines 2 and 4 ({first}): the objects overlap; each pixel may belong to one object "
                        "only (the metric refuses overlapping objects)"]
    path.write_text("ImageId,EncodedPixels\n" + "".join(f"{a},{b}\n" for a, b in rows if b != rows[2][1]))
    assert check_submission(path, cfg) == []


# ---------------------------------------------------------------- unreadable weights, mis-named JPEGs


def test_unreadable_weight_files_say_what_they_are_never_to_load_them_unsafely(tmp_path):
    (tmp_path / "page.pth").write_text("<!DOCTYPE html>\n<html><head><title>Download</title></head></html>")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "whole.pth")  # a pickled module, not a state_dict
    (tmp_path / "empty.pth").write_bytes(b"")
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:300])
    expected = {"page.pth": "is a web page (HTML), not weights", "whole.pth": "torch.nn.modules.linear.Linear",
                "empty.pth": "is empty (0 bytes)", "cut.pth": "is damaged (cut short"}
    model = UNet11()
    for name, words in expected.items():
        for load in (lambda p: load_weights(model, p), read_checkpoint):
            with pytest.raises(WeightsError) as caught:
                load(tmp_path / name)
            message = str(caught.value)
            assert name in message and words in message, message
            assert "weights_only" not in message and "arbitrary code" not in message, message
    with pytest.raises(WeightsError, match="save the weights alone: torch.save"):
        load_weights(model, tmp_path / "whole.pth")


def test_upper_case_jpg_is_refused_with_renaming_as_the_fix(tmp_path):
    from ternaus.fixtures.carvana import generate

    root = generate(tmp_path / "data", cars=1, test_cars=0, size=(62, 40), seed=1)
    first = sorted((root / "train").glob("*.jpg"))[0]
    first.rename(first.with_suffix(".JPG"))
    cfg = load_config(None, [f"data.root={root}"])
    with pytest.raises(DataError, match=r"do not end in .jpg exactly, e.g. \[.*\.JPG'\]; renaming them to end in "
                                        r"\.jpg \(lower case\) is enough"):
        list_train(DataSource.of(cfg))
