"""Atomic file writes, the clean-up of a killed writer's temporaries, and locks on what a stage writes.

A crash, a kill or a full disk leaves either the previous good file or the new complete one, never a
half-written file under the final name. A temporary file left behind by a ``kill -9`` is named
``.<stem>.<8 random characters>.tmp<suffix>``; ``remove_stale_temporaries`` clears those of the files a stage
writes, and no other file, when the stage starts again.

``claim`` takes an exclusive lock on an output (a fold's folder, the predictions, the submission) for as long
as a stage writes it, so that a second run on the same output is refused with a message that names the first.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ternaus.errors import BusyError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temporaries", "temporary_of",
           "claim", "lock_path", "holder_of", "write_failure"]

# mkstemp's random part: 8 characters of [a-z0-9_]; the stem and suffix are those of the final name.
_TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]+)?$")


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
        try:
            write(tmp_path)
        except RuntimeError as err:  # torch's writers report a failed write without its errno
            failure = write_failure(tmp_path, err)
            if failure is None:
                raise
            raise failure from err
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


def write_failure(tmp: Path, err: BaseException) -> OSError | None:
    """The OSError behind a writer's RuntimeError, found by writing to ``tmp`` once more; None when a write
    succeeds (the error was not the disk's). torch.save says only "unexpected pos" when the disk is full."""
    try:
        with open(tmp, "ab") as f:
            f.write(bytes(1 << 16))
            f.flush()
            os.fsync(f.fileno())
    except OSError as probe:
        return OSError(probe.errno, probe.strerror, str(tmp))
    return None


def temporary_of(name: str) -> str | None:
    """``.<stem>.<random>.tmp<suffix>`` -> ``<stem><suffix>``, the final name it was written for; else None."""
    match = _TEMPORARY.match(name)
    return match["stem"] + (match["suffix"] or "") if match else None


def remove_stale_temporaries(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` for the final file ``names`` (e.g.
    ``{"last.pt", "best.pt"}``), and nothing else: a user's ``.notes.tmp`` is not ours. Call it only while
    holding the claim on those files (no other writer of them runs)."""
    folder, names = Path(folder), set(names)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if temporary_of(p.name) in names and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------- locks on outputs
#
# fcntl.flock rather than a lock file created with O_EXCL: the kernel drops an flock when its process ends,
# however it ends (kill -9 included), so a dead run's lock never blocks the next one and no guess about a
# stale file is ever made. The file holds who took the lock, for the message a second run prints.

LOCK_WAIT_S = 1.0  # a lock another run only probes (holder_of) is free again within milliseconds
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_held: set[int] = set()


def _close_in_child() -> None:
    # A forked child (a DataLoader or Pool worker) shares the parent's locks: it must not keep them when the
    # parent dies. Closing its copy of the descriptor leaves the parent's lock in place.
    for fd in _held:
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def lock_path(target: str | Path, part: str = "") -> Path:
    """The lock of an output (a file or a folder): ``.<name>[.<part>].lock`` beside it, not inside it."""
    target = Path(target)
    return target.parent / f".{target.name}{'.' + part if part else ''}.lock"


def _holder_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "python"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _describe(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        pid, host, started, command = info["pid"], info["host"], info["started"], info["command"]
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not said which yet)"
    who = f"'{command}' (pid {pid} on {host}, started {started})"
    if host != socket.gethostname():
        return f"{who}: another machine; check there whether it still runs"
    if not _alive(pid):
        return f"{who}: that process has ended, but one it started still holds the lock; end that one"
    return who


def _open_lock(lock: Path) -> int:
    lock.parent.mkdir(parents=True, exist_ok=True)
    return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)


def holder_of(lock: Path) -> str | None:
    """Who holds ``lock`` now, or None when it is free (or absent). Probing takes the lock for an instant."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # absent, or not ours to read: nothing to wait for
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe(lock)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _lock_now(fd: int) -> bool:
    """Try for LOCK_WAIT_S; False when another process holds it. An unsupported filesystem raises."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


@contextmanager
def claim(target: str | Path, what: str, part: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (``lock_path(target, part)``) while the block runs.

    Raises BusyError, naming the holder (command, pid, host, start time), when another process holds it.
    On a filesystem without locks (some network mounts) a warning is printed and the block runs unlocked."""
    lock = lock_path(target, part)
    fd = _open_lock(lock)
    try:
        locked = _lock_now(fd)
    except OSError as err:
        if err.errno not in UNSUPPORTED:
            os.close(fd)
            raise
        print(f"warning: cannot lock {lock} ({err.strerror}): this filesystem has no locks; make sure no other "
              f"run writes {what} at the same time", file=sys.stderr)
        locked = None
    if locked is False:
        os.close(fd)
        raise BusyError(f"{what}: in use by {_describe(lock)}. Two runs writing it at once would mix their "
                        "files: wait for that run to end (or stop it), then run this command again")
    if locked:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder_info()) + "\n").encode(), 0)
    _held.add(fd)
    try:
        yield
    finally:
        _held.discard(fd)
        os.close(fd)  # closing the descriptor releases the lock
