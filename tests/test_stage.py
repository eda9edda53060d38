"""The stage protocol (ternaus/stage.py): a fake stage, in order: check the outputs, claim, clear its own
temporaries, save its config; the claims released whatever happens."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from ternaus import io, stage
from ternaus.errors import BusyError, ConfigError
from ternaus.run_files import check_outputs
from ternaus.stage import ConfigFile, Lock, StageOutputs


def temporary(folder: Path, name: str) -> Path:
    """A real temporary of ``name``, made exactly as ternaus.io.atomic_write makes it."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{Path(name).stem}.", suffix=f".tmp{Path(name).suffix}")
    os.close(fd)
    return Path(tmp)


@pytest.fixture
def places(tmp_path):
    """A data folder and a data file, and a run folder beside them."""
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "masks.csv").write_text("id,rle\n")
    run = tmp_path / "run"
    run.mkdir()
    return {"data.train_dir": (data / "train").resolve(), "data.masks_csv": (data / "masks.csv").resolve()}, run


@pytest.fixture(autouse=True)
def quick_locks(monkeypatch):
    monkeypatch.setattr(io, "LOCK_WAIT_S", 0.1)  # a held lock is refused after 0.1 s instead of 1 s


def recording_claim(steps: list[str], name: str):
    @contextmanager
    def held():
        steps.append(f"claim {name}")
        try:
            yield name
        finally:
            steps.append(f"release {name}")
    return held


