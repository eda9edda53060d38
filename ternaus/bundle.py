"""A finished run as a folder for an offline Kaggle notebook, and the submission made from that folder.

``make_bundle`` writes, into one folder to upload as a Kaggle dataset::

    ternaus-<version>-py3-none-any.whl   the project (pip install --no-deps --no-index)
    fold_K.pt                           each fold's checkpoint the run predicts with, model weights only
    config.yaml                         the run's resolved configuration
    postprocess.json                    the searched threshold and minimum area (when predict.py wrote one)
    bundle.json                         the manifest: version, every file's size and SHA-256, the source
                                        checkpoints' SHA-256, the threshold and minimum area, the test images
                                        the bundle expects (layout, file suffixes, channels)

``predict_bundle`` checks every file against the manifest, builds the run's Config pointed at the test images
and the output folder, and runs the project's own ``inference.predict`` (TTA, fold average, geometry) and
``submission.make_submission`` (RLE, sample order, the checker): the submission is byte-identical to the one
``make_submission.py`` writes in the run for the same test images. It writes only under its output folder and
imports only what Kaggle's image has (torch, torchvision, numpy, pandas, OpenCV, Pillow, PyYAML, tqdm,
scikit-learn). One run per bundle: an ensemble's members are not bundled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from ternaus.data.source import DataSource
from ternaus import __version__
from ternaus.analysis import read_postprocessing, resolve_postprocessing
from ternaus.checkpoint import read_checkpoint, write_torch
from ternaus.config import Config, config_yaml, load_config
from ternaus.data.layouts import test_rows
from ternaus.errors import ConfigError, DataError
from ternaus.inference import PredictionRun, checkpoint_paths, predict, prediction_fingerprint
from ternaus.io import atomic_write, atomic_write_text
from ternaus.predictions import searched_key
from ternaus.stage import Lock, StageOutputs
from ternaus.runtime import Runtime
from ternaus.submission import make_submission

__all__ = ["make_bundle", "predict_bundle", "verify_bundle", "weights_only", "bundle_config", "check_test_images",
           "file_sha256", "MANIFEST", "CONFIG", "POSTPROCESS", "WEIGHT_KEYS", "SAMPLED_IMAGES"]

MANIFEST = "bundle.json"
CONFIG = "config.yaml"
POSTPROCESS = "postprocess.json"
FORMAT = 1  # of bundle.json: raised when a reader of an older bundle could misread a newer one
# What a checkpoint keeps in a bundle: the weights and what load_weights checks them against (arch); the
# optimiser's, scaler's and scheduler's states, the generators' and the log are for resuming training only.
WEIGHT_KEYS = ("model", "arch", "fold", "epoch", "best_score")
SAMPLED_IMAGES = 16  # the run's test images whose suffix and channels the bundle records as expected


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint without what only resuming needs (``WEIGHT_KEYS`` kept); loads with load_weights."""
    return {key: checkpoint[key] for key in WEIGHT_KEYS if key in checkpoint}


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# ---------------------------------------------------------------- making a bundle


def _image_kind(path: str | Path) -> tuple[str, int]:
    """(suffix, channels as stored) from the file's header: 3 for RGB/YCbCr JPEGs, 1 for greyscale, 4 with alpha."""
    with Image.open(path) as image:
        return Path(path).suffix.lower(), len(image.getbands())


def _expected_images(source: DataSource) -> dict[str, Any]:
    """The kind of test image the run was made for, from the first ``SAMPLED_IMAGES`` test images of ``source``
    (the run's data)."""
    rows = test_rows(source)
    if not rows:
        raise DataError(f"the run's test set (data.root={source.settings.root}) lists no image: the bundle records "
                        "what its test images look like; point data.root at the run's data")
    kinds = {_image_kind(row["image"]) for row in rows[:SAMPLED_IMAGES]}
    return {"layout": source.layout, "suffixes": sorted({s for s, _ in kinds}),
            "channels": sorted({c for _, c in kinds})}


def _postprocessing(run: PredictionRun, paths: dict[int, Path]) -> dict[str, Any]:
    """The threshold and minimum area ``make_submission.py`` would use for the run ``run`` predicted with the
    checkpoints ``paths`` (fold -> file), and where they came from. A postprocess.json searched for other
    checkpoints or settings is refused, as make_submission.py refuses it."""
    searched = read_postprocessing(run.files.root)
    if searched is not None and run.post.use_searched:
        # searched_key leaves out the runtime, so any device gives the same key.
        key = searched_key(prediction_fingerprint(run, paths, Runtime.detect(False, channels_last=False)))
        if searched.get("predictions") != key:
            raise DataError(f"{run.files.postprocess} was searched for other checkpoints or settings than "
                            "the run's; run predict.py again, or set postprocess.threshold and postprocess.min_area with "
                            "postprocess.use_searched=false")
    threshold, min_area, sources = resolve_postprocessing(run.post, run.files)
    return {"threshold": threshold, "min_area": min_area, "from": sources}


