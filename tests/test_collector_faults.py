"""Collector faults on real loopback streams: hang, frozen playlist, publisher restart, garbage, retention, stale."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

import pytest

from collector.config import CollectorConfig, RetentionConfig, SourceConfig
from collector.daemon import Collector
from collector.supervisor import backoff_delay
from store.catalog import Catalog
from tests.collector_helpers import FaultServer, Publisher, collector_ffmpegs, wait_for

CLEAN = {"missing": [], "corrupt": [], "orphans": [], "pending": []}


def config(*sources: SourceConfig, **kw) -> CollectorConfig:
    kw.setdefault("backoff_initial_s", 0.3)
    kw.setdefault("backoff_max_s", 2.0)
    kw.setdefault("status_every_s", 0.5)
    return CollectorConfig(sources=list(sources), **kw)


@pytest.fixture
def live(tmp_path):
    with Publisher(tmp_path / "hls") as pub, FaultServer(pub.folder) as srv:
        yield pub, srv


def test_backoff_is_exponential_capped_jittered():
    import random

    rng = random.Random(0)
    plain = [backoff_delay(n, 1.0, 30.0, 0.0) for n in range(1, 8)]
    assert plain == [1, 2, 4, 8, 16, 30, 30]
    jittered = [backoff_delay(3, 1.0, 30.0, 0.5, rng) for _ in range(200)]
    assert 2.0 <= min(jittered) < 2.5 and 5.5 < max(jittered) <= 6.0 and len(set(jittered)) > 100


def test_silent_server_detected_by_watchdog_and_retried(workspace):
    """A server that accepts connections and never answers: each attempt ends within the stall timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held, stop = [], threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(sock.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/index.m3u8"
    src = SourceConfig(id="hang", url=url, interval_s=0.5, stall_timeout_s=2.0, rw_timeout_s=30)
    try:
        t0 = time.monotonic()
        with Collector(config(src), workspace) as col:
            st = col.stats[0]
            assert wait_for(lambda: st.counts["restarts"] >= 3, 15)
            elapsed = time.monotonic() - t0
            assert "stall" in (st.last_error or "")
            assert st.counts["stored"] == 0 and held
        assert elapsed < 3 * 2.0 + 0.3 + 0.6 + 1.2 + 3, elapsed  # 3 stalls + backoffs, not ffmpeg's own timeouts
        assert collector_ffmpegs() == []
    finally:
        stop.set()
        sock.close()
        for c in held:
            c.close()


def test_frozen_playlist_then_recovery(live, workspace, caplog):
    _, srv = live
    src = SourceConfig(id="cam", url=srv.url("index.m3u8"), interval_s=0.5, stall_timeout_s=3.0)
    with Collector(config(src), workspace) as col:
        st = col.stats[0]
        assert wait_for(lambda: st.counts["stored"] >= 2, 20)
        srv.set_mode("freeze")
        t_freeze = time.monotonic()
        assert wait_for(lambda: st.counts["restarts"] >= 1, 10)
        assert time.monotonic() - t_freeze < 3.0 + 4.0  # the watchdog, not ffmpeg's ~30 min of polling
        n = st.counts["stored"]
        srv.set_mode("ok")
        assert wait_for(lambda: st.counts["stored"] >= n + 2, 20)
    assert collector_ffmpegs() == []
    assert "event=source_retry" in caplog.text


def test_publisher_restart_reconnects(live, workspace, caplog):
    caplog.set_level(logging.INFO, logger="collector")
    pub, srv = live
    src = SourceConfig(id="cam", url=srv.url("index.m3u8"), interval_s=0.5, stall_timeout_s=3.0)
    with Collector(config(src), workspace) as col:
        st = col.stats[0]
        assert wait_for(lambda: st.counts["stored"] >= 2, 20)
        pub.stop()
        for f in pub.folder.iterdir():
            f.unlink()
        assert wait_for(lambda: st.counts["restarts"] >= 1, 10)
        n = st.counts["stored"]
        pub.start()
        assert wait_for(lambda: st.counts["stored"] >= n + 2, 25)
    assert collector_ffmpegs() == []
    assert "gap_s=" in caplog.text
    with Catalog(workspace.root) as cat:
        assert cat.verify() == CLEAN


def test_garbage_source_does_not_affect_others(live, workspace, tmp_path):
    _, good = live
    with FaultServer(tmp_path) as bad:
        bad.set_mode("garbage")
        sources = [
            SourceConfig(id="bad", url=bad.url("index.m3u8"), interval_s=0.5, stall_timeout_s=3.0),
            SourceConfig(id="good", url=good.url("index.m3u8"), interval_s=0.5),
        ]
        with Collector(config(*sources), workspace) as col:
            st_bad, st_good = col.stats
            assert wait_for(lambda: st_bad.counts["restarts"] >= 2 and st_good.counts["stored"] >= 6, 25)
            assert st_bad.counts["stored"] == 0 and st_bad.last_error
    assert collector_ffmpegs() == []


def test_retention_keeps_catalog_consistent(live, workspace):
    _, srv = live
    src = SourceConfig(
        id="cam", url=srv.url("index.m3u8"), interval_s=0.2, keyframes_only=False, retention=RetentionConfig(60_000)
    )
    with Collector(config(src, retention_every_s=0.5), workspace) as col:
        assert wait_for(lambda: col.stats[0].bytes > 150_000, 30)
        time.sleep(1.0)
        with Catalog(workspace.root, recover=False) as cat:
            assert wait_for(lambda: cat.total_bytes("cam") <= 60_000 + 2 * 20_000, 5)
    with Catalog(workspace.root) as cat:
        rows = cat.frames("cam")
        assert cat.verify() == CLEAN and len(rows) < col.stats[0].counts["stored"]
        assert rows[-1].captured_at == col.stats[0].last_frame_at or len(rows) > 0


def test_frozen_stream_is_flagged_stale(tmp_path, workspace):
    """A stream that keeps delivering the same picture: stored once, flagged stale, not stored again."""
    extra = ("-qp", "20")  # constant quantiser: identical input -> identical decoded frames
    still = "testsrc2=size=320x192:rate=10,trim=end_frame=1,loop=-1:1:0"
    with Publisher(tmp_path / "still", still, extra) as pub, FaultServer(pub.folder) as srv:
        src = SourceConfig(id="still", url=srv.url("index.m3u8"), interval_s=0.3, keyframes_only=False)
        with Collector(config(src), workspace) as col:
            st = col.stats[0]
            assert wait_for(lambda: st.counts["stale"] >= 4, 20)
            assert st.counts["stored"] == 1 and st.state == "stale"
    with Catalog(workspace.root) as cat:
        rows = cat.frames("still")
        assert len(rows) == 1 and rows[0].stale


def test_flat_frames_not_stored(tmp_path, workspace):
    with Publisher(tmp_path / "green", "color=c=0x00ff00:size=320x192:rate=10") as pub, FaultServer(pub.folder) as srv:
        src = SourceConfig(id="green", url=srv.url("index.m3u8"), interval_s=0.5)
        with Collector(config(src), workspace) as col:
            assert wait_for(lambda: col.stats[0].counts["flat"] >= 2, 20)
            assert col.stats[0].counts["stored"] == 0
