"""What the daemon reports: per-source counters, the status file `fth collect status` reads, Prometheus metrics.

The daemon rewrites `<workspace>/collector/status.json` (atomically) every `status_every_s`; the status command
reads it and says the daemon is gone when its pid is not alive. With `metrics_port` set, the same counters are
served by `prometheus_client` at `http://host:port/metrics`. Housekeeping (status file, retention) keeps counters of
its own: its errors show in the status file and in `fth collect status`.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from store.fsutil import atomic_write

COUNTERS = ("stored", "stale", "flat", "bad", "known", "errors", "restarts", "resolves")


@dataclass
class SourceStats:
    """Counters of one source, updated from its supervisor and ffmpeg reader threads."""

    source: str
    kind: str = ""
    state: str = "starting"  # starting | running | backoff | stale | done | stopped | failed
    last_frame_at: str | None = None  # UTC text of the last stored frame
    last_frame_ts: float = 0.0  # Unix time it was stored
    last_error: str | None = None
    pid: int | None = None
    bytes: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    _recent: collections.deque = field(default_factory=collections.deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, what: str, error: str | None = None) -> None:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + 1
            if error:
                self.last_error = error[:500]
            if what == "stale":
                self.state = "stale"

    def stored(self, captured_at: str, nbytes: int) -> None:
        now = time.time()
        with self._lock:
            self.counts["stored"] += 1
            self.bytes += nbytes
            self.last_frame_at = captured_at
            self.last_frame_ts = now
            self.state = "running"
            self._recent.append(now)
            while self._recent and self._recent[0] < now - 3600:
                self._recent.popleft()

    def frames_per_hour(self, since: float) -> float:
        """Frames stored in the last hour, extrapolated when the daemon has run for less than an hour."""
        with self._lock:
            span = min(3600.0, max(time.time() - since, 1.0))
            return len(self._recent) * 3600.0 / span

    def snapshot(self, since: float) -> dict:
        with self._lock:
            d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
            d["counts"] = dict(self.counts)
        d["frames_per_hour"] = round(self.frames_per_hour(since), 1)
        return d


def write_status(path: Path, stats: list[SourceStats], started: float, housekeeping: SourceStats | None = None) -> None:
    doc = {
        "pid": os.getpid(),
        "started_at": started,
        "updated_at": time.time(),
        "sources": [s.snapshot(started) for s in stats],
    }
    if housekeeping is not None:
        doc["housekeeping"] = housekeeping.snapshot(started)
    with atomic_write(path, "w") as f:
        f.write(json.dumps(doc, indent=1))


def read_status(path: Path) -> dict | None:
    """The last status the daemon wrote, with `running` set from whether its pid is alive; None when none."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(doc["pid"], 0)
        doc["running"] = True
    except (ProcessLookupError, PermissionError, KeyError):
        doc["running"] = False
    return doc


def format_status(doc: dict) -> str:
    """A status document -> the table `fth collect status` prints."""
    age = time.time() - doc.get("updated_at", 0)
    head = f"collector pid {doc.get('pid')}: {'running' if doc.get('running') else 'NOT RUNNING'}, "
    head += f"status written {age:.0f} s ago"
    cols = ("source", "kind", "state", "last frame (UTC)", "frames/h", "stored", "stale", "errors", "restarts")
    rows = [
        (
            s["source"],
            s.get("kind", ""),
            s["state"],
            (s.get("last_frame_at") or "-")[:19],
            f"{s['frames_per_hour']:.0f}",
            str(s["counts"]["stored"]),
            str(s["counts"]["stale"]),
            str(s["counts"]["errors"] + s["counts"]["bad"]),
            str(s["counts"]["restarts"]),
        )
        for s in doc.get("sources", [])
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    errors = [f"  {s['source']}: {s['last_error']}" for s in doc.get("sources", []) if s.get("last_error")]
    house = doc.get("housekeeping") or {}
    if house.get("counts", {}).get("errors"):
        lines.append(f"housekeeping (status file, retention): {house['counts']['errors']} errors")
        errors.append(f"  housekeeping: {house.get('last_error')}")
    return "\n".join(lines + (["last errors:", *errors] if errors else []))


class StatsCollector(Collector):
    """The sources' counters as Prometheus metric families, read from their `SourceStats` at scrape time."""

    def __init__(self, stats: list[SourceStats], started: float):
        self.stats, self.started = stats, started

    def collect(self):
        for name in COUNTERS:
            family = CounterMetricFamily(
                f"fth_collector_{name}", f"Frames or events counted as {name}.", labels=["source"]
            )
            for s in self.stats:
                family.add_metric([s.source], s.counts.get(name, 0))
            yield family
        sizes = CounterMetricFamily("fth_collector_bytes", "Bytes of frames stored.", labels=["source"])
        rate = GaugeMetricFamily("fth_collector_frames_per_hour", "Frames stored in the last hour.", labels=["source"])
        up = GaugeMetricFamily("fth_collector_up", "1 while the source delivers frames.", labels=["source"])
        for s in self.stats:
            sizes.add_metric([s.source], s.bytes)
            rate.add_metric([s.source], round(s.frames_per_hour(self.started), 1))
            up.add_metric([s.source], int(s.state == "running"))
        yield from (sizes, rate, up)


class MetricsServer:
    """`GET /metrics` (prometheus_client's HTTP server) on a loopback (or configured) port, in a daemon thread."""

    def __init__(self, stats: list[SourceStats], started: float, port: int, host: str = "127.0.0.1"):
        self.registry = CollectorRegistry()
        self.registry.register(StatsCollector(stats, started))
        self.httpd, self.thread = start_http_server(port, host, registry=self.registry)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
