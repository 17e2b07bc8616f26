"""store.backends: the same catalog semantics on SQLite + local files and on PostgreSQL + S3 (real servers on loopback,
started once per session by tests/conftest.py), leases, a kill -9 during uploads, sync, and train/embed from S3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from test_store_catalog import T0, fill, jpeg

from fth.cli import main as fth
from store.backends import S3Frames, StorageError, open_catalog, settings
from store.lock import Lease, SourceLeased, holder_name
from store.paths import Workspace
from store.sync import sync

REPO = Path(__file__).resolve().parents[1]
CLEAN = {"missing": [], "corrupt": [], "orphans": [], "pending": []}


def remote_settings(ws: Workspace, postgres, seaweed, prefix: str = "pre") -> None:
    """Point `ws` at a fresh PostgreSQL database and a fresh bucket, through its workspace.yaml."""
    bucket = seaweed.new_bucket()
    (ws.root / "workspace.yaml").write_text(
        f"catalog: {postgres.new_database()}\nframes: s3://{bucket}/{prefix}\ns3_endpoint: {seaweed.endpoint}\n"
    )


@pytest.fixture(params=["sqlite+local", "postgres+s3"])
def ws(request, workspace) -> Workspace:
    if request.param == "postgres+s3":
        remote_settings(workspace, request.getfixturevalue("postgres"), request.getfixturevalue("seaweed"))
    return workspace


def test_catalog_semantics_on_each_backend(ws):
    with open_catalog(ws) as cat:
        row, new = cat.add_frame(jpeg(100), "cam", T0 - timedelta(hours=1), 48, 32, tz="Asia/Tokyo")
        assert new and cat.get(row.id) == row and cat.frame_store.read(row.path) == jpeg(100)
        assert row.local_day == "2026-03-02" and abs(row.local_tod - 6.5) < 1e-9  # exact float (not REAL) in PG
        again, new = cat.add_frame(jpeg(100), "cam", T0 + timedelta(seconds=5), 48, 32)
        assert not new and again.id == row.id and cat.count() == 1
        rows = [row] + fill(cat, 5)
        fill(cat, 2, source="other")
        cat.mark_stale(rows[1].id)
        assert cat.sources() == ["cam", "other"] and cat.count("cam") == 6
        assert len(cat.frames("cam", include_stale=False)) == 5
        assert {(s, n) for s, _, n, _ in cat.counts(by_day=False)} == {("cam", 6), ("other", 2)}
        assert all(isinstance(b, int) for *_, b in cat.counts())
        paged = [r.id for r in cat.iter_frames(batch=2)]  # keyset paging on (captured_at, id)
        assert paged == [r.id for r in cat.frames()] and len(paged) == 8
        assert cat.total_bytes() == sum(r.bytes for r in cat.frames())
        removed = cat.enforce_retention(max_bytes=cat.total_bytes("cam") - rows[0].bytes - 1, source="cam")
        assert removed == 2 and [r.id for r in cat.frames("cam")] == [r.id for r in rows[2:]]
        assert not cat.frame_store.exists(rows[0].path)
        assert cat.verify() == CLEAN
        # damage no crash explains: a lost object, a corrupt one, an orphan
        store = cat.frame_store
        store.delete(rows[2].path)
        store.put(rows[3].path, b"not the frame")
        store.put("frames/cam/stray.jpg", jpeg(77))
        assert cat.verify() == {"missing": [rows[2].id], "corrupt": [rows[3].id], "orphans": ["frames/cam/stray.jpg"],
                                "pending": []}  # fmt: skip
    assert fth(["frames", "verify"]) == 1
    assert fth(["frames", "recover"]) == 0
    assert fth(["frames", "verify"]) == 0
    with open_catalog(ws) as cat:
        assert cat.frame_store.exists(f"quarantine/{rows[3].path}") and cat.frame_store.exists(
            "quarantine/frames/cam/stray.jpg"
        )
        assert [r.id for r in cat.frames("cam")] == [r.id for r in rows[4:]]


def test_a_relative_workspace_reads_its_frames_by_ref(tmp_path, monkeypatch):
    """`fth demo` works in `workspace/demo`: a frame's ref (what embed_step is given) must read back from a relative
    workspace too (it once read `rel/rel/frames/...`)."""
    from store.frame_index import FrameIndex

    monkeypatch.chdir(tmp_path)
    with open_catalog(Workspace.at("rel")) as cat:
        fill(cat, 2)
        store = cat.frame_store
    index = FrameIndex("rel")
    for row in index.rows:
        assert store.read(index.path(row.id)) == index.read(row.id) == (tmp_path / "rel" / row.path).read_bytes()


def test_recover_settles_only_the_given_sources(ws):
    with open_catalog(ws) as cat:
        lost, _ = cat.add_frame(jpeg(10), "cam", T0, 48, 32)
        done, _ = cat.add_frame(jpeg(11), "other", T0, 48, 32)
        cat.frame_store.delete(lost.path)  # the upload never happened
        cat._exec("UPDATE frames SET state = 'writing' WHERE id IN (?, ?)", (lost.id, done.id))
        assert cat.count() == 0 and len(cat.verify()["pending"]) == 2
        assert cat.recover(sources=["nobody"]) == {"completed": 0, "rolled_back": 0, "deleted": 0}
        assert cat.recover(sources=["cam"]) == {"completed": 0, "rolled_back": 1, "deleted": 0}
        assert cat.recover() == {"completed": 1, "rolled_back": 0, "deleted": 0}
        assert [r.id for r in cat.frames()] == [done.id] and cat.verify() == CLEAN


def test_leases_refuse_a_second_holder_and_lapse(ws):
    with open_catalog(ws) as cat:
        first = Lease(cat, "source:cam", holder_name("test one"), ttl=1.5).acquire()
        with pytest.raises(SourceLeased, match=r"source:cam is held by .*test one"):
            Lease(cat, "source:cam", holder_name("test two"), ttl=1.5).acquire()
        time.sleep(2.0)  # still held: the renewal thread keeps it alive past its ttl
        with pytest.raises(SourceLeased):
            Lease(cat, "source:cam", holder_name("test two"), ttl=1.5).acquire()
        first.release()
        second = Lease(cat, "source:cam", holder_name("test two"), ttl=1.5).acquire()
        second._stop.set()  # as if its process froze: no more renewals, the lease lapses after its ttl
        second._thread.join()
        third = Lease(cat, "source:cam", "otherhost:1:x (test three)", ttl=1.5).acquire(wait_s=5)
        assert cat.leases()[0][1] == third.holder
        # a holder of this host that no longer runs is taken over at once, without waiting for its ttl
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        cat.acquire_lease("source:gone", f"{os.uname().nodename}:{dead.pid}:abc (crashed)", ttl=3600)
        Lease(cat, "source:gone", holder_name("restart"), ttl=5).acquire().release()
        third.release()


def test_settings_errors(workspace, capsys):
    (workspace.root / "workspace.yaml").write_text("catalog: mysql://x\n")
    with pytest.raises(StorageError, match="postgresql://"):
        settings(workspace)
    with pytest.raises(SystemExit, match="1"):
        fth(["frames", "count"])
    assert "postgresql://" in capsys.readouterr().err
    (workspace.root / "workspace.yaml").write_text("frame: s3://b\n")
    with pytest.raises(StorageError, match="expected a mapping with keys"):
        settings(workspace)


WRITER = """
import sys, io, itertools
from datetime import UTC, datetime, timedelta
import numpy as np
from PIL import Image
from store.backends import open_catalog
cat = open_catalog(sys.argv[1])
start = int(sys.argv[2])
frames = []
for i in range(start, start + 400):  # encoded up front, so the loop below is all row writes and uploads
    rgb = np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    buf = io.BytesIO(); Image.fromarray(rgb).save(buf, format="JPEG"); frames.append(buf.getvalue())
