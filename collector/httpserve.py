"""A small threaded HTTP server for a folder on loopback: how the sim (and the tests) publish live HLS.

ffmpeg writes an HLS playlist and its segments into a folder; this serves that folder over HTTP so that the
collector reads it exactly as it would read a camera's stream. `StaticServer` runs in a daemon thread and is a
context manager. `Handler.route` is the seam for tests that need a misbehaving server (hang, 403, garbage).
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import mimetypes
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t", ".m4s": "video/iso.segment"}


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves files under `server.root`; subclasses override `route` to change what a path answers."""

    protocol_version = "HTTP/1.1"
    server: StaticServer.HTTPServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s %s", self.address_string(), format % args)

    def handle(self) -> None:
        # a client that went away (ffmpeg killed mid-request) is not the server's error
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            super().handle()

    def route(self, path: str) -> Path | int | tuple[int, str]:
        """The file to serve for a URL path, an HTTP status code, or (3xx status, Location) to redirect."""
        rel = path.split("?", 1)[0].lstrip("/")
        target = (self.server.root / rel).resolve()
        if self.server.root not in target.parents and target != self.server.root:
            return 403
        return target if target.is_file() else 404

    def send_file(self, target: Path, head_only: bool = False) -> None:
        try:
            data = target.read_bytes()
        except OSError:  # deleted between the check and the read (a live playlist rotates segments)
            self.send_status(404)
            return
        ctype = CONTENT_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if not head_only:
            self.wfile.write(data)

    def send_status(self, code: int, location: str | None = None) -> None:
        body = f"{code}\n".encode()
        self.send_response(code)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._answer(head_only=False)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self._answer(head_only=True)

    def _answer(self, head_only: bool) -> None:
        try:
            answer = self.route(self.path)
            if isinstance(answer, Path):
                self.send_file(answer, head_only)
            elif isinstance(answer, tuple):
                self.send_status(*answer)
            else:
                self.send_status(answer)
        except (BrokenPipeError, ConnectionResetError):
            pass


class StaticServer:
    """`with StaticServer(folder) as srv: srv.url("index.m3u8")` serves `folder` on 127.0.0.1 until the block ends."""

    class HTTPServer(http.server.ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        root: Path

    def __init__(self, root: str | Path, port: int = 0, host: str = "127.0.0.1", handler: type[Handler] = Handler):
        self.httpd = self.HTTPServer((host, port), handler)
        self.httpd.root = Path(root).resolve()
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http-static", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def start(self) -> StaticServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
