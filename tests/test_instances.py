"""Instance competitions as they ship (issue 27, the 2018 Data Science Bowl): one folder per image with one mask
PNG per object (``data.layout: instance_folders``), the contact-line targets, the DSB metric and the watershed
that splits touching objects."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from ternaus.config import load_config
from ternaus.data.instance_folders import contact_map, label_map, load_objects
from ternaus.data import layouts
from ternaus.data.layouts import MaskSpec, check_train, list_train, load_masks
from ternaus.data.source import DataSource
from ternaus.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "dsb2018-real"
INSTANCE = ["data.layout=instance_folders", "data.train_dir=stage1_train", "data.test_dir=stage1_test"]


def disc(shape, centre, radius) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    return mask.astype(bool)


def two_touching_discs(shape=(40, 60)) -> list[np.ndarray]:
    """Two discs of radius 10 whose centres lie 20 px apart on one row: they share the column between them."""
    left = disc(shape, (20, 20), 10)
    right = disc(shape, (40, 20), 10) & ~left
    return [left, right]


def write_instance_folders(root: Path, images: dict[str, list[np.ndarray]], split="stage1_train") -> Path:
    """``root/<split>/<id>/images/<id>.png`` (RGBA, as DSB ships them) and one 0/255 PNG per object."""
    for image_id, objects in images.items():
        folder = root / split / image_id
        (folder / "images").mkdir(parents=True)
        shape = objects[0].shape if objects else (32, 48)
        rgba = np.zeros((*shape, 4), np.uint8)
        rgba[..., 3] = 255
        rgba[..., 1] = 200 * sum(o.astype(np.uint8) for o in objects) if objects else 0
        cv2.imwrite(str(folder / "images" / f"{image_id}.png"), rgba)
        if split == "stage1_train":
            (folder / "masks").mkdir()
            for k, mask in enumerate(objects):
                cv2.imwrite(str(folder / "masks" / f"object{k}.png"), mask.astype(np.uint8) * 255)
    return root


def source_of(root: Path, *overrides: str) -> DataSource:
    return DataSource.of(load_config(None, [f"data.root={root}", *INSTANCE, *overrides]))


# ---------------------------------------------------------------- the layout


def test_layout_reads_tiny_folders(tmp_path):
    discs = two_touching_discs()
    write_instance_folders(tmp_path, {"b": discs, "a": [discs[0]]})
    write_instance_folders(tmp_path, {"t": discs}, split="stage1_test")
    source = source_of(tmp_path)
    table = list_train(source)
    assert list(table["id"]) == ["a", "b"]  # ids are the folder names, sorted
    assert [len(objects) for objects in table["objects"]] == [1, 2]
    assert [row["id"] for row in layouts.test_rows(source)] == ["t"]
    assert check_train(table, spec=MaskSpec(1, layout="instance_folders")) == []
    row = table.to_dict("records")[1]
    union = load_masks(row, (40, 60), MaskSpec(1, layout="instance_folders"))
    assert union.shape == (1, 40, 60) and union[0].sum() == (discs[0] | discs[1]).sum()
    objects = load_objects(row, (40, 60))
    assert len(objects) == 2 and all((o == d).all() for o, d in zip(objects, discs))


def test_two_planes_add_the_contact_line(tmp_path):
    discs = two_touching_discs()
    write_instance_folders(tmp_path, {"b": discs})
    row = list_train(source_of(tmp_path)).to_dict("records")[0]
    masks = load_masks(row, (40, 60), MaskSpec(2, layout="instance_folders"))
    assert masks.shape == (2, 40, 60)
    contact = masks[1].astype(bool)
    # The contact band lies between the discs (around column 30, where they touch), nowhere near their far sides.
    assert contact[20, 30] and contact.any(0)[29:33].all()
    assert not contact[:, :27].any() and not contact[:, 35:].any()
    # One object alone has no contact.
    assert not contact_map(label_map([discs[0]], (40, 60))).any()


def test_contacts_of_objects_apart(tmp_path):
    """Objects more than 2 * CONTACT_RADIUS pixels apart do not touch; at 4 px apart (a gap of 3: reached from both sides in its middle column) they do."""
    shape = (20, 40)
    a, b, c = (np.zeros(shape, bool) for _ in range(3))
    a[5:15, 2:10] = True
    b[5:15, 13:20] = True  # columns 10-12 between a and b: 3 px apart, within reach of both
    c[5:15, 30:38] = True  # 10 px from b
    contact = contact_map(label_map([a, b, c], shape))
    assert contact[5:15, 11].all() and not contact[:, 21:].any()


def test_layout_refuses_a_folder_without_its_image(tmp_path):
    write_instance_folders(tmp_path, {"a": two_touching_discs()})
    (tmp_path / "stage1_train" / "b" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match="b.png"):
        list_train(source_of(tmp_path))


def test_layout_refuses_files_where_folders_belong(tmp_path):
    write_instance_folders(tmp_path, {"a": two_touching_discs()})
    (tmp_path / "stage1_train" / "stray.png").write_bytes(b"x")
    with pytest.raises(DataError, match="one folder per image"):
        list_train(source_of(tmp_path))


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/dsb2018-real is absent (the real DSB 2018 sample)")
def test_layout_reads_the_real_dsb_folders():
    source = source_of(REAL, "model.num_classes=2", "data.class_names=[nucleus,contact]")
    table = list_train(source)
    assert len(table) == 200 and len(layouts.test_rows(source)) == 50
    row = table.to_dict("records")[0]
    from ternaus.data.files import image_size, read_image
    shape = image_size(row["image"])
    image = read_image(row["image"])
    assert image.shape == (*shape, 3)  # RGBA read as RGB
    masks = load_masks(row, shape, MaskSpec(2, layout="instance_folders"))
    objects = load_objects(row, shape)
    assert len(objects) == len(row["objects"]) > 1
    assert masks[0].sum() == sum(int(o.sum()) for o in objects)  # objects do not overlap
    assert masks[1].any()
    assert check_train(table.iloc[:5], spec=MaskSpec(2, layout="instance_folders")) == []