print("ready", flush=True)
for i, data in enumerate(frames, start):
    cat.add_frame(data, "cam", datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i), 96, 64)
"""


def test_kill_9_during_uploads_leaves_no_ok_row_without_its_object(workspace, postgres, seaweed):
    remote_settings(workspace, postgres, seaweed)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(0)
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(workspace.root), str(1000 * round_)],
                                stdout=subprocess.PIPE, env=env, text=True)  # fmt: skip
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.3, 0.8))  # then kill it wherever it is: most of its time is in a row write or a PUT
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # A PUT the writer had fully sent can still land on the server after the writer died; recovery that runs
        # before it does deletes the `writing` row, and the late object is an orphan (`verify` reports it, `fth frames
        # recover` quarantines it). A restarted collector recovers seconds after a crash; so does this test.
        time.sleep(2.0)
        with open_catalog(workspace) as cat:
            for row in cat.iter_frames():
                assert cat.frame_store.sha256(row.path) == row.id, "an ok row without its complete object"
            cat.recover()
            assert cat.verify() == CLEAN


def test_sync_local_to_remote_to_fresh_local(tmp_path, postgres, seaweed):
    local, remote, back = (Workspace.at(tmp_path / n) for n in ("local", "remote", "back"))
    for w in (local, remote, back):
        w.root.mkdir()
    remote_settings(remote, postgres, seaweed)
    with open_catalog(local) as cat:
        rows = fill(cat, 5) + fill(cat, 2, source="other")
        cat.mark_stale(rows[1].id)
    with open_catalog(local) as a, open_catalog(remote) as b:
        first = sync(a, b, threads=4)
        again = sync(a, b)
        assert (first.copied, first.failed, first.missing_after) == (7, [], [])
        assert (again.copied, again.present) == (0, 7)  # idempotent
    with open_catalog(remote) as a, open_catalog(back) as b:
        assert sync(a, b).copied == 7
        assert a.verify() == CLEAN and b.verify() == CLEAN
        assert b.frames() == a.frames()  # same rows: ids, paths, times, flags
        assert all((back.root / r.path).read_bytes() == a.frame_store.read(r.path) for r in a.frames())
    assert isinstance(open_catalog(remote).frame_store, S3Frames)


@pytest.mark.slow
def test_train_and_embed_read_frames_from_s3(tmp_path, postgres, seaweed, monkeypatch):
    """The same encoder (bit for bit) and embeddings from a local workspace and its PostgreSQL + S3 copy."""
    from test_train import final_weights, max_diff, train_here
    from test_train_support import make_catalog

    from encoder.embed import EmbedConfig, run_embed
    from store.artifacts import Registry
    from store.embeddings import EmbeddingStore

    local, remote = Workspace.at(tmp_path / "local"), Workspace.at(tmp_path / "remote")
    remote.root.mkdir(parents=True)
    remote_settings(remote, postgres, seaweed)
    make_catalog(local.root, 12)
    with open_catalog(local) as a, open_catalog(remote) as b:
        assert sync(a, b).copied == 12
    assert not (remote.root / "frames").exists()  # the remote workspace folder holds no frame files
    out = {}
    for w in (local, remote):
        summary = train_here(w.root, w.root / "run", "batch_size=4", "max_steps=2", "seed=3")
        out[w] = final_weights(w.root / "run")
        stats = run_embed(EmbedConfig(workspace=str(w.root), encoder=summary["encoder"]), progress=False)
        assert stats["embedded"] == 12 and stats["failed"] == 0
        enc = Registry(w.artifacts).card(summary["encoder"]).id
        ids = sorted(EmbeddingStore(w.embeddings, enc).index("pooled"))
        out[w, "emb"] = EmbeddingStore(w.embeddings, enc).get(ids, "pooled")
    assert max_diff(out[local], out[remote]) == 0.0
    assert np.array_equal(out[local, "emb"], out[remote, "emb"])


def test_frames_sync_command(tmp_path, postgres, seaweed, capsys, monkeypatch):
    local, remote = Workspace.at(tmp_path / "local"), Workspace.at(tmp_path / "remote")
    remote.root.mkdir(parents=True)
    remote_settings(remote, postgres, seaweed)
    with open_catalog(local) as cat:
        fill(cat, 4)
    monkeypatch.delenv("FTH_WORKSPACE", raising=False)
    assert fth(["frames", "--workspace", str(local.root), "sync", "--to", str(remote.root)]) == 0
    assert "4 copied" in capsys.readouterr().out
    assert fth(["sync", "--workspace", str(local.root), "--from", str(remote.root)]) == 0  # the top-level form
    assert "0 copied, 4 already there" in capsys.readouterr().out
    assert fth(["frames", "--workspace", str(tmp_path / "none"), "sync", "--to", str(remote.root)]) == 2
    assert "no frame catalog" in capsys.readouterr().err
    with open_catalog(remote) as cat:
        cat.frame_store.put(cat.frames()[0].path, b"bitrot")
    assert fth(["frames", "--workspace", str(remote.root), "sync", "--to", str(tmp_path / "fresh")]) == 1
    assert "1 failed" in capsys.readouterr().out
