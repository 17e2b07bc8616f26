"""gunicorn, embedded: `GunicornApp(cfg).run()` serves `create_app(cfg)` with the settings `cfg` holds.

A `gunicorn.app.base.BaseApplication` subclass receives the `ServeConfig` object itself: no command line, no config
file, no environment variable in between. Workers are `server.worker.ThreadWorker` (gthread that keeps slow clients
in its poller); `preload_app` stays False, so the master imports no model code and every worker loads its own model.
On SIGTERM gunicorn stops accepting, waits up to `graceful_timeout` for requests in flight, then `worker_exit` drains
what the batcher still holds. Each worker's Prometheus files are marked dead when it exits (`server.metrics`).

Swaps (`server.swap`): the master records itself in `<workspace>/serve/<bind>.json` (and gunicorn's pid file beside
it) once ready. A worker forked while others run (a swap or a respawn) warms up before it takes a connection; one
forked beyond the configured count (SIGTTIN, a swap) then sends the master SIGTTOU, which stops the oldest worker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from datetime import UTC, datetime

from gunicorn.app.base import BaseApplication

from server.config import ServeConfig
from server.swap import info_name, serve_dir
from server.worker import ThreadWorker
from store.fsutil import atomic_write
from store.paths import Workspace

log = logging.getLogger(__name__)


def _pre_fork(arbiter, worker) -> None:
    """In the master, before each fork: mark workers that join running ones (see the module docstring)."""
    worker.fth_warm_first = bool(arbiter.WORKERS)
    worker.fth_swap = arbiter.num_workers > arbiter.cfg.workers


def _post_worker_init(worker) -> None:
    level = os.environ.get("FTH_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = getattr(worker.wsgi, "extensions", {}).get("fth")
    if service is None or not getattr(worker, "fth_warm_first", False):
        return
    deadline = time.monotonic() + service.cfg.timeout_s
    while not service.ready.wait(1.0):  # run() has not started: connections wait in the master's listen backlog
        worker.notify()  # the master's heartbeat check (timeout_s) must not kill a worker that is warming up
        if time.monotonic() > deadline:
            log.error("not warm after %.0f s; the workers it was to replace keep serving", service.cfg.timeout_s)
            return
    if getattr(worker, "fth_swap", False):
        log.info("warm, serving encoder %s; asking the master to stop the oldest worker", service.runner.encoder_id)
        os.kill(worker.ppid, signal.SIGTTOU)


def _info_file(cfg: ServeConfig):
    return serve_dir(Workspace.at(cfg.workspace)) / f"{info_name(cfg.bind)}.json"


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
        info = _info_file(cfg)
        info.parent.mkdir(parents=True, exist_ok=True)

        def when_ready(arbiter) -> None:
            record = {"pid": arbiter.pid, "bind": cfg.bind, "workers": cfg.workers}
            record["started"] = datetime.now(UTC).isoformat(timespec="seconds")
            with atomic_write(info, "w") as f:
                f.write(json.dumps(record) + "\n")

        def on_exit(arbiter) -> None:
            info.unlink(missing_ok=True)

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
            "pidfile": str(info.with_suffix(".pid")),
            "when_ready": when_ready,
            "on_exit": on_exit,
            "pre_fork": _pre_fork,
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from server.app import create_app  # in the worker: torch is imported there, never in the master

        return create_app(self.serve_cfg)
