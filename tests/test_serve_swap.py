"""Swapping a running `fth serve` (real gunicorn on loopback) between two registered encoders while clients query
it without pause: zero failed requests, every answer from the switch on carries the new encoder id, rollback returns
to the previous one; and the release record (`store.release`) with its one-line errors."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image
from serving import REPO, LiveServer, tiny_encoder

from store.paths import Workspace
from store.release import ReleaseError, current, history, promote, rollback


def fth(ws: Workspace, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "server.cli", "serve", *args, "--workspace", str(ws.root)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Clients:
    """Threads posting /v1/embed without pause (but `gap_s` between answer and next request, so the two shared cores
    also boot the new worker): half on one kept-alive connection each, half on a new connection per request. Each
    answer is (sent, received, status or exception, client, X-Encoder-Id)."""

    def __init__(self, url: str, n: int = 4, gap_s: float = 0.02):
        self.url, self.answers, self.stop, self.gap_s = url, [], threading.Event(), gap_s
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        self.body = png()

    def _run(self, i: int) -> None:
        http = requests.Session() if i % 2 == 0 else requests
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                files = [("files", ("f.png", self.body, "image/png"))]
                resp = http.post(f"{self.url}/v1/embed", files=files, timeout=60)
                answer = (sent, time.monotonic(), resp.status_code, i, resp.headers.get("X-Encoder-Id"))
            except requests.RequestException as e:  # a refused or dropped connection is a failed request
                answer = (sent, time.monotonic(), repr(e), i, None)
            self.answers.append(answer)
            time.sleep(self.gap_s)

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def switch(ws: Workspace, clients: Clients, args: list[str], encoder: str) -> float:
    """Run `fth serve <args>` under load; check the answers around it; returns when the switch was complete."""
    before = len(clients.answers)
    proc = fth(ws, *args)
    assert proc.returncode == 0, proc.stderr
    assert f"serves {encoder}" in proc.stdout, proc.stdout
    done = time.monotonic()
    time.sleep(1.5)  # keep querying the new set
    answers = clients.answers[before:]
    failed = [a for a in answers if a[2] != 200]
    assert not failed, failed[:5]
    late = [a for a in answers if a[0] > done]
    assert len(late) > 10 and all(a[4] == encoder for a in late), [a[4] for a in late if a[4] != encoder][:5]
    for client in {a[3] for a in answers}:  # once a client has an answer of the new encoder, it gets no other
        ids = [a[4] for a in answers if a[3] == client]
        first = ids.index(encoder)
        assert set(ids[first:]) == {encoder}, ids
    return done


@pytest.fixture
def two_encoders(tmp_path):
    ws = Workspace.at(tmp_path)
    _, a = tiny_encoder(ws, seed=1)
    _, b = tiny_encoder(ws, seed=2)
    return ws, a.id, b.id


@pytest.mark.slow
def test_promote_then_rollback_under_load_fails_no_request(two_encoders):
    ws, a, b = two_encoders
    promote(ws, a, [], "first")
    server = LiveServer(ws.root, {"threads": 8}).start()  # no encoder named: it serves the release
    try:
        assert requests.get(f"{server.url}/readyz").json()["encoder"] == a
        with Clients(server.url) as clients:
            time.sleep(1.0)
            switch(ws, clients, ["promote", "--encoder", b, "--heads", "", "--note", "second"], b)
            switch(ws, clients, ["rollback"], a)
        assert len(clients.answers) > 100
        assert all(a[2] == 200 for a in clients.answers)
    finally:
        server.stop()
    assert current(ws).encoder == a and history(ws) == []
    assert "Worker failed to boot" not in server.log()


def test_release_record_and_one_line_errors(two_encoders):
    ws, a, b = two_encoders
    assert current(ws) is None
    with pytest.raises(ReleaseError, match="no previous set"):
        rollback(ws)
    first = promote(ws, a[:13], [], "first")  # a unique prefix resolves to the full id
    assert first.encoder == a and current(ws) == first
    promote(ws, b, [], "second")
    assert current(ws).encoder == b and [r.encoder for r in history(ws)] == [a]
    back = rollback(ws)
    assert back.encoder == a and current(ws).encoder == a and "first" in back.note
    with pytest.raises(ReleaseError, match="not found"):
        promote(ws, "encoder-ffffffffffffffff", [])

    proc = fth(ws, "rollback")  # history is empty again
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no previous set to roll back to" in proc.stderr
    proc = fth(ws, "reload")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no fth serve is running" in proc.stderr
    proc = fth(ws, "promote", "--encoder", "encoder-ffffffffffffffff")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert current(ws).encoder == a  # a refused promote changes nothing


@pytest.mark.slow
def test_a_connection_accepted_as_its_worker_stops_is_answered(tmp_path):
    """The swap's race, made certain: a worker is told to stop (SIGTERM, as a swap stops the oldest worker) after it
    accepted a connection but before that client's request head arrived. gthread closed such a connection unanswered
    (a client without keep-alive saw RemoteDisconnected in the load test above, about once in ten runs); it must get
    its answer. One request thread, held by a request whose body is sent late, keeps the accepted connection queued
    until after the SIGTERM."""
    import socket

    import psutil

    ws = Workspace.at(tmp_path)
    _, card = tiny_encoder(ws, seed=1)
    server = LiveServer(ws.root, {"encoder": card.id, "threads": 1, "workers": 1}).start()
    body = png()
    try:
        (worker,) = psutil.Process(server.proc.pid).children()
        held = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        head = f"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
        held.sendall(head.encode() + body[:10])  # the one thread now waits for the rest of the body
        time.sleep(0.5)
        late = socket.create_connection(("127.0.0.1", server.port), timeout=20)  # accepted, queued for the thread
        time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        held.sendall(body[10:])  # frees the thread: it takes `late`, whose request head has not come yet
        assert held.recv(65536).startswith(b"HTTP/1.1 200"), server.log()
        time.sleep(0.5)
        late.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = late.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), f"{answer!r}\n{server.log()}"
        assert b"connection: close" in answer.lower()
        worker.wait(30)  # the stopping worker exits once it has answered
    finally:
        server.stop()
