"""API v1 routes: /v1/embed, /v1/predict, /v1/models, and the open /healthz, /readyz, /metrics, /openapi.json.

A request thread reads and decodes its images (`server.images`), submits one job to the micro-batcher and waits for
its rows. Answers carry the encoder id: in the JSON body, and in the `X-Encoder-Id` header of every model answer
(binary .npy / safetensors answers included; safetensors also in its metadata).
"""

from __future__ import annotations

import io
import json
from pathlib import PurePath

import numpy as np
import torch
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from server.batcher import Job, QueueFull, Stopped
from server.images import APIError, decode_all, read_images
from server.metrics import CONTENT_TYPE
from server.openapi import NPY, SAFETENSORS, document

bp = Blueprint("api", __name__)
ENCODER_HEADER = "X-Encoder-Id"


def _service():
    return current_app.extensions["fth"]


def _flag(name: str) -> bool:
    """A boolean query parameter, as OpenAPI writes one: `true` or `false` (absent = false)."""
    raw = request.args.get(name, "false")
    if raw in ("true", "false"):
        return raw == "true"
    raise APIError(400, "bad_parameter", f"query parameter {name}={raw!r} must be true or false")


def _known_params(*names: str) -> None:
    """Refuse query parameters the route does not define (a typo would otherwise be silently ignored)."""
    unknown = sorted(set(request.args) - set(names))
    if unknown:
        allowed = ", ".join(names) or "none"
        raise APIError(400, "bad_parameter", f"unknown query parameter(s) {', '.join(unknown)}; allowed: {allowed}")


