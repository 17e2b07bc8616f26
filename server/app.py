"""The Flask app factory of the embedding service (the pattern of Flask's tutorial: `create_app(config)`).

`create_app` loads the encoder and heads (`Runner`), starts the micro-batcher thread, warms the model up in the
background (`/readyz` answers 503 until then), and installs auth, metrics and JSON errors. Nothing is loaded at
import time: gunicorn builds the app in each worker (`server.gunicorn_app`), so every worker owns one model and the
master none.
Every error, including Flask's own 404/405/413, is answered as `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from fth.config import build, merge
from server import frames
from server.auth import OPEN_PATHS, KeyChecker, load_keys
from server.batcher import MicroBatcher
from server.config import ServeConfig
from server.images import APIError, Limits, PixelBudget, max_pixels, unmap_large_frees
from server.metrics import Metrics
from store.paths import Workspace

log = logging.getLogger(__name__)


class Service:
    """Everything one serving process owns: runner, batcher, metrics, auth, readiness.

    Args:
        cfg: the serving config.
    """

    def __init__(self, cfg: ServeConfig):
        from server.runner import Runner  # torch is imported here, in the worker, not at import time

        self.cfg = cfg
        if cfg.switch_interval_ms > 0:
            sys.setswitchinterval(cfg.switch_interval_ms / 1000)
        self.runner = Runner(cfg)
        self.metrics = Metrics(Workspace.at(cfg.workspace).root)
        self.batcher = MicroBatcher(
            self.runner.run,
            cfg.max_batch,
            cfg.max_wait_ms / 1000,
            cfg.queue_images,
            on_batch=lambda n, waits: self.metrics.batch(n, waits, self.batcher.depth),
        )
        unmap_large_frees()
        self.limits = Limits(cfg.max_images, max_pixels(cfg, self.runner.size))
        # the budget holds at least one largest image, or such an image could never be decoded
        self.pixels = PixelBudget(max(cfg.pixels_in_flight, self.limits.max_pixels), cfg.request_timeout_s)
        self.auth = KeyChecker(load_keys(cfg.api_keys_env, cfg.api_keys_file))
        self.ready = threading.Event()
        if cfg.warmup:
            threading.Thread(target=self._warmup, name="warmup", daemon=True).start()
        else:
            self.ready.set()

    def _warmup(self) -> None:
        try:
            seconds = self.runner.warmup(tuple(sorted({1, self.cfg.max_batch})))
            log.info("warmed up in %.2f s", seconds)
            self.ready.set()
        except Exception:
            log.exception("warm-up failed; /readyz stays 503")

    def close(self, drain: bool = True) -> None:
        """Stop taking work; with `drain`, answer everything queued first."""
        self.ready.clear()
        self.batcher.stop(drain=drain, timeout=self.cfg.graceful_timeout_s)
        log.info("batcher stopped (drain=%s)", drain)


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _config(config: ServeConfig | dict[str, Any] | str | Path | None) -> ServeConfig:
    if config is None:
        return ServeConfig()
    if isinstance(config, ServeConfig):
        return config
    if isinstance(config, dict):
        return merge(ServeConfig(), config, "create_app(config)")
    return build(ServeConfig, config)


def create_app(config: ServeConfig | dict[str, Any] | str | Path | None = None) -> Flask:
    """Build the app: `config` is a ServeConfig, a dict of its fields, a YAML path / preset name, or None."""
    cfg = _config(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = cfg.max_body_bytes
    app.json.sort_keys = False
    service = Service(cfg)
    app.extensions["fth"] = service

    @app.before_request
    def _start() -> Response | None:
        g.start = time.perf_counter()
        if request.path not in OPEN_PATHS and not request.path.startswith(frames.PREFIX):  # frames: signed URLs
            service.metrics.in_flight.inc()
            g.counted = True
            problem = service.auth.check(request.headers.get("Authorization"))
            if problem is not None:
                return error_response(401, "unauthorized", problem, {"WWW-Authenticate": 'Bearer realm="fth"'})
        return None

    @app.after_request
    def _record(resp: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        service.metrics.request(route, resp.status_code, time.perf_counter() - g.get("start", time.perf_counter()))
        return resp

    @app.teardown_request
    def _done(exc: BaseException | None) -> None:
        if g.pop("counted", False):
            service.metrics.in_flight.dec()

    @app.errorhandler(APIError)
    def _api_error(e: APIError) -> Response:
        return error_response(e.status, e.code, e.message, e.headers)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        message = e.description or e.name
        if e.code == 413:
            message = f"request body larger than the limit of {cfg.max_body_bytes} bytes"
        resp = error_response(e.code or 500, _snake(e.name), message)
        if e.code == 405 and e.valid_methods:
            resp.headers["Allow"] = ", ".join(e.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def _internal(e: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", f"{type(e).__name__}: {e}")

    from server.routes import bp

    app.register_blueprint(bp)
    app.register_blueprint(frames.bp)
    return app
