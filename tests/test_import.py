"""`fth frames import`: a folder with corrupt files, idempotent re-import, byte-identical files, a label CSV keyed by
the user's own paths fitting a head, a short video sampled, the SQLite migration; on SQLite + local files and on
PostgreSQL + S3 (real servers on loopback, tests/conftest.py)."""

from __future__ import annotations

import csv
import os
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fth_cli import run
from PIL import Image
from serving import tiny_encoder
from test_storage import CLEAN, remote_settings

from store.backends import open_catalog
from store.frame_index import FrameIndex
from store.paths import Workspace

EXIF_TIME = datetime(2025, 7, 14, 9, 30, tzinfo=UTC)


def image(seed: int, size=(48, 64)) -> Image.Image:
    level = 40 + (seed * 37) % 180
    arr = np.clip(level + np.random.default_rng(seed).integers(-20, 21, (*size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def user_folder(root: Path, n: int = 12) -> dict[str, Path]:
    """A user's photos: `n` JPEGs in two subfolders (one with an EXIF time), a PNG, a byte-identical copy, a text
    file, and two bad images (garbage, truncated)."""
    files = {}
    for i in range(n):
        path = root / f"day{i % 2}" / f"IMG_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        exif = Image.Exif()
        if i == 0:
            exif.get_ifd(0x8769)[0x9003] = EXIF_TIME.strftime("%Y:%m:%d %H:%M:%S")
        image(i).save(path, "JPEG", quality=90, exif=exif)
        files[path.name] = path
    image(99).save(root / "scan.png")
    (root / "day1" / "copy_of_IMG_0000.jpg").write_bytes(files["IMG_0000.jpg"].read_bytes())
    (root / "notes.txt").write_text("not a frame")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    good = files["IMG_0003.jpg"].read_bytes()
    (root / "day0" / "cut.jpg").write_bytes(good[: len(good) // 2])
    return files


@pytest.fixture(params=["sqlite+local", "postgres+s3"])
def ws(request, workspace) -> Workspace:
    if request.param == "postgres+s3":
        remote_settings(workspace, request.getfixturevalue("postgres"), request.getfixturevalue("seaweed"))
    return workspace


def test_import_folder_bad_files_duplicates_and_reimport(ws, tmp_path):
    photos = tmp_path / "photos"
    files = user_folder(photos)
    rc, out, _ = run("frames", "--workspace", str(ws.root), "import", str(photos), "--source", "garden")
    assert rc == 1, out  # bad files: exit 1, the rest imported
    assert "13 frames imported, 0 already imported, 1 byte-identical to another file, 2 bad" in out
    assert "capture times from: exif 1, file mtime 12" in out and "1 non-JPEG images re-encoded" in out
    assert f"identical: {photos / 'day1' / 'copy_of_IMG_0000.jpg'} = {files['IMG_0000.jpg']}" in out
    assert f"bad: {photos / 'broken.jpg'}: not an image" in out and f"bad: {photos / 'day0' / 'cut.jpg'}: " in out
    with open_catalog(ws) as cat:
        assert cat.count("garden") == 13 and cat.verify() == CLEAN  # nothing half-written, no stray bytes
        assert cat._exec("SELECT COUNT(*) FROM frames WHERE state != 'ok'")[0][0] == 0
        first = cat.get(cat.frames("garden")[0].id)
        assert first.captured == EXIF_TIME and cat.original(first.id) == str(files["IMG_0000.jpg"])
    rc, out, _ = run("frames", "--workspace", str(ws.root), "import", str(photos), "--source", "garden")
    assert "0 frames imported, 14 already imported, 0 byte-identical to another file, 2 bad" in out
    with open_catalog(ws) as cat:
        assert cat.count() == 13 and cat.verify() == CLEAN
    index = FrameIndex(ws.root)
    one = index.resolve(str(files["IMG_0000.jpg"]))
    assert one and index.resolve(str(photos / "day1" / "copy_of_IMG_0000.jpg")) == one  # the copy names the frame
    assert index.resolve("copy_of_IMG_0000.jpg") == one and index.resolve("IMG_0005") == index.resolve(
        str(files["IMG_0005.jpg"])
    )
    assert index.resolve("scan.png") is not None and index.resolve("nothing.jpg") is None
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert index.resolve("photos/day1/IMG_0007.jpg") == index.resolve(str(files["IMG_0007.jpg"]))
    finally:
        os.chdir(cwd)


def test_label_csv_of_original_paths_fits_a_head(workspace, tmp_path):
    tiny_encoder(workspace, seed=0)
    photos = tmp_path / "photos"
    files = user_folder(photos, n=40)
    times = tmp_path / "times.csv"
    with open(times, "w", newline="") as f:  # capture times given per file, keyed by file name
        csv.writer(f).writerows([("path", "captured_at")] + [(p.name, f"2026-05-01T{i // 4:02d}:{i % 4 * 15:02d}:00Z")
                                                              for i, p in enumerate(files.values())])  # fmt: skip
    rc, out, err = run("frames", "import", str(photos / "day0"), str(photos / "day1"), "--times", str(times))
    assert rc == 1 and "40 frames imported" in out and "capture times from: csv 40" in out, out + err
    labels = tmp_path / "people.csv"
    rows = [(str(p), (i * 7) % 5) for i, p in enumerate(files.values()) if p.name != "IMG_0000.jpg"]
    rows.append((str(photos / "day1" / "copy_of_IMG_0000.jpg"), 1))  # the byte-identical copy labels the frame
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([("path", "value"), *rows])
    argv = ["heads", "fit", "--task", "people_count", "--labels", str(labels), "--max-label-side", "80"]
    rc, out, err = run(*argv, "--set", "threads=1", "--set", "max_steps=30", "--set", "head.hidden=16")
    assert rc == 0, err
    assert "resolve to no frame" not in err and "head: " in out


def test_video_sampled_every_n_seconds(ws, tmp_path):
    from collector.ffmpeg_bin import ffmpeg_exe

    video = tmp_path / "clip.mp4"
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=5:duration=6",
           "-c:v", "mpeg4", "-metadata", "creation_time=2026-04-01T10:00:00Z", str(video)]  # fmt: skip
    subprocess.run(cmd, check=True)
    rc, out, err = run("frames", "--workspace", str(ws.root), "import", str(video), "--every", "2", "--source", "v")
    assert rc == 0, err
    assert "3 frames imported" in out and "capture times from: video creation_time 3" in out, out
    with open_catalog(ws) as cat:
        rows = cat.frames("v")
        assert [r.captured_at[11:19] for r in rows] == ["10:00:00", "10:00:02", "10:00:04"]
        assert (rows[0].width, rows[0].height) == (96, 64) and cat.verify() == CLEAN
        assert cat.original(rows[1].id) == f"{video}#t=2"
    rc, out, _ = run("frames", "--workspace", str(ws.root), "import", str(video), "--every", "2", "--source", "v")
    assert "0 frames imported, 3 already imported" in out


def test_bad_arguments_and_old_sqlite_catalog(workspace, tmp_path):
    assert run("frames", "import", str(tmp_path / "nope"))[0] == 2
    rc, _, err = run("frames", "import", str(tmp_path), "--every", "0")
    assert rc == 2 and "--every must be > 0" in err
    # a catalog written before `original` existed: migrated in place when opened
    old = workspace.root / "catalog.sqlite"
    db = sqlite3.connect(old)
    db.execute(
        "CREATE TABLE frames (id TEXT PRIMARY KEY, path TEXT NOT NULL UNIQUE, source TEXT NOT NULL, captured_at TEXT "
        "NOT NULL, local_day TEXT NOT NULL, local_tod REAL NOT NULL, tz TEXT NOT NULL, width INTEGER NOT NULL, "
        "height INTEGER NOT NULL, bytes INTEGER NOT NULL, duplicate_of TEXT, stale INTEGER NOT NULL DEFAULT 0, "
        "state TEXT NOT NULL DEFAULT 'ok')"
    )
    db.commit()
    db.close()
    image(1).save(tmp_path / "a.jpg")
    rc, out, err = run("frames", "import", str(tmp_path / "a.jpg"))
    assert rc == 0 and "1 frames imported" in out, err
    assert FrameIndex(workspace.root).resolve("a.jpg") is not None


def test_sync_carries_original_paths(workspace, tmp_path, postgres, seaweed):
    photos = tmp_path / "photos"
    files = user_folder(photos, n=4)
    assert run("frames", "import", str(photos), "--threads", "3")[0] == 1  # the two bad files
    remote = Workspace.at(tmp_path / "remote")
    remote.root.mkdir()
    remote_settings(remote, postgres, seaweed)
    rc, out, err = run("frames", "--workspace", str(workspace.root), "sync", "--to", str(remote.root))
    assert rc == 0, out + err
    here, there = FrameIndex(workspace.root), FrameIndex(remote.root)
    copy = str(photos / "day1" / "copy_of_IMG_0000.jpg")
    for key in (str(files["IMG_0002.jpg"]), copy, "IMG_0003.jpg", "scan"):
        assert there.resolve(key) == here.resolve(key) is not None, key
    assert there.resolve(copy) == there.resolve(str(files["IMG_0000.jpg"]))


def test_a_leased_source_is_refused_and_a_killed_import_is_settled(ws, tmp_path):
    from store.lock import Lease, holder_name

    image(5).save(tmp_path / "a.jpg")
    image(6).save(tmp_path / "b.jpg")
    with open_catalog(ws) as cat:
        lease = Lease(cat, "source:cam", holder_name("a collector"), ttl=30).acquire()
        try:
            rc, _, err = run(
                "frames", "--workspace", str(ws.root), "import", str(tmp_path / "a.jpg"), "--source", "cam"
            )
            assert rc == 1 and "source:cam is held by" in err and "(a collector)" in err
        finally:
            lease.release()
        assert cat.count() == 0
        # an import killed between its row and its bytes: a `writing` row with nothing stored
        row, _ = cat.add_frame((tmp_path / "b.jpg").read_bytes(), "cam", EXIF_TIME, 64, 48)
        cat.frame_store.delete(row.path)
        cat._exec("UPDATE frames SET state = 'writing' WHERE id = ?", (row.id,))
    rc, out, err = run("frames", "--workspace", str(ws.root), "import", str(tmp_path), "--source", "cam")
    assert rc == 0 and "settled interrupted writes: 0 completed, 1 rolled back" in out, out + err
    assert "2 frames imported" in out
    with open_catalog(ws) as cat:
        assert cat.count() == 2 and cat.verify() == CLEAN
