"""What every benchmark shares: the machine's description, medians of repeated timings, markdown tables,
and writing a script's section of ``docs/benchmarks.md`` in place (each script owns one marked section)."""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Callable

import torch

from ternaus.io import atomic_write_text

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
DOC_HEADER = """# Benchmarks

Written by the scripts in `bench/` (`make bench` runs them all; `python -m bench.NAME` runs one and rewrites
its own section below). Times are medians of repeated runs; a ratio compares two things measured side by side
in the same run. Each section names the machine it ran on.
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: the CPU (and the GPU when there is one), the core count and the library versions."""
    gpu = f"; GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "; no GPU"
    return (f"{cpu_name()}, {os.cpu_count()} cores (torch uses {torch.get_num_threads()} threads){gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones (CUDA work included)."""
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, body: str, write: bool = True) -> None:
    """Print ``body``; with ``write``, also put it, with the machine, the date and the command that made it,
    in ``name``'s section of docs/benchmarks.md (the other sections are left as they are)."""
    command = " ".join(["python -m bench." + name, *sys.argv[1:]])
    text = (f"<!-- bench:{name} -->\n## {title}\n\n"
            f"Measured {date.today().isoformat()} on {machine()}, with `{command}`.\n\n{body.strip()}\n"
            f"<!-- /bench:{name} -->")
    print(text)
    if not write:
        return
    doc = DOC.read_text() if DOC.exists() else DOC_HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    doc = pattern.sub(lambda _: text, doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(DOC, doc)


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--quick`` (fewer, smaller runs: checks the script, not a result)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run; results are not written to docs")
    return parser


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"
