"""The collector under faults (issue 15): a full disk, a broken frame store, a second daemon on the workspace, a file
source that does not exist. Every background loop survives its own errors, reports them and resumes."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from collector_helpers import wait_for
from PIL import Image

from collector.config import CollectorConfig, RetentionConfig, SourceConfig
from collector.daemon import Collector
from collector.ffmpeg_bin import ffmpeg_exe
from collector.status import format_status, read_status
from store.catalog import Catalog
from store.lock import WorkspaceBusy
from store.paths import Workspace


@contextlib.contextmanager
def tmpfs(size: str = "8m"):
    """A small tmpfs of its own; the test is skipped where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    folder = Path(tempfile.mkdtemp(prefix="fth-tmpfs-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def noise_jpeg(seed: int, size=(96, 160)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def fill_disk(folder: Path) -> Path:
    """Write zeros into `folder` until the file system is full; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(bytes(64 * 1024))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


def test_housekeeping_survives_a_full_disk_and_resumes_retention(caplog):
    """Finding 3: ENOSPC while writing status.json killed the housekeeping thread for good, so retention never ran
    again. Now the error is counted and reported, and once space is freed, status and retention resume."""
    caplog.set_level(logging.WARNING)
    with tmpfs() as root:
        ws = Workspace.at(root / "ws")
        max_bytes = 400_000
        cfg = CollectorConfig(retention=RetentionConfig(max_bytes=max_bytes), retention_every_s=0.2, status_every_s=0.1)
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        with Collector(cfg, ws) as col:
            assert wait_for(col.status_path.exists, 5)
            filler = fill_disk(root)
            time.sleep(1.0)  # several rounds of housekeeping hit ENOSPC
            assert col._house.is_alive()
            assert col.housekeeping.counts["errors"] >= 2
            assert "No space left" in (col.housekeeping.last_error or "")
            filler.unlink()
            freed = time.time()
            with Catalog(ws.root, recover=False) as cat:
                for i in range(60):  # ~60 x 12 KB, well over max_bytes
                    cat.add_frame(noise_jpeg(i), "cam", t0 + timedelta(seconds=i), 160, 96)
                assert cat.total_bytes() > max_bytes
                assert wait_for(lambda: cat.total_bytes() <= max_bytes, 10), cat.total_bytes()
            assert wait_for(lambda: (read_status(col.status_path) or {}).get("updated_at", 0) > freed, 5)
        doc = read_status(col.status_path)
        assert doc["housekeeping"]["counts"]["errors"] >= 2
        assert "No space left" in doc["housekeeping"]["last_error"]
        assert "housekeeping" in format_status(doc)
    tracebacks = [r for r in caplog.records if r.exc_info and "housekeeping" in r.getMessage()]
    assert len(tracebacks) <= 1, [r.getMessage() for r in tracebacks]


def test_failed_frame_writes_are_errors_with_one_traceback(tmp_path, caplog):
    """Finding 6: with every frame write failing, status said `running, errors 0` and the log printed a traceback
    per frame. Failed writes are now errors, the latest shown, and a repeated traceback is logged once."""
    caplog.set_level(logging.INFO)
    video = tmp_path / "clip.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x192:rate=10",
         "-t", "3", "-pix_fmt", "yuv420p", str(video)],
        check=True,
    )  # fmt: skip
    ws = Workspace.at(tmp_path / "ws")
    ws.root.mkdir()
    ws.frames.write_text("a file where the frames folder should be")  # every frame write fails (even as root)
    src = SourceConfig(id="clip", url=str(video), kind="file", interval_s=0.2, keyframes_only=False)
    with Collector(CollectorConfig(sources=[src], status_every_s=0.2), ws) as col:
        assert wait_for(lambda: col.stats[0].counts["errors"] >= 5, 15), col.stats[0].counts
    stats = col.stats[0]
    assert stats.counts["stored"] == 0
    assert "frame not stored" in stats.last_error
    text = format_status(read_status(col.status_path))
    assert "frame not stored" in text
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]


def test_second_collector_on_a_workspace_is_refused(tmp_path):
    """Finding 9: two collectors on one workspace both ran; the second now stops at start, naming the first."""
    ws = Workspace.at(tmp_path / "ws")
    first = Collector(CollectorConfig(status_every_s=0.2), ws)
    with first, pytest.raises(WorkspaceBusy, match=r"in use by pid \d+ \(fth collect\)"):
        Collector(CollectorConfig(status_every_s=0.2), ws).start()
    with Collector(CollectorConfig(status_every_s=0.2), ws):  # released when the first one stopped
        pass


def test_second_collector_command_exits_with_a_message(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    config = tmp_path / "collector.yaml"
    config.write_text(json.dumps({"sources": [{"id": "a", "url": str(tmp_path / "none.mp4"), "kind": "file"}]}))
    with Collector(CollectorConfig(status_every_s=0.2), ws):
        done = subprocess.run(
            [sys.executable, "-m", "fth", "collect", "--config", str(config), "--workspace", str(ws.root)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "in use by pid" in done.stderr and "Traceback" not in done.stderr


def test_missing_file_source_is_marked_failed(tmp_path):
    """Finding 17: a `file` source whose file does not exist was retried forever; it now fails after a bounded
    number of tries, and status says so."""
    ws = Workspace.at(tmp_path / "ws")
    src = SourceConfig(id="gone", url=str(tmp_path / "missing.mp4"), kind="file")
    cfg = CollectorConfig(sources=[src], backoff_initial_s=0.05, backoff_max_s=0.1, status_every_s=0.1)
    with Collector(cfg, ws) as col:
        assert wait_for(lambda: col.stats[0].state == "failed", 10), col.stats[0].state
        assert wait_for(lambda: not col.supervisors[0].is_alive(), 5)
        tries = col.stats[0].counts["resolves"]
        time.sleep(0.5)
        assert col.stats[0].counts["resolves"] == tries <= 5
    doc = read_status(col.status_path)
    assert doc["sources"][0]["state"] == "failed"
    assert "gave up after 5 failures" in doc["sources"][0]["last_error"]
    assert "no such file" in format_status(doc)
