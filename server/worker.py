"""The gunicorn worker of `fth serve`: gthread, with two changes a public endpoint needs.

1. **Slow clients wait in the poller, not in a thread.** gunicorn's gthread worker gives a connection a thread as soon
   as its first byte arrives, and the thread then blocks reading the rest of the request head. A client that sends
   its headers a byte at a time (slowloris) holds a thread for as long as it likes; `threads` such clients stop every
   endpoint. Here a connection gets a thread only once its whole request head (up to the blank line) is in the
   kernel's receive buffer, seen with `MSG_PEEK` without consuming anything; until then it goes back to the worker's
   poller, which costs one file descriptor. A head still incomplete after `header_timeout_s` is dropped. Bodies are
   read by the request thread (a slow body still holds one thread for up to `body_timeout_s` per read); the README's
   serving section says when to put a buffering proxy in front.
2. **A connection deferred while the worker stops is still answered.** (1) defers every new connection whose head has
   not arrived yet; gthread's `finish_request` only puts a deferred connection back in the poller while the worker is
   alive, and closes it unanswered once it is stopping. A swap stops the old workers while clients connect: a client
   accepted just before the SIGTERM, whose request head came a moment later, got a dropped connection. Here it goes
   back in the poller either way; the stopping worker's shutdown loop answers it (`Connection: close`) within
   gunicorn's keep-alive wait.
3. **gunicorn's own refusals are JSON.** A request gunicorn itself refuses (header too large, bad request line)
   gets the service's `{"error": {"code", "message"}}` body instead of gunicorn's HTML page.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import time
from functools import partial

from gunicorn import util
from gunicorn.workers import gthread

HEAD_END = b"\r\n\r\n"
PEEK_BYTES = 64 * 1024  # more than gunicorn's largest allowed head: a longer one is handed over and refused by it


def _snake(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's `util.write_error`, answering in the service's JSON error format."""
    body = json.dumps({"error": {"code": _snake(reason), "message": mesg or reason}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin1") + body)


class ThreadWorker(gthread.ThreadWorker):
    """gthread worker that gives a thread only to connections whose request head has fully arrived.

    `header_timeout_s` and `body_timeout_s` are set from the ServeConfig by `server.gunicorn_app` before the fork.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def init_process(self) -> None:
        util.write_error = write_json_error  # base.Worker.handle_error writes refusals through this function
        super().init_process()

    def _head_state(self, conn: gthread.TConn) -> str:
        """`ready` (head complete, or bytes already buffered by the parser), `wait`, `closed` or `late`."""
        if self.cfg.is_ssl or (conn.parser is not None and conn.parser.unreader.buf.getvalue()):
            return "ready"
        try:
            peeked = conn.sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            peeked = None
        except OSError:
            return "closed"
        if peeked == b"":
            return "closed"
        if peeked and (HEAD_END in peeked or len(peeked) >= PEEK_BYTES):
            return "ready"
        now = time.monotonic()
        deadline = getattr(conn, "head_deadline", None)
        if deadline is None:
            conn.head_deadline = deadline = now + self.header_timeout_s
        return "late" if now > deadline else "wait"

    def handle(self, conn: gthread.TConn):
        state = self._head_state(conn)
        if state == "wait":
            return gthread._DEFER  # back to the poller; on_pending_socket_readable brings it back on the next byte
        if state in ("closed", "late"):
            if state == "late":
                self.log.info("dropped a connection from %s: request head incomplete after %.0f s", conn.client,
                              self.header_timeout_s)  # fmt: skip
            return False
        conn.head_deadline = None  # the next request on this kept-alive connection gets its own deadline
        conn.data_ready = True
        return super().handle(conn)

    def finish_request(self, conn: gthread.TConn, fs) -> None:
        if self.alive or fs.cancelled() or fs.exception() is not None or fs.result() is not gthread._DEFER:
            return super().finish_request(conn, fs)
        # gthread's own deferral, minus its `self.alive` condition (see the module docstring, 2)
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))

    def handle_request(self, req, conn: gthread.TConn):
        conn.sock.settimeout(self.body_timeout_s)  # each read of the body (and write of the answer) is bounded
        return super().handle_request(req, conn)
