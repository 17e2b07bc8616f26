"""Switching a running `fth serve` to another encoder and heads without a failed request.

Each gunicorn master of `fth serve` writes `<workspace>/serve/<host>-<port>.json` (pid, bind, workers) when it is
ready and removes it on exit (`server.gunicorn_app`); gunicorn's own pid file sits beside it. A swap is gunicorn's
worker-count signals, so old workers serve until the new ones are warm:

1. `signal_swap` sends the master one SIGTTIN per worker: it forks that many extra workers, and each loads the set
   `release.json` names now (`server.runner`; the master never loads a model, `preload_app` is off).
2. A worker forked beyond the configured count (`server.gunicorn_app._pre_fork` marks it) finishes its warm-up
   before it takes a connection, then sends the master SIGTTOU: the master stops the oldest worker with SIGTERM, which
   stops accepting at once, answers what it holds (a request on a kept-alive connection gets `Connection: close`)
   and exits. The listening socket belongs to the master throughout, so no connection is refused.
3. `wait_swapped` returns when every worker that was there before has exited and `/readyz` names the new encoder:
   from then on every answer carries it.

SIGHUP (gunicorn's reload) also makes every worker load the current set, but stops the old workers before the new
ones have loaded, so requests wait (in the listen backlog) for a model load.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from store.paths import Workspace


class NoServer(RuntimeError):
    """No `fth serve` is running on the workspace."""


@dataclass(frozen=True)
class ServerInfo:
    """A running `fth serve` master: its pid, bind address, configured worker count and its info file."""

    pid: int
    bind: str
    workers: int
    file: Path


def serve_dir(ws: Workspace) -> Path:
    return ws.root / "serve"


def info_name(bind: str) -> str:
    """`127.0.0.1:8000` -> `127.0.0.1-8000`, `unix:/run/fth.sock` -> `unix-_run_fth.sock` (one file per bind)."""
    return bind.replace(":", "-").replace("/", "_")


def _is_serve_master(pid: int) -> bool:
    """The process exists and (where /proc tells) runs `fth serve`: a pid reused by another program is not signalled."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.is_file():
        return b"serve" in cmdline.read_bytes()
    return True


def running(ws: Workspace) -> list[ServerInfo]:
    """The live `fth serve` masters of `ws`; info files of dead ones (a crash, kill -9) are removed."""
    found = []
    for file in sorted(serve_dir(ws).glob("*.json")):
        try:
            data = json.loads(file.read_text())
            info = ServerInfo(int(data["pid"]), data["bind"], int(data["workers"]), file)
        except (OSError, ValueError, KeyError):
            continue
        if _is_serve_master(info.pid):
            found.append(info)
        else:
            file.unlink(missing_ok=True)
    return found


def children(pid: int) -> set[int] | None:
    """Pids of `pid`'s child processes (Linux /proc), or None where that cannot be read."""
    kids = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4 (ppid), after the parenthesised command name
            kids.add(int(entry))
    return kids


def signal_swap(server: ServerInfo) -> set[int] | None:
    """Ask `server` for fresh workers (see the module docstring); returns the workers that must go (None: unknown)."""
    old = children(server.pid)
    for _ in range(server.workers):
        os.kill(server.pid, signal.SIGTTIN)
        time.sleep(0.05)  # separate signals: the master handles one per loop turn, and equal ones may merge
    return old


def wait_swapped(server: ServerInfo, old: set[int] | None, encoder: str, timeout: float = 120.0) -> float:
    """Wait until every worker in `old` has exited and `/readyz` names `encoder`; returns seconds waited."""
    import requests

    start = time.monotonic()
    deadline = start + timeout
    url = f"http://{server.bind}/readyz"
    while time.monotonic() < deadline:
        gone = old is None or not (old & (children(server.pid) or set()))
        if gone and server.bind.startswith("unix:"):
            return time.monotonic() - start
        if gone:
            try:
                resp = requests.get(url, timeout=2)
                if resp.status_code == 200 and resp.json().get("encoder") == encoder:
                    return time.monotonic() - start
            except requests.RequestException:
                pass
        if not _is_serve_master(server.pid):
            raise NoServer(f"the server on {server.bind} (pid {server.pid}) exited during the swap; see its log")
        time.sleep(0.1)
    raise TimeoutError(f"the server on {server.bind} did not switch to {encoder} in {timeout:.0f} s; see its log")
