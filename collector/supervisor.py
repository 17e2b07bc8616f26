"""Supervision of one source: resolve, run ffmpeg, watch it, restart it with backoff; forever, until stopped.

Each source has its own thread, so one failing source never delays another. A run ends when the daemon stops,
ffmpeg exits (any exit of a live source is a failure, status 0 included: that is how ffmpeg ends a playlist
that stopped advancing), the stall watchdog fires (no frame from ffmpeg for `stall_timeout` seconds), the server
answers 403/404/410 (the URL is resolved again), or a signed URL is about to expire (planned restart, no wait).
After a failure the wait is `backoff_initial_s * 2**failures`, capped at `backoff_max_s`, times a random jitter
factor; a run that delivered frames resets the failure count.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import datetime

from collector.config import CollectorConfig, SourceConfig
from collector.pipeline import FFmpegProcess, build_args
from collector.sink import FrameSink
from collector.sources import Resolved, ResolveError, detect_kind, playlist_durations, resolve, resume_start_index
from collector.status import SourceStats

log = logging.getLogger(__name__)

POLL_S = 0.2
FILE_MAX_FAILURES = 5  # a file source fails for good after this many failures in a row (live ones never do)


def backoff_delay(failures: int, initial: float, cap: float, jitter: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after `failures` consecutive failures (>= 1): exponential, capped, jittered."""
    base = min(cap, initial * 2 ** max(0, failures - 1))
    factor = 1.0 + jitter * (2 * (rng or random).random() - 1)
    return min(cap, max(0.0, base * factor))


