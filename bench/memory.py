"""Memory of ``predict.py`` (the real command, in its own process) at 100 and at 1,000 test images: the
main process's peak RSS and the peak of main + DataLoader workers together. It must not grow with the
number of images: predictions stream to disk.

    python -m bench.memory [--counts 100 1000] [--size WxH] [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import fmt, parser, table, write_section
from bench.fixtures import config, rendered_views, write_checkpoints, write_test_set
from ternaus.config import save_config

REPO = Path(__file__).resolve().parent.parent


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


class TreeSampler(threading.Thread):
    """Largest RSS of a process and of it plus its descendants, sampled every 20 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.main_peak, self.tree_peak, self.done = pid, 0, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            main = rss_bytes(self.pid)
            self.main_peak = max(self.main_peak, main)
            self.tree_peak = max(self.tree_peak, main + sum(rss_bytes(c) for c in descendants(self.pid)))
            time.sleep(0.02)


def predict_peaks(root: Path, count: int, size: tuple[int, int]) -> dict:
    data = root / f"data{count}"
    write_test_set(data, count, rendered_views(size))
    cfg = config(data, root / f"run{count}", "folds.n_folds=2", "train.folds=[0]", "predict.oof=false",
                 "data.num_workers=2", "predict.batch_size=8")
    write_checkpoints(cfg, [0])
    config_path = save_config(cfg, root / f"predict{count}.yaml")
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "predict.py", "--config", str(config_path)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(process.pid)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    sampler.done.set()
    sampler.join()
    if status != 0:
        raise RuntimeError(f"predict.py failed on {count} images: {process.stderr.read()[-500:]}")
    written = len(list((root / f"run{count}" / "predictions").glob("*.png")))
    return {"count": count, "written": written, "seconds": time.perf_counter() - start,
            "main_maxrss": usage.ru_maxrss * 1024, "main_sampled": sampler.main_peak, "tree": sampler.tree_peak}


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    cli.add_argument("--size", default="96x64", help="W x H of the test images (default 96x64)")
    args = cli.parse_args()
    counts = [10, 40] if args.quick else args.counts
    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        results = [predict_peaks(Path(tmp), count, size) for count in counts]
    mib = lambda b: fmt(b / 2**20, 0)  # noqa: E731
    rows = [[r["count"], r["written"], fmt(r["seconds"], 1), mib(r["main_maxrss"]), mib(r["tree"])] for r in results]
    first, last = results[0], results[-1]
    body = (f"`predict.py` on {size[0]} x {size[1]} test images, 1 fold, hflip TTA, batch 8, 2 DataLoader "
            "workers, a fresh output folder each time. Peak RSS of the main process from the kernel (wait4); "
            "main + workers sampled every 20 ms.\n\n"
            + table(["test images", "PNGs written", "seconds", "main peak RSS (MiB)", "main + workers (MiB)"], rows)
            + f"\n\nFrom {first['count']} to {last['count']} images the main process's peak changes by "
            f"{mib(last['main_maxrss'] - first['main_maxrss'])} MiB and main + workers by "
            f"{mib(last['tree'] - first['tree'])} MiB.")
    write_section("memory", "Prediction memory", body, write=not args.quick)


if __name__ == "__main__":
    main()
