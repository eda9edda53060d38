"""The package: the ``ternaus`` command and its subcommands, the version in one place, the stage scripts as shims,
and the offline Kaggle bundle (ternaus.bundle): weights only, every file checked, refusals before any
prediction, and (slow) the wheel installed in a fresh environment writing the run's very submission."""

import ast
import gzip
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import cv2
import pytest
import torch
from conftest import TINY
from test_architecture import import_graph, imported_names, package_modules

from ternaus import __version__
from ternaus.bundle import MANIFEST, WEIGHT_KEYS, make_bundle, predict_bundle, verify_bundle, weights_only
from ternaus.commands import COMMANDS, main
from ternaus.config import load_config, save_config
from ternaus.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["prepare_folds", "train", "predict", "make_submission", "ensemble", "report", "export"]
# What Kaggle's image offers; the bundle's prediction path may import nothing else beyond the standard library.
KAGGLE_IMAGE = {"torch", "torchvision", "numpy", "pandas", "cv2", "PIL", "yaml", "tqdm", "sklearn", "scipy"}
# Needed only by a run on a timm encoder (model.name unet or linknet): imported inside the functions that build or
# load one, never at a module's top, so any other run's bundle predicts without it.
ONLY_FOR_TIMM_NETWORKS = {"timm"}


# ---------------------------------------------------------------- the command, the version, the shims


def test_every_stage_is_a_subcommand_with_its_own_help(capsys):
    assert set(COMMANDS) == {"prepare-folds", "train", "predict", "make-submission", "ensemble", "report", "evaluate",
                             "export", "bundle", "predict-bundle"}
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: ternaus {name} "), name
    assert main([]) == 2 and "predict-bundle" in capsys.readouterr().out
    assert main(["trian"]) == 2 and "unknown command 'trian'" in capsys.readouterr().err


def test_the_version_is_in_one_place_printed_and_saved_in_every_resolved_config(capsys, tmp_path):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ternaus.__version__"}
    assert pyproject["project"]["scripts"] == {"ternaus": "ternaus.commands:main"}
    assert main(["--version"]) == 0 and capsys.readouterr().out == f"ternaus {__version__}\n"
    cfg = load_config(None, ["train.epochs=2"])
    path = save_config(cfg, tmp_path / "configs" / "train.yaml")
    assert path.read_text().splitlines()[0] == f"# ternaus {__version__}"
    assert load_config(path) == cfg  # the comment leaves it a config


def test_the_pins_of_pyproject_are_those_of_requirements_txt():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(pyproject["dependencies"]) <= set(required)
    assert set(pyproject["optional-dependencies"]["test"]) <= set(required)
    assert set(pyproject["optional-dependencies"]["timm"]) <= set(required)


