"""The ``ternaus`` command: ``ternaus STAGE [options]`` runs one stage's ``main(argv)``, as its script does.

``ternaus prepare-folds --config CFG`` is ``python prepare_folds.py --config CFG``, and so on for every stage;
``ternaus --version`` prints the version, ``ternaus STAGE --help`` the stage's options. A stage's module is
imported only when it runs, so ``ternaus --help`` and a mistyped config key answer before torch loads.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from ternaus import __version__

__all__ = ["COMMANDS", "Command", "main"]


@dataclass(frozen=True)
class Command:
    """``module:function``, the ``main(argv, prog)`` of one subcommand, and its one-line summary."""

    target: str
    summary: str

    def load(self):
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


COMMANDS = {
    "prepare-folds": Command("ternaus.commands.prepare_folds:main", "check the training data, write folds.csv"),
    "train": Command("ternaus.commands.train:main", "train one model per fold"),
    "predict": Command("ternaus.commands.predict:main", "predict the test set (TTA, fold average); out-of-fold "
                                                        "scores and the post-processing search"),
    "make-submission": Command("ternaus.commands.make_submission:main", "threshold, encode, write and check the "
                                                                        "submission"),
    "ensemble": Command("ternaus.commands.ensemble:main", "merge several runs' predictions"),
    "report": Command("ternaus.commands.report:main", "write the run's HTML report"),
    "evaluate": Command("ternaus.evaluate:main", "score a submission against known masks"),
    "export": Command("ternaus.commands.export:main", "export a checkpoint as ONNX or TorchScript"),
    "bundle": Command("ternaus.commands.bundle:make", "a finished run as a folder for an offline Kaggle notebook"),
    "predict-bundle": Command("ternaus.commands.bundle:predict", "the checked submission from a bundle, offline"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return ("usage: ternaus [--version] [--help] COMMAND [options]\n\n"
            "The TernausNet Kaggle pipeline; `ternaus COMMAND --help` gives a command's options.\n\ncommands:\n"
            + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``ternaus COMMAND ...``: the command's exit status (2 for a command it does not know)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if args else 2
    if args[0] == "--version":
        print(f"ternaus {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"{usage()}\nerror: unknown command {args[0]!r}", file=sys.stderr)
        return 2
    return command.load()(args[1:], prog=f"ternaus {args[0]}")
