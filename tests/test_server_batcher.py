"""The micro-batcher, metrics exposition and key checks in-process (no HTTP): batching up to max size within the
wait, an error answered to every request of its batch, a bounded queue, and draining on stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from server.auth import KeyChecker, load_keys
from server.batcher import Job, MicroBatcher, QueueFull, Stopped
from server.metrics import Metrics


def images(n: int, value: int) -> np.ndarray:
    return np.full((n, 2, 2, 3), value, np.uint8)


def echo(batch: np.ndarray, needs) -> dict:
    return {"pooled": batch[:, 0, 0, 0].astype(np.float32)[:, None], "sizes": [len(batch)] * len(batch)}


def test_concurrent_jobs_form_batches_and_get_their_rows():
    sizes = []
    batcher = MicroBatcher(echo, max_batch=8, max_wait_s=0.5, max_queue=100, on_batch=lambda n, w: sizes.append(n))
    batcher.expect(+1)  # a request still decoding: the batcher waits for companions
    jobs = [batcher.submit(Job(images(2, v))) for v in range(4)]
    batcher.expect(-1)
    results = [j.wait(5) for j in jobs]
    for v, r in enumerate(results):
        assert r["pooled"].ravel().tolist() == [v, v]
    assert sizes == [8] and all(r["sizes"] == [8, 8] for r in results)
    batcher.stop()


def test_lone_request_is_not_held_back():
    batcher = MicroBatcher(echo, max_batch=32, max_wait_s=10.0, max_queue=100)
    job = batcher.submit(Job(images(1, 3)))
    job.wait(2)  # would time out if the batcher waited max_wait_s with nobody else decoding
    batcher.stop()


def test_an_error_in_a_batch_is_answered_to_each_request_and_the_thread_lives_on():
    def run(batch, needs):
        if (batch == 13).any():
            raise RuntimeError("bad batch")
        return echo(batch, needs)

    batcher = MicroBatcher(run, max_batch=8, max_wait_s=0.5, max_queue=100)
    batcher.expect(+1)
    jobs = [batcher.submit(Job(images(1, v))) for v in (1, 13, 2)]
    batcher.expect(-1)
    for job in jobs:
        with pytest.raises(RuntimeError, match="bad batch"):
            job.wait(5)
    assert batcher.submit(Job(images(1, 4))).wait(5)["pooled"].item() == 4
    batcher.stop()


def test_bounded_queue_and_drain_on_stop():
    gate = threading.Event()

    def slow(batch, needs):
        gate.wait(5)
        return echo(batch, needs)

    batcher = MicroBatcher(slow, max_batch=2, max_wait_s=0.0, max_queue=4)
    first = batcher.submit(Job(images(2, 1)))
    time.sleep(0.05)  # let the batcher take it and block in `slow`
    queued = [batcher.submit(Job(images(2, v))) for v in (2, 3)]
    with pytest.raises(QueueFull):
        batcher.submit(Job(images(1, 9)))
    assert batcher.depth == 4
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    time.sleep(0.05)
    with pytest.raises(Stopped):
        batcher.submit(Job(images(1, 9)))
    gate.set()
    stopper.join(5)
    assert [j.wait(0)["pooled"].ravel()[0] for j in (first, *queued)] == [1, 2, 3]


def test_metrics_exposition():
    metrics = Metrics()
    metrics.request("/v1/embed", 200, 0.004)
    metrics.request("/v1/embed", 503, 0.0001)
    metrics.batch(4, [0.001, 0.002], depth=3)
    text = metrics.render().decode()
    assert 'fth_requests_total{code="503",route="/v1/embed"} 1.0' in text
    assert 'fth_request_seconds_bucket{le="0.005",route="/v1/embed"} 2.0' in text
    assert 'fth_batch_size_bucket{le="4.0"} 1.0' in text and "fth_queue_wait_seconds_count 2.0" in text
    assert "fth_queue_depth 3.0" in text and text.endswith("\n")


def test_keys_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KEYS", "a1, b2")
    path = tmp_path / "keys"
    path.write_text("# ops\nc3\n\n")
    checker = KeyChecker(load_keys("KEYS", str(path)))
    assert checker.check("Bearer c3") is None and checker.check("bearer a1") is None
    assert checker.check("Bearer c4") and checker.check(None) and checker.check("Basic a1")
    assert KeyChecker([]).check(None) is None
