"""The package's shape, checked: no import cycle, a config that loads without torch, registries whose every
entry loads, ``__all__`` lists that hold what other modules import, and docs that stand on their own."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ternaus"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every ``import`` and ``from ... import`` in a file, at any depth (function-level too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the ternaus modules it imports (``from pkg import submodule`` counts as the submodule)."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for module, imported in imported_names(path):
            if f"{module}.{imported}" in modules:
                edges.add(f"{module}.{imported}")
            elif module in modules:
                edges.add(module)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_the_package_imports_itself_back():
    graph = import_graph()
    assert len(graph) > 30 and graph["ternaus.training"] >= {"ternaus.checkpoint", "ternaus.data.dataset"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_loading_and_checking_every_shipped_config_does_not_import_torch():
    configs = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("configs/*.yaml"), *ROOT.glob("experiments/*.yaml")])
    assert len(configs) >= 6
    script = ("import sys\nfrom ternaus.config import load_config\n"
              f"for path in {configs!r}:\n    load_config(path)\n"
              "load_config(None, ['model.name=albunet34', 'data.input_size=[128, 128]'])\n"
              "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'torchvision'))))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_registry_entry_loads_and_is_what_its_registry_promises():
    from ternaus import registry
    from ternaus.data.layouts import Layout
    from ternaus.models.ternausnet import TernausNet
    from ternaus.registry import LAYOUTS, LOSSES, METRICS, MODELS, REGISTRIES, TTAS
    from ternaus.tta import TTA

    for spec in MODELS.values():
        assert issubclass(spec.model_class, TernausNet)
        assert spec.model_class.SIZE_MULTIPLE == spec.size_multiple == 2 ** spec.halvings
    refs = [*LOSSES.values(), *(spec.score for spec in METRICS.values()), *registry.OPTIMIZERS.values(),
            *registry.SCHEDULES.values(), *registry.RULES.values()]
    assert all(callable(ref.load()) for ref in refs)
    assert {spec.form for spec in METRICS.values()} == {"counts", "objects"}
    # A choice with settings: a dataclass whose first field is its name, each field with a default.
    import dataclasses
    for choice in [*LOSSES.values(), *registry.OPTIMIZERS.values(), *registry.SCHEDULES.values()]:
        fields = dataclasses.fields(choice.settings)
        assert fields[0].name == "name" and all(f.default is not dataclasses.MISSING or
                                                f.default_factory is not dataclasses.MISSING for f in fields)
    assert all(isinstance(ref.load(), TTA) for ref in TTAS.values())
    wanted = [name for name in vars(Layout) if not name.startswith("_")]
    assert wanted == ["list_train", "test_rows", "load_masks", "missing_mask"]
    for ref in LAYOUTS.values():
        assert all(callable(getattr(ref.load(), name)) for name in wanted), ref
    assert set(REGISTRIES) == {"model.name", "train.loss.name", "train.optimizer.name", "train.schedule.name",
                               "ensemble.rules",
                               "postprocess.metric", "predict.tta", "data.layout"}


def test_the_configs_choices_are_the_registries_names_and_a_wrong_one_is_listed():
    from ternaus.config import choices, load_config
    from ternaus.errors import ConfigError
    from ternaus.registry import REGISTRIES

    for key, registry in REGISTRIES.items():
        assert choices(key) == tuple(registry)
    assert choices("data.rle.order") == ("C", "F") and choices("submission.rle.start") == (0, 1)
    with pytest.raises(ConfigError, match="predict.tta: must be one of hflip, none, got 'vflip'"):
        load_config(None, ["predict.tta=vflip"])
    with pytest.raises(ConfigError, match="data.rle.order: must be one of C, F, got 'X'"):
        load_config(None, ["data.rle.order=X"])


def python_files() -> list[Path]:
    files = [*ROOT.glob("*.py"), *PACKAGE.rglob("*.py"), *(ROOT / "bench").glob("*.py"),
             *(ROOT / "experiments").glob("*.py"), *(ROOT / "tests").glob("*.py")]
    return sorted(files)


def test_every_name_imported_from_the_package_is_in_its_modules_all():
    modules = package_modules()
    exported = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        listed = [node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "__all__" for t in node.targets)]
        exported[name] = set(ast.literal_eval(listed[0])) if listed else None
    problems = []
    for path in python_files():
        for module, imported in imported_names(path):
            if module not in modules or imported is None or f"{module}.{imported}" in modules:
                continue
            if path.parent.name == "tests" and imported.startswith("_"):
                continue  # a test may reach inside a module
            if exported[module] is None or imported not in exported[module]:
                problems.append(f"{path.relative_to(ROOT)}: {imported} from {module}")
    assert not problems, "\n".join(problems)


def test_every_name_in_an_all_list_exists():
    import importlib

    for name in package_modules():
        module = importlib.import_module(name)
        missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ lists {missing}"


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not listed:
        pytest.skip("not a git checkout: the project's files cannot be listed")
    return [ROOT / f for f in listed if Path(f).suffix in {".py", ".md", ".yaml", ".txt", ""} and (ROOT / f).is_file()]


def test_no_project_file_points_outside_the_repository():
    this = Path(__file__).resolve()
    offenders = [str(p.relative_to(ROOT)) for p in tracked_text_files()
                 if p.resolve() != this and "shared/reference" in p.read_text(errors="replace")]
    assert not offenders


def test_every_link_in_the_docs_points_to_a_file_of_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            resolved = (page.parent / target).resolve()
            if "://" in target or not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken


def test_the_architecture_page_names_every_module_and_every_room_it_names_is_one_file():
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:ternaus|experiments|bench|tests)/[\w/]+\.py)`", page))
    modules = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert modules <= named, f"not in docs/architecture.md: {sorted(modules - named)}"
    assert all((ROOT / path).is_file() for path in named), sorted(p for p in named if not (ROOT / p).is_file())


# ---------------------------------------------------------------- the config stops at each stage's door

# The only functions outside config.py, cli.py and the commands that take the whole Config: each stage's entry
# point, which turns it into the objects the code below it takes, and the constructors that build one such object
# from it (detectron2's from_config). Anything else takes those objects.
CONFIG_ENTRY_POINTS = {
    "ternaus.prepare.prepare_folds", "ternaus.training.train", "ternaus.inference.predict",
    "ternaus.ensemble.ensemble", "ternaus.submission.make_submission", "ternaus.submission.check_submission",
    "ternaus.report.build_report", "ternaus.export.export", "ternaus.evaluate.score_submission",
    "ternaus.bundle.make_bundle",
}
CONFIG_CONSTRUCTORS = {
    "ternaus.run_files.RunFiles.of", "ternaus.data.source.DataSource.of", "ternaus.data.geometry.geometry_of",
    "ternaus.submission.submission_format", "ternaus.ensemble.EnsembleRun.from_config",
    "ternaus.report.ReportRun.from_config", "ternaus.inference.PredictionRun.from_config",
    "ternaus.training.TrainingRun.from_config",
}
CONFIG_HOMES = {"ternaus.config", "ternaus.cli"}  # the configuration itself, and what the stage scripts share


def functions_taking_config(source: str, module: str) -> list[str]:
    """The qualified names of the functions in ``source`` with a parameter annotated ``Config`` (or ``cfg`` with
    no annotation)."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = [*child.args.posonlyargs, *child.args.args, *child.args.kwonlyargs]
                if any(_is_config(arg) for arg in args):
                    found.append(f"{module}.{prefix}{child.name}")
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    return found


def _is_config(arg: ast.arg) -> bool:
    if arg.annotation is None:
        return arg.arg == "cfg"
    return re.fullmatch(r"['\"]?(ternaus\.config\.)?Config['\"]?", ast.unparse(arg.annotation)) is not None


def test_the_finder_of_functions_taking_the_config_finds_them():
    source = ("class A:\n    def of(cls, cfg: Config): ...\n"
              "def f(x, cfg): ...\ndef g(settings: 'Config'): ...\ndef h(train: TrainConfig): ...\n")
    assert functions_taking_config(source, "m") == ["m.A.of", "m.f", "m.g"]


def test_no_function_below_the_stage_entry_points_takes_the_whole_config():
    taking = []
    for name, path in package_modules().items():
        if name in CONFIG_HOMES or name.startswith("ternaus.commands"):
            continue
        taking += functions_taking_config(path.read_text(), name)
    allowed = CONFIG_ENTRY_POINTS | CONFIG_CONSTRUCTORS
    assert sorted(set(taking) - allowed) == [], "take the objects the stage's entry point builds, not the Config"
    assert set(taking) == allowed, f"entry points that no longer exist: {sorted(allowed - set(taking))}"
