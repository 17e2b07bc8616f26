"""The collector daemon: `Collector(config, workspace)` runs every source under supervision until stopped.

`main(config, workspace)` is what `fth collect` calls: it starts the collector, turns SIGTERM and SIGINT into a
clean stop (stop grabbing, finish the writes in flight, stop every ffmpeg, close the catalog, exit 0 within a
few seconds) and returns the exit status. Housekeeping (retention, status file) runs in one more thread, which
survives its own errors (a full disk, a locked catalog): it counts and reports them and tries again next round.
The daemon holds the workspace's writer lock (`store.lock`) for its life: a second collector on the same workspace
stops at start with a message naming the first. It also holds one lease per source in the catalog (`store.lock.Lease`),
so collectors on other hosts (or other workspace folders) sharing a PostgreSQL catalog cannot collect the same source
twice; start-up recovery settles only the sources it leased, never another collector's writes in flight.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time

from collector.config import CollectorConfig, validate
from collector.errors import ErrorLog
from collector.sink import FrameSink
from collector.status import MetricsServer, SourceStats, write_status
from collector.supervisor import SourceSupervisor
from store.backends import open_catalog
from store.catalog import Catalog
from store.lock import Lease, holder_name, workspace_lock
from store.paths import Workspace

log = logging.getLogger(__name__)


class Collector:
    """All sources of one config, writing into one workspace's catalog. `start()`, then `stop()` (or `with`)."""

    def __init__(self, cfg: CollectorConfig, workspace: Workspace | None = None):
        self.cfg = validate(cfg)
        self.ws = workspace or Workspace.at(cfg.workspace or None)
        self.stop_event = threading.Event()
        self.started = time.time()
        self.catalog: Catalog | None = None
        self.stats: list[SourceStats] = []
        self.supervisors: list[SourceSupervisor] = []
        self.sims: dict = {}
        self.metrics: MetricsServer | None = None
        self.housekeeping = SourceStats("housekeeping", state="running")
        self._errors = ErrorLog(log)
        self._house: threading.Thread | None = None
        self._lock = contextlib.ExitStack()

    @property
    def status_path(self):
        return self.ws.collector / "status.json"

    def start(self) -> Collector:
        self._lock.enter_context(workspace_lock(self.ws, "fth collect"))  # WorkspaceBusy when another collector runs
        try:
            self.catalog = open_catalog(self.ws)
            self._lock.callback(self.catalog.close)
            holder = holder_name("fth collect")
            ids = [src.id for src in self.cfg.sources if src.enabled]
            for source_id in ids:  # SourceLeased when another collector has the source
                lease = Lease(self.catalog, f"source:{source_id}", holder, self.cfg.lease_ttl_s, self._lease_lost)
                self._lock.callback(lease.release)
                lease.acquire(self.cfg.lease_wait_s)
            done = self.catalog.recover(sources=ids)
            if any(done.values()):
                log.info("event=recovered %s", " ".join(f"{k}={v}" for k, v in done.items()))
        except BaseException:
            self._lock.close()
            raise
        self.started = time.time()
        for src in self.cfg.sources:
            if not src.enabled:
                continue
            stats = SourceStats(src.id)
            sim_url = None
            if src.kind == "sim":
                from collector.sim_publish import SimPublisher

                pub = SimPublisher(src.sim, self.ws.sim / src.id).start()
                self.sims[src.id] = pub
                sim_url = lambda pub=pub: pub.url
            sup = SourceSupervisor(src, self.cfg, FrameSink(self.catalog, src, stats), stats, self.stop_event, sim_url)
            self.stats.append(stats)
            self.supervisors.append(sup)
        if self.cfg.metrics_port > 0:
            self.metrics = MetricsServer(self.stats, self.started, self.cfg.metrics_port, self.cfg.metrics_host)
            log.info("event=metrics_listening url=http://%s:%d/metrics", self.cfg.metrics_host, self.metrics.port)
        for sup in self.supervisors:
            sup.start()
        self._house = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        self._house.start()
        log.info("event=collector_started sources=%d workspace=%s", len(self.supervisors), self.ws.root)
        return self

    def _lease_lost(self, name: str, holder: str) -> None:
        """Another collector took a source's lease (this one stalled past the ttl): stop writing that source."""
        source_id = name.partition(":")[2]
        self._errors.error("lease", "event=lease_lost source=%s holder=%s", source_id, holder)
        for sup in self.supervisors:
            if sup.src.id == source_id:
                sup.sink.closing.set()
                sup.stats.count("errors", f"lease lost to {holder}: this collector stopped writing {source_id}")

    def _housekeeping(self) -> None:
        next_retention = time.monotonic()
        while True:
            self.write_status()
            if time.monotonic() >= next_retention:
                self.enforce_retention()
                next_retention = time.monotonic() + self.cfg.retention_every_s
            if self.stop_event.wait(min(self.cfg.status_every_s, self.cfg.retention_every_s)):
                return

    def write_status(self) -> bool:
        try:
            write_status(self.status_path, self.stats, self.started, self.housekeeping)
            return True
        except Exception as e:  # a full disk must not stop housekeeping: count, report, retry next round
            self.housekeeping.count("errors", f"status file not written: {type(e).__name__}: {e}")
            self._errors.error("status", "event=status_write_failed path=%s", self.status_path)
            return False

    def enforce_retention(self) -> int:
        removed = 0
        try:
            for src in self.cfg.sources:
                if src.retention.enabled:
                    removed += self.catalog.enforce_retention(
                        src.retention.max_bytes, src.retention.max_age_days * 86400, source=src.id
                    )
            if self.cfg.retention.enabled:
                removed += self.catalog.enforce_retention(
                    self.cfg.retention.max_bytes, self.cfg.retention.max_age_days * 86400
                )
        except Exception as e:  # a retention hiccup (disk, lock) must not stop collection; next round retries
            self.housekeeping.count("errors", f"retention failed: {type(e).__name__}: {e}")
            self._errors.error("retention", "event=retention_failed")
        if removed:
            log.info("event=retention removed=%d", removed)
        return removed

    def stop(self) -> None:
        """Stop grabbing, let writes in flight finish, stop every ffmpeg and sim, close the catalog."""
        t0 = time.monotonic()
        self.stop_event.set()
        for sup in self.supervisors:
            sup.sink.closing.set()
        for sup in self.supervisors:
            sup.join(timeout=self.cfg.stop_timeout_s + 10)
            sup.stop_pipeline()
        for pub in self.sims.values():
            pub.stop()
        if self._house is not None:
            self._house.join(timeout=5)
        self.write_status()
        if self.metrics is not None:
            self.metrics.stop()
        self._lock.close()  # releases the leases, closes the catalog, then the workspace lock
        log.info("event=collector_stopped took_s=%.2f", time.monotonic() - t0)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(cfg: CollectorConfig, workspace: Workspace | None = None) -> int:
    """Run until SIGTERM/SIGINT, then stop cleanly; returns 0."""
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("event=signal name=%s", signal.Signals(signum).name)
        stop.set()

    collector = Collector(cfg, workspace).start()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            if collector.supervisors and not any(s.is_alive() for s in collector.supervisors):
                log.info("event=all_sources_done")
                break
    finally:
        collector.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
