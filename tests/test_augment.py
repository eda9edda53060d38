import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from ternaus.augment import HSVShift, ShiftScaleRotate, build_train_transform, hsv_shift, shift_scale_rotate
from ternaus.config import AugmentConfig


def solid(rgb, shape=(4, 6)):
    return np.broadcast_to(np.array(rgb, np.uint8), (*shape, 3)).copy()


def test_hue_shift_turns_red_into_green_and_blue():
    # OpenCV's uint8 hue: red 0, green 60, blue 120 (degrees / 2); a third of the wheel is 60 steps.
    assert np.array_equal(hsv_shift(solid((255, 0, 0)), 1 / 3, 1.0, 1.0), solid((0, 255, 0)))
    assert np.array_equal(hsv_shift(solid((255, 0, 0)), -1 / 3, 1.0, 1.0), solid((0, 0, 255)))


def test_brightness_scales_value_and_saturation_zero_gives_grey():
    assert np.array_equal(hsv_shift(solid((200, 100, 50)), 0.0, 1.0, 0.5), solid((100, 50, 25)))
    assert np.array_equal(hsv_shift(solid((200, 100, 50)), 0.0, 0.0, 1.0), solid((200, 200, 200)))


def test_an_identity_shift_changes_a_colour_by_at_most_uint8_hsv_rounding():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    error = np.abs(hsv_shift(image, 0.0, 1.0, 1.0).astype(int) - image)
    assert error.max() <= 8 and error.mean() < 2


def test_integer_shift_moves_image_and_mask_together_and_the_mask_stays_binary():
    image = np.zeros((8, 10), np.uint8)
    image[2:4, 3:6] = 200
    moved = shift_scale_rotate(image, angle=0.0, scale=1.0, dx=2, dy=1)
    assert np.array_equal(moved[3:5, 5:8], np.full((2, 3), 200)) and moved.sum() == 200 * 6
    mask = (image > 0).astype(np.uint8)
    turned = shift_scale_rotate(mask, angle=30.0, scale=1.1, dx=1, dy=0, nearest=True)
    assert set(np.unique(turned)) <= {0, 1}


def test_a_quarter_turn_about_the_centre_is_exact():
    square = np.arange(25, dtype=np.uint8).reshape(5, 5)
    assert np.array_equal(shift_scale_rotate(square, 90.0, 1.0, 0, 0, nearest=True), np.rot90(square))


def test_colour_leaves_the_mask_alone_and_geometry_moves_both():
    image = tv_tensors.Image(torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros((1, 16, 24), dtype=torch.uint8))
    mask[0, 4:8, 6:12] = 1
    torch.manual_seed(0)
    new_image, new_mask = HSVShift(0.05, 0.3, 0.2)(image, mask)
    assert new_mask is mask and not torch.equal(new_image, image) and isinstance(new_image, tv_tensors.Image)
    new_image, new_mask = ShiftScaleRotate(0.2, 0.0, 0.0)(image, mask)
    assert isinstance(new_mask, tv_tensors.Mask) and new_mask.shape == mask.shape
    assert new_mask.sum() == mask.sum()  # a pure shift of a mask well inside the frame keeps every pixel


@pytest.mark.parametrize("seed", [0, 1])
def test_the_pipeline_follows_the_seed(seed):
    transform = build_train_transform(AugmentConfig(hflip=0.5, ssr_p=1.0, color_p=1.0))
    item = {"image": torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(9)),
            "mask": torch.ones((1, 32, 48), dtype=torch.uint8), "id": "x"}
    runs = []
    for _ in range(2):
        torch.manual_seed(seed)
        runs.append(transform(item))
    assert torch.equal(runs[0]["image"], runs[1]["image"]) and torch.equal(runs[0]["mask"], runs[1]["mask"])
    assert runs[0]["image"].shape == (3, 32, 48) and runs[0]["id"] == "x"
    assert type(runs[0]["image"]) is torch.Tensor
