"""The collector against real live HLS on loopback: plain HLS, the yt-dlp path, the sim, metrics, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from collector.config import CollectorConfig, SimConfig, SourceConfig
from collector.daemon import Collector
from collector.sources import Resolved, detect_kind, playlist_durations, resolve_ytdlp, resume_start_index, url_expiry
from store.catalog import Catalog
from tests.collector_helpers import FaultServer, Publisher, collector_ffmpegs, wait_for

CLEAN = {"missing": [], "corrupt": [], "orphans": [], "pending": []}


@pytest.fixture
def live(tmp_path):
    """A live HLS stream (ffmpeg, 1 s segments) served on 127.0.0.1."""
    with Publisher(tmp_path / "hls") as pub, FaultServer(pub.folder) as srv:
        yield pub, srv


def config(*sources: SourceConfig, **kw) -> CollectorConfig:
    kw.setdefault("backoff_initial_s", 0.3)
    kw.setdefault("status_every_s", 0.5)
    return CollectorConfig(sources=list(sources), **kw)


def test_detect_kind_and_expiry():
    assert detect_kind("https://www.youtube.com/watch?v=x") == "ytdlp"
    assert detect_kind("http://127.0.0.1:8000/a/index.m3u8") == "hls"
    assert detect_kind("rtsp://cam/stream") == "rtsp"
    assert detect_kind("/data/video.mp4") == "file"
    assert detect_kind("https://example.com/live-page") == "ytdlp"
    assert url_expiry("https://x.googlevideo.com/videoplayback/expire/1767225600/ei/abc/index.m3u8") == 1767225600
    assert url_expiry("https://x/y.m3u8?expire=1767225600&sig=1") == 1767225600
    assert url_expiry("https://x/y.m3u8") is None


def test_resume_starts_as_far_back_as_the_newest_stored_frame(live):
    pub, srv = live
    assert wait_for(lambda: ".ts" in (pub.folder / "index.m3u8").read_text(), 15, 0.1)
    durations = playlist_durations(Resolved(srv.url("index.m3u8"), "hls"))  # a real ffmpeg HLS playlist on loopback
    assert durations and all(0 < d <= 2.5 for d in durations), durations
    assert resume_start_index([1.0] * 6, 0.0) == -1  # nothing to catch up: the live edge
    assert resume_start_index([1.0] * 30, 2.5) == -13  # 2.5 s + 10 s of margin: 13 one-second segments
    assert resume_start_index([2.0] * 30, 20.0) == -20  # twice the 20 s: 20 two-second segments
    assert resume_start_index([1.0] * 6, 60.0) == -7  # more than the window: from the oldest (ffmpeg clamps)
    assert playlist_durations(Resolved(srv.url("nothing.m3u8"), "hls")) is None


def test_hls_frames_rows_status_metrics(live, workspace):
    _, srv = live
    url = srv.url("index.m3u8")
    src = SourceConfig(id="cam", url=url, interval_s=0.5, timezone="America/New_York", keyframes_only=False)
    with Collector(config(src, metrics_port=0), workspace) as col:
        from collector.status import MetricsServer

        metrics = MetricsServer(col.stats, col.started, 0)
        try:
            assert wait_for(lambda: col.stats[0].counts["stored"] >= 6, 20)
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5).read().decode()
        finally:
            metrics.stop()
        t0, n0 = time.monotonic(), col.stats[0].counts["stored"]
        time.sleep(4)
        rate = (col.stats[0].counts["stored"] - n0) / (time.monotonic() - t0)
    assert 1.4 <= rate <= 2.6, f"{rate:.2f} frames/s at a 0.5 s interval"
    assert 'fth_collector_stored_total{source="cam"}' in body
    assert collector_ffmpegs() == []
    with Catalog(workspace.root) as cat:
        rows = cat.frames("cam")
        assert len(rows) >= 8 and cat.verify() == CLEAN
        assert rows[0].tz == "America/New_York" and (rows[0].width, rows[0].height) == (320, 192)
    from collector.status import read_status

    doc = read_status(workspace.collector / "status.json")
    assert doc["sources"][0]["counts"]["stored"] == len(rows) and doc["running"]  # our own pid is alive


def test_ytdlp_path_and_403_rotation(live, workspace):
    """A page URL resolved by yt-dlp (generic extractor, is_live); the server rotates the URL -> resolved again."""
    _, srv = live
    page = srv.url("page")
    info = resolve_ytdlp(page)
    assert info.is_live and info.url.endswith("/live/t0/index.m3u8")
    src = SourceConfig(id="yt", url=page, interval_s=0.5, stall_timeout_s=6)
    with Collector(config(src), workspace) as col:
        st = col.stats[0]
        assert st.kind == "ytdlp"
        assert wait_for(lambda: st.counts["stored"] >= 3, 20)
        srv.rotate("t1")
        assert wait_for(lambda: srv.httpd.forbidden > 0, 10)
        n = st.counts["stored"]
        assert wait_for(lambda: st.counts["stored"] >= n + 3 and st.counts["resolves"] >= 2, 20)
        assert col.supervisors[0]._resolved is None or "/live/t1/" in col.supervisors[0]._resolved.url
    assert collector_ffmpegs() == []


def test_signed_url_resolved_again_before_expiry(live, workspace):
    _, srv = live
    srv.httpd.expire_in = 4
    src = SourceConfig(id="yt", url=srv.url("page"), interval_s=0.5, expiry_margin_s=1.0)
    with Collector(config(src), workspace) as col:
        st = col.stats[0]
        assert wait_for(lambda: st.counts["resolves"] >= 3 and st.counts["stored"] >= 3, 20)
        assert st.counts["restarts"] == 0 and st.counts["errors"] == 0  # planned, not failures
    assert collector_ffmpegs() == []


def test_file_source_runs_to_the_end(workspace, tmp_path):
    from collector.ffmpeg_bin import ffmpeg_exe

    clip = tmp_path / "clip.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=160x96:rate=10:duration=6",
         "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p", str(clip)],
        check=True,
    )  # fmt: skip
    src = SourceConfig(id="file", url=str(clip), interval_s=1.0, width=80)
    with Collector(config(src), workspace) as col:
        assert wait_for(lambda: col.stats[0].state == "done", 15)
        assert col.stats[0].counts["stored"] == 6 and col.stats[0].counts["restarts"] == 0
    with Catalog(workspace.root) as cat:
        assert {(r.width, r.height) for r in cat.frames("file")} == {(80, 48)}


def test_sim_source_end_to_end(workspace, tmp_path):
    from collector.sim import load_sim_config, write_labels
    from collector.sim_scene import render

    src = SourceConfig(id="sim", kind="sim", interval_s=1.0, sim=SimConfig(fps=5.0, time_scale=3600.0))
    with Collector(config(src), workspace) as col:
        assert wait_for(lambda: col.stats[0].counts["stored"] >= 5, 25)
    assert collector_ffmpegs() == []
    cfg, _ = load_sim_config(workspace.sim / "sim")
    with Catalog(workspace.root) as cat:
        summary = write_labels(cat, "sim", cfg, tmp_path / "labels")
    assert summary.labelled == summary.frames >= 5
    rows = (tmp_path / "labels" / "labels.csv").read_text().splitlines()[1:]
    indexes = [int(r.split(",")[1]) for r in rows]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    assert all(int(r.split(",")[2]) == render(cfg, i)[1].people for r, i in zip(rows, indexes, strict=True))


def test_sigterm_during_writes(live, workspace, tmp_path):
    """`fth collect` as a process: SIGTERM -> exit 0 within seconds; every row has its file, every file a row."""
    _, srv = live
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(
        "status_every_s: 0.5\nsources:\n"
        f"  - {{id: a, url: '{srv.url('index.m3u8')}', interval_s: 0.2, keyframes_only: false}}\n"
        f"  - {{id: b, url: '{srv.url('index.m3u8')}', interval_s: 0.3, keyframes_only: false, width: 160}}\n"
    )
    env = {**os.environ, "FTH_WORKSPACE": str(workspace.root)}
    proc = subprocess.Popen([sys.executable, "-m", "fth", "collect", "--config", str(cfg)], env=env)
    try:
        with Catalog(workspace.root, recover=False) as cat:
            assert wait_for(lambda: cat.count() >= 12, 30)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 6
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Catalog(workspace.root, recover=False) as cat:
        assert cat._exec("SELECT COUNT(*) FROM frames WHERE state != 'ok'")[0][0] == 0
        assert cat.verify() == CLEAN and cat.count("a") > 0 and cat.count("b") > 0
    assert not list(workspace.frames.rglob("*.tmp"))
    out = subprocess.run([sys.executable, "-m", "fth", "collect", "status"], env=env, capture_output=True, text=True)
    assert out.returncode == 3 and "NOT RUNNING" in out.stdout
