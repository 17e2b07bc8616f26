"""Stopping a child that leads its own process group (started with `start_new_session=True`): SIGTERM the group,
wait, SIGKILL the group if it is still there, reap. Shared by the collector's ffmpeg pipelines and the demo's steps,
so neither leaves a process (or a zombie) behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the group `proc` leads (pgid == pid); a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def terminate_group(proc: subprocess.Popen, grace: float) -> bool:
    """SIGTERM the group, SIGKILL it after `grace` seconds, reap the leader; True when SIGKILL was needed."""
    if proc.poll() is not None:
        return False
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
        return False
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait()
        return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