def _buffer_chunked(limit: int) -> None:
    """A chunked body has no Content-Length to refuse up front: read it up to `limit` + 1 bytes and answer 413 past
    the limit (werkzeug's limited stream would stop at the limit and hand on a silently truncated body)."""
    env = request.environ
    if request.content_length is not None:
        return
    stream, chunks, size = env["wsgi.input"], [], 0
    while chunk := stream.read(min(1 << 20, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge()
    env["wsgi.input"], env["CONTENT_LENGTH"] = io.BytesIO(b"".join(chunks)), str(size)
    env.pop("wsgi.input_terminated", None)


def _run(needs: frozenset[str]) -> tuple[dict, int, list[tuple[int, int]]]:
    """Read, decode and embed the request's images; returns (rows by need, image count, each image's (H, W))."""

    service = _service()
    cfg = service.cfg
    if not service.ready.is_set():
        raise APIError(503, "not_ready", "model is loading or warming up", {"Retry-After": str(cfg.retry_after_s)})
    limits = service.limits
    service.batcher.expect(+1)
    try:
        _buffer_chunked(cfg.max_body_bytes)
        multipart = request.mimetype == "multipart/form-data"
        files = [(name, f.read()) for name, f in request.files.items(multi=True)] if multipart else None
        encoded = read_images(request.content_type, request.get_data(cache=False), files, limits)
        images, sizes = decode_all(encoded, service.runner.size, limits, service.pixels)
        job = service.batcher.submit(Job(images, needs))
        service.metrics.queue_depth.set(service.batcher.depth)
    except TimeoutError as e:  # a body read outlasted body_timeout_s (server.worker)
        raise APIError(408, "body_timeout", f"request body not received in time: {e}") from e
    except QueueFull as e:
        raise APIError(503, "queue_full", f"server busy: {e}", {"Retry-After": str(cfg.retry_after_s)}) from e
    except Stopped as e:
        raise APIError(503, "shutting_down", str(e), {"Retry-After": str(cfg.retry_after_s)}) from e
    finally:
        service.batcher.expect(-1)
    try:
        return job.wait(cfg.request_timeout_s), job.n, sizes
    except TimeoutError as e:
        raise APIError(
            503, "timeout", f"images not embedded in time: {e}", {"Retry-After": str(cfg.retry_after_s)}
        ) from e
    except Stopped as e:
        raise APIError(503, "shutting_down", str(e), {"Retry-After": str(cfg.retry_after_s)}) from e
    except Exception as e:
        raise APIError(500, "inference_failed", f"the forward pass failed: {type(e).__name__}: {e}") from e


@bp.post("/v1/embed")
def embed() -> Response:
    _known_params("tokens")
    tokens = _flag("tokens")
    accept = request.accept_mimetypes
    kind = "application/json"
    if accept.provided:
        kind = accept.best_match(["application/json", NPY, SAFETENSORS])
        if kind is None:
            raise APIError(406, "not_acceptable", f"can answer application/json, {NPY} or {SAFETENSORS}")
        if kind == NPY and tokens:
            raise APIError(406, "not_acceptable", f"{NPY} holds one array; ask for {SAFETENSORS} to get tokens too")
    rows, n, _ = _run(frozenset({"pooled", "tokens"} if tokens else {"pooled"}))
    encoder_id = _service().runner.encoder_id
    pooled = rows["pooled"]  # (n, D)
    if kind == NPY:
        buf = io.BytesIO()
        np.save(buf, pooled.astype(np.float32))
        resp = Response(buf.getvalue(), mimetype=NPY)
    elif kind == SAFETENSORS:
        from safetensors.numpy import save

        arrays = {"embeddings": np.ascontiguousarray(pooled, np.float32)}
        if tokens:
            arrays["tokens"] = np.ascontiguousarray(rows["tokens"], np.float32)  # (n, gh, gw, D)
        resp = Response(save(arrays, metadata={"encoder": encoder_id}), mimetype=SAFETENSORS)
    else:
        body = {"encoder": encoder_id, "count": n, "dim": int(pooled.shape[1]), "embeddings": pooled.tolist()}
        if tokens:
            body["grid"] = list(rows["tokens"].shape[1:3])
            body["tokens"] = rows["tokens"].tolist()
        resp = jsonify(body)
    resp.headers[ENCODER_HEADER] = encoder_id
    return resp


@bp.post("/v1/predict")
def predict() -> Response:
    _known_params("heads")
    heads = _service().runner.heads
    wanted = [h.strip() for h in request.args.get("heads", "").split(",") if h.strip()] or sorted(heads)
    by_id = {h.id: name for name, h in heads.items()}
    names = []
    for ref in wanted:
        name = ref if ref in heads else by_id.get(ref)
        if name is None:
            known = ", ".join(sorted(heads)) or "none"
            raise APIError(404, "unknown_head", f"no head {ref!r} is loaded for this encoder (loaded: {known})")
        names.append(name)
    if not names:
        raise APIError(404, "unknown_head", "this server has no heads loaded")
    rows, n, sizes = _run(frozenset(f"head:{name}" for name in names))
    encoder_id = _service().runner.encoder_id
    results = []
    for name in names:  # each head's task turns its raw outputs into answers, boxes in each image's own pixels
        outputs = heads[name].task.decode(torch.from_numpy(rows[f"head:{name}"]), sizes)
        results.append({"name": name, "id": heads[name].id, "task": heads[name].task.name, "outputs": outputs})
    resp = jsonify({"encoder": encoder_id, "count": n, "heads": results})
    resp.headers[ENCODER_HEADER] = encoder_id
    return resp


def _public(value):
    """A card as clients see it: absolute paths of this host (run folders, workspaces) cut to their last name."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str) and PurePath(value).is_absolute():
        return PurePath(value).name
    return value


@bp.get("/v1/models")
def models() -> Response:
    runner = _service().runner
    cards = {"encoder": runner.card.to_json(), "heads": [h.card.to_json() for h in runner.heads.values()]}
    return jsonify(_public(cards))


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    service = _service()
    if not service.ready.is_set():
        raise APIError(503, "not_ready", "model is loading or warming up", {"Retry-After": "1"})
    return jsonify({"status": "ready", "encoder": service.runner.encoder_id})


@bp.get("/metrics")
def metrics() -> Response:
    return Response(_service().metrics.render(), content_type=CONTENT_TYPE)


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(json.dumps(document()), mimetype="application/json")
