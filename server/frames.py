"""Signed, expiring frame URLs: `GET /v1/frames/<frame id>?exp=<unix seconds>&sig=<hex>` answers the frame's bytes.

A labelling tool's browser loads an `<img src>` directly, so it cannot send our `Authorization: Bearer` key; the URL
itself carries the authority instead: `sig` = HMAC-SHA256(workspace secret, "<frame id>:<exp>"). A missing, expired
or tampered signature is 403; nothing else is opened before the check passes. The secret is one random key per
workspace (`<workspace>/secrets/frames.key`, mode 0600), created on first use by whichever of `fth label push` (which
signs) or `fth serve` (which verifies) comes first. Frames are read through the catalog's frame store (local folder or
S3), never a raw path, so no copy of any frame is made for the labeller.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote

from flask import Blueprint, Response, current_app, request

from server.images import APIError
from store.paths import Workspace

bp = Blueprint("frames", __name__)
PREFIX = "/v1/frames/"
KEY_FILE = "secrets/frames.key"
TYPES = {b"\xff\xd8": "image/jpeg", b"\x89P": "image/png"}


def secret(root: str | Path) -> bytes:
    """The workspace's signing key, created (exclusively: two first users agree on one key) when missing."""
    path = Path(root) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails when another process made the key first; then its key is the key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def signature(key: bytes, frame_id: str, expires: int) -> str:
    return hmac.new(key, f"{frame_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def signed_url(base: str, key: bytes, frame_id: str, ttl_s: float, now: float | None = None) -> str:
    """The URL of one frame under `base` (the server as the labeller's browser reaches it), valid for `ttl_s`."""
    expires = int((time.time() if now is None else now) + ttl_s)
    return f"{base.rstrip('/')}{PREFIX}{quote(frame_id)}?exp={expires}&sig={signature(key, frame_id, expires)}"


def check(key: bytes, frame_id: str, exp: str | None, sig: str | None, now: float | None = None) -> str | None:
    """None when the signature is valid and unexpired, else what is wrong."""
    if not exp or not sig:
        return "missing exp or sig: frame URLs are signed (fth label push makes them)"
    try:
        expires = int(exp)
    except ValueError:
        return "exp is not a number"
    # as bytes: compare_digest refuses a str with non-ASCII characters (a TypeError, so a 500), which anyone can send
    if not hmac.compare_digest(signature(key, frame_id, expires).encode(), sig.encode("utf-8", "replace")):
        return "bad signature"
    if expires < (time.time() if now is None else now):
        return "the URL has expired"
    return None


@bp.get(PREFIX + "<frame_id>")
def frame(frame_id: str) -> Response:
    from store.backends import open_catalog

    root = Workspace.at(current_app.extensions["fth"].cfg.workspace).root
    problem = check(secret(root), frame_id, request.args.get("exp"), request.args.get("sig"))
    if problem is not None:
        raise APIError(403, "forbidden", problem)
    with open_catalog(root, create=False) as cat:
        row = cat.get(frame_id)
        if row is None:
            raise APIError(404, "not_found", f"no frame {frame_id} in the catalog")
        data = cat.frame_store.read(row.path)
    resp = Response(data, mimetype=TYPES.get(data[:2], "application/octet-stream"))
    resp.headers["Cache-Control"] = "private, max-age=3600"
    return resp
