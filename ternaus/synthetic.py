"""Synthetic stand-in for Kaggle's Carvana Image Masking Challenge data.

Each car is a small procedural 3D model (a rounded lower body, a tapered glass cabin, four wheels
with rims, lights and a grille) photographed on a turntable in a studio: sixteen views at 22.5 degree
steps (01 front, 05 side, 09 back, 13 other side), like the real dataset. The studio adds a wall and
floor gradient, a soft contact shadow, a faint floor reflection, vignetting and sensor noise, none of
which is part of the mask. The mask is exactly the set of pixels the car's polygons cover.

    python -m ternaus.synthetic --out DIR [--cars N] [--test-cars M] [--size WxH] [--seed S] [--quality Q]

writes ``train/``, ``train_masks/`` (palette GIFs holding 0/1), ``train_masks.csv`` (Carvana RLE),
``metadata.csv``, ``sample_submission.csv``, ``test/`` and ``test_masks/`` under DIR. Output is a pure
function of the arguments; car k's images do not depend on how many cars are generated.
"""

from __future__ import annotations

import argparse
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from ternaus.io import atomic_write_bytes
from ternaus.rle import rle_encode

__all__ = [
    "VIEWS",
    "CarShape",
    "CarSpec",
    "Studio",
    "car_id",
    "generate",
    "main",
    "make_car",
    "render_view",
    "sample_car",
]

VIEWS = 16
YAW_STEP_DEG = 360.0 / VIEWS
DEFAULT_SIZE = (1918, 1280)

_RING_SAMPLES = 64  # around the body and cabin; multiple of 8 so pillars fall on whole faces
_WHEEL_SAMPLES = 32
_SHIFT = 4  # cv2 sub-pixel bits: polygon vertices are placed to 1/16 px
_LOWRES_WIDTH = 640  # the backdrop is smooth or blurred, so it is built at most this wide (and half size)
_SPLITS = {"train": 0, "test": 1}

# Material ids; every face carries one.
PAINT, UNDERBODY, GLASS, TYRE, RIM, HUB, ARCH, HEADLIGHT, TAILLIGHT, GRILLE = range(10)

# Per material: ambient, diffuse, sky reflection (additive, from the bright studio ceiling),
# specular (additive), shininess.
_FINISH = np.array(
    [
        [0.42, 0.50, 0.06, 0.30, 40.0],  # paint
        [0.30, 0.10, 0.00, 0.00, 1.0],  # underbody
        [0.60, 0.20, 0.30, 0.45, 30.0],  # glass
        [0.55, 0.35, 0.03, 0.05, 8.0],  # tyre
        [0.45, 0.45, 0.08, 0.30, 20.0],  # rim
        [0.50, 0.30, 0.02, 0.10, 10.0],  # hub
        [1.00, 0.00, 0.00, 0.00, 1.0],  # wheel arch (deep shadow, unlit)
        [0.70, 0.30, 0.10, 0.40, 30.0],  # headlight
        [0.60, 0.40, 0.05, 0.30, 30.0],  # tail light
        [0.60, 0.30, 0.02, 0.05, 5.0],  # grille
    ],
    dtype=np.float64,
)
_FIXED_COLOURS = {
    UNDERBODY: (40, 40, 42),
    TYRE: (34, 34, 36),
    HUB: (70, 72, 76),
    ARCH: (14, 14, 15),
    HEADLIGHT: (205, 210, 215),
    TAILLIGHT: (150, 20, 22),
    GRILLE: (28, 29, 31),
}
_LIGHT = np.array([-0.35, 1.0, -0.55]) / np.linalg.norm([-0.35, 1.0, -0.55])  # world, towards the light

# name, RGB, weight: whites, silvers and blacks dominate like on a real used-car lot.
_PAINTS = [
    ("white", (238, 238, 235), 0.16),
    ("pearl", (226, 222, 212), 0.05),
    ("silver", (186, 189, 193), 0.14),
    ("grey", (122, 125, 130), 0.10),
    ("charcoal", (66, 68, 72), 0.07),
    ("black", (20, 20, 22), 0.13),
    ("navy", (24, 34, 70), 0.06),
    ("blue", (34, 76, 162), 0.06),
    ("red", (168, 22, 26), 0.07),
    ("maroon", (92, 16, 22), 0.04),
    ("green", (30, 82, 52), 0.03),
    ("beige", (192, 176, 146), 0.03),
    ("orange", (212, 102, 30), 0.02),
    ("yellow", (222, 190, 42), 0.02),
    ("brown", (92, 62, 42), 0.02),
]

# Proportions per body style, as (low, high) ranges in metres or fractions of the length.
_STYLES: dict[str, dict[str, tuple[float, float]]] = {
    "sedan": dict(length=(4.5, 5.0), width=(1.78, 1.88), clearance=(0.13, 0.17), body=(0.86, 0.96),
                  cabin_len=(0.47, 0.54), cabin_rear_gap=(0.17, 0.22), cabin_h=(0.44, 0.53),
                  windshield=(0.55, 0.80), rear_run=(0.40, 0.60), hood_drop=(0.08, 0.15),
                  trunk_drop=(0.00, 0.05), wheel=(0.31, 0.34), roundness=(3.5, 5.0)),
    "hatchback": dict(length=(3.9, 4.4), width=(1.70, 1.80), clearance=(0.13, 0.17), body=(0.86, 0.95),
                      cabin_len=(0.56, 0.63), cabin_rear_gap=(0.03, 0.06), cabin_h=(0.50, 0.60),
                      windshield=(0.60, 0.85), rear_run=(0.15, 0.30), hood_drop=(0.10, 0.18),
                      trunk_drop=(0.00, 0.02), wheel=(0.30, 0.33), roundness=(3.5, 5.0)),
    "suv": dict(length=(4.4, 5.0), width=(1.85, 2.00), clearance=(0.19, 0.25), body=(1.00, 1.12),
                cabin_len=(0.60, 0.67), cabin_rear_gap=(0.02, 0.05), cabin_h=(0.55, 0.68),
                windshield=(0.45, 0.65), rear_run=(0.06, 0.16), hood_drop=(0.05, 0.11),
                trunk_drop=(0.00, 0.02), wheel=(0.35, 0.39), roundness=(4.5, 7.0)),
    "coupe": dict(length=(4.4, 4.8), width=(1.80, 1.90), clearance=(0.11, 0.14), body=(0.82, 0.90),
                  cabin_len=(0.44, 0.50), cabin_rear_gap=(0.18, 0.24), cabin_h=(0.37, 0.44),
                  windshield=(0.70, 0.95), rear_run=(0.55, 0.80), hood_drop=(0.07, 0.12),
                  trunk_drop=(0.00, 0.04), wheel=(0.32, 0.35), roundness=(3.5, 5.0)),
}
_STYLE_WEIGHTS = {"sedan": 0.35, "hatchback": 0.2, "suv": 0.3, "coupe": 0.15}

