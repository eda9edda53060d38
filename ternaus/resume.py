"""What a resume does with each setting changed since its checkpoint: it applies the new value from the resumed step,
with one line saying so, or it refuses, naming the key and what to do.

A checkpoint records the resolved configuration it was trained with (``config``). A resume compares it with the
configuration now, key by key (``changed_settings``): a key of ``REFUSED`` (the network, the input size, the split,
the metric best.pt is chosen by) stops the resume with a ``TrainingError``; a key training does not read
(``IGNORED``) is passed over; every other change applies from the resumed step (the learning rate, the schedule and
its settings, the epochs, the optimiser, the loss, the augmentation, the batch size at an epoch's end, ...) and is
named in one line. ``ternaus.checkpoint.resume_fold_state`` applies them: the optimiser's hyperparameters and the
schedule's base rate come from the configuration, not the checkpoint, and another optimiser starts a fresh state.
No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ternaus.errors import TrainingError
from ternaus.schema import flatten

__all__ = ["SettingChange", "changed_settings", "check_resume_settings", "optimizer_name", "same_split", "REFUSED",
           "IGNORED", "NOT_FOR_A_RESUME"]

_NEW_NETWORK = ("the checkpoint's weights are another network's: resume with {key}={before}, or start the fold over "
                "with train.resume=false (or a new run in another output_dir)")
# A key, or a section ending in ".", whose change a resume refuses -> what to do ({key}, {before}, {path}).
REFUSED: dict[str, str] = {
    **{f"model.{name}": _NEW_NETWORK for name in ("name", "num_classes", "activation", "encoder", "decoder_widths",
                                                  "transposed", "num_filters", "widths", "center_width")},
    "data.input_size": ("the weights were trained at that size: resume with {key}={before}; to go on at the new "
                        "size, train a new run (another output_dir) with model.init={path}"),
    "data.image_max": ("the network learnt images scaled by it: resume with {key}={before}, or start the fold over "
                       "with train.resume=false"),
    "data.layout": "another layout is another data set: resume with {key}={before}, or start a new run",
    "data.class_names": "the classes are the network's outputs: resume with {key}={before}, or start over",
    "folds.": ("folds.csv fixes a trained run's split (prepare_folds.py keeps it): resume with {key}={before}, or "
               "start a new run in another output_dir"),
    "postprocess.metric": ("best.pt and its best score were chosen by {before}: resume with {key}={before}, or "
                           "start the fold over with train.resume=false"),
}
# Keys training does not read, or that say which folds to train rather than how: a change is no change to a fold.
IGNORED = ("output_dir", "predict.", "submission.", "report.", "ensemble.", "postprocess.min_area",
           "postprocess.use_searched", "train.resume", "train.folds", "data.resize_back", "data.num_workers",
           "data.test_dir", "data.sample_submission", "data.max_image_pixels")

# Keys that only a fold starting afresh reads: a resume names the change and what it does instead.
NOT_FOR_A_RESUME = {
    "model.init": "the weights come from the checkpoint; model.init applies to folds that start afresh",
    "model.encoder_weights": "the weights come from the checkpoint; it applies to folds that start afresh",
}


def _matches(key: str, patterns: Any) -> str | None:
    return next((p for p in patterns if key == p or (p.endswith(".") and key.startswith(p))), None)


def _shown(value: Any) -> str:
    """A value as an override would spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass(frozen=True)
class SettingChange:
    key: str
    before: Any  # the checkpoint's value
    now: Any

    def __str__(self) -> str:
        return f"{self.key} {_shown(self.before)} -> {_shown(self.now)}"

    def effect(self, where: str) -> str:
        """What the change does to a fold resumed at ``where`` ("epoch 2, step 3"), in words."""
        if self.key in NOT_FOR_A_RESUME:
            return NOT_FOR_A_RESUME[self.key]
        if self.key == "train.optimizer.name":
            return (f"applies from {where}; {_shown(self.now)} starts with a fresh state ({_shown(self.before)}'s "
                    "does not carry over)")
        return f"applies from {where}"


def changed_settings(saved: dict | None, now: dict) -> list[SettingChange]:
    """The keys whose value differs between ``saved`` (a checkpoint's ``config``) and ``now`` (the resolved
    configuration, ``config_to_dict``), both nested dicts; keys that only one of them has (renamed since, or a
    choice's settings when the choice changed: its ``name`` then differs) are left out, as are ``IGNORED`` ones."""
    before, after = flatten(saved or {}), flatten(now)
    return [SettingChange(key, before[key], value) for key, value in after.items()
            if key in before and before[key] != value and not _matches(key, IGNORED)]


def optimizer_name(config: dict | None) -> str | None:
    """The optimiser a configuration names (``train.optimizer``, a dict with ``name`` or, before the settings had
    their own section, the name itself)."""
    chosen = ((config or {}).get("train") or {}).get("optimizer")
    return chosen.get("name") if isinstance(chosen, dict) else chosen


def same_split(recorded: dict | None, now: dict) -> bool | None:
    """Whether a checkpoint's ``split`` (``ternaus.folds.split_fingerprint``) is ``now``; None when it records none
    (a checkpoint written before splits were recorded)."""
    if not recorded:
        return None
    return recorded.get("train") == now["train"] and recorded.get("held_out") == now["held_out"]


def check_resume_settings(saved: dict | None, now: dict, path: Path) -> list[SettingChange]:
    """The changes a resume from ``path`` applies; raises TrainingError naming every change it refuses (``REFUSED``)
    and what to do. ``saved``: the checkpoint's ``config``; ``now``: the configuration as a plain dict."""
    changes = changed_settings(saved, now)
    refused = []
    for change in changes:
        pattern = _matches(change.key, REFUSED)
        if pattern:
            remedy = REFUSED[pattern].format(key=change.key, before=_shown(change.before), path=path)
            refused.append(f"{change.key}: {path} was trained with {_shown(change.before)}, the config says "
                           f"{_shown(change.now)}; {remedy}")
    if refused:
        raise TrainingError(f"cannot resume from {path}:\n  - " + "\n  - ".join(refused))
    return changes
