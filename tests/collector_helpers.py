"""Test helpers for the collector: a real ffmpeg publishing live HLS, a loopback server that can misbehave.

`Publisher` runs ffmpeg (`-re`, lavfi source, libx264, `-f hls -hls_flags delete_segments`, 1 s segments) into a
folder; `FaultServer` serves that folder on 127.0.0.1 and can be switched to: hang (accept, never answer), freeze
the playlist (keep serving a snapshot, so it stops advancing), answer 403 for an old token while `/page`
redirects to the new one (a rotated signed URL), or serve garbage. `collector_ffmpegs()` lists the collector's
ffmpeg children still alive or unreaped (none may outlive a test).
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

from collector.ffmpeg_bin import ffmpeg_exe
from collector.httpserve import Handler, StaticServer


def wait_for(cond, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


class Publisher:
    """ffmpeg publishing a live HLS stream of `lavfi` into `folder` (restartable)."""

    def __init__(self, folder: Path, lavfi: str = "testsrc2=size=320x192:rate=10", extra: tuple[str, ...] = ()):
        self.folder, self.lavfi, self.extra = Path(folder), lavfi, extra
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Publisher:
        args = [
            ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", self.lavfi,
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p", *self.extra,
            "-f", "hls", "-hls_time", "1", "-hls_list_size", "5", "-hls_flags", "delete_segments",
            str(self.folder / "index.m3u8"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, start_new_session=True)
        assert wait_for(self.ready, 15), "publisher produced no playlist"
        return self

    def ready(self) -> bool:
        try:
            return (self.folder / "index.m3u8").read_text().count(".ts") >= 1
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class FaultHandler(Handler):
    def route(self, path: str):
        srv = self.server
        if srv.mode == "hang":
            srv.release.wait()
            return 503
        if srv.mode == "garbage":
            return b"\x00garbage" + random.randbytes(3000)
        if path.startswith("/page"):
            query = f"?expire={int(time.time() + srv.expire_in)}" if srv.expire_in else ""
            return 302, f"/live/{srv.token}/index.m3u8{query}"
        if path.startswith("/live/"):
            _, _, token, rest = path.split("/", 3)
            if token != srv.token:
                srv.forbidden += 1
                return 403
            path = "/" + rest
        if srv.mode == "freeze" and path.split("?")[0].endswith(".m3u8"):
            if srv.frozen is None:
                srv.frozen = (srv.root / "index.m3u8").read_bytes()
            return srv.frozen
        return super().route(path)

    def _answer(self, head_only: bool) -> None:
        answer = self.route(self.path)
        if isinstance(answer, bytes):
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.apple.mpegurl")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        elif isinstance(answer, Path):
            self.send_file(answer, head_only)
        elif isinstance(answer, tuple):
            self.send_status(*answer)
        else:
            self.send_status(answer)


class FaultServer(StaticServer):
    """StaticServer whose `mode` is ok | hang | freeze | garbage, with a rotatable `/live/<token>/` prefix."""

    def __init__(self, root: Path):
        super().__init__(root, handler=FaultHandler)
        self.httpd.mode = "ok"
        self.httpd.token = "t0"
        self.httpd.frozen = None
        self.httpd.forbidden = 0
        self.httpd.expire_in = 0  # > 0: /page redirects to a URL carrying ?expire=now+expire_in
        self.httpd.release = threading.Event()

    def set_mode(self, mode: str) -> None:
        self.httpd.frozen = None
        self.httpd.mode = mode
        if mode != "hang":
            self.httpd.release.set()
            self.httpd.release = threading.Event()

    def rotate(self, token: str) -> None:
        self.httpd.token = token

    def stop(self) -> None:
        self.httpd.release.set()
        super().stop()


def collector_ffmpegs() -> list[tuple[int, str]]:
    """(pid, state) of this process's ffmpeg children that are collector pipelines (image2pipe), zombies included."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and b"ffmpeg" in cmd and b"image2pipe" in cmd:
            found.append((int(entry), fields[0]))
    return found
