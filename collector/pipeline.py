"""One persistent ffmpeg per source: the command (built with ffmpeg-python), the process, its frames and its stderr.

ffmpeg decodes the stream (keyframes only with `-skip_frame nokey`), keeps the first frame of every `interval`
window of stream time (a `select` on `floor(t / interval)`, restarted when timestamps jump back; unlike `fps`
it never duplicates a frame when keyframes are sparser than the interval), scales it and writes it to stdout
as BMP: a format whose header carries its own length, so frames are cut from the pipe exactly, and lossless, so
the JPEG is encoded once.

Known traps handled here: `-rw_timeout` (a silent socket otherwise blocks forever), `-m3u8_hold_counters` (a
playlist that stops advancing is otherwise polled for ~30 min, then ffmpeg exits 0), and a process group of its
own (blocked in an HLS reload, ffmpeg can ignore SIGTERM: `stop` sends SIGTERM to the group, waits, sends SIGKILL,
then reaps, so no ffmpeg outlives its pipeline and none is left a zombie).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable

import ffmpeg

from collector.config import SourceConfig
from collector.ffmpeg_bin import ffmpeg_exe
from collector.sources import URL_GONE, Resolved
from fth.procs import terminate_group

log = logging.getLogger(__name__)


def build_args(src: SourceConfig, resolved: Resolved, exe: str | None = None, live_start_index: int = -1) -> list[str]:
    """The ffmpeg command line for one source: input options, select + scale filters, BMP frames on stdout.
    `live_start_index`: the HLS segment to start at, counted from the live edge (-1: the newest); the supervisor
    starts further back after a restart (`SourceConfig.resume_s`)."""
    opts: dict = {}
    url = resolved.url
    if src.keyframes_only:
        opts["skip_frame"] = "nokey"
    if url.startswith(("http://", "https://")):
        opts["rw_timeout"] = int(src.rw_timeout_s * 1e6)
        if resolved.kind in ("hls", "sim") or ".m3u8" in url:
            hold = src.hold_counters or max(3, int(src.stall_timeout))
            opts["m3u8_hold_counters"] = hold
            opts["live_start_index"] = live_start_index  # -1: the live edge, not a burst of older segments
        if resolved.headers:
            opts["headers"] = "".join(f"{k}: {v}\r\n" for k, v in resolved.headers.items())
    elif resolved.kind == "rtsp" and url.startswith(("rtsp://", "rtsps://")):
        opts["rtsp_transport"] = "tcp"
        opts["timeout"] = int(src.rw_timeout_s * 1e6)
    elif resolved.kind == "file" and src.realtime:
        opts["re"] = None
    interval = f"{src.interval_s:g}"
    video = ffmpeg.input(url, **opts).video.filter(
        # first frame; first frame of each new interval window; or time went backwards (a discontinuity, a
        # looped or restarted publisher), which would otherwise stop sampling until the timestamps catch up
        "select",
        f"isnan(prev_selected_t)+gt(floor(t/{interval}),floor(prev_selected_t/{interval}))+lt(t,prev_selected_t)",
    )
    if src.width > 0 or src.height > 0:
        w = src.width if src.width > 0 else -2
        h = src.height if src.height > 0 else -2
        video = video.filter("scale", w, h)
    out = ffmpeg.output(video, "pipe:1", format="image2pipe", vcodec="bmp", pix_fmt="bgr24", fps_mode="passthrough")
    args = out.compile(cmd=exe or ffmpeg_exe())
    args[1:1] = ["-nostdin", "-hide_banner", "-nostats", "-loglevel", "warning"]
    return args


def read_exact(stream, n: int) -> bytes:
    """Read exactly n bytes from a pipe, or fewer at EOF."""
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class FFmpegProcess:
    """A running ffmpeg whose stdout is cut into BMP frames for `on_frame(bmp_bytes)` and whose stderr is logged.

    `on_frame` runs in the reader thread, so a frame is stored before the next one is read (and a slow disk
    slows ffmpeg through the pipe instead of growing memory).
    """

    def __init__(self, args: list[str], on_frame: Callable[[bytes], None], name: str, tail_lines: int = 30):
        self.args = args
        self.on_frame = on_frame
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.url_gone = False
        self.protocol_error: str | None = None
        self.frames = 0
        self.started = 0.0
        self._threads: list[threading.Thread] = []
        self._stderr_log = logging.getLogger(f"collector.ffmpeg.{name}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> FFmpegProcess:
        # Own session = own process group, so a stop signals ffmpeg and anything it spawned, and Ctrl-C in a
        # terminal reaches only the daemon, which then stops ffmpeg in order.
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            bufsize=0,
        )
        self.started = time.monotonic()
        for target, what in ((self._read_frames, "frames"), (self._read_stderr, "stderr")):
            t = threading.Thread(target=target, name=f"ffmpeg-{self.name}-{what}", daemon=True)
            t.start()
            self._threads.append(t)
        log.debug("event=ffmpeg_started source=%s pid=%d cmd=%s", self.name, self.proc.pid, " ".join(self.args))
        return self

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def _read_frames(self) -> None:
        out = self.proc.stdout
        while True:
            header = read_exact(out, 14)
            if len(header) < 14:
                return
            if header[:2] != b"BM":
                self.protocol_error = f"not a BMP frame on stdout: {header[:8]!r}"
                return
            size = int.from_bytes(header[2:6], "little")
            body = read_exact(out, size - 14)
            if len(body) < size - 14:
                return
            self.frames += 1
            try:
                self.on_frame(header + body)
            except Exception:  # one bad frame (disk full, ...) must not kill the reader; it is counted by the sink
                log.exception("event=frame_handler_failed source=%s", self.name)

    def _read_stderr(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self.tail.append(line)
            if URL_GONE.search(line):
                self.url_gone = True
            self._stderr_log.info("%s", line)

    def stop(self, timeout: float = 3.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout`, reap, join the reader threads; returns the status."""
        proc = self.proc
        if proc is None:
            return None
        if terminate_group(proc, timeout):
            log.warning("event=ffmpeg_kill source=%s pid=%d reason=ignored_sigterm", self.name, proc.pid)
        for t in self._threads:
            t.join(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        return proc.returncode
