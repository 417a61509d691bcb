"""What every benchmark script records beside its figures: where and how it ran, and a run's training time.

The scripts import it by name (`python benchmarks/x.py` puts this folder first on the path).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch


def repeat_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Times `fn`: `warmup` untimed-for-the-figures calls (the first one's time is returned on its own), then
    `repeats` timed ones. Returns (first call's seconds, each repeat's seconds)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, times


def environment() -> dict[str, object]:
    """Threads, machine and torch version of this process, for a result's JSON."""
    return {
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
    }


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what Python's platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_seconds(run: Path) -> float:
    """Training time over every session of a run (the last evaluation's record in metrics.jsonl)."""
    records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return records[-1]["elapsed_s"] if records else 0.0
