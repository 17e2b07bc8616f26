"""Frame checks and storage for one source: BMP from ffmpeg -> checks -> JPEG -> catalog.

Checks, in order: the frame decodes; it is not a single flat colour (the gray or green frames a broken decoder
emits; pixel std below `flat_std`); it is not an exact duplicate of the previous frame of the source (a frozen
stream: the earlier frame is flagged `stale` in the catalog and the copy is not stored). With `near_duplicate`
> 0, a frame whose 32x32 thumbnail differs from the previous one by at most that mean absolute difference is
stored with `duplicate_of` pointing at it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from collector.config import SourceConfig
from collector.errors import ErrorLog
from collector.status import SourceStats
from store.catalog import Catalog

log = logging.getLogger(__name__)


class FrameSink:
    """Receives one source's frames (from its ffmpeg reader thread) and stores the good ones."""

    def __init__(self, catalog: Catalog, src: SourceConfig, stats: SourceStats):
        self.catalog = catalog
        self.src = src
        self.stats = stats
        self.closing = threading.Event()
        self.last_seen = 0.0  # monotonic time of the last frame from ffmpeg, good or not (the watchdog's clock)
        self._prev_digest: bytes | None = None
        self._prev_id: str | None = None
        self._prev_thumb: np.ndarray | None = None
        self._stale_marked = False
        self._errors = ErrorLog(log)
        last = catalog.last_frame(src.id)
        if last is not None:
            self._prev_id = last.id

    def handle(self, bmp: bytes, captured_at: datetime | None = None) -> str:
        """Check and store one frame; returns the outcome: stored, stale, flat, bad, known, error or dropped."""
        self.last_seen = time.monotonic()
        if self.closing.is_set():
            return "dropped"  # stopping: no new writes start, the ones in flight finish
        captured_at = captured_at or datetime.now(UTC)
        try:
            with Image.open(io.BytesIO(bmp)) as im:
                img = im.convert("RGB")
            rgb = np.asarray(img)  # (H, W, 3) uint8
        except Exception as e:
            self.stats.count("bad", f"frame does not decode: {e}")
            log.warning("event=frame_bad source=%s reason=%s", self.src.id, e)
            return "bad"
        sample = rgb[:: max(1, rgb.shape[0] // 64), :: max(1, rgb.shape[1] // 64)].astype(np.float32)
        if float(sample.std(axis=(0, 1)).max()) < self.src.flat_std:
            self.stats.count("flat")
            log.warning("event=frame_flat source=%s color=%s", self.src.id, sample.mean(axis=(0, 1)).round().tolist())
            return "flat"
        digest = hashlib.sha1(rgb.tobytes()).digest()
        if digest == self._prev_digest:
            self.stats.count("stale")
            if not self._stale_marked and self._prev_id:
                try:
                    self.catalog.mark_stale(self._prev_id)
                    self._stale_marked = True
                except Exception as e:
                    self.stats.count("errors", f"stale flag not stored: {type(e).__name__}: {e}")
                    self._errors.error("stale", "event=mark_stale_failed source=%s", self.src.id)
                log.warning("event=stream_frozen source=%s frame=%s", self.src.id, self._prev_id[:16])
            return "stale"
        thumb = np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32)
        duplicate_of = None
        near = self.src.near_duplicate > 0 and self._prev_thumb is not None and self._prev_id
        if near and float(np.abs(thumb - self._prev_thumb).mean()) <= self.src.near_duplicate:
            duplicate_of = self._prev_id
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=self.src.jpeg_quality)
        try:
            row, new = self.catalog.add_frame(
                buf.getvalue(), self.src.id, captured_at, img.width, img.height, self.src.timezone, duplicate_of
            )
        except Exception as e:  # disk full, read-only catalog, ...: an error of the source, reported, not fatal
            self.stats.count("errors", f"frame not stored: {type(e).__name__}: {e}")
            self._errors.error("store", "event=frame_store_failed source=%s", self.src.id)
            return "error"
        if self._stale_marked:
            log.info("event=stream_unfrozen source=%s", self.src.id)
        self._prev_digest, self._prev_id, self._prev_thumb, self._stale_marked = digest, row.id, thumb, False
        if not new:
            self.stats.count("known")
            return "known"
        self.stats.stored(row.captured_at, row.bytes)
        log.debug("event=frame_stored source=%s id=%s bytes=%d", self.src.id, row.id[:16], row.bytes)
        return "stored"