def test_the_stage_scripts_are_shims_of_the_package_commands():
    for stage in STAGES:
        script = importlib.import_module(stage)
        assert script.main is importlib.import_module(f"ternaus.commands.{stage}").main
        code = [node for node in ast.parse((ROOT / f"{stage}.py").read_text()).body
                if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
        assert len(code) == 2, f"{stage}.py holds more than its import and its __main__ call"


def test_python_dash_m_ternaus_is_the_command():
    done = subprocess.run([sys.executable, "-m", "ternaus", "--version"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == f"ternaus {__version__}\n"


def _third_party_imports(modules: set[str]) -> dict[str, set[str]]:
    graph, paths = import_graph(), package_modules()
    # The registries load their entries by name ("ternaus.losses:..."): every module they name counts too.
    text = (ROOT / "ternaus" / "registry.py").read_text()
    named = {m for m in paths if f'"{m}:' in text or f'"{m}"' in text}
    stack, seen = [*modules, *named], set()
    while stack:
        module = stack.pop()
        if module not in seen:
            seen.add(module)
            stack += graph[module]
    found: dict[str, set[str]] = {}
    for module in seen:
        for imported, _ in imported_names(paths[module]):
            top = imported.split(".")[0]
            if top != "ternaus" and top not in sys.stdlib_module_names:
                found.setdefault(top, set()).add(module)
    return found


def test_the_bundles_prediction_path_imports_only_what_kaggles_image_has():
    found = _third_party_imports({"ternaus.bundle", "ternaus.commands.bundle", "ternaus.commands"})
    # The scan follows the imports through the package: yaml from config, tqdm from inference, PIL from the layouts.
    assert {"torch", "numpy", "cv2", "yaml", "tqdm", "PIL"} <= set(found)
    allowed = KAGGLE_IMAGE | ONLY_FOR_TIMM_NETWORKS
    assert set(found) <= allowed, {k: v for k, v in found.items() if k not in allowed}
    paths = package_modules()
    for package in ONLY_FOR_TIMM_NETWORKS:
        for module in found.get(package, ()):
            top_level = [node for node in ast.parse(paths[module].read_text()).body
                         if isinstance(node, (ast.Import, ast.ImportFrom))]
            names = {alias.name.split(".")[0] for node in top_level for alias in node.names if isinstance(node, ast.Import)}
            names |= {node.module.split(".")[0] for node in top_level if isinstance(node, ast.ImportFrom) and node.module}
            assert package not in names, f"{module} imports {package} at its top: only timm networks may need it"


# ---------------------------------------------------------------- the bundle


def run_config(tiny_dataset, run):
    return load_config(ROOT / "configs" / "synthetic.yaml", [f"data.root={tiny_dataset}", f"output_dir={run}", *TINY])


@pytest.fixture(scope="module")
def bundle(tiny_run, tiny_dataset, tmp_path_factory):
    """The tiny run's bundle, with a stand-in for the wheel (the slow test ships a real one). Read-only."""
    fake_wheel = tmp_path_factory.mktemp("wheel") / f"ternaus-{__version__}-py3-none-any.whl"
    fake_wheel.write_bytes(b"not a wheel")
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    make_bundle(run_config(tiny_dataset, tiny_run), out, fake_wheel)
    return out


def test_a_bundle_holds_the_weights_only_and_a_manifest_of_every_file(bundle, tiny_run):
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["ternaus_version"] == __version__
    assert sorted(manifest["files"]) == sorted(p.name for p in bundle.iterdir() if p.name != MANIFEST)
    assert set(manifest["files"]) == {"fold_0.pt", "config.yaml", "postprocess.json",
                                      f"ternaus-{__version__}-py3-none-any.whl"}
    entry = manifest["checkpoints"]["0"]
    source = tiny_run / "fold_0" / "best.pt"
    assert entry["source_bytes"] == source.stat().st_size > entry["bytes"] == (bundle / "fold_0.pt").stat().st_size
    full = torch.load(source, weights_only=True)
    slim = torch.load(bundle / "fold_0.pt", weights_only=True)
    assert set(slim) == set(WEIGHT_KEYS) and full["optimizer"] and "optimizer" not in slim
    assert all(torch.equal(slim["model"][k], v) for k, v in full["model"].items())
    searched = json.loads((tiny_run / "postprocess.json").read_text())
    assert (manifest["postprocess"]["threshold"], manifest["postprocess"]["min_area"]) == \
        (searched["threshold"], searched["min_area"])
    assert manifest["expects"] == {"layout": "carvana", "suffixes": [".jpg"], "channels": [3]}
    assert verify_bundle(bundle) == manifest


def test_weights_only_keeps_what_loading_needs():
    checkpoint = {"model": {"w": torch.ones(1)}, "arch": {"name": "UNet11"}, "optimizer": {"state": {}},
                  "rng": {}, "log": [], "epoch": 3}
    assert weights_only(checkpoint) == {"model": {"w": torch.ones(1)}, "arch": {"name": "UNet11"}, "epoch": 3}


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_a_bundle_with_a_file_missing_or_altered_is_refused_naming_it(bundle, tiny_dataset, tmp_path, damage):
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    if damage == "missing":
        (copy / "fold_0.pt").unlink()
    else:
        with open(copy / "fold_0.pt", "r+b") as f:  # one byte, same size
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DataError, match=rf"the bundle's file fold_0.pt .*{damage if damage == 'missing' else 'altered'}"):
        predict_bundle(copy, tiny_dataset / "test", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_test_images_unlike_the_runs_are_refused_before_any_prediction(bundle, tiny_dataset, tmp_path):
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data", ignore=shutil.ignore_patterns("train*")))
    grey = sorted((data / "test").glob("*.jpg"))[3]
    cv2.imwrite(str(grey), cv2.imread(str(grey), cv2.IMREAD_GRAYSCALE))
    with pytest.raises(DataError, match=rf"1 of 16 test image\(s\) are not what the bundle expects (?s:.*){grey.name}: "
                                        r"a .jpg image of 1 channel"):
        predict_bundle(bundle, data / "test", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the wheel, offline, in a fresh environment


def fresh_environment(where: Path) -> Path:
    """A virtual environment with no packages of its own that sees the project's .venv packages (a .pth file),
    made without any download; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
def test_the_installed_wheel_writes_from_the_bundle_the_runs_own_submission(tiny_run, tiny_dataset, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    args = ["--config", str(ROOT / "configs" / "synthetic.yaml"), f"data.root={tiny_dataset}", f"output_dir={run}",
            *TINY]
    import make_submission

    assert make_submission.main(args) == 0
    assert main(["bundle", *args, "--out", str(tmp_path / "bundle")]) == 0
    bundle = tmp_path / "bundle"
    wheel = bundle / json.loads((bundle / MANIFEST).read_text())["wheel"]
    assert "ternaus/models/timm_encoders.txt" in zipfile.ZipFile(wheel).namelist()  # read by the config check
    python = fresh_environment(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                   check=True, env=env, timeout=300)
    command = str(tmp_path / "venv" / "bin" / "ternaus")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run([str(python), "-c", "import ternaus; print(ternaus.__file__)"], cwd=outside, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert Path(where).is_relative_to(tmp_path / "venv"), where  # the wheel's code, not the clone's
    done = subprocess.run([command, "--help"], cwd=outside, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "predict-bundle" in done.stdout
    before = {"bundle": snapshot(bundle), "data": snapshot(tiny_dataset), "elsewhere": snapshot(outside)}
    done = subprocess.run([command, "predict-bundle", str(bundle), str(tiny_dataset / "test"), str(tmp_path / "out")],
                          cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "predict test: 100%" in done.stderr  # the progress bar, with its estimate of the time left
    ours, theirs = tmp_path / "out" / "submission.csv.gz", run / "submission.csv.gz"
    assert gzip.decompress(ours.read_bytes()) == gzip.decompress(theirs.read_bytes())
    assert {"bundle": snapshot(bundle), "data": snapshot(tiny_dataset), "elsewhere": snapshot(outside)} == before
