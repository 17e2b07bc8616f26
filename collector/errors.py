"""Errors a background loop survives: counted, the latest kept for status, and logged without flooding.

A failure that repeats (every frame on a full disk, every status write) logs its traceback the first time, then one
line per `every_s` with how many were suppressed since, instead of a traceback per occurrence.
"""

from __future__ import annotations

import logging
import threading
import time


class ErrorLog:
    """Rate-limited logging of repeated failures, keyed by what failed.

    Args:
        logger: where the lines go.  every_s: at most one line per key per this many seconds.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 60.0):
        self.logger, self.every_s = logger, every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def error(self, key: str, message: str, *args) -> None:
        """Log `message % args` (call from an `except` block): with the traceback the first time `key` fails, as one
        warning line at most every `every_s` after that."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if last is None:
            self.logger.exception(message, *args)
        else:
            self.logger.warning(message + " (again; %d more not logged in the last %.0f s)", *args, suppressed,
                                now - last)  # fmt: skip
