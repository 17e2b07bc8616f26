"""Python client of the embedding service: `Client(url, token).embed(images)` / `.predict(images, heads)`.

Images may be file paths, encoded bytes, PIL images or (H, W, 3) uint8 arrays; they are sent as one multipart
request (PNG-encoded when not already encoded). Embeddings come back as NumPy arrays via the safetensors answer, so no
float goes through JSON text. A 503 (queue full, warming up, shutting down) is retried by urllib3's `Retry` with
exponential backoff, honouring Retry-After; other errors raise `APIError` with the server's code and message.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

log = logging.getLogger(__name__)
SAFETENSORS = "application/safetensors"


class APIError(RuntimeError):
    """A non-2xx answer: `status`, `code` and `message` from the `{"error": {...}}` body."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def _encode(image: Any) -> tuple[bytes, str]:
    if isinstance(image, str | Path):
        data = Path(image).read_bytes()
    elif isinstance(image, bytes | bytearray):
        data = bytes(image)
    else:
        from PIL import Image

        pil = Image.fromarray(np.asarray(image, dtype=np.uint8)) if isinstance(image, np.ndarray) else image
        buf = io.BytesIO()
        pil.convert("RGB").save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return data, "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "image/webp"
    return data, "image/png"


class Client:
    """A connection-pooled client; thread-safe for concurrent calls.

    Retries are urllib3's `Retry`: a 503 (queue full, warming up, shutting down) or a refused connection is retried
    with exponential backoff, waiting at least what the answer's Retry-After asks (capped at `max_wait_s`).

    Args:
        url: base URL, e.g. http://127.0.0.1:8000.  token: API key sent as `Authorization: Bearer`.
        retries: attempts after a 503 or a refused connection.  backoff_s: first wait, doubled each retry.
        timeout_s: per-request timeout.  max_wait_s: longest single wait between attempts.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        retries: int = 5,
        backoff_s: float = 0.1,
        timeout_s: float = 60.0,
        max_wait_s: float = 10.0,
    ):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        retry = Retry(
            total=retries,
            connect=retries,
            read=0,  # a request that reached the model is not sent twice
            status=retries,
            status_forcelist=(503,),
            allowed_methods=None,  # POST too: a 503 means the request was not processed
            backoff_factor=backoff_s,
            backoff_max=max_wait_s,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last 503 comes back as an answer, raised as APIError below
        )
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.encoder_id: str | None = None

    def _request(self, method: str, path: str, **kw) -> requests.Response:
        resp = self.session.request(method, f"{self.url}{path}", timeout=self.timeout_s, **kw)
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise APIError(resp.status_code, err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise APIError(resp.status_code, "http_error", resp.text[:500]) from None
        return resp

    def _post(self, path: str, images: Sequence[Any], params: dict[str, str], accept: str) -> requests.Response:
        files = [("files", (f"{i}", *_encode(im))) for i, im in enumerate(images)]
        return self._request("POST", path, files=files, params=params, headers={"Accept": accept})

    def embed(self, images: Sequence[Any], tokens: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """(n, D) float32 embeddings; with `tokens`, also the (n, gh, gw, D) token grids."""
        from safetensors.numpy import load

        resp = self._post("/v1/embed", images, {"tokens": "true" if tokens else "false"}, SAFETENSORS)
        self.encoder_id = resp.headers.get("X-Encoder-Id")
        arrays = load(resp.content)
        return (arrays["embeddings"], arrays["tokens"]) if tokens else arrays["embeddings"]

    def predict(self, images: Sequence[Any], heads: Sequence[str] | None = None) -> dict[str, list[Any]]:
        """{head name: [one output per image]} from one encoder pass."""
        params = {"heads": ",".join(heads)} if heads else {}
        body = self._post("/v1/predict", images, params, "application/json").json()
        self.encoder_id = body["encoder"]
        return {h["name"]: h["outputs"] for h in body["heads"]}

    def models(self) -> dict[str, Any]:
        """The encoder's and heads' cards."""
        return self._request("GET", "/v1/models").json()

    def close(self) -> None:
        self.session.close()
