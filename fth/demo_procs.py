"""Child processes of `fth demo`: each `fth` step in its own process group, logged to a file, always stopped.

A step runs in a new session (`start_new_session`), so a Ctrl-C at the terminal reaches only the demo, which then
stops the step itself: SIGTERM to the step's process group (the clean exit every `fth` daemon implements), SIGKILL
after a grace period, then the same for any descendant that lives in a session of its own (ffmpeg started with
`start_new_session` by the collector or the sim publisher) and outlived its parent. Descendants are read from
/proc (Linux); elsewhere only the process group is signalled.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fth.procs import signal_group, terminate_group

GRACE_S = 20.0


def fth_argv() -> list[str]:
    """How to run `fth` with the interpreter running the demo: the venv's script beside it, else `python -m fth`."""
    script = Path(sys.executable).parent / "fth"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fth"]


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process (empty where /proc is missing)."""
    out: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(entry.path, "stat").read_text()
                out[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])  # after "(comm) state"
    return out


def descendants(pid: int) -> list[int]:
    """All living descendants of `pid` (children first)."""
    children: dict[int, list[int]] = {}
    for child, parent in _ppids().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        return state[state.rindex(")") + 2] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class Step:
    """One `fth` command as a child process.

    Args:
        name: short name (log file stem).  args: the arguments after `fth`.  log_path: where stdout+stderr go.
        env: extra environment variables (shown before the command).
    """

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name, self.args, self.log_path = name, [str(a) for a in args], Path(log_path)
        self.extra_env = dict(env or {})
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.proc: subprocess.Popen | None = None
        self._known: set[int] = set()

    @property
    def shown(self) -> str:
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in self.extra_env.items())
        return f"{prefix}fth {shlex.join(self.args)}"

    def start(self) -> Step:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {self.shown}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*fth_argv(), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    def remember_children(self) -> None:
        """Note the current descendants so `stop` can find them even after their parent is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self._known.update(descendants(self.proc.pid))

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit (polling, so Ctrl-C and SIGTERM reach the demo promptly); TimeoutError after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.shown} still running after {timeout:.0f} s")
            self.remember_children()
            time.sleep(0.2)
        return self.proc.returncode

    def stop(self, grace: float = GRACE_S) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace` s, then SIGKILL leftover descendants; reap."""
        if self.proc is None:
            return None
        self.remember_children()
        terminate_group(self.proc, grace)
        signal_group(self.proc, signal.SIGKILL)  # anything left in the group (the leader is reaped)
        deadline = time.monotonic() + 5.0
        while any(alive(p) for p in self._known) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self._known:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def last_line(self, prefix: str) -> str | None:
        """The last log line starting with `prefix`, without it."""
        lines = [ln[len(prefix) :].strip() for ln in self.output().splitlines() if ln.startswith(prefix)]
        return lines[-1] if lines else None


class Steps:
    """A sequence of `fth` commands run as child processes, each echoed as `$ fth ...` and logged to
    `<logs>/NN-<name>.log` (`fth demo`, `fth update`); background steps are stopped by `stop_all`.

    Args:
        logs: the folder for the steps' logs.
    """

    def __init__(self, logs: Path):
        self.logs = Path(logs)
        self.steps: list[dict[str, Any]] = []
        self.running: list[Step] = []  # background Steps, stopped in reverse order

    def _step(self, name: str, args: list[Any], env: dict[str, str] | None = None) -> Step:
        step = Step(name, args, self.logs / f"{len(self.steps) + 1:02d}-{name}.log", env)
        print(f"\n$ {step.shown}", flush=True)
        self.steps.append({"name": name, "command": step.shown, "log": str(step.log_path), "seconds": 0.0})
        return step

    def run(self, name: str, args: list[Any], show: tuple[str, ...] = (), ok=(0,), echo=False, env=None) -> Step:
        """Run one step to completion; print its output (`echo`) or the lines starting with `show`; RuntimeError
        (with the log's tail) when its exit code is not in `ok`."""
        step = self._step(name, args, env)
        t0 = time.monotonic()
        step.start()
        self.running.append(step)
        try:
            rc = step.wait()
        finally:
            step.stop()
            self.running.remove(step)
            self.steps[-1]["seconds"] = time.monotonic() - t0
            self.steps[-1]["rc"] = step.proc.returncode if step.proc else None
        lines = step.output().splitlines()[1:]
        shown = lines if echo else [ln for ln in lines if ln.startswith(show)] if show else []
        for line in shown:
            print(f"  {line}")
        print(f"  ({self.steps[-1]['seconds']:.1f} s, log {step.log_path})", flush=True)
        if rc not in ok:
            tail = "\n".join(f"  | {ln}" for ln in lines[-25:])
            raise RuntimeError(f"step {name} failed with exit code {rc}:\n{tail}")
        return step

    def background(self, name: str, args: list[Any], env: dict[str, str] | None = None) -> Step:
        step = self._step(name, args, env)
        self.steps[-1]["started"] = time.monotonic()
        step.start()
        self.running.append(step)
        print(f"  (running in the background, pid {step.proc.pid}, log {step.log_path})", flush=True)
        return step

    def finish(self, step: Step, what: str) -> int | None:
        """Stop a background step with SIGTERM (SIGKILL after a grace period) and record its time."""
        rc = step.stop()
        if step in self.running:
            self.running.remove(step)
        for s in self.steps:
            if s["log"] == str(step.log_path):
                s["seconds"] = time.monotonic() - s.pop("started", time.monotonic())
        print(f"  {what}: SIGTERM -> exit code {rc}", flush=True)
        return rc

    def stop_all(self) -> None:
        for step in reversed(self.running):
            step.stop()
        self.running.clear()


class Interrupted(KeyboardInterrupt):
    """SIGTERM to a step runner (`fth demo`, `fth update`): unwind like Ctrl-C so every child is stopped."""


def _on_sigterm(signum, frame) -> None:
    raise Interrupted()


def guarded(steps: Steps, what: str, body: Callable[[], None], cleanup: Callable[[], None] = lambda: None) -> int:
    """Run `body` (a sequence of steps) so that Ctrl-C, SIGTERM and a failed step stop everything it started.

    Returns 0 when `body` finished, 130 when interrupted, 1 when a step failed (RuntimeError, printed as
    `<what>: <message>`). `cleanup` runs first on the way out, then every background step is stopped."""
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        body()
        return 0
    except KeyboardInterrupt:
        print(f"\n{what}: interrupted; stopping everything it started", file=sys.stderr, flush=True)
        return 130
    except RuntimeError as e:
        print(f"\n{what}: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            cleanup()
            steps.stop_all()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, old_term)
