"""What a stage does before and after it writes, in one place: ``StageOutputs``.

Every stage that writes states its outputs once and the protocol takes the documented steps in order
(docs/architecture.md, "What a stage does before it writes"):

1. **Keep outputs apart from the data** (``run_files.check_outputs``), when the ``StageOutputs`` is made, before
   anything is read, claimed or written.
2. **Claim what it writes**, on entering the ``with`` block: each claim is a callable returning a context manager
   (``Lock`` for one ``io.claim``; ``predictions.claim_writer``/``claim_reader``; training's rank-0 claim), held
   until the block ends, an exception included.
3. **Clean up its own temporaries** (``io.remove_stale_temporaries``) in the folders it names, for the file names
   it names, only once the claims are held; names known only later (the ids of a data set) go through
   ``remove_temporaries``, which refuses to run outside the block.
4. **Save the resolved configuration** (``configs/<stage>.yaml``) with ``save_config()``, which the stage calls
   once everything that can refuse has been checked (a refused run leaves the previous file); a stage that
   ends cleanly without calling it still has it saved on leaving the block.

The protocol takes no ``Config``: the data's places (``DataSource.places()``), the outputs' paths and the
configuration's ``ConfigFile`` (its path and a ``save(path)`` callable) are all it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ternaus.io import claim, remove_stale_temporaries
from ternaus.run_files import RunFiles, check_outputs

__all__ = ["StageOutputs", "Lock", "ConfigFile", "Claim", "out_of_fold_lock"]

Claim = Callable[[], AbstractContextManager]


@dataclass(frozen=True)
class Lock:
    """One ``io.claim`` as a claim of ``StageOutputs``: ``Lock(target, what, part)()`` is ``claim(target, what,
    part)``. ``what`` names the output in the BusyError a second run gets."""

    target: Path
    what: str
    part: str = ""

    def __call__(self) -> AbstractContextManager:
        return claim(self.target, self.what, self.part)


def out_of_fold_lock(files: RunFiles) -> Lock:
    """The lock on a run's out-of-fold files (``oof.csv``, ``postprocess.json``, ...; ``RunFiles.oof``)."""
    return Lock(files.oof, f"the out-of-fold files in {files.root}")


class ConfigFile(NamedTuple):
    """Where a stage saves its resolved configuration (``RunFiles.config(stage)``) and how: ``save(path)``
    (``functools.partial(config.save_config, cfg)``; it claims the file and clears its own temporaries)."""

    path: Path
    save: Callable[[Path], Any]


class StageOutputs:
    """A stage's outputs, stated once; the protocol's four steps, in order (see the module's docstring).

    ``name``: the stage, for messages. ``data``: the data's places by the key that sets them
    (``DataSource.places()``). ``folders``/``files``: the output folders and files, by the key or option that
    sets them (what an overlap with the data is reported as). ``claims``: callables returning context managers,
    entered in order; what each yields is in ``held``. ``temporaries``: folder -> the names of the files the
    stage writes there. ``config``: the ``ConfigFile`` to save, or None (a stage that saves none, or a process
    that is not the one to save it: a shard or rank other than 0).

    Raises ConfigError (step 1) when made with outputs that overlap the data: nothing is claimed or written then.
    Use it once, as ``with StageOutputs(...) as out:``."""

    def __init__(self, name: str, data: Mapping[str, Path], folders: Mapping[str, Path] | None = None,
                 files: Mapping[str, Path] | None = None, claims: Sequence[Claim] = (),
                 temporaries: Mapping[Path, Iterable[str]] | None = None, config: ConfigFile | None = None):
        self.name = name
        self.folders, self.files = dict(folders or {}), dict(files or {})
        self.claims = list(claims)
        self.temporaries = {Path(folder): set(names) for folder, names in (temporaries or {}).items()}
        self.config = config
        self.held: list[Any] = []
        self.removed: dict[Path, list[Path]] = {}
        self.config_saved = False
        self._stack: ExitStack | None = None
        self._used = False
        check_outputs(data, self.folders, self.files)  # 1

    def __enter__(self) -> "StageOutputs":
        if self._used:
            raise RuntimeError(f"{self.name}: a StageOutputs is entered once")
        self._used = True
        with ExitStack() as stack:  # released at once when a claim is refused or the clean-up fails
            self.held = [stack.enter_context(make()) for make in self.claims]  # 2
            self._stack = stack
            for folder, names in self.temporaries.items():  # 3
                self.remove_temporaries(folder, names)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            with self._stack:  # the claims are released last, whatever happens
                if kind is None and not self.config_saved:
                    self.save_config()  # 4, for a stage that ends without having saved it
        finally:
            self._stack = None
        return False

    def save_config(self) -> Path | None:
        """Step 4: write ``configs/<stage>.yaml`` (once; None when this process saves none). Call it inside the
        block, after the checks that can refuse the run, before the first output is written."""
        self._require_claims("save_config")
        if self.config is None or self.config_saved:
            return None
        self.config_saved = True
        return self.config.save(self.config.path)

    def remove_temporaries(self, folder: str | Path, names: Iterable[str]) -> list[Path]:
        """Step 3 for names known only once the stage has read its inputs (the PNGs of a data set's ids): the
        temporaries a killed writer left in ``folder`` (one of the outputs, or inside one) for ``names``."""
        self._require_claims("remove_temporaries")
        folder = Path(folder)
        if not self._is_output(folder):
            raise ValueError(f"{self.name}: {folder} is none of the stage's output folders; name it in "
                             "StageOutputs(folders=...) or (temporaries=...)")
        removed = remove_stale_temporaries(folder, names)
        if removed:
            self.removed.setdefault(folder, []).extend(removed)
        return removed

    def _require_claims(self, what: str) -> None:
        if self._stack is None:
            raise RuntimeError(f"{self.name}: {what} runs only inside 'with StageOutputs(...)', holding the claims")

    def _is_output(self, folder: Path) -> bool:
        places = [Path(p).resolve() for p in (*self.folders.values(), *self.temporaries)]
        places += [Path(p).resolve().parent for p in self.files.values()]
        folder = folder.resolve()
        return any(folder == place or place in folder.parents for place in places)
