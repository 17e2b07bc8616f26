"""gunicorn settings for `fth serve` (gthread workers), read from `$FTH_SERVE_CONFIG` like the app.

On SIGTERM gunicorn stops accepting, waits up to `graceful_timeout` for requests in flight, then calls `worker_exit`,
where the batcher drains what is still queued. `preload_app` stays False: the master imports no model code.
"""

from __future__ import annotations

import json
import logging
import os

_cfg = json.loads(os.environ.get("FTH_SERVE_CONFIG", "{}"))

bind = _cfg.get("bind", "127.0.0.1:8000")
workers = int(_cfg.get("workers", 1))
threads = int(_cfg.get("threads", 16))
worker_class = "gthread"
graceful_timeout = int(_cfg.get("graceful_timeout_s", 30))
timeout = int(_cfg.get("timeout_s", 120))
keepalive = 5
preload_app = False
control_socket_disable = True  # several servers on one host would otherwise share ~/.gunicorn/gunicorn.ctl
accesslog = os.environ.get("FTH_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("FTH_LOG_LEVEL", "info").lower()


def post_worker_init(worker) -> None:
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def worker_exit(server, worker) -> None:
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get("fth") if app is not None else None
    if service is not None:
        service.close(drain=True)
