"""Collectors on two "hosts" (two workspace folders, each a `fth collect` process) writing one PostgreSQL catalog and
one S3 bucket (real servers on loopback), each collecting every frame of its own live sim camera (published as HLS by
this test, so a camera outlives a collector's crash). One collector is kill -9'd (with its ffmpegs, as a host crash)
twice, down a few seconds each time, and restarted; a third collector of a source already collected is refused.
Afterwards: 0 lost frames (every sim frame index from each source's first to its last stored frame is present: the
restarted collector replays the playlist window, `SourceConfig.resume_s`), 0 stored twice, `fth frames verify` clean.
`FTH_SHARED_SOAK_S` sets how long the whole run collects (default 90 s)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_storage import remote_settings

from collector.config import SimConfig
from collector.sim import write_labels
from collector.sim_publish import SimPublisher
from fth.cli import main as fth
from store.backends import open_catalog
from store.paths import Workspace
from tests.collector_helpers import wait_for

REPO = Path(__file__).resolve().parents[1]
SOAK_S = float(os.environ.get("FTH_SHARED_SOAK_S", "90"))
DOWN_S = 4.0  # each crash keeps host a down this long before it restarts: frames are published meanwhile


def start(root: Path, source: str, url: str) -> subprocess.Popen:
    cfg = root / "collector.yaml"
    # every frame (5 fps, so any interval under 0.2 s), not just keyframes: then "no frame lost" is checkable
    cfg.write_text(json.dumps({"lease_ttl_s": 5, "status_every_s": 0.5, "sources": [
        {"id": source, "kind": "hls", "url": url, "interval_s": 0.1, "keyframes_only": False}]}))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "fth", "collect", "--config", str(cfg), "--workspace", str(root)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            text=True)  # fmt: skip


def stored(ws: Workspace, source: str) -> int:
    with open_catalog(ws) as cat:
        return cat.count(source)


def test_two_hosts_one_catalog_one_bucket_kill_9_and_restart_lose_no_frame(tmp_path, postgres, seaweed):
    hosts = {s: Workspace.at(tmp_path / s) for s in ("a", "b", "c")}
    for ws in hosts.values():
        ws.root.mkdir()
    remote_settings(hosts["a"], postgres, seaweed)
    for s in ("b", "c"):  # the same catalog and bucket
        (hosts[s].root / "workspace.yaml").write_text((hosts["a"].root / "workspace.yaml").read_text())
    sims = {s: SimConfig(height=96, width=160, fps=5.0, time_scale=3600.0, seed=ord(s), list_size=30) for s in "ab"}
    cameras = {s: SimPublisher(sims[s], tmp_path / f"camera-{s}").start() for s in "ab"}
    procs: dict[str, subprocess.Popen] = {}
    try:
        assert all(c.wait_ready() for c in cameras.values())
        procs = {s: start(hosts[s].root, s, cameras[s].url) for s in "ab"}
        t0 = time.monotonic()
        assert wait_for(lambda: stored(hosts["a"], "a") >= 5 and stored(hosts["a"], "b") >= 5, 60, 0.5)
        # a third host trying to collect source "a" too is refused with a message naming the holder
        third = subprocess.run(
            [sys.executable, "-m", "fth", "collect", "--config", str(hosts["a"].root / "collector.yaml"),
             "--workspace", str(hosts["c"].root)], env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert third.returncode == 1 and "source:a is held by" in third.stderr, third.stderr
        for k in (1, 2):  # host a crashes (the collector and its ffmpegs), stays down, comes back: twice
            time.sleep(max(0.0, t0 + k * SOAK_S / 3 - time.monotonic()))
            os.killpg(procs["a"].pid, signal.SIGKILL)
            procs["a"].wait()
            time.sleep(DOWN_S)
            before = stored(hosts["a"], "a")
            procs["a"] = start(hosts["a"].root, "a", cameras["a"].url)
            assert wait_for(lambda b=before: stored(hosts["a"], "a") >= b + 3, 60, 0.5), procs["a"].stderr
        time.sleep(max(0.0, t0 + SOAK_S - time.monotonic()))
        for p in procs.values():
            os.killpg(p.pid, signal.SIGTERM)
        for s, p in procs.items():
            assert p.wait(30) == 0, f"collector {s}: {p.stderr.read()[-2000:]}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for c in cameras.values():
            c.stop()
    os.environ["FTH_WORKSPACE"] = str(hosts["c"].root)
    try:
        assert fth(["frames", "verify"]) == 0
    finally:
        del os.environ["FTH_WORKSPACE"]
    with open_catalog(hosts["c"]) as cat:
        assert cat.leases() == []  # both released theirs at their clean stop
        for s in "ab":
            summary = write_labels(cat, s, sims[s], tmp_path / f"labels-{s}", dense=False)
            assert summary.labelled == summary.frames >= 5 * SOAK_S / 2  # the sim's truth joins every stored frame
            rows = (tmp_path / f"labels-{s}" / "labels.csv").read_text().splitlines()[1:]
            indexes = sorted(int(r.split(",")[1]) for r in rows)
            assert len(set(indexes)) == len(indexes), f"source {s}: a sim frame stored twice"
            lost = sorted(set(range(indexes[0], indexes[-1] + 1)) - set(indexes))
            assert not lost, f"source {s}: {len(lost)} of {indexes[-1] - indexes[0] + 1} frames lost: {lost[:20]}"
            print(f"source {s}: sim frames {indexes[0]}..{indexes[-1]}, {len(indexes)} stored, none lost or twice")