_MODELS = {
    "sedan": [("Toyota", "Camry"), ("Honda", "Accord"), ("Nissan", "Altima"), ("Hyundai", "Sonata"),
              ("Ford", "Fusion"), ("Chevrolet", "Malibu"), ("BMW", "3 Series"), ("Kia", "Optima")],
    "hatchback": [("Honda", "Fit"), ("Volkswagen", "Golf"), ("Ford", "Focus"), ("Mazda", "Mazda3"),
                  ("Toyota", "Prius"), ("Chevrolet", "Sonic")],
    "suv": [("Toyota", "RAV4"), ("Honda", "CR-V"), ("Ford", "Explorer"), ("Jeep", "Grand Cherokee"),
            ("Nissan", "Rogue"), ("Subaru", "Forester"), ("Acura", "RDX"), ("Chevrolet", "Equinox")],
    "coupe": [("Ford", "Mustang"), ("Chevrolet", "Camaro"), ("Dodge", "Challenger"), ("BMW", "4 Series"),
              ("Audi", "A5"), ("Honda", "Civic")],
}
_TRIM1 = ["Base", "LX", "EX", "SE", "LE", "S", "SV", "Sport", "Limited", "Premium", "Touring"]
_TRIM2 = ["", "", "", "w/Tech", "AWD", "4WD", "FWD", "w/Navigation", "V6"]


# --------------------------------------------------------------------------------------------------
# Car and studio parameters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CarShape:
    """Geometry in metres, car frame: x forward, y to the car's left, z up, origin on the floor."""

    style: str
    length: float
    width: float
    clearance: float
    body_top: float
    roundness: float
    hood_drop: float
    trunk_drop: float
    cabin_front: float  # x of the cabin's base, front edge
    cabin_rear: float
    cabin_width: float
    cabin_height: float
    windshield_run: float  # how far the roof edge sits behind the base, front and rear
    rear_run: float
    cabin_taper: float  # roof width / cabin base width
    cabin_roundness: float
    wheel_radius: float
    wheel_width: float
    front_axle: float
    rear_axle: float


@dataclass(frozen=True)
class Studio:
    """Backdrop, lighting and camera for one car (the turntable spins the car, not the camera)."""

    wall_top: tuple[float, float, float]
    wall_bottom: tuple[float, float, float]
    floor_far: tuple[float, float, float]
    floor_near: tuple[float, float, float]
    wall_distance: float
    horizon_softness: float  # fraction of the image height
    vignette: float
    shadow_strength: float
    reflection_strength: float
    turntable_tone: float  # 1.0 makes the turntable disc invisible
    noise_sigma: float
    camera_distance: float
    camera_height: float
    target_height: float
    frame_fraction: float  # side-view car length / image width
    offset_x: float
    offset_y: float


@dataclass(frozen=True)
class CarSpec:
    shape: CarShape
    paint: tuple[float, float, float]
    rim: tuple[float, float, float]
    glass: tuple[float, float, float]
    studio: Studio
    metadata: dict[str, object]


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _sample_shape(rng: np.random.Generator, style: str) -> CarShape:
    ranges = _STYLES[style]
    length = _uniform(rng, ranges["length"])
    width = _uniform(rng, ranges["width"])
    cabin_length = _uniform(rng, ranges["cabin_len"]) * length
    cabin_rear = -length / 2 + _uniform(rng, ranges["cabin_rear_gap"]) * length
    wheel_radius = _uniform(rng, ranges["wheel"])
    front_overhang = _uniform(rng, (0.17, 0.22)) * length
    rear_overhang = _uniform(rng, (0.18, 0.24)) * length
    return CarShape(
        style=style, length=length, width=width,
        clearance=_uniform(rng, ranges["clearance"]), body_top=_uniform(rng, ranges["body"]),
        roundness=_uniform(rng, ranges["roundness"]),
        hood_drop=_uniform(rng, ranges["hood_drop"]), trunk_drop=_uniform(rng, ranges["trunk_drop"]),
        cabin_front=cabin_rear + cabin_length, cabin_rear=cabin_rear,
        cabin_width=width * _uniform(rng, (0.80, 0.86)), cabin_height=_uniform(rng, ranges["cabin_h"]),
        windshield_run=_uniform(rng, ranges["windshield"]), rear_run=_uniform(rng, ranges["rear_run"]),
        cabin_taper=_uniform(rng, (0.78, 0.88)), cabin_roundness=_uniform(rng, (3.0, 4.5)),
        wheel_radius=wheel_radius, wheel_width=_uniform(rng, (0.20, 0.26)),
        front_axle=length / 2 - front_overhang, rear_axle=-length / 2 + rear_overhang,
    )


def _sample_paint(rng: np.random.Generator) -> tuple[float, float, float]:
    weights = np.array([w for _, _, w in _PAINTS])
    _, rgb, _ = _PAINTS[int(rng.choice(len(_PAINTS), p=weights / weights.sum()))]
    # Mostly a brightness change: independent channel noise would tint whites and blacks purple.
    jitter = rng.normal(0.0, 6.0) + rng.normal(0.0, 1.5, size=3)
    return tuple(float(v) for v in np.clip(np.array(rgb) + jitter, 8, 250))


def _tone(level: float, tint: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(level + tint, 0, 255))


