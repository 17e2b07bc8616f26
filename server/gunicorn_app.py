"""gunicorn, embedded: `GunicornApp(cfg).run()` serves `create_app(cfg)` with the settings `cfg` holds.

A `gunicorn.app.base.BaseApplication` subclass receives the `ServeConfig` object itself: no command line, no config
file, no environment variable in between. Workers are `server.worker.ThreadWorker` (gthread that keeps slow clients
in its poller); `preload_app` stays False, so the master imports no model code and every worker loads its own model.
On SIGTERM gunicorn stops accepting, waits up to `graceful_timeout` for requests in flight, then `worker_exit` drains
what the batcher still holds. Each worker's Prometheus files are marked dead when it exits (`server.metrics`).
"""

from __future__ import annotations

import logging
import os

from gunicorn.app.base import BaseApplication

from server.config import ServeConfig
from server.worker import ThreadWorker


def _post_worker_init(worker) -> None:
    level = os.environ.get("FTH_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _worker_exit(server, worker) -> None:
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get("fth") if app is not None else None
    if service is not None:
        service.close(drain=True)


def _child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


class GunicornApp(BaseApplication):
    """The embedding service under gunicorn.

    Args:
        cfg: the serving config; `bind`, `workers`, `threads`, `graceful_timeout_s`, `timeout_s`, `header_timeout_s`
            and `body_timeout_s` set gunicorn, the rest the app.
    """

    def __init__(self, cfg: ServeConfig):
        self.serve_cfg = cfg
        super().__init__()

    def load_config(self) -> None:
        cfg = self.serve_cfg
        ThreadWorker.header_timeout_s = cfg.header_timeout_s  # class attributes: the workers are forked after this
        ThreadWorker.body_timeout_s = cfg.body_timeout_s
        settings = {
            "bind": [cfg.bind],
            "workers": cfg.workers,
            "threads": cfg.threads,
            "worker_class": ThreadWorker,
            "graceful_timeout": int(cfg.graceful_timeout_s),
            "timeout": int(cfg.timeout_s),
            "keepalive": 5,
            "preload_app": False,
            "control_socket_disable": True,  # several servers on one host would otherwise share ~/.gunicorn/
            "accesslog": os.environ.get("FTH_ACCESS_LOG") or None,
            "errorlog": "-",
            "loglevel": os.environ.get("FTH_LOG_LEVEL", "info").lower(),
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from server.app import create_app  # in the worker: torch is imported there, never in the master

        return create_app(self.serve_cfg)