class SourceSupervisor(threading.Thread):
    """Keeps one source's pipeline running. `sim_url` is a callable giving a sim source's HLS URL."""

    def __init__(
        self,
        src: SourceConfig,
        cfg: CollectorConfig,
        sink: FrameSink,
        stats: SourceStats,
        stop: threading.Event,
        sim_url=None,
    ):
        super().__init__(name=f"source-{src.id}", daemon=True)
        self.src, self.cfg, self.sink, self.stats, self.stop_event = src, cfg, sink, stats, stop
        self.kind = src.kind if src.kind != "auto" else detect_kind(src.url)
        self.stats.kind = self.kind
        self.sim_url = sim_url
        self.proc: FFmpegProcess | None = None
        self.failures = 0
        self._resolved: Resolved | None = None
        self._rng = random.Random()

    def run(self) -> None:
        log.info("event=source_start source=%s kind=%s url=%s", self.src.id, self.kind, self.src.url or "(sim)")
        while not self.stop_event.is_set():
            outcome = self._run_once()
            if outcome in ("stop", "done"):
                self.stats.state = "done" if outcome == "done" else "stopped"
                break
            if outcome == "expiry":
                continue  # planned: resolve again at once
            self.failures += 1
            limit = self.src.max_failures or (FILE_MAX_FAILURES if self.kind == "file" else 0)
            if limit and self.failures >= limit:  # a missing or broken file will not heal by waiting
                self.stats.state = "failed"
                self.stats.last_error = f"gave up after {self.failures} failures in a row: {self.stats.last_error}"
                log.error("event=source_failed source=%s failures=%d error=%s", self.src.id, self.failures,
                          self.stats.last_error)  # fmt: skip
                break
            self.stats.count("restarts")
            delay = backoff_delay(
                self.failures, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self.cfg.backoff_jitter, self._rng
            )
            self.stats.state = "backoff"
            log.warning(
                "event=source_retry source=%s reason=%s failures=%d wait_s=%.2f",
                self.src.id,
                outcome,
                self.failures,
                delay,
            )
            self.stop_event.wait(delay)
        log.info("event=source_end source=%s state=%s", self.src.id, self.stats.state)

    def _resolve(self) -> Resolved:
        must = self._resolved is None or self.kind in ("ytdlp", "sim") or self.failures > 0 and self.kind != "file"
        if must:
            self.stats.count("resolves")
            self._resolved = resolve(self.src, self.sim_url() if self.sim_url else None)
        return self._resolved

    def _run_once(self) -> str:
        try:
            resolved = self._resolve()
        except ResolveError as e:
            self.stats.count("errors", str(e))
            log.warning("event=resolve_failed source=%s error=%s", self.src.id, e)
            return "resolve_failed"
        args = build_args(self.src, resolved, live_start_index=self._start_index(resolved))
        proc = FFmpegProcess(args, self.sink.handle, self.src.id)
        self.proc = proc
        frames_before = self.sink.stats.counts["stored"]
        try:
            proc.start()
        except OSError as e:
            self.stats.count("errors", f"cannot start ffmpeg: {e}")
            return "spawn_failed"
        self.stats.pid = proc.pid
        self.stats.state = "starting"
        outcome = self._watch(proc, resolved)
        code = proc.stop(self.cfg.stop_timeout_s)
        self.stats.pid = None
        if self.stats.counts["stored"] > frames_before:
            self.failures = 0
        if outcome not in ("stop", "done", "expiry"):
            tail = " | ".join(list(proc.tail)[-5:])
            msg = f"{outcome} (ffmpeg status {code}): {tail}" if tail else f"{outcome} (ffmpeg status {code})"
            self.stats.count("errors", msg)
            log.warning(
                "event=pipeline_failed source=%s reason=%s status=%s stderr=%r", self.src.id, outcome, code, tail
            )
            if outcome == "url_gone" or self.kind == "ytdlp":
                self._resolved = None
        return outcome

    def _start_index(self, resolved: Resolved) -> int:
        """Where in a live HLS playlist to start: the live edge (-1), or, when this source's newest stored frame is at
        most `resume_s` old (a restart after a crash or a stall), as far back as that frame, so the frames published
        meanwhile are collected; the ones already stored come again with the same content id and are not stored twice.
        A failed lookup starts at the live edge: resuming must never stop collection."""
        hls = resolved.kind in ("hls", "sim") or ".m3u8" in resolved.url
        if not (hls and resolved.url.startswith(("http://", "https://")) and self.src.resume_s > 0):
            return -1
        try:
            last = self.sink.catalog.last_frame(self.src.id)
        except Exception as e:  # a catalog hiccup: collect from the live edge rather than not at all
            log.warning("event=resume_unknown source=%s error=%s", self.src.id, e)
            return -1
        if last is None:
            return -1
        behind = time.time() - datetime.fromisoformat(last.captured_at).timestamp()
        if not 0 < behind <= self.src.resume_s:
            return -1
        durations = playlist_durations(resolved)
        if durations is None:
            return -1
        index = resume_start_index(durations, behind)
        window = sum(durations)
        if window < behind:
            self.stats.count("errors", f"down {behind:.0f} s, longer than the playlist's {window:.0f} s: frames lost")
        log.info("event=resume source=%s behind_s=%.1f window_s=%.1f live_start_index=%d", self.src.id, behind, window,
                 index)  # fmt: skip
        return index

    def _watch(self, proc: FFmpegProcess, resolved: Resolved) -> str:
        stall = self.src.stall_timeout
        seen_any = False
        while True:
            if self.stop_event.wait(POLL_S):
                self.sink.closing.set()
                return "stop"
            now = time.monotonic()
            if proc.frames and not seen_any:
                seen_any = True
                gap = time.time() - self.stats.last_frame_ts if self.stats.last_frame_ts else 0.0
                log.info("event=source_receiving source=%s pid=%s gap_s=%.1f", self.src.id, proc.pid, gap)
            code = proc.poll()
            if code is not None:
                proc.stop(self.cfg.stop_timeout_s)  # drain: frames already in the pipe are stored
                if not resolved.is_live and code == 0:
                    return "done"
                return "exited"
            if proc.url_gone:
                return "url_gone"
            if proc.protocol_error:
                return "protocol_error"
            if now - max(proc.started, self.sink.last_seen) > stall:
                return "stall"
            if resolved.expires_at and time.time() > resolved.expires_at - self.src.expiry_margin_s:
                log.info("event=url_expiring source=%s expires_at=%d", self.src.id, resolved.expires_at)
                self._resolved = None
                return "expiry"

    def stop_pipeline(self) -> None:
        """Called after the stop event: make sure the current ffmpeg is gone (run() normally does it)."""
        if self.proc is not None:
            self.proc.stop(self.cfg.stop_timeout_s)
