"""store.catalog: atomic writes, crash recovery, flags, retention, verify; and the `fth frames` command."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from fth.cli import main as fth
from store.catalog import Catalog, local_time


def jpeg(seed: int, size=(32, 48)) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


T0 = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)


def fill(cat: Catalog, n: int, source: str = "cam", step_s: float = 60.0) -> list:
    return [
        cat.add_frame(
            jpeg(i + 1000 * (source != "cam")), source, T0 + timedelta(seconds=i * step_s), 48, 32, tz="Asia/Tokyo"
        )[0]
        for i in range(n)
    ]


def test_add_get_and_local_time(workspace):
    with Catalog(workspace.root) as cat:
        row, new = cat.add_frame(jpeg(1), "cam", T0, 48, 32, tz="Asia/Tokyo")
        assert new and cat.get(row.id) == row
        assert (workspace.root / row.path).read_bytes() == jpeg(1)
        assert row.local_day == "2026-03-02" and abs(row.local_tod - 7.5) < 1e-6  # UTC+9
        again, new = cat.add_frame(jpeg(1), "cam", T0 + timedelta(seconds=5), 48, 32)
        assert not new and again.id == row.id and cat.count() == 1
        assert not list(workspace.frames.rglob("*.tmp"))
    assert local_time(T0, "UTC") == ("2026-03-01", 22.5)


def test_counts_list_filters_flags(workspace):
    with Catalog(workspace.root) as cat:
        rows = fill(cat, 4)
        fill(cat, 2, source="other")
        cat.mark_stale(rows[1].id)
        cat.add_frame(jpeg(99), "cam", T0 + timedelta(hours=3), 48, 32, duplicate_of=rows[0].id)
        assert cat.count("cam") == 5 and cat.sources() == ["cam", "other"]
        assert [r.id for r in cat.frames("cam")][:4] == [r.id for r in rows]
        assert len(cat.frames("cam", include_stale=False)) == 4
        assert len(cat.frames("cam", include_duplicates=False)) == 4
        assert cat.last_frame("cam").duplicate_of == rows[0].id
        assert {(s, n) for s, _, n, _ in cat.counts(by_day=False)} == {("cam", 5), ("other", 2)}
        assert len(list(cat.iter_frames("cam", batch=2))) == 5


def test_recover_after_crash(workspace):
    with Catalog(workspace.root) as cat:
        good = fill(cat, 3)
        # Simulate crashes: a row committed as 'writing' whose file never arrived, one whose rename happened
        # but the final commit did not, a left-over temp file, and a delete that stopped after hiding the row.
        lost, _ = cat.add_frame(jpeg(10), "cam", T0 + timedelta(hours=1), 48, 32)
        done, _ = cat.add_frame(jpeg(11), "cam", T0 + timedelta(hours=2), 48, 32)
        cat._exec("UPDATE frames SET state = 'writing' WHERE id IN (?, ?)", (lost.id, done.id))
        lost_file = workspace.root / lost.path
        lost_file.rename(lost_file.with_name(f".{lost_file.name}.123.tmp"))  # as store.fsutil.atomic_write names it
        cat._exec("UPDATE frames SET state = 'deleting' WHERE id = ?", (good[0].id,))
        assert cat.count() == 2  # pending rows are invisible
    with Catalog(workspace.root) as cat:  # a writer opening the catalog recovers
        assert cat.get(done.id) is not None and cat.get(lost.id) is None and cat.get(good[0].id) is None
        assert cat.count() == 3
        assert cat.verify() == {"missing": [], "corrupt": [], "orphans": [], "pending": []}
        assert not list(workspace.frames.rglob("*.tmp"))


def test_verify_finds_missing_corrupt_orphans(workspace):
    with Catalog(workspace.root) as cat:
        rows = fill(cat, 3)
        (workspace.root / rows[0].path).unlink()
        (workspace.root / rows[1].path).write_bytes(b"x")
        (workspace.frames / "cam" / "stray.jpg").write_bytes(b"y")
        problems = cat.verify()
    assert problems == {
        "missing": [rows[0].id],
        "corrupt": [rows[1].id],
        "orphans": ["frames/cam/stray.jpg"],
        "pending": [],
    }
    assert fth(["frames", "verify"]) == 1


def test_retention_by_bytes_and_age(workspace):
    with Catalog(workspace.root) as cat:
        rows = fill(cat, 10)
        fill(cat, 3, source="other")
        per = rows[0].bytes
        removed = cat.enforce_retention(max_bytes=int(per * 6.5), source="cam")
        kept = cat.frames("cam")
        assert removed == 4 and [r.id for r in kept] == [r.id for r in rows[4:]]
        assert cat.total_bytes("cam") <= per * 6.5 and cat.count("other") == 3
        assert cat.enforce_retention(max_age_s=3 * 60, now=T0 + timedelta(minutes=9, seconds=30)) == 3 + 3
        assert [r.id for r in cat.frames("cam")] == [r.id for r in rows[7:]]
        assert cat.verify() == {"missing": [], "corrupt": [], "orphans": [], "pending": []}
        assert len(list(workspace.frames.rglob("*.jpg"))) == 3


def test_frames_cli(workspace, tmp_path, capsys):
    with Catalog(workspace.root) as cat:
        rows = fill(cat, 3)
        cat.mark_stale(rows[2].id)
    assert fth(["frames", "count", "--by-day"]) == 0
    assert "2026-03-02" in capsys.readouterr().out
    assert fth(["frames", "list", "--source", "cam"]) == 0
    assert rows[0].id[:16] in capsys.readouterr().out
    assert fth(["frames", "verify"]) == 0
    out = tmp_path / "list.csv"
    assert fth(["frames", "export", str(out), "--no-stale"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith(rows[0].id)
    txt = tmp_path / "list.txt"
    assert fth(["frames", "export", str(txt), "--absolute"]) == 0
    assert all(p.startswith("/") and p.endswith(".jpg") for p in txt.read_text().split())


def test_verify_reports_interrupted_writes_and_deletes(workspace, capsys):
    """Issue 15, finding 13: rows a crash left `writing` or `deleting` are problems until `fth frames recover`."""
    with Catalog(workspace.root) as cat:
        rows = fill(cat, 3)
        cat._exec("UPDATE frames SET state = 'writing' WHERE id = ?", (rows[0].id,))
        cat._exec("UPDATE frames SET state = 'deleting' WHERE id = ?", (rows[1].id,))
    assert fth(["frames", "--workspace", str(workspace.root), "verify"]) == 1
    out = capsys.readouterr().out
    assert "2 pending" in out and "fth frames recover" in out
    assert fth(["frames", "--workspace", str(workspace.root), "recover"]) == 0
    assert fth(["frames", "--workspace", str(workspace.root), "verify"]) == 0


def test_recover_repairs_missing_and_corrupt_files(workspace, capsys):
    """Issue 15, finding 13: rows whose file is gone or corrupt are removed (a corrupt file and an orphan are moved to
    quarantine/, not deleted), so verify turns green."""
    with Catalog(workspace.root) as cat:
        rows = fill(cat, 4)
    (workspace.root / rows[0].path).unlink()
    (workspace.root / rows[1].path).write_bytes(b"not the frame")
    orphan = workspace.root / "frames" / "cam" / "stray.jpg"
    orphan.write_bytes(jpeg(99))
    assert fth(["frames", "--workspace", str(workspace.root), "verify"]) == 1
    capsys.readouterr()
    assert fth(["frames", "--workspace", str(workspace.root), "recover"]) == 0
    out = capsys.readouterr().out
    assert "missing files: 1" in out and "1 corrupt" in out and "1 orphans" in out, out
    assert fth(["frames", "--workspace", str(workspace.root), "verify"]) == 0
    with Catalog(workspace.root) as cat:
        assert [r.id for r in cat.frames()] == [r.id for r in rows[2:]]
    quarantined = sorted(p.name for p in (workspace.root / "quarantine").rglob("*") if p.is_file())
    assert quarantined == sorted([Path(rows[1].path).name, "stray.jpg"])
