"""Shared benchmark helpers: interleaved timing with warmup, peak memory in a fresh process, table + JSON output.

Timing: every case is warmed up, then the cases run in turn, repeat after repeat (the order rotates each round), so
a burst of load from another process on this shared machine hits all cases alike; we report medians.
Memory on CPU: torch allocations are invisible to tracemalloc, so a case runs once in a fresh subprocess: after
set-up (model and input built) the kernel's peak-RSS mark is reset to the current RSS (`echo 5 >
/proc/self/clear_refs`), one forward runs, and we report VmHWM - VmRSS(before): the resident memory the forward
added at its peak (activations, temporaries, allocator slack), not counting weights and input.
On CUDA: torch.cuda.max_memory_allocated over the forward, minus what was allocated before.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")
RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_interleaved(
    cases: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    device: str = "cpu",
    min_sample_s: float = 0.05,
) -> dict[str, list[float]]:
    """Run each case `warmup` times, then `repeats` rounds of all cases in rotating order -> seconds per call.

    A case faster than `min_sample_s` is called several times per sample (the count fixed at warm-up), so a
    millisecond-scale case is not measured at the resolution of scheduler noise.
    """
    inner: dict[str, int] = {}
    for name, fn in cases.items():
        for _ in range(warmup):
            fn()
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        inner[name] = max(1, math.ceil(min_sample_s / max(time.perf_counter() - start, 1e-6)))
        log.debug("warmed up %s (%d calls per sample)", name, inner[name])
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(inner[name]):
                cases[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) / inner[name])
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    """(max - min) / median: how noisy a case was."""
    return (max(xs) - min(xs)) / median(xs)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak_rss() -> float:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); returns the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mib("VmRSS")
    except OSError:  # no reset possible: fall back to the lifetime peak, which can hide small forwards
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mib() -> float:
    """Peak RSS since the last `reset_peak_rss` (MiB)."""
    try:
        return _status_mib("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_subprocess(script: Path, args: list[str], timeout: int = 600) -> dict[str, Any]:
    """Run `python script args...` in a fresh process; it prints one JSON object as its last line."""
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Markdown table of `rows` (floats to 3 significant figures)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
