"""One writer per workspace: an exclusive `flock` on `<workspace>/collector/lock`, held for the writer's life.

The collector daemon holds it while it runs; `fth frames recover` takes it for its repair. A second collector on the
same workspace would otherwise run too, and each one's start-up recovery could roll back the other's writes in flight.
The kernel drops the lock when its holder exits, however it exits, so a crash never leaves a stale lock behind. The
lock file records the holder's pid and command for the message the next one gets.
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
