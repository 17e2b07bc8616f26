"""Dynamic micro-batching (the pattern of NVIDIA Triton's dynamic batcher and TorchServe's batch aggregation).

Request threads decode their images and `submit` a `Job`; one batcher thread takes the first queued job, then keeps
adding jobs until the batch holds `max_batch` images or `max_wait` has passed since that first job was queued. It
waits only while another request is still decoding (`expecting`), so a lone request is never held back. One forward
pass answers the whole batch; an exception in it is handed to every job of that batch. The queue is bounded in
images: `submit` raises `QueueFull` instead of letting it grow. `stop(drain=True)` finishes every queued job.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The batcher already holds as many images as it may; the caller should retry later."""


class Stopped(RuntimeError):
    """The batcher is shutting down and takes no new work."""


@dataclass
class Job:
    """One request's images and what it wants back.

    Args:
        images: (n, H, W, 3) uint8 RGB at the model's input size.
        needs: feature kinds wanted, e.g. {"pooled"}, {"pooled", "tokens"}, or {"layer:-1"} for heads.
    """

    images: np.ndarray
    needs: frozenset[str] = frozenset({"pooled"})
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the batch holding this job ran; re-raise its error; TimeoutError after `timeout` seconds."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"not answered within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


RunBatch = Callable[[np.ndarray, frozenset[str]], dict[str, Any]]


class MicroBatcher:
    """Collects jobs into batches for one model on one thread.

    Args:
        run: (B, H, W, 3) uint8 images and the union of needs -> dict of arrays/lists with B rows each.
        max_batch: most images per forward pass (a single larger job still runs, alone).
        max_wait_s: longest the first job of a batch waits for companions.
        max_queue: most images waiting; `submit` beyond it raises QueueFull.
        on_batch: called with (batch size, [queue waits in s]) after each batch, for metrics.
    """

    def __init__(
        self,
        run: RunBatch,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
        on_batch: Callable[[int, list[float]], None] | None = None,
    ):
        self.run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self.on_batch = on_batch
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_images = 0
        self._expecting = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()

    # -- request side -------------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Images waiting for the model."""
        return self._queued_images

    def expect(self, delta: int) -> None:
        """A request started (+1) or finished (-1) decoding; the batcher waits for companions only while > 0."""
        with self._cond:
            self._expecting += delta
            self._cond.notify_all()

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._stopping:
                raise Stopped("server is shutting down")
            if self._queued_images + job.n > self.max_queue and self._queue:
                raise QueueFull(f"{self._queued_images} images already queued (limit {self.max_queue})")
            job.queued_at = time.perf_counter()
            self._queue.append(job)
            self._queued_images += job.n
            self._cond.notify_all()
        return job

    # -- batcher thread -----------------------------------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        """Block for the next batch; None once stopping and drained."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            size = batch[0].n
            deadline = batch[0].queued_at + self.max_wait_s
            while size < self.max_batch:
                if self._queue:
                    if size + self._queue[0].n > self.max_batch:
                        break
                    job = self._queue.popleft()
                    batch.append(job)
                    size += job.n
                    continue
                remaining = deadline - time.perf_counter()
                if self._expecting <= 0 or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            self._queued_images -= size
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            start = time.perf_counter()
            for job in batch:
                job.started_at = start
            try:
                images = batch[0].images if len(batch) == 1 else np.concatenate([j.images for j in batch])
                needs = frozenset().union(*(j.needs for j in batch))
                out = self.run(images, needs)  # each value has B rows
                row = 0
                for job in batch:
                    job.result = {k: v[row : row + job.n] for k, v in out.items()}
                    row += job.n
            except BaseException as e:  # every request of the batch gets the error, the thread lives on
                log.exception("batch of %d images failed", sum(j.n for j in batch))
                for job in batch:
                    job.error = e
            for job in batch:
                job.done.set()
            if self.on_batch is not None:
                self.on_batch(sum(j.n for j in batch), [start - j.queued_at for j in batch])

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new jobs; with `drain`, answer every queued job first, else fail them with Stopped."""
        with self._cond:
            self._stopping = True
            if not drain:
                while self._queue:
                    job = self._queue.popleft()
                    job.error = Stopped("server is shutting down")
                    job.done.set()
                self._queued_images = 0
            self._cond.notify_all()
        self._thread.join(timeout)
