"""What the stage scripts share: ``--config CONFIG [KEY=VALUE ...]`` and clean failures.

A problem the user can fix (config, data, weights, a missing earlier stage, an output another run holds, a
full or read-only disk) ends with its message and exit status 2, not a traceback. Ctrl-C (exit 130) and
SIGTERM (exit 143) end the stage through the same clean-up as an error: temporary files are removed.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Callable

from ternaus.config import Config, load_config
from ternaus.errors import USER_ERRORS

__all__ = ["stage_parser", "load_stage_config", "run_stage", "os_error_message", "Terminated"]

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
RESUME = "run the same command again to resume"


class StageParser(argparse.ArgumentParser):
    """Options and ``KEY=VALUE`` overrides in any order: plain argparse refuses an option after the overrides."""

    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)


def stage_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """``prog``: how usage names the command (``ternaus train``); None: the script's name."""
    parser = StageParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/synthetic.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override a config value, e.g. train.epochs=3 data.input_size=[128,192]")
    return parser


def load_stage_config(args: argparse.Namespace, options: dict[str, str] | None = None) -> Config:
    """The config with the overrides; ``options`` ({"--threshold": "postprocess.threshold"}) are stage options
    that set a config key: given on the command line, each is checked as that key, and named as the option."""
    extra, names = [], {}
    for option, key in (options or {}).items():
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value is not None:
            extra.append(f"{key}={value}")
            names[key] = f"{option} ({key})"
    return load_config(args.config, [*args.overrides, *extra], names)


def user_message(err: BaseException) -> str:
    """The message itself: a DataLoader worker re-raises our error with its traceback folded into the text."""
    text = str(err)
    marker = f"{type(err).__name__}: "
    if "Original Traceback" in text and marker in text:
        return text[text.rindex(marker) + len(marker):].strip()
    return text


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt so that every clean-up runs; a
    BaseException, so that no ``except Exception`` turns it into another error."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _default_sigterm_in_child() -> None:
    # A forked worker (Pool, DataLoader) ends on SIGTERM at once, as it did before: with the handler above it
    # would wait to reach Python code, and a worker stuck in C code would never end (Pool.terminate hangs).
    if signal.getsignal(signal.SIGTERM) is _terminate:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_child)


def os_error_message(err: OSError) -> str | None:
    """The message for a full or read-only disk, or None for an OSError that is not the user's to fix."""
    where = f" {err.filename}" if err.filename else ""
    if err.errno in DISK_FULL:
        return (f"the disk is full while writing{where} ({err.strerror}). Free some space and run the same "
                "command again: every finished file is kept and the stage resumes from them.")
    if err.errno in NOT_WRITABLE:
        return (f"cannot write{where} ({err.strerror}). Make the folder writable, or point output_dir (or the "
                "stage's output option) at a folder you can write to; nothing was lost.")
    return None


def run_stage(body: Callable[[], object]) -> int:
    """Run a stage; user-fixable errors print a message and return 2, Ctrl-C returns 130, SIGTERM 143."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        body()
    except USER_ERRORS as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        message = os_error_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {RESUME}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"terminated (SIGTERM): {RESUME}", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