def _sample_studio(rng: np.random.Generator, shape: CarShape) -> Studio:
    tint = rng.normal(0.0, 1.2, size=3)  # warm or cool light, shared by wall and floor
    wall = _uniform(rng, (212.0, 240.0))
    floor = wall - _uniform(rng, (12.0, 45.0))
    total_height = shape.body_top + shape.cabin_height
    return Studio(
        wall_top=_tone(wall - _uniform(rng, (6.0, 22.0)), tint),
        wall_bottom=_tone(wall + _uniform(rng, (0.0, 8.0)), tint),
        floor_far=_tone(floor + _uniform(rng, (0.0, 10.0)), tint),
        floor_near=_tone(floor - _uniform(rng, (0.0, 18.0)), tint),
        wall_distance=_uniform(rng, (3.5, 7.0)),
        horizon_softness=_uniform(rng, (0.01, 0.05)),
        vignette=_uniform(rng, (0.06, 0.16)),
        shadow_strength=_uniform(rng, (0.35, 0.6)),
        reflection_strength=_uniform(rng, (0.08, 0.2)),
        turntable_tone=float(1.0 - rng.uniform(0.0, 0.05) * (rng.random() < 0.5)),
        noise_sigma=_uniform(rng, (1.0, 3.0)),
        camera_distance=_uniform(rng, (6.0, 8.0)),
        camera_height=_uniform(rng, (1.3, 1.9)),
        target_height=total_height * _uniform(rng, (0.45, 0.55)),
        frame_fraction=_uniform(rng, (0.6, 0.72)),
        offset_x=_uniform(rng, (-0.02, 0.02)),
        offset_y=_uniform(rng, (-0.02, 0.04)),
    )


def _sample_metadata(rng: np.random.Generator, style: str) -> dict[str, object]:
    make, model = _MODELS[style][int(rng.integers(len(_MODELS[style])))]
    return {
        "year": int(rng.integers(2006, 2017)),
        "make": make,
        "model": model,
        "trim1": _TRIM1[int(rng.integers(len(_TRIM1)))],
        "trim2": _TRIM2[int(rng.integers(len(_TRIM2)))],
    }


def sample_car(rng: np.random.Generator) -> CarSpec:
    """Draw one car (shape, colours, studio and camera, metadata) from ``rng``."""
    styles = list(_STYLE_WEIGHTS)
    weights = np.array([_STYLE_WEIGHTS[s] for s in styles])
    style = styles[int(rng.choice(len(styles), p=weights / weights.sum()))]
    shape = _sample_shape(rng, style)
    paint = _sample_paint(rng)
    rim_level = _uniform(rng, (120.0, 200.0))
    glass = tuple(float(v) for v in np.array([26.0, 31.0, 38.0]) + rng.normal(0.0, 3.0, size=3))
    studio = _sample_studio(rng, shape)
    return CarSpec(shape=shape, paint=paint, rim=(rim_level, rim_level + 2.0, rim_level + 5.0),
                   glass=glass, studio=studio, metadata=_sample_metadata(rng, style))


def make_car(seed: int, index: int, split: str = "train") -> CarSpec:
    """The ``index``-th car of ``split`` for ``seed``; independent of how many cars a run makes."""
    return sample_car(np.random.default_rng([seed, _SPLITS[split], index]))


def car_id(seed: int, index: int, split: str = "train") -> str:
    """12 lowercase hex characters, a stable hash of (seed, split, index)."""
    return hashlib.sha256(f"ternaus-synthetic:{seed}:{split}:{index}".encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# Geometry: the car as groups of planar faces in the car frame
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceGroup:
    """Faces with the same vertex count: polys (F, K, 3), outward normals (F, 3), materials (F,)."""

    polys: np.ndarray
    normals: np.ndarray
    materials: np.ndarray


def _face_group(polys: np.ndarray, materials: np.ndarray | int, centre: np.ndarray) -> FaceGroup:
    # Newell's normal; orientation comes from the part's centre so vertex winding never matters.
    normals = np.cross(polys, np.roll(polys, -1, axis=1)).sum(axis=1)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, length, out=np.zeros_like(normals), where=length > 1e-12)
    outward = np.einsum("fd,fd->f", normals, polys.mean(axis=1) - centre)
    normals[outward < 0] *= -1
    materials = np.broadcast_to(np.asarray(materials, dtype=np.int64), (len(polys),)).copy()
    return FaceGroup(polys, normals, materials)


def _superellipse(t: np.ndarray, exponent: float) -> np.ndarray:
    """Unit superellipse |x|^e + |y|^e = 1 at parameters t, as (N, 2)."""
    c, s = np.cos(t), np.sin(t)
    return np.stack([np.sign(c) * np.abs(c) ** (2 / exponent), np.sign(s) * np.abs(s) ** (2 / exponent)], -1)


def _arc_length_parameters(half_x: float, half_y: float, exponent: float, samples: int) -> np.ndarray:
    """Parameters spacing ``samples`` points evenly along the scaled outline.

    Sampling the raw parameter crowds points into the corners and leaves the long flat sides as one
    huge face. The half-step offset makes sample i and sample (samples-1-i) mirror images across the
    x axis, which the cap strips rely on.
    """
    dense_t = np.linspace(0.0, 2 * np.pi, 4097)
    dense = _superellipse(dense_t, exponent) * (half_x, half_y)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    targets = (np.arange(samples) + 0.5) * arc[-1] / samples
    return np.interp(targets, arc, dense_t)