def saving(steps: list[str]):
    def save(path: Path) -> Path:
        steps.append(f"config {path.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("resolved: true\n")
        return path
    return save


def test_the_four_steps_run_in_the_documented_order_and_the_claims_are_released_last(places, monkeypatch):
    data, run = places
    steps: list[str] = []
    real_check, real_remove = stage.check_outputs, stage.remove_stale_temporaries
    monkeypatch.setattr(stage, "check_outputs", lambda *a: (steps.append("check"), real_check(*a))[1])
    monkeypatch.setattr(stage, "remove_stale_temporaries",
                        lambda folder, names: (steps.append(f"clean {Path(folder).name}"),
                                               real_remove(folder, names))[1])
    outputs = StageOutputs("fake", data, folders={"output_dir": run},
                           claims=[recording_claim(steps, "a"), recording_claim(steps, "b")],
                           temporaries={run: {"out.csv"}}, config=ConfigFile(run / "configs" / "fake.yaml",
                                                                             saving(steps)))
    assert steps == ["check"]  # 1 runs when the outputs are stated, before any claim
    with outputs as out:
        assert out is outputs and out.held == ["a", "b"]
        steps.append("read inputs")
        assert out.save_config() == run / "configs" / "fake.yaml"
        steps.append("write")
    assert steps == ["check", "claim a", "claim b", "clean run", "read inputs", "config fake.yaml", "write",
                     "release b", "release a"]


def test_a_failing_check_claims_nothing_clears_nothing_and_saves_nothing(places):
    data, run = places
    steps: list[str] = []
    inside = data["data.train_dir"] / "out"
    ours = temporary(data["data.train_dir"], "out.csv")
    before = sorted(p.name for p in data["data.train_dir"].parent.rglob("*"))
    with pytest.raises(ConfigError, match=r"output_dir: .*out lies inside the data folder .*train \(data.train_dir\)"):
        StageOutputs("fake", data, folders={"output_dir": inside}, files={"out": data["data.masks_csv"]},
                     claims=[recording_claim(steps, "a"), Lock(inside, "the output")],
                     temporaries={data["data.train_dir"]: {"out.csv"}},
                     config=ConfigFile(inside / "configs" / "fake.yaml", saving(steps)))
    assert steps == [] and ours.exists() and not inside.exists()
    assert sorted(p.name for p in data["data.train_dir"].parent.rglob("*")) == before  # no lock file either


def test_claims_are_released_after_an_exception_and_the_config_is_not_saved(places):
    data, run = places
    steps: list[str] = []
    outputs = StageOutputs("fake", data, folders={"output_dir": run},
                           claims=[Lock(run / "out.csv", "the output"), recording_claim(steps, "b")],
                           config=ConfigFile(run / "configs" / "fake.yaml", saving(steps)))
    with pytest.raises(ValueError, match="the stage failed"), outputs:
        raise ValueError("the stage failed")
    assert steps == ["claim b", "release b"] and not (run / "configs").exists()
    with io.claim(run / "out.csv", "the output"):  # free again at once
        pass
    with pytest.raises(RuntimeError, match="only inside"):
        outputs.remove_temporaries(run, {"out.csv"})  # the claims are gone: clearing now could race a writer


def test_a_second_run_on_the_same_output_is_refused_and_touches_nothing(places):
    data, run = places
    steps: list[str] = []
    ours = temporary(run, "out.csv")

    def second() -> StageOutputs:
        return StageOutputs("fake", data, folders={"output_dir": run},
                            claims=[recording_claim(steps, "second's first"), Lock(run / "out.csv", "out.csv")],
                            temporaries={run: {"out.csv"}}, config=ConfigFile(run / "second.yaml", saving(steps)))

    with StageOutputs("fake", data, folders={"output_dir": run}, claims=[Lock(run / "out.csv", "out.csv")]):
        ours.touch()  # the first run's own writer is at work: its temporary must survive the second run
        with pytest.raises(BusyError, match=rf"out.csv: in use by .*pid {os.getpid()}"), second():
            steps.append("second run's body")
        assert ours.exists() and not (run / "second.yaml").exists()
        # The claim taken before the refused one was released again.
        assert steps == ["claim second's first", "release second's first"]
    with second() as out:  # the first has ended
        assert not ours.exists() and out.removed == {run: [ours]}


def test_only_its_own_temporaries_are_cleared_and_only_in_its_output_folders(places):
    data, run = places
    (run / "fold_0").mkdir()
    ours = [temporary(run, "folds.csv"), temporary(run / "fold_0", "last.pt")]
    theirs = [temporary(run, "notes.csv"), temporary(run / "fold_0", "best.pt"), run / ".folds.csv.tmp"]
    theirs[-1].write_text("a user's file")
    later = temporary(run / "fold_0", "0001.png")
    with StageOutputs("fake", data, folders={"output_dir": run},
                      temporaries={run: {"folds.csv"}, run / "fold_0": {"last.pt"}}) as out:
        assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
        assert out.removed == {run: [ours[0]], run / "fold_0": [ours[1]]}
        # Names known once the inputs are read: inside an output folder only.
        assert out.remove_temporaries(run / "fold_0", {"0001.png"}) == [later]
        with pytest.raises(ValueError, match="none of the stage's output folders"):
            out.remove_temporaries(data["data.train_dir"], {"a.png"})
    assert all(p.exists() for p in theirs)


def test_a_stage_that_ends_without_saving_its_config_still_saves_it_once(places):
    data, run = places
    steps: list[str] = []
    config = ConfigFile(run / "configs" / "fake.yaml", saving(steps))
    with StageOutputs("fake", data, folders={"output_dir": run}, config=config):
        pass
    assert steps == ["config fake.yaml"]
    with StageOutputs("fake", data, folders={"output_dir": run}, config=config) as out:
        out.save_config()
        out.save_config()
    assert steps == ["config fake.yaml"] * 2  # once per run
    with StageOutputs("fake", data, folders={"output_dir": run}, config=None) as out:  # a shard other than 0
        assert out.save_config() is None
    assert steps == ["config fake.yaml"] * 2


def test_check_outputs_takes_the_datas_places(places):
    data, run = places
    check_outputs(data, {"output_dir": run}, {"submission.filename": run / "masks.csv"})  # apart: no error
    with pytest.raises(ConfigError) as err:
        check_outputs(data, {"output_dir": data["data.train_dir"].parent, "predict.out_dir": data["data.train_dir"]},
                      {"submission.filename": data["data.masks_csv"]})
    lines = str(err.value).splitlines()[1:4]
    train, masks = data["data.train_dir"], data["data.masks_csv"]
    assert lines == [f"  - output_dir: {train.parent} contains the data folder {train} (data.train_dir)",
                     f"  - predict.out_dir: {train} is the data folder {train} (data.train_dir)",
                     f"  - submission.filename: {masks} is the data file data.masks_csv"]


PROTOCOL_STEPS = {"claim", "check_outputs", "remove_stale_temporaries"}
# The protocol itself and the writers it is built on (save_config claims and cleans its own file).
PROTOCOL_BUILDERS = {"stage.py", "io.py", "predictions.py", "run_files.py", "config.py"}


def steps_taken_by_hand(source: str) -> list[tuple[int, str]]:
    """(line, step) of each call of a protocol step in ``source``."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name in PROTOCOL_STEPS:
                found.append((node.lineno, name))
    return found


def test_no_stage_takes_the_protocols_steps_by_hand():
    """Claims, the data check and the clean-up of temporaries are called only by the protocol and the writers it
    is built on: a stage states its outputs in a StageOutputs, so that it cannot forget a step."""
    assert steps_taken_by_hand("def stage():\n    with io.claim(x, 'y'):\n        check_outputs(d, f)\n") == [
        (2, "claim"), (3, "check_outputs")]
    root = Path(__file__).resolve().parents[1] / "ternaus"
    by_hand = [f"{path.relative_to(root.parent)}:{line} {name}" for path in sorted(root.rglob("*.py"))
               if not (path.parent == root and path.name in PROTOCOL_BUILDERS)
               for line, name in steps_taken_by_hand(path.read_text())]
    assert by_hand == [], "use ternaus.stage.StageOutputs"
