"""Atomic file writes: a temporary name in the same folder, then a rename.

A crash, a kill or a full disk leaves either the previous good file or the new complete one, never a
half-written file under the final name. A temporary file left behind by a ``kill -9`` is named
``.<stem>.<random>.tmp<suffix>``; ``remove_stale_temporaries`` clears them when a stage starts again.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temporaries"]

_TEMPORARY = re.compile(r"^\..+\.[^.]+\.tmp(\.[^.]+)?$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush_to_disk() -> bool:
    """False when ``TERNAUS_FSYNC=0``: a checkpoint's fsync is half of its 1 s write on a 2-core CI machine."""
    return os.environ.get("TERNAUS_FSYNC", "1") != "0"


def atomic_write(path: str | Path, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; the temporary file is removed on error.

    ``durable`` also flushes the file and its folder to disk, so that a power cut cannot leave an empty file
    under the final name; 100,000 prediction PNGs skip it (their completeness is checked on resume instead).
    The environment variable ``TERNAUS_FSYNC=0`` turns the flushing off everywhere (throwaway runs, the test
    suite): writes stay atomic, only a power cut is no longer covered.
    """
    durable = durable and flush_to_disk()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last so writers that pick a format from the name (cv2, torch) still work.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the file the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        write(tmp_path)
        if durable:
            _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), durable)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def temporary_stem(name: str) -> str:
    """``.<stem>.<random>.tmp<suffix>`` -> ``<stem>`` (mkstemp's random part holds no dots)."""
    return name[1:].rsplit(".", 3 if name.count(".") >= 4 else 2)[0]


def remove_stale_temporaries(folder: str | Path, stems: set[str] | None = None) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder``, only those of ``stems`` when given;
    call it only where no other writer of those files runs."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and _TEMPORARY.match(p.name)
             and (stems is None or temporary_stem(p.name) in stems)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
