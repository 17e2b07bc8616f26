"""Publishing the sim as a live camera: frames rendered in real time -> ffmpeg (H.264, HLS) -> loopback HTTP.

`SimPublisher(cfg, folder).start()` writes `sim.json` into the folder, renders frame i at wall time
epoch + i / fps (the epoch is kept in sim.json, so a restarted publisher continues the same clock and never
repeats an index), pipes raw RGB into one ffmpeg that writes a live HLS playlist with 1 s segments
(`-hls_flags delete_segments`, keyframe every segment), and serves the folder on 127.0.0.1. `url` is the
playlist's URL. `fth sim serve` runs one until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from collector.config import SimConfig
from collector.ffmpeg_bin import ffmpeg_exe
from collector.httpserve import StaticServer
from collector.sim import frame, load_sim_config, save_sim_config

log = logging.getLogger(__name__)


def hls_args(cfg: SimConfig, folder: Path, exe: str | None = None) -> list[str]:
    gop = max(1, round(cfg.fps * cfg.segment_s))
    return [
        exe or ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{cfg.width}x{cfg.height}", "-framerate", f"{cfg.fps:g}",
        "-i", "pipe:0",
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-crf", "20", "-pix_fmt", "yuv420p",
        "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
        "-f", "hls", "-hls_time", f"{cfg.segment_s:g}", "-hls_list_size", str(cfg.list_size),
        "-hls_flags", "delete_segments+independent_segments",
        "-hls_segment_filename", str(folder / "seg_%08d.ts"), str(folder / "index.m3u8"),
    ]  # fmt: skip


class SimPublisher:
    """The sim as a live HLS camera on loopback. `start()`, `url`, `stop()`; also a context manager."""

    def __init__(self, cfg: SimConfig, folder: str | Path, port: int = 0, host: str = "127.0.0.1"):
        self.cfg = cfg
        self.folder = Path(folder)
        self.port, self.host = port, host
        self.proc: subprocess.Popen | None = None
        self.server: StaticServer | None = None
        self.epoch = 0.0
        self.rendered = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.server.url("index.m3u8")

    def start(self) -> SimPublisher:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.epoch = time.time()
        if (self.folder / "sim.json").exists():
            old, epoch = load_sim_config(self.folder)
            if old == self.cfg and epoch > 0:
                self.epoch = epoch  # same sim: continue its clock (frame indexes stay unique)
        save_sim_config(self.cfg, self.folder, self.epoch)
        for stale in [*self.folder.glob("*.ts"), *self.folder.glob("*.m3u8")]:
            stale.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            hls_args(self.cfg, self.folder), stdin=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        threading.Thread(target=self._log_stderr, name="sim-ffmpeg-stderr", daemon=True).start()
        self.server = StaticServer(self.folder, self.port, self.host).start()
        self._thread = threading.Thread(target=self._render_loop, name="sim-render", daemon=True)
        self._thread.start()
        log.info("event=sim_started url=%s folder=%s size=%dx%d fps=%g", self.url, self.folder, self.cfg.width,
                 self.cfg.height, self.cfg.fps)  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 15.0) -> bool:
        """True once the playlist lists at least one segment."""
        deadline = time.monotonic() + timeout
        playlist = self.folder / "index.m3u8"
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if ".ts" in playlist.read_text():
                    return True
            time.sleep(0.1)
        return False

    def _render_loop(self) -> None:
        index = int((time.time() - self.epoch) * self.cfg.fps)
        try:
            while not self._stop.is_set():
                due = self.epoch + index / self.cfg.fps
                delay = due - time.time()
                if delay > 0 and self._stop.wait(delay):
                    break
                if delay < -2.0:  # fell behind (machine suspended, overloaded): skip ahead, keep the clock real
                    index = int((time.time() - self.epoch) * self.cfg.fps)
                rgb, _ = frame(self.cfg, index)
                self.proc.stdin.write(rgb.tobytes())
                self.rendered += 1
                index += 1
        except (BrokenPipeError, OSError, ValueError) as e:
            if not self._stop.is_set():
                log.error("event=sim_failed error=%s", e)

    def _log_stderr(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            log.warning("sim ffmpeg: %s", raw.decode("utf-8", "replace").rstrip())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> SimPublisher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
