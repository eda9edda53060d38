"""What the four stage scripts share: ``--config CONFIG [KEY=VALUE ...]`` and clean failures.

A problem the user can fix (config, data, weights, a missing earlier stage) ends with its message and
exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable

from ternaus.config import Config, load_config
from ternaus.errors import USER_ERRORS

__all__ = ["stage_parser", "load_stage_config", "run_stage"]

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StageParser(argparse.ArgumentParser):
    """Options and ``KEY=VALUE`` overrides in any order: plain argparse refuses an option after the overrides."""

    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = StageParser(description=description)
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/synthetic.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override a config value, e.g. train.epochs=3 data.input_size=[128,192]")
    return parser


def load_stage_config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def user_message(err: BaseException) -> str:
    """The message itself: a DataLoader worker re-raises our error with its traceback folded into the text."""
    text = str(err)
    marker = f"{type(err).__name__}: "
    if "Original Traceback" in text and marker in text:
        return text[text.rindex(marker) + len(marker):].strip()
    return text


def run_stage(body: Callable[[], object]) -> int:
    """Run a stage; user-fixable errors print a message and return 2."""
    try:
        body()
    except USER_ERRORS as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        where = f" while writing {err.filename}" if err.filename else ""
        print(f"error: the disk is full{where} ({err.strerror}). Free some space and run the same command "
              "again: every finished file is kept and the stage resumes from them.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0
