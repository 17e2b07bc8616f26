"""What the daemon reports: per-source counters, the status file `fth collect status` reads, Prometheus metrics.

The daemon rewrites `<workspace>/collector/status.json` (atomically) every `status_every_s`; the status command
reads it and says the daemon is gone when its pid is not alive. With `metrics_port` set, the same counters are
served in the Prometheus text exposition format at `http://host:port/metrics`.
"""

from __future__ import annotations

import collections
import http.server
import json
import os
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from store.fsutil import atomic_write

COUNTERS = ("stored", "stale", "flat", "bad", "known", "errors", "restarts", "resolves")


@dataclass
class SourceStats:
    """Counters of one source, updated from its supervisor and ffmpeg reader threads."""

    source: str
    kind: str = ""
    state: str = "starting"  # starting | running | backoff | stale | done | stopped
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


def write_status(path: Path, stats: list[SourceStats], started: float) -> None:
    doc = {
        "pid": os.getpid(),
        "started_at": started,
        "updated_at": time.time(),
        "sources": [s.snapshot(started) for s in stats],
    }
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
    return "\n".join(lines + (["last errors:", *errors] if errors else []))


def prometheus_text(stats: list[SourceStats], started: float) -> str:
    """Counters and gauges in the Prometheus text exposition format (version 0.0.4)."""
    out = []
    for name in COUNTERS:
        out.append(f"# TYPE fth_collector_{name}_total counter")
        out += [f'fth_collector_{name}_total{{source="{s.source}"}} {s.counts.get(name, 0)}' for s in stats]
    out.append("# TYPE fth_collector_bytes_total counter")
    out += [f'fth_collector_bytes_total{{source="{s.source}"}} {s.bytes}' for s in stats]
    out.append("# TYPE fth_collector_frames_per_hour gauge")
    out += [f'fth_collector_frames_per_hour{{source="{s.source}"}} {s.frames_per_hour(started):.1f}' for s in stats]
    out.append("# TYPE fth_collector_up gauge")
    out += [f'fth_collector_up{{source="{s.source}"}} {int(s.state == "running")}' for s in stats]
    return "\n".join(out) + "\n"


class MetricsServer:
    """`GET /metrics` on a loopback (or configured) port, in a daemon thread."""

    def __init__(self, stats: list[SourceStats], started: float, port: int, host: str = "127.0.0.1"):
        text = lambda: prometheus_text(stats, started).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                body = text() if self.path.startswith("/metrics") else b"see /metrics\n"
                self.send_response(200 if self.path.startswith("/metrics") else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
