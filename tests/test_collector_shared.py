"""Collectors on two "hosts" (two workspace folders, each a `fth collect` process) writing one PostgreSQL catalog and
one S3 bucket (real servers on loopback), each with its own sim source: one is kill -9'd (with its ffmpegs, as a host
crash) and restarted at once; a third collector of a source already collected is refused. Afterwards: every row has
its object (`fth frames verify` clean), no sim frame is stored twice, each source keeps collecting after the crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_storage import remote_settings

from collector.sim import load_sim_config, write_labels
from fth.cli import main as fth
from store.backends import open_catalog
from store.paths import Workspace
from tests.collector_helpers import wait_for

REPO = Path(__file__).resolve().parents[1]
SIM = {"fps": 5.0, "time_scale": 3600.0, "height": 96, "width": 160}


def start(root: Path, source: str) -> subprocess.Popen:
    cfg = root / "collector.yaml"
    cfg.write_text(json.dumps({"lease_ttl_s": 5, "status_every_s": 0.5, "sources": [
        {"id": source, "kind": "sim", "interval_s": 0.5, "sim": {**SIM, "seed": ord(source)}}]}))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "fth", "collect", "--config", str(cfg), "--workspace", str(root)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            text=True)  # fmt: skip


def status(hosts: dict) -> str:
    return "\n".join(str(ws.collector / "status.json") + ": " + (ws.collector / "status.json").read_text()[:1500]
                     for ws in hosts.values() if (ws.collector / "status.json").is_file())  # fmt: skip


def stored(ws: Workspace, source: str) -> int:
    with open_catalog(ws) as cat:
        return cat.count(source)


def test_two_hosts_one_catalog_one_bucket_kill_9_and_restart(tmp_path, postgres, seaweed):
    hosts = {s: Workspace.at(tmp_path / s) for s in ("a", "b", "c")}
    for ws in hosts.values():
        ws.root.mkdir()
    remote_settings(hosts["a"], postgres, seaweed)
    for s in ("b", "c"):  # the same catalog and bucket
        (hosts[s].root / "workspace.yaml").write_text((hosts["a"].root / "workspace.yaml").read_text())
    procs = {s: start(hosts[s].root, s) for s in ("a", "b")}
    try:
        assert wait_for(lambda: stored(hosts["a"], "a") >= 5 and stored(hosts["a"], "b") >= 5, 60, 0.5), status(hosts)
        # a third host trying to collect source "a" too is refused with a message naming the holder
        third = subprocess.run(
            [sys.executable, "-m", "fth", "collect", "--config", str(hosts["a"].root / "collector.yaml"),
             "--workspace", str(hosts["c"].root)], env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert third.returncode == 1 and "source:a is held by" in third.stderr, third.stderr
        for _ in range(2):  # host a crashes (the collector and its ffmpegs) and comes back at once, twice
            os.killpg(procs["a"].pid, signal.SIGKILL)
            procs["a"].wait()
            before = stored(hosts["a"], "a")
            procs["a"] = start(hosts["a"].root, "a")
            assert wait_for(lambda b=before: stored(hosts["a"], "a") >= b + 3, 60, 0.5), procs["a"].stderr
        for p in procs.values():
            os.killpg(p.pid, signal.SIGTERM)
        for s, p in procs.items():
            assert p.wait(30) == 0, f"collector {s}: {p.stderr.read()[-2000:]}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    os.environ["FTH_WORKSPACE"] = str(hosts["c"].root)
    try:
        assert fth(["frames", "verify"]) == 0
    finally:
        del os.environ["FTH_WORKSPACE"]
    with open_catalog(hosts["c"]) as cat:
        assert cat.leases() == []  # both released theirs at their clean stop
        for s in ("a", "b"):
            cfg, _ = load_sim_config(hosts[s].sim / s)
            summary = write_labels(cat, s, cfg, tmp_path / f"labels-{s}")
            assert summary.labelled == summary.frames >= 5
            rows = (tmp_path / f"labels-{s}" / "labels.csv").read_text().splitlines()[1:]
            indexes = [int(r.split(",")[1]) for r in rows]
            assert len(set(indexes)) == len(indexes), f"source {s}: a sim frame stored twice"
    time.sleep(0)