def _project_root() -> Path:
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise DataError(f"ternaus is installed without its sources ({root} has no pyproject.toml): run the bundle "
                        "command from a clone of the project, or give the wheel with --wheel FILE")
    return root


def build_wheel(into: Path) -> Path:
    """``pip wheel --no-deps --no-build-isolation --no-index`` of a copy of the project's sources (no network;
    setuptools >= 77 must be installed); returns the wheel's path in ``into``."""
    root = _project_root()
    with tempfile.TemporaryDirectory(prefix="ternaus-wheel-") as tmp:
        source = Path(tmp) / "source"
        # A copy, so that the build's build/ and *.egg-info/ never land in the clone.
        shutil.copytree(root / "ternaus", source / "ternaus", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy2(root / name, source / name)
        built = Path(tmp) / "wheel"
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                   "--quiet", "-w", str(built), str(source)]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(built.glob("ternaus-*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise DataError(f"building the wheel failed ({' '.join(command)}):\n{done.stdout}{done.stderr}\n"
                            "setuptools >= 77 must be installed (requirements.txt has it)")
        return Path(shutil.copy2(wheels[0], into / wheels[0].name))


def _prepare_folder(out: Path) -> None:
    """``out`` empty or absent, or an earlier bundle, whose listed files are removed; anything else is refused."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    manifest = out / MANIFEST
    if manifest.is_file():
        for name in [*json.loads(manifest.read_text()).get("files", {}), MANIFEST]:
            (out / Path(name).name).unlink(missing_ok=True)
    leftover = sorted(p.name for p in out.iterdir())
    if leftover:
        raise ConfigError(f"--out {out} holds files that are not a bundle's ({leftover[:3]}): give an empty or new "
                          "folder")


def _bundle_checkpoints(paths: dict[int, Path], out: Path) -> dict[str, dict[str, Any]]:
    entries = {}
    for fold, source in paths.items():
        checkpoint = read_checkpoint(source)
        target = atomic_write(out / f"fold_{fold}.pt", lambda tmp: write_torch(weights_only(checkpoint), tmp))
        before, after = source.stat().st_size, target.stat().st_size
        print(f"fold {fold}: {source} {_megabytes(before)} -> {target.name} {_megabytes(after)} (model weights only)")
        entries[str(fold)] = {"file": target.name, "source": str(source), "source_sha256": file_sha256(source),
                              "source_bytes": before, "bytes": after, "epoch": checkpoint.get("epoch"),
                              "best_score": checkpoint.get("best_score")}
    return entries


def make_bundle(cfg: Config, out: str | Path, wheel: str | Path | None = None) -> Path:
    """Write the bundle of the run ``cfg`` describes into the folder ``out``; returns its manifest's path.

    ``wheel``: a wheel of this version to ship; None builds one from the sources (``build_wheel``). Refused: an
    ensemble (``ensemble.members``), a missing checkpoint, a stale postprocess.json, a non-empty ``out``."""
    if cfg.ensemble.members:
        raise ConfigError("ensemble.members is set: a bundle holds one run's folds; bundle each member's run "
                          "instead (an ensemble's merge is not bundled)")
    out = Path(out)
    run = PredictionRun.from_config(cfg)
    paths = checkpoint_paths(run.files, run.folds)
    # The bundle holds its own copy of the resolved config (config.yaml), so the protocol saves none in the run.
    outputs = StageOutputs("bundle", run.source.places(), folders={"--out": out}, claims=[Lock(out, f"the bundle {out}")],
                           temporaries={out: {CONFIG, POSTPROCESS, MANIFEST, *(f"fold_{k}.pt" for k in paths)}})
    postprocess = _postprocessing(run, paths)
    expects = _expected_images(run.source)
    with outputs:
        _prepare_folder(out)
        checkpoints = _bundle_checkpoints(paths, out)
        atomic_write_text(out / CONFIG, config_yaml(cfg))
        searched = run.files.postprocess
        if searched.is_file():
            atomic_write(out / POSTPROCESS, lambda tmp: shutil.copyfile(searched, tmp))
        shipped = Path(shutil.copy2(wheel, out / Path(wheel).name)) if wheel else build_wheel(out)
        files = sorted([*(c["file"] for c in checkpoints.values()), CONFIG, shipped.name,
                        *([POSTPROCESS] if searched.is_file() else [])])
        manifest = {"format": FORMAT, "ternaus_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "run": str(Path(cfg.output_dir).resolve()), "model": cfg.model.name, "wheel": shipped.name,
                    "checkpoints": checkpoints, "postprocess": postprocess, "expects": expects,
                    "files": {name: {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
                              for name in files}}
        path = atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    total = sum(entry["bytes"] for entry in manifest["files"].values())
    print(f"bundle written: {out} ({len(files)} files, {_megabytes(total)}); {postprocess['from']}")
    return path


# ---------------------------------------------------------------- predicting from a bundle


def verify_bundle(bundle: str | Path) -> dict[str, Any]:
    """The manifest of ``bundle`` after checking every file it lists: present, of its size and SHA-256.
    Raises DataError naming the first file that is missing or altered."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise DataError(f"{bundle} is not a bundle: {MANIFEST} is missing (make one with `ternaus bundle`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not readable JSON ({err}); upload the bundle again") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} is a bundle of format {manifest.get('format')}; this ternaus ({__version__}) reads "
                        f"format {FORMAT}: install the wheel of the bundle")
    for name, entry in manifest["files"].items():
        file = bundle / name
        if not file.is_file():
            raise DataError(f"the bundle's file {name} is missing from {bundle}; upload the whole bundle again")
        if file.stat().st_size != entry["bytes"] or file_sha256(file) != entry["sha256"]:
            raise DataError(f"the bundle's file {name} in {bundle} was altered: its size or SHA-256 differs from "
                            f"{MANIFEST}'s; upload the bundle again")
    return manifest


def bundle_config(bundle: Path, manifest: dict[str, Any], test_dir: Path, out: Path,
                  overrides: list[str] | None = None, sample_submission: str | Path | None = None) -> Config:
    """The run's configuration pointed at ``test_dir`` (data.root its parent, where the sample submission is
    looked for unless ``sample_submission`` is given), writing into ``out``, test set only, with the run's
    threshold and minimum area as ``postprocess.threshold``/``min_area`` (``use_searched`` off). ``overrides`` (``KEY=VALUE``) come
    last, e.g. ``predict.batch_size=8``."""
    postprocess = manifest["postprocess"]
    settings = [f"output_dir={out}", f"data.root={test_dir.parent}", f"data.test_dir={test_dir}",
                "predict.oof=false", "predict.resume=true",
                f"postprocess.threshold={json.dumps(postprocess['threshold'])}",
                f"postprocess.min_area={postprocess['min_area']}", "postprocess.use_searched=false",
                # The bundle's checkpoints replace every initialisation: no ImageNet file or init checkpoint needed.
                "model.init=pytorch", "model.encoder_weights=null"]
    if sample_submission is not None:
        settings.append(f"data.sample_submission={Path(sample_submission).resolve()}")
    return load_config(bundle / CONFIG, [*settings, *(overrides or [])])


def check_test_images(source: DataSource, expects: dict[str, Any]) -> list[dict]:
    """The test rows of ``source``, after refusing images unlike those the bundle was made for (``expects``, the
    manifest's: file suffix, channels as stored): a greyscale or RGBA image would otherwise be turned into RGB
    without a word."""
    rows = test_rows(source)
    if not rows:
        raise DataError(f"no test image in {source.settings.test_dir} (layout {source.layout})")
    problems = []
    for row in rows:
        if not Path(row["image"]).is_file():
            problems.append(f"{row['image']} does not exist")
            continue
        suffix, channels = _image_kind(row["image"])
        if suffix not in expects["suffixes"] or channels not in expects["channels"]:
            problems.append(f"{row['image']}: a {suffix} image of {channels} channel(s)")
    if problems:
        raise DataError(f"{len(problems)} of {len(rows)} test image(s) are not what the bundle expects "
                        f"({'/'.join(expects['suffixes'])} images of {expects['channels']} channel(s), layout "
                        f"{expects['layout']}), e.g.:\n  " + "\n  ".join(problems[:5]))
    return rows


def predict_bundle(bundle: str | Path, test_dir: str | Path, out: str | Path, overrides: list[str] | None = None,
                   sample_submission: str | Path | None = None) -> Path:
    """The checked submission of the test images in ``test_dir``, from ``bundle``, written under ``out`` (with
    the predictions and the resolved configs); returns its path. Nothing is written outside ``out``; every
    refusal (a missing or altered file, test images of another kind) comes before the first prediction."""
    bundle, test_dir, out = Path(bundle).resolve(), Path(test_dir).resolve(), Path(out).resolve()
    manifest = verify_bundle(bundle)
    cfg = bundle_config(bundle, manifest, test_dir, out, overrides, sample_submission)
    rows = check_test_images(DataSource.of(cfg), manifest["expects"])
    checkpoints = {int(fold): bundle / entry["file"] for fold, entry in manifest["checkpoints"].items()}
    print(f"bundle {bundle.name}: ternaus {manifest['ternaus_version']}, {manifest['model']}, folds "
          f"{sorted(checkpoints)}; {len(rows)} test images")
    print(f"the run's post-processing: {manifest['postprocess']['from']}")
    predict(cfg, checkpoints=checkpoints)
    return make_submission(cfg)
