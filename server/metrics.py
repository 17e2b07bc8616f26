"""Prometheus metrics in the text exposition format 0.0.4, written by hand (no client library needed).

Counters `fth_requests_total{route,code}`, histograms `fth_request_seconds{route}` (latency),
`fth_queue_wait_seconds` (time an image waited for its batch) and `fth_batch_size`, and the gauge
`fth_queue_depth` (images waiting). One `Metrics` object per process; all updates take one lock.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        brace = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{brace} {self.sum:.6f}", f"{name}_count{brace} {self.count}"]
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Process-wide serving metrics.

    Args:
        queue_depth: returns the number of images currently waiting (read at scrape time).
    """

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0):
        self._lock = threading.Lock()
        self.queue_depth = queue_depth
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)

    def request(self, route: str, code: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, code)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int, waits: list[float]) -> None:
        with self._lock:
            self.batch_size.observe(size)
            for w in waits:
                self.queue_wait.observe(w)

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP fth_requests_total HTTP requests answered, by route and status code.",
                "# TYPE fth_requests_total counter",
            ]
            for (route, code), n in sorted(self.requests.items()):
                lines.append(f'fth_requests_total{{route="{_escape(route)}",code="{code}"}} {n}')
            lines += ["# HELP fth_request_seconds Request latency in seconds.", "# TYPE fth_request_seconds histogram"]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("fth_request_seconds", f'route="{_escape(route)}"')
            lines += [
                "# HELP fth_queue_wait_seconds Time a request waited in the batch queue.",
                "# TYPE fth_queue_wait_seconds histogram",
                *self.queue_wait.lines("fth_queue_wait_seconds"),
                "# HELP fth_batch_size Images per forward pass.",
                "# TYPE fth_batch_size histogram",
                *self.batch_size.lines("fth_batch_size"),
                "# HELP fth_queue_depth Images waiting for the model.",
                "# TYPE fth_queue_depth gauge",
                f"fth_queue_depth {self.queue_depth()}",
            ]
        return "\n".join(lines) + "\n"
