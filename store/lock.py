"""One writer per workspace folder (`workspace_lock`), and one collector per source across hosts (`Lease`).

One writer per workspace: an exclusive `flock` on `<workspace>/collector/lock`, held for the writer's life.

The collector daemon holds it while it runs; `fth frames recover` takes it for its repair. A second collector on the
same workspace would otherwise run too, and each one's start-up recovery could roll back the other's writes in flight.
The kernel drops the lock when its holder exits, however it exits, so a crash never leaves a stale lock behind. The
lock file records the holder's pid and command for the message the next one gets.

A flock guards one machine's folder only. Collectors on several hosts (or several workspace folders) writing one
shared catalog hold a `Lease` per source in the catalog instead: a row with the holder and an expiry, renewed while
the collector runs, so a second collector of the same source is refused, and a dead one's lease lapses on its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from store.paths import Workspace


class WorkspaceBusy(RuntimeError):
    """Another process holds the workspace's writer lock."""


@contextlib.contextmanager
def workspace_lock(ws: Workspace, holder: str) -> Iterator[None]:
    """Hold the workspace's writer lock for the `with` body; `WorkspaceBusy` at once when another process has it."""
    path = ws.collector / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise WorkspaceBusy(f"workspace {ws.root} is in use by {owner} (lock {path}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({holder})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class SourceLeased(RuntimeError):
    """Another collector (this host or another) holds a source's lease in the shared catalog."""


def holder_name(what: str) -> str:
    """`host:pid:random (what)`: unique per process start, readable in the message the next one gets."""
    import socket
    import uuid

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]} ({what})"


def _dead_here(holder: str) -> bool:
    """Whether `holder` (as `holder_name` wrote it) was a process of this host that is no longer running."""
    import socket

    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """Lease `name` (e.g. `source:cam1`) in the catalog (`Catalog.acquire_lease`), held by this process for its life:
    taken at `acquire()` (waiting up to `wait_s` for a live holder's lease to lapse), renewed every `ttl/3` by a
    thread, released at `release()`. A holder that dies (kill -9, power cut, lost host) stops renewing and its lease
    lapses `ttl` seconds later, so a restarted or replacement collector takes over within `ttl`. When a renewal
    finds the lease taken by another holder (this process was stalled past `ttl`), `on_lost` is called once.
    """

    def __init__(self, catalog, name: str, holder: str, ttl: float = 30.0, on_lost=None):
        self.catalog, self.name, self.holder, self.ttl, self.on_lost = catalog, name, holder, float(ttl), on_lost
        self.lost = False
        self._stop = None
        self._thread = None

    def acquire(self, wait_s: float = 0.0) -> Lease:
        import threading
        import time

        deadline = time.monotonic() + wait_s
        while True:
            holder, expires = self.catalog.acquire_lease(self.name, self.holder, self.ttl)
            if holder == self.holder:
                break
            if _dead_here(holder):  # a crashed holder on this host: no need to wait for its lease to lapse
                holder, _ = self.catalog.acquire_lease(self.name, self.holder, self.ttl, now=expires + 1e-3)
                if holder == self.holder:
                    break
            left = expires - time.time()
            if time.monotonic() + min(left, 1.0) > deadline:
                raise SourceLeased(
                    f"{self.name} is held by {holder} for {max(left, 0):.0f} s more (lease ttl {self.ttl:.0f} s, "
                    f"renewed while it runs); stop it first, or wait for its lease to lapse"
                )
            time.sleep(min(max(left, 0.05), 1.0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease {self.name}", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                holder, _ = self.catalog.acquire_lease(self.name, self.holder, self.ttl)
            except Exception:  # a database hiccup: try again next round (the lease still has 2/3 of its ttl)
                continue
            if holder != self.holder and not self.lost:
                self.lost = True
                if self.on_lost is not None:
                    self.on_lost(self.name, holder)

    def release(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        if not self.lost:
            with contextlib.suppress(Exception):
                self.catalog.release_lease(self.name, self.holder)
