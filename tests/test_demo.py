"""`fth demo` end to end as a real process: a shortened run (`--quick`) and Ctrl-C during collection.

The quick run starts the sim's live HLS stream, the collector, training, embedding, labels, four head fits, gunicorn
and the client, all on loopback; the test checks what each step left behind and that nothing it started is still
running. The Ctrl-C test interrupts the demo while ffmpeg, the sim and the collector run and checks every process
the demo had started is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fth.demo import MARKER, prepare_workspace
from fth.demo_procs import alive, descendants
from store.artifacts import Registry

ROOT = Path(__file__).resolve().parent.parent
HEAD_KEYS = {"task", "head_id", "encoder_id", "metrics", "baseline", "n_train", "n_val"}


def demo_cmd(ws: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fth", "demo", "--workspace", str(ws), *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of every living process whose command line contains `text`."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd and alive(int(entry.name)):
                out.append((int(entry.name), cmd))
    return out


@pytest.mark.timeout(400)
def test_quick_demo_runs_every_step_and_stops_everything(tmp_path):
    ws = tmp_path / "demo"
    out = subprocess.run(
        demo_cmd(ws, "--quick", "--collect-seconds", "30", "--requests", "10"),
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    for cmd in ("fth sim serve", "fth collect", "fth train", "fth embed", "fth sim labels", "fth serve"):
        assert f"$ {cmd}" in out.stdout or f"$ OMP_NUM_THREADS=1 {cmd}" in out.stdout, cmd
    assert out.stdout.count("fth heads fit") == 5 and "fth eval" in out.stdout
    assert "Summary" in out.stdout and "server round trip" in out.stdout

    summary = json.loads((ws / "summary.json").read_text())
    assert summary["frames"] >= 20
    assert len(summary["curve"]) >= 2 and summary["curve"][-1][0] == 100
    assert len(summary["latency_ms"]) == 10 and all(ms > 0 for ms in summary["latency_ms"])
    assert sorted(h["task"] for h in summary["heads"]) == [
        "depth",
        "detection",
        "people_count",
        "segmentation",
        "time_of_day",
    ]
    encoders = [Registry(ws / "artifacts").card(p) for p in (ws / "artifacts" / "encoder").iterdir()]
    trained = [c.id for c in encoders if c.parents.get("init") != "random"]  # fth eval registered a random init too
    assert trained == [summary["encoder"]] and len(encoders) == 2
    for h in summary["heads"]:
        assert isinstance(h["value"], float) and isinstance(h["baseline"], float), h
        doc = json.loads((ws / "heads" / h["head_id"] / "metrics.json").read_text())
        assert set(doc) >= HEAD_KEYS and doc["encoder_id"] == summary["encoder"]
        assert doc["n_val"] > 0 and doc["n_test"] > 0
        assert h["plots"] >= 1

    ev = summary["eval"]  # the label-efficiency curve: the encoder, its random init and raw pixels at each budget
    assert ev["task"] == "people_count" and len(ev["columns"]) == 3 and ev["rows"][0][0] == 30 and len(ev["rows"]) >= 2
    assert all(len(means) == 3 and None not in means for _, means, _ in ev["rows"])
    report = (ws / "report.md").read_text()
    assert "## Label efficiency" in report and "eval/people_count.png" in report
    links = re.findall(r"\]\(([^)]+)\)", report)
    images = [link for link in links if link.endswith(".png")]
    assert any("panels/" in link for link in images) and any("heads/" in link for link in images)
    for link in links:
        assert not link.startswith("/") and (ws / link).exists(), link
    assert len(list((ws / "logs").glob("*.log"))) >= 14
    assert "heads served: 5" in (ws / "logs" / "client.log").read_text()
    assert mentioning(str(ws)) == []


def test_ctrl_c_during_collection_leaves_nothing_running(tmp_path):
    ws = tmp_path / "demo"
    proc = subprocess.Popen(
        demo_cmd(ws, "--collect-seconds", "120"),
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # Ctrl-C as at a terminal: a shell starts background jobs with SIGINT ignored, and Python keeps an ignored
        # SIGINT ignored, so under `make test &` the demo would never see it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    started: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while not any("frames" in ln and ln.strip().startswith("[") for ln in lines):  # collection under way
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        started = descendants(proc.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in started if alive(pid)}
        assert any(n.startswith("ffmpeg") for n in names) and len(started) >= 4, names  # sim + collector + ffmpegs
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130, "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for pid in started:  # the demo's steps run in sessions of their own: a failed test must not leave them
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert "interrupted" in "".join(lines)
    deadline = time.monotonic() + 5
    while (left := [pid for pid in started if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes() for p in left if alive(p)]
    assert mentioning(str(ws)) == []


def test_workspace_is_wiped_only_when_it_is_the_demos_own(tmp_path):
    ws = prepare_workspace(tmp_path / "demo")
    (ws / "catalog.sqlite").write_text("old run")
    assert prepare_workspace(ws) == ws and not (ws / "catalog.sqlite").exists() and (ws / MARKER).exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(SystemExit, match="not a demo workspace"):
        prepare_workspace(other)
    assert (other / "precious.txt").read_text() == "keep"
