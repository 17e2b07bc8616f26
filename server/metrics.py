"""Prometheus metrics of the service, through `prometheus_client`, correct across gunicorn workers.

Counters `fth_requests_total{route,code}`, histograms `fth_request_seconds{route}` (latency), `fth_queue_wait_seconds`
(time an image waited for its batch) and `fth_batch_size`, gauges `fth_queue_depth` (images waiting for a model) and
`fth_requests_in_flight`. Under gunicorn, `fth serve` points `PROMETHEUS_MULTIPROC_DIR` at a fresh folder before the
workers fork: every worker then writes its values to memory-mapped files there and a scrape, whichever worker answers
it, sums all of them (`MultiProcessCollector`; gauges as the sum over live workers). Without that variable (the
development server, tests that build the app in-process) each app has its own registry.

Drift gauges `fth_drift_score{source,method}` (domain-classifier AUC or MMD^2), `fth_drift_p_value{source,method}`
(MMD only) and `fth_drift_flagged{source}` come from the workspace's `drift/latest.json`, which `fth drift` writes
(store.drift_latest): a scrape reads that small file, it never computes a score. They are process-independent, so
under gunicorn they are added once to the merged scrape, not summed over workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from store.drift_latest import read_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DriftCollector(Collector):
    """The latest drift score per source, read from `<workspace>/drift/latest.json` at each scrape."""

    def __init__(self, workspace_root: str | Path):
        self.root = Path(workspace_root)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        score = GaugeMetricFamily("fth_drift_score", "Latest drift score per source (fth drift): domain-classifier "
                                  "AUC or MMD^2, by method.", labels=["source", "method"])  # fmt: skip
        p_value = GaugeMetricFamily("fth_drift_p_value", "Latest drift permutation p-value per source (MMD only).",
                                    labels=["source", "method"])  # fmt: skip
        flagged = GaugeMetricFamily("fth_drift_flagged", "1 when the latest drift window of a source was flagged.",
                                    labels=["source"])  # fmt: skip
        for source, entry in sorted(read_latest(self.root).items()):
            method = str(entry.get("method", ""))
            if isinstance(entry.get("score"), int | float):
                score.add_metric([source, method], float(entry["score"]))
            if isinstance(entry.get("p_value"), int | float):
                p_value.add_metric([source, method], float(entry["p_value"]))
            flagged.add_metric([source], 1.0 if entry.get("flagged") else 0.0)
        yield from (score, p_value, flagged)


class Metrics:
    """One process's serving metrics, registered on their own registry (so several apps may live in one process).

    Args:
        workspace_root: where `fth drift` writes its latest scores (exported as gauges); None: no drift gauges.
    """

    def __init__(self, workspace_root: str | Path | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.drift = DriftCollector(workspace_root) if workspace_root is not None else None
        if self.drift is not None:
            r.register(self.drift)
        self.requests = Counter("fth_requests", "HTTP requests answered, by route and status code.",
                                ["route", "code"], registry=r)  # fmt: skip
        self.latency = Histogram("fth_request_seconds", "Request latency in seconds.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.queue_wait = Histogram("fth_queue_wait_seconds", "Time a request waited in the batch queue.",
                                    buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_size = Histogram("fth_batch_size", "Images per forward pass.", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("fth_queue_depth", "Images waiting for the model.", multiprocess_mode="livesum",
                                 registry=r)  # fmt: skip
        self.in_flight = Gauge("fth_requests_in_flight", "API requests being answered.", multiprocess_mode="livesum",
                               registry=r)  # fmt: skip

    def request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)

    def batch(self, size: int, waits: list[float], depth: int) -> None:
        self.batch_size.observe(size)
        for w in waits:
            self.queue_wait.observe(w)
        self.queue_depth.set(depth)

    def render(self) -> bytes:
        """The text exposition: every worker's values summed under gunicorn, this process's otherwise."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            if self.drift is not None:
                registry.register(self.drift)
            return generate_latest(registry)
        return generate_latest(self.registry)