def _bands(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Quads joining two rings of equal sample count: (S, 4, 3)."""
    return np.stack([lower, np.roll(lower, -1, 0), np.roll(upper, -1, 0), upper], axis=1)


def _cap_strips(ring: np.ndarray) -> np.ndarray:
    """Quads covering a ring's interior, front to back between mirrored sample pairs: (S/2-1, 4, 3)."""
    count = len(ring)
    i = np.arange(count // 2 - 1)
    return np.stack([ring[i], ring[i + 1], ring[count - 2 - i], ring[count - 1 - i]], axis=1)


def _deck_drop(shape: CarShape, x: np.ndarray) -> np.ndarray:
    """How far the body's top falls below ``body_top`` at x: hood slopes to the nose, deck to the tail."""
    hood = np.clip((x - shape.cabin_front) / (shape.length / 2 - shape.cabin_front), 0.0, 1.0)
    trunk = np.clip((shape.cabin_rear - x) / (shape.cabin_rear + shape.length / 2), 0.0, 1.0)
    return shape.hood_drop * hood**1.5 + shape.trunk_drop * trunk


# (scale along x, scale along y, height as fraction clearance->body_top, share of the deck drop)
_BODY_RINGS = [(0.95, 0.92, 0.0, 0.0), (1.0, 1.0, 0.22, 0.2), (0.995, 0.99, 0.75, 0.75), (0.975, 0.9, 1.0, 1.0)]


def _body_ring(shape: CarShape, unit: np.ndarray, ring: tuple[float, float, float, float]) -> np.ndarray:
    scale_x, scale_y, level, drop_share = ring
    x = unit[:, 0] * shape.length / 2 * scale_x
    y = unit[:, 1] * shape.width / 2 * scale_y
    z = shape.clearance + level * (shape.body_top - shape.clearance) - drop_share * _deck_drop(shape, x)
    return np.stack([x, y, z], axis=1)


def _build_body(shape: CarShape) -> list[FaceGroup]:
    t = _arc_length_parameters(shape.length / 2, shape.width / 2, shape.roundness, _RING_SAMPLES)
    unit = _superellipse(t, shape.roundness)
    rings = [_body_ring(shape, unit, ring) for ring in _BODY_RINGS]
    centre = np.array([0.0, 0.0, (shape.clearance + shape.body_top) / 2])
    sides = np.concatenate([_bands(a, b) for a, b in zip(rings[:-1], rings[1:])])
    return [
        _face_group(_cap_strips(rings[0]), UNDERBODY, centre),
        _face_group(sides, PAINT, centre),
        _face_group(_cap_strips(rings[-1]), PAINT, centre),
    ]


def _cabin_ring(shape: CarShape, unit: np.ndarray, rise: float, inset: float = 1.0) -> np.ndarray:
    """Cabin cross-section ``rise`` (0 base .. 1 roof) of the way up; the glass leans inwards."""
    front = shape.cabin_front - rise * shape.windshield_run
    rear = shape.cabin_rear + rise * shape.rear_run
    half_width = shape.cabin_width / 2 * (1 - rise * (1 - shape.cabin_taper)) * inset
    x = (front + rear) / 2 + unit[:, 0] * (front - rear) / 2 * inset
    y = unit[:, 1] * half_width
    # Sunk slightly into the body so no gap shows between the two.
    z = np.full_like(x, shape.body_top - 0.03 + rise * (shape.cabin_height + 0.03))
    return np.stack([x, y, z], axis=1)


def _window_materials(glass_band: np.ndarray, shape: CarShape) -> np.ndarray:
    """Glass, except pillars: the corner faces (A and C) and one face mid-side (B)."""
    normal_xy = np.cross(glass_band, np.roll(glass_band, -1, axis=1)).sum(axis=1)[:, :2]
    angle = np.degrees(np.abs(np.arctan2(np.abs(normal_xy[:, 1]), normal_xy[:, 0])))
    corner = (np.abs(angle - 45) < 9) | (np.abs(angle - 135) < 9)
    mid_x = glass_band[:, :, 0].mean(axis=1)
    b_pillar_x = shape.cabin_rear + 0.55 * (shape.cabin_front - shape.cabin_rear)
    side_spacing = np.abs(np.diff(glass_band[:, :2, 0], axis=1))[:, 0]
    b_pillar = (np.abs(mid_x - b_pillar_x) < 0.5 * side_spacing + 1e-6) & (np.abs(angle - 90) < 20)
    return np.where(corner | b_pillar, PAINT, GLASS)


def _build_cabin(shape: CarShape) -> list[FaceGroup]:
    base_length = shape.cabin_front - shape.cabin_rear
    t = _arc_length_parameters(base_length / 2, shape.cabin_width / 2, shape.cabin_roundness, _RING_SAMPLES)
    unit = _superellipse(t, shape.cabin_roundness)
    base, belt = _cabin_ring(shape, unit, 0.0), _cabin_ring(shape, unit, 0.1)
    eaves, roof = _cabin_ring(shape, unit, 0.93), _cabin_ring(shape, unit, 1.0, inset=0.97)
    centre = np.array([(shape.cabin_front + shape.cabin_rear) / 2, 0.0, shape.body_top + shape.cabin_height / 2])
    glass = _bands(belt, eaves)
    return [
        _face_group(np.concatenate([_bands(base, belt), _bands(eaves, roof)]), PAINT, centre),
        _face_group(glass, _window_materials(glass, shape), centre),
        _face_group(_cap_strips(roof), PAINT, centre),
    ]


def _circle_xz(centre_x: float, centre_z: float, radius: float, y: float, samples: int) -> np.ndarray:
    a = np.linspace(0.0, 2 * np.pi, samples, endpoint=False)
    return np.stack([centre_x + radius * np.cos(a), np.full(samples, y), centre_z + radius * np.sin(a)], 1)


def _rim_spoke_holes(x: float, r: float, y: float) -> np.ndarray:
    """Five dark openings between the spokes, each a quad on the rim's face: (5, 4, 3)."""
    start = np.radians(np.arange(5) * 72.0 + 18.0)
    corners = []
    for angle, radius in ((0.0, 0.30), (0.0, 0.55), (0.6, 0.55), (0.6, 0.30)):
        a = start + angle
        corners.append(np.stack([x + r * radius * np.cos(a), np.full(5, y), r + r * radius * np.sin(a)], 1))
    return np.stack(corners, axis=1)


def _build_wheel(shape: CarShape, axle_x: float, side: int) -> list[FaceGroup]:
    """A tyre cylinder whose outer face sits just inside the body side, with rim, spokes and hub."""
    r, n = shape.wheel_radius, _WHEEL_SAMPLES
    outer_y = side * (shape.width / 2 - 0.03)
    inner_y = outer_y - side * shape.wheel_width
    outer, inner = _circle_xz(axle_x, r, r, outer_y, n), _circle_xz(axle_x, r, r, inner_y, n)
    centre = np.array([axle_x, (outer_y + inner_y) / 2, r])
    return [
        _face_group(np.stack([outer, inner]), TYRE, centre),
        _face_group(_bands(inner, outer), TYRE, centre),
        _face_group(_circle_xz(axle_x, r, 0.64 * r, outer_y + side * 0.004, n)[None], RIM, centre),
        _face_group(_rim_spoke_holes(axle_x, r, outer_y + side * 0.006), HUB, centre),
        _face_group(_circle_xz(axle_x, r, 0.2 * r, outer_y + side * 0.008, 16)[None], HUB, centre),
    ]


def _build_arch(shape: CarShape, side: int) -> list[FaceGroup]:
    """Dark wheel wells on one body side, clipped to the band between the sill and the shoulder."""
    polys = []
    for axle_x in (shape.front_axle, shape.rear_axle):
        well = _circle_xz(axle_x, shape.wheel_radius, 1.1 * shape.wheel_radius, side * (shape.width / 2 + 0.002), 32)
        shoulder = _body_ring(shape, np.array([[axle_x / (shape.length / 2), 1.0]]), _BODY_RINGS[2])[0, 2]
        # Clamping z of a circle's points is the same as clipping it to a horizontal band.
        well[:, 2] = np.clip(well[:, 2], shape.clearance, shoulder - 0.04)
        polys.append(well)
    return [_face_group(np.stack(polys), ARCH, np.array([0.0, 0.0, shape.wheel_radius]))]


def _light_quad(shape: CarShape, end: int, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    """A quad on the nose (end=+1) or tail (end=-1) surface between lateral positions y0..y1."""
    e = shape.roundness
    half_l, half_w = shape.length / 2, shape.width / 2
    ys = np.array([y0, y1, y1, y0])
    # Just inside the curved skin: a chord inside a convex body never pokes out of its silhouette.
    xs = end * half_l * 0.985 * (1 - np.abs(ys / half_w) ** e) ** (1 / e)
    zs = np.array([z0, z0, z1, z1]) - np.array([0.2, 0.2, 0.75, 0.75]) * _deck_drop(shape, xs)
    return np.stack([xs, ys, zs], axis=1)


def _build_lights(shape: CarShape) -> list[FaceGroup]:
    low = shape.clearance + 0.22 * (shape.body_top - shape.clearance)
    high = shape.clearance + 0.75 * (shape.body_top - shape.clearance)
    w = shape.width / 2
    quads, materials = [], []
    for side in (-1, 1):
        quads.append(_light_quad(shape, 1, side * 0.45 * w, side * 0.82 * w, high - 0.13, high - 0.03))
        quads.append(_light_quad(shape, -1, side * 0.5 * w, side * 0.85 * w, high - 0.14, high - 0.03))
        materials += [HEADLIGHT, TAILLIGHT]
    quads.append(_light_quad(shape, 1, -0.35 * w, 0.35 * w, low + 0.03, low + 0.17))
    materials.append(GRILLE)
    centre = np.array([0.0, 0.0, (shape.clearance + shape.body_top) / 2])
    return [_face_group(np.stack(quads), np.array(materials), centre)]


def build_car_model(shape: CarShape) -> dict[str, list[FaceGroup]]:
    """All parts of the car, keyed by the names the draw order uses."""
    parts = {"body": _build_body(shape), "cabin": _build_cabin(shape), "lights": _build_lights(shape)}
    for side, tag in ((1, "l"), (-1, "r")):
        parts[f"arch_{tag}"] = _build_arch(shape, side)
        parts[f"wheel_{tag}f"] = _build_wheel(shape, shape.front_axle, side)
        parts[f"wheel_{tag}r"] = _build_wheel(shape, shape.rear_axle, side)
    return parts


@dataclass(frozen=True)
class CarMesh:
    """Every face of a car in one padded array, so a view costs one vectorised pass.

    polys (F, K, 3) hold ``counts`` real vertices each (the rest repeat the last one); ``part`` indexes
    ``parts``; ``layer`` is the face's group position inside its part (rims after tyres, and so on).
    """

    parts: tuple[str, ...]
    polys: np.ndarray
    counts: np.ndarray
    normals: np.ndarray
    centroids: np.ndarray
    materials: np.ndarray
    part: np.ndarray
    layer: np.ndarray


def compile_mesh(model: dict[str, list[FaceGroup]]) -> CarMesh:
    """Flatten ``build_car_model``'s parts into one CarMesh."""
    groups = [(p, layer, g) for p, name in enumerate(model) for layer, g in enumerate(model[name])]
    width = max(g.polys.shape[1] for _, _, g in groups)

    def padded(g: FaceGroup) -> np.ndarray:
        # Repeating the last vertex adds zero-length edges, which leave the filled polygon unchanged.
        return np.concatenate([g.polys, np.repeat(g.polys[:, -1:], width - g.polys.shape[1], axis=1)], axis=1)

    return CarMesh(
        parts=tuple(model),
        polys=np.concatenate([padded(g) for _, _, g in groups]),
        counts=np.concatenate([np.full(len(g.polys), g.polys.shape[1]) for _, _, g in groups]),
        normals=np.concatenate([g.normals for _, _, g in groups]),
        centroids=np.concatenate([g.polys.mean(axis=1) for _, _, g in groups]),
        materials=np.concatenate([g.materials for _, _, g in groups]),
        part=np.concatenate([np.full(len(g.polys), p) for p, _, g in groups]),
        layer=np.concatenate([np.full(len(g.polys), layer) for _, layer, g in groups]),
    )


# --------------------------------------------------------------------------------------------------
# Camera, posing and rasterising
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """Pinhole camera; world frame: X right, Y up, Z away from the camera, turntable at the origin."""

    position: np.ndarray
    axes: np.ndarray  # rows: right, up, forward
    focal: float
    centre: tuple[float, float]

    def depth(self, points: np.ndarray) -> np.ndarray:
        return (points - self.position) @ self.axes[2]

    def project(self, points: np.ndarray) -> np.ndarray:
        local = (points - self.position) @ self.axes.T
        u = self.centre[0] + self.focal * local[..., 0] / local[..., 2]
        v = self.centre[1] - self.focal * local[..., 1] / local[..., 2]
        return np.stack([u, v], axis=-1)

    def scaled(self, factor: float) -> Camera:
        """The same view on an image ``factor`` times the size (pixel centres kept aligned)."""
        cx, cy = self.centre
        return Camera(self.position, self.axes, self.focal * factor,
                      ((cx + 0.5) * factor - 0.5, (cy + 0.5) * factor - 0.5))


def studio_camera(car: CarSpec, size: tuple[int, int]) -> Camera:
    """Looks at the car's middle from slightly above, zoomed so the side view fills the brief's share."""
    width, height = size
    studio = car.studio
    position = np.array([0.0, studio.camera_height, -studio.camera_distance])
    forward = np.array([0.0, studio.target_height, 0.0]) - position
    forward /= np.linalg.norm(forward)
    right = np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    focal = studio.frame_fraction * width * studio.camera_distance / car.shape.length
    centre = (width / 2 + studio.offset_x * width, height / 2 + studio.offset_y * height)
    return Camera(position, np.stack([right, up, forward]), focal, centre)


def view_yaw(view: int) -> float:
    """Turntable angle of view 1..16 in radians; view 1 faces the camera."""
    if not 1 <= view <= VIEWS:
        raise ValueError(f"view must be in 1..{VIEWS}, got {view}")
    return np.radians((view - 1) * YAW_STEP_DEG)


def _pose_matrix(yaw: float, mirrored: bool) -> np.ndarray:
    """Car frame -> world. Forward turns from -Z (towards the camera) to +X as yaw goes to 90 degrees.

    ``mirrored`` reflects the car in the floor plane, for the floor reflection.
    """
    s, c = np.sin(yaw), np.cos(yaw)
    lift = -1.0 if mirrored else 1.0
    return np.array([[s, c, 0.0], [0.0, 0.0, lift], [-c, s, 0.0]])


def _side_faces_camera(side: int, yaw: float, camera: Camera) -> bool:
    outward = side * np.array([np.cos(yaw), 0.0, np.sin(yaw)])
    to_camera = camera.position * np.array([1.0, 0.0, 1.0])
    return float(outward @ to_camera) / np.linalg.norm(to_camera) > 0.2


def _draw_order(yaw: float, camera: Camera, mirrored: bool) -> list[str]:
    """Painter's order over parts.

    Wheels on a side turned away from the camera go first so the body hides their tops; wheels on a
    side turned towards it go last, over a dark wheel well, like a wheel seen through its arch. The
    cabin sits above the body, so it is drawn after it, except in the floor mirror (seen from below).
    """
    far, near = [], []
    for side, tag in ((1, "l"), (-1, "r")):
        wheels = [f"wheel_{tag}f", f"wheel_{tag}r"]
        if _side_faces_camera(side, yaw, camera):
            near += [f"arch_{tag}"] + wheels
        else:
            far += wheels
    core = ["cabin", "body", "lights"] if mirrored else ["body", "lights", "cabin"]
    return far + core + near


def _palette(car: CarSpec) -> np.ndarray:
    palette = np.zeros((len(_FINISH), 3))
    for material, rgb in _FIXED_COLOURS.items():
        palette[material] = rgb
    palette[PAINT], palette[RIM], palette[GLASS] = car.paint, car.rim, car.glass
    return palette


def _shade(palette: np.ndarray, materials: np.ndarray, normals: np.ndarray, to_eye: np.ndarray) -> np.ndarray:
    """Lambert plus a sky term (surfaces facing up mirror the bright ceiling) plus Blinn specular."""
    finish = _FINISH[materials]
    ambient, diffuse, sky, specular, shininess = finish.T
    lambert = np.clip(normals @ _LIGHT, 0.0, 1.0)
    sky_term = np.clip(normals[:, 1], 0.0, 1.0) ** 2
    half = to_eye + _LIGHT
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    highlight = np.clip(np.einsum("fd,fd->f", normals, half), 0.0, 1.0) ** shininess
    colour = palette[materials] * (ambient + diffuse * lambert)[:, None]
    colour += 255.0 * (sky * sky_term + specular * highlight)[:, None]
    return np.clip(colour, 0.0, 255.0)


def _face_values(mesh: CarMesh, faces: np.ndarray, normals: np.ndarray, centroids: np.ndarray,
                 camera: Camera, palette: np.ndarray, mirrored: bool) -> np.ndarray:
    """Per-face fill value (R, G, B, A). Main pass: A = 1 marks car pixels. Mirror pass: colour is
    premultiplied by an alpha that fades with depth below the floor."""
    to_eye = camera.position - centroids
    to_eye /= np.linalg.norm(to_eye, axis=1, keepdims=True)
    colours = _shade(palette, mesh.materials[faces], normals, to_eye)
    if mirrored:
        alpha = np.exp(-np.abs(centroids[:, 1]) / 0.45)[:, None]
        return np.round(np.concatenate([colours * alpha, 255.0 * alpha], axis=1))
    return np.round(np.concatenate([colours, np.ones((len(faces), 1))], axis=1))


def _render_car(mesh: CarMesh, palette: np.ndarray, yaw: float, camera: Camera,
                size: tuple[int, int], mirrored: bool = False) -> np.ndarray:
    """RGBA uint8 layer; alpha is 0/1 coverage (main pass) or premultiplied 0..255 (mirror pass).

    Painter's algorithm: parts in draw order, groups in build order inside a part, faces far to near
    inside a group; back faces are culled.
    """
    width, height = size
    canvas = np.zeros((height, width, 4), dtype=np.uint8)
    pose = _pose_matrix(yaw, mirrored)
    rank = {name: i for i, name in enumerate(_draw_order(yaw, camera, mirrored))}
    part_rank = np.array([rank.get(name, -1) for name in mesh.parts])[mesh.part]
    normals, centroids = mesh.normals @ pose.T, mesh.centroids @ pose.T
    facing = np.einsum("fd,fd->f", normals, camera.position - centroids) > 1e-9
    faces = np.flatnonzero(facing & (part_rank >= 0))
    values = _face_values(mesh, faces, normals[faces], centroids[faces], camera, palette, mirrored)
    order = np.lexsort((-camera.depth(centroids[faces]), mesh.layer[faces], part_rank[faces]))
    pixels = np.round(camera.project(mesh.polys[faces] @ pose.T) * (1 << _SHIFT)).astype(np.int32)
    counts = mesh.counts[faces]
    for i in order:
        cv2.fillConvexPoly(canvas, pixels[i, : counts[i]], values[i].tolist(), cv2.LINE_8, _SHIFT)
    return canvas


# --------------------------------------------------------------------------------------------------
# Studio: background, shadow, reflection, compositing, noise
# --------------------------------------------------------------------------------------------------


def _lowres(size: tuple[int, int]) -> tuple[tuple[int, int], float]:
    width, height = size
    factor = min(0.5, _LOWRES_WIDTH / width)
    return (max(1, round(width * factor)), max(1, round(height * factor))), factor


def _footprint(shape: CarShape, yaw: float, scale_x: float, scale_y: float) -> np.ndarray:
    unit = _superellipse(np.linspace(0, 2 * np.pi, 48, endpoint=False), 3.0)
    points = np.stack([unit[:, 0] * shape.length / 2 * scale_x, unit[:, 1] * shape.width / 2 * scale_y,
                       np.full(48, 0.001)], axis=1)
    return points @ _pose_matrix(yaw, False).T


def _blurred_polygon(points_px: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """A filled polygon blurred by ``sigma`` px; wide blurs are done on a smaller copy, then upscaled."""
    width, height = size
    shrink = min(1.0, 4.0 / max(sigma, 1e-6))
    small = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    layer = np.zeros((small[1], small[0]), dtype=np.float32)
    fixed = np.round(points_px * shrink * (1 << _SHIFT)).astype(np.int32)
    cv2.fillConvexPoly(layer, fixed, 1.0, cv2.LINE_AA, _SHIFT)
    layer = cv2.GaussianBlur(layer, (0, 0), max(sigma * shrink, 0.5))
    return layer if small == size else cv2.resize(layer, size, interpolation=cv2.INTER_LINEAR)


def _floor_shading(car: CarSpec, yaw: float, camera: Camera, size: tuple[int, int]) -> np.ndarray:
    """Multiplicative floor tone: a soft wide shadow, a tight contact shadow and the turntable disc."""
    shape, studio = car.shape, car.studio
    width = size[0]
    soft = _blurred_polygon(camera.project(_footprint(shape, yaw, 1.12, 1.25)), size, 0.035 * width)
    contact = _blurred_polygon(camera.project(_footprint(shape, yaw, 0.97, 0.95)), size, 0.008 * width)
    shadow = studio.shadow_strength * (0.55 * soft + 0.6 * contact)
    angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    radius = shape.length / 2 + 0.5
    disc = np.stack([np.cos(angles) * radius, np.zeros(96), np.sin(angles) * radius], axis=1)
    turntable = _blurred_polygon(camera.project(disc), size, 1.0)
    tone = 1.0 - (1.0 - studio.turntable_tone) * turntable
    return (tone * (1.0 - np.clip(shadow, 0.0, 0.85))).astype(np.float32)


def _background_rows(studio: Studio, camera: Camera, height: int) -> np.ndarray:
    """Per-row colour: wall gradient above the wall/floor junction, floor gradient below, soft seam."""
    junction = float(camera.project(np.array([0.0, 0.0, studio.wall_distance]))[1])
    rows = np.arange(height, dtype=np.float64)
    wall_t = np.clip(rows / max(junction, 1.0), 0.0, 1.0)[:, None]
    floor_t = np.clip((rows - junction) / max(height - junction, 1.0), 0.0, 1.0)[:, None]
    wall = (1 - wall_t) * np.array(studio.wall_top) + wall_t * np.array(studio.wall_bottom)
    floor = (1 - floor_t) * np.array(studio.floor_far) + floor_t * np.array(studio.floor_near)
    seam = 1.0 / (1.0 + np.exp(-(rows - junction) / max(studio.horizon_softness * height, 1.0)))
    return ((1 - seam[:, None]) * wall + seam[:, None] * floor).astype(np.float32)


def _vignette(strength: float, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    dx = ((np.arange(width, dtype=np.float32) - width / 2) / (width / 2)) ** 2
    dy = ((np.arange(height, dtype=np.float32) - height / 2) / (height / 2)) ** 2
    return 1.0 - np.float32(strength / 2) * (dy[:, None] + dx[None, :])


def _blend_reflection(image: np.ndarray, mirror: np.ndarray, strength: float) -> None:
    """Premultiplied over, blurred: image <- image * (1 - s*A) + s * C."""
    mirror = cv2.GaussianBlur(mirror, (0, 0), 1.5).astype(np.float32)
    alpha = mirror[..., 3:] * np.float32(strength / 255.0)
    image *= 1.0 - alpha
    image += np.float32(strength) * mirror[..., :3]


def _studio_backdrop(car: CarSpec, mesh: CarMesh, palette: np.ndarray, yaw: float,
                     camera: Camera, size: tuple[int, int]) -> np.ndarray:
    """Wall, floor, shadow, turntable, reflection and vignette as a uint8 RGB image of ``size``.

    Everything here is smooth or blurred, so it is built at low resolution and upscaled once.
    """
    low_size, factor = _lowres(size)
    low_camera = camera.scaled(factor)
    tone = _floor_shading(car, yaw, low_camera, low_size) * _vignette(car.studio.vignette, low_size)
    backdrop = tone[:, :, None] * _background_rows(car.studio, low_camera, low_size[1])[:, None, :]
    mirror = _render_car(mesh, palette, yaw, low_camera, low_size, mirrored=True)
    _blend_reflection(backdrop, mirror, car.studio.reflection_strength)
    backdrop = np.clip(backdrop + 0.5, 0, 255).astype(np.uint8)
    return backdrop if low_size == size else cv2.resize(backdrop, size, interpolation=cv2.INTER_LINEAR)


def _bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _expand(box: tuple[slice, slice], shape: tuple[int, ...], margin: int) -> tuple[slice, slice]:
    rows, cols = box
    return (slice(max(rows.start - margin, 0), min(rows.stop + margin, shape[0])),
            slice(max(cols.start - margin, 0), min(cols.stop + margin, shape[1])))


def _composite_car(image: np.ndarray, car_layer: np.ndarray, mask: np.ndarray, box: tuple[slice, slice]) -> None:
    """Paste the car through its mask, with a top-lit gradient so big panels are not flat.

    The gradient is applied in 32 horizontal bands (steps of about one grey level) because a scaled
    uint8 copy per band is far cheaper than float maths over the whole box.
    """
    colour = np.ascontiguousarray(car_layer[box][..., :3])
    bands = np.linspace(0, colour.shape[0], 33).astype(int)
    for top, bottom, gain in zip(bands[:-1], bands[1:], np.linspace(1.08, 0.88, 32)):
        if bottom > top:  # a box under 32 rows tall leaves some bands empty
            colour[top:bottom] = cv2.convertScaleAbs(colour[top:bottom], alpha=float(gain))
    image[box] = cv2.copyTo(colour, mask[box], image[box])


def _soften_edges(image: np.ndarray, mask: np.ndarray, box: tuple[slice, slice]) -> None:
    """Blur a 1-px band either side of the silhouette so the edge is not perfectly hard.

    Only the image changes; the mask stays the exact binary set of painted pixels.
    """
    kernel = np.ones((3, 3), np.uint8)
    region_mask = mask[box]
    band = cv2.dilate(region_mask, kernel) - cv2.erode(region_mask, kernel)
    region = image[box]
    image[box] = cv2.copyTo(cv2.GaussianBlur(region, (3, 3), 0.8), band, region)


def _noise_tables(field: int) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables byte -> ``plus`` and ``minus``: each the sum of two of the byte's four 2-bit
    slices, masked by ``field``. ``plus - minus`` sums four independent uniforms, so it is close to a
    Gaussian: std ~2.2 grey levels with field 3, 1.0 with field 1.
    """
    byte = np.arange(256)
    plus = (byte & field) + ((byte >> 2) & field)
    minus = ((byte >> 4) & field) + ((byte >> 6) & field)
    return plus.astype(np.uint8), minus.astype(np.uint8)


_NOISE_TABLES = {"strong": _noise_tables(3), "mild": _noise_tables(1)}


def _add_sensor_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> None:
    """Zero-mean per-channel noise in place: std ~2.2 grey levels if ``sigma`` >= 1.6, else ~1.0.

    Random bytes through lookup tables are several times faster than float Gaussians at 1918x1280;
    the sum of four uniforms is close enough to a Gaussian for sensor grain.
    """
    raw = np.frombuffer(rng.bytes(image.size), dtype=np.uint8).reshape(image.shape)
    plus_table, minus_table = _NOISE_TABLES["strong" if sigma >= 1.6 else "mild"]
    plus, minus = cv2.LUT(raw, plus_table), cv2.LUT(raw, minus_table)
    cv2.add(image, plus, dst=image)
    cv2.subtract(image, minus, dst=image)


@lru_cache(maxsize=8)
def _car_mesh(shape: CarShape) -> CarMesh:
    # A turntable run renders the same car sixteen times; the mesh depends on the shape only.
    return compile_mesh(build_car_model(shape))


def render_view(car: CarSpec, view: int, size: tuple[int, int] = DEFAULT_SIZE,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One studio photo of ``car`` at turntable ``view`` (1..16) and its mask.

    Returns (RGB uint8 H x W x 3, uint8 H x W mask holding 0/1). ``size`` is (W, H). ``rng`` draws the
    sensor noise; None renders a noise-free image.
    """
    size = (int(size[0]), int(size[1]))
    yaw = view_yaw(view)
    camera = studio_camera(car, size)
    mesh, palette = _car_mesh(car.shape), _palette(car)
    car_layer = _render_car(mesh, palette, yaw, camera, size)
    image = _studio_backdrop(car, mesh, palette, yaw, camera, size)
    mask = np.ascontiguousarray(car_layer[..., 3])
    box = _bbox(mask)
    if box is not None:
        _composite_car(image, car_layer, mask, box)
        _soften_edges(image, mask, _expand(box, mask.shape, 2))
    if rng is not None:
        _add_sensor_noise(image, rng, car.studio.noise_sigma)
    return image, mask


# --------------------------------------------------------------------------------------------------
# Dataset files
# --------------------------------------------------------------------------------------------------


def _jpeg_bytes(image_rgb: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2 failed to encode a JPEG")
    return encoded.tobytes()


def _gif_bytes(mask: np.ndarray) -> bytes:
    """Palette GIF whose pixel values are the mask's 0/1, like Carvana's train_masks."""
    height, width = mask.shape
    picture = Image.frombytes("P", (width, height), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    picture.putpalette([0, 0, 0, 255, 255, 255])
    buffer = io.BytesIO()
    picture.save(buffer, format="GIF")
    return buffer.getvalue()


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False, lineterminator="\n").encode())


def _car_ids(seed: int, cars: int, test_cars: int) -> Iterator[tuple[str, int, str]]:
    """(split, index, id) for every car; a clash (astronomically unlikely) is re-hashed, not repeated."""
    seen: set[str] = set()
    for split, count in (("train", cars), ("test", test_cars)):
        for index in range(count):
            identifier, salt = car_id(seed, index, split), 0
            while identifier in seen:
                salt += 1
                identifier = hashlib.sha256(f"{identifier}:{salt}".encode()).hexdigest()[:12]
            seen.add(identifier)
            yield split, index, identifier


def _write_car(out: Path, split: str, identifier: str, car: CarSpec, seed: int, index: int,
               size: tuple[int, int], quality: int) -> list[tuple[str, str]]:
    """Sixteen views of one car; returns (image name, RLE) rows."""
    rows = []
    for view in range(1, VIEWS + 1):
        noise = np.random.default_rng([seed, _SPLITS[split], index, view])
        image, mask = render_view(car, view, size, noise)
        name = f"{identifier}_{view:02d}"
        atomic_write_bytes(out / split / f"{name}.jpg", _jpeg_bytes(image, quality))
        atomic_write_bytes(out / f"{split}_masks" / f"{name}_mask.gif", _gif_bytes(mask))
        rows.append((f"{name}.jpg", rle_encode(mask)))
    return rows


def generate(out: str | Path, cars: int = 8, test_cars: int = 2, size: tuple[int, int] = DEFAULT_SIZE,
             seed: int = 0, quality: int = 90) -> Path:
    """Write the Carvana-layout dataset under ``out`` and return its path."""
    if cars < 1 or test_cars < 0 or seed < 0 or not 1 <= quality <= 100 or min(size) < 16:
        raise ValueError(f"bad arguments: cars={cars} test_cars={test_cars} seed={seed} "
                         f"quality={quality} size={size}")
    out = Path(out)
    for folder in ("train", "train_masks", "test", "test_masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    train_rows, test_rows, metadata = [], [], []
    for split, index, identifier in _car_ids(seed, cars, test_cars):
        car = make_car(seed, index, split)
        rows = _write_car(out, split, identifier, car, seed, index, size, quality)
        (train_rows if split == "train" else test_rows).extend(rows)
        metadata.append({"id": identifier, **car.metadata})
    _write_csv(out / "train_masks.csv", pd.DataFrame(sorted(train_rows), columns=["img", "rle_mask"]))
    submission = pd.DataFrame({"img": sorted(name for name, _ in test_rows), "rle_mask": "1 1"})
    _write_csv(out / "sample_submission.csv", submission)
    columns = ["id", "year", "make", "model", "trim1", "trim2"]
    _write_csv(out / "metadata.csv", pd.DataFrame(metadata, columns=columns).sort_values("id"))
    return out


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1918x1280, got {text!r}")
    width, height = (int(p) for p in parts)
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return width, height


def _bounded_int(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            limit = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {limit}, got {value}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ternaus.synthetic",
                                     description="Write a synthetic dataset in the Carvana layout.")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--cars", type=_bounded_int(1), default=8, help="training cars, 16 images each")
    parser.add_argument("--test-cars", type=_bounded_int(0), default=2, help="test cars, 16 images each")
    parser.add_argument("--size", type=_parse_size, default=DEFAULT_SIZE, help="WxH, default 1918x1280")
    parser.add_argument("--seed", type=_bounded_int(0), default=0)
    parser.add_argument("--quality", type=_bounded_int(1, 100), default=90, help="JPEG quality")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = generate(args.out, args.cars, args.test_cars, args.size, args.seed, args.quality)
    width, height = args.size
    print(f"wrote {args.cars * VIEWS} train and {args.test_cars * VIEWS} test images "
          f"({args.cars}+{args.test_cars} cars, {width}x{height}) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
