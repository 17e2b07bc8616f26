"""Property-based fuzz of the API from its own OpenAPI document (hypothesis strategies generated from the schemas):
whatever the document lets a client send, and mutations of it (wrong types, corrupt images, stray content types
and Accept values), the live gunicorn server answers without a 5xx and with a status, content type and body that
the document allows."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serving import LiveServer, tiny_encoder

from server.heads import save_linear_head
from server.schema_check import check_response, resolve
from store.artifacts import Registry
from store.paths import Workspace

KEY = "fuzz-key"


def _image(seed: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (int(rng.integers(1, 40)), int(rng.integers(1, 40)), 3), np.uint8)).save(
        buf, fmt
    )
    return buf.getvalue()


# Valid images, then the same with bytes cut off or flipped: what "format: binary" means for an image body.
images = st.tuples(st.integers(0, 50), st.sampled_from(["PNG", "JPEG", "WEBP"])).map(lambda t: _image(*t))
mutated = st.tuples(images, st.integers(0, 400), st.integers(0, 255)).map(
    lambda t: t[0][: max(1, len(t[0]) - t[1])] if t[1] % 2 else t[0][:8] + bytes([t[2]]) + t[0][9:]
)
binary = st.one_of(images, mutated, st.binary(max_size=300))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


def from_schema(doc: dict, schema: dict) -> st.SearchStrategy:
    """A strategy for values valid under `schema`, mixed with arbitrary JSON (invalid on purpose)."""
    schema = resolve(doc, schema)
    kind = schema.get("type")
    if kind == "string" and schema.get("format") == "binary":
        return binary
    if kind == "string" and schema.get("format") == "byte":
        return st.one_of(st.text(min_size=1, max_size=20), binary.map(lambda b: base64.b64encode(b).decode()))
    if kind == "string":
        return st.text(max_size=20)
    if kind == "boolean":
        return st.sampled_from(["true", "false", "1", "0"])
    if kind == "array":
        valid = st.lists(from_schema(doc, schema.get("items", {})), min_size=schema.get("minItems", 0), max_size=4)
        return st.one_of(valid, valid, valid, st.lists(json_values, max_size=2))  # mostly valid, some not
    if kind == "object":
        props = {k: from_schema(doc, v) for k, v in schema.get("properties", {}).items()}
        required = {k: v for k, v in props.items() if k in schema.get("required", [])}
        optional = {k: v for k, v in props.items() if k not in required}
        valid = st.fixed_dictionaries(required, optional=optional)
        return st.one_of(valid, valid, valid, json_values)
    return json_values


@st.composite
def requests_for(draw, doc: dict, path: str, method: str) -> dict:
    op = doc["paths"][path][method]
    params = {}
    for p in op.get("parameters", []):
        if draw(st.booleans()):
            params[p["name"]] = draw(from_schema(doc, p["schema"]) | st.text(max_size=10))
    accepts = [c for r in op["responses"].values() for c in r.get("content", {})]
    headers = {"Authorization": f"Bearer {KEY}"}
    accept = draw(st.none() | st.sampled_from(sorted(set(accepts)) + ["*/*", "text/html", "image/*"]))
    if accept:
        headers["Accept"] = accept
    out = {"method": method.upper(), "params": params, "headers": headers}
    body = op.get("requestBody")
    if body:
        documented = sorted(body["content"])
        mime = draw(st.sampled_from(documented) | st.sampled_from(["text/plain", "application/xml", "image/gif", ""]))
        schema = body["content"].get(mime, {}).get("schema", {"type": "string", "format": "binary"})
        if mime == "multipart/form-data":
            files = draw(st.lists(binary, max_size=4))
            out["files"] = [("files", (f"{i}", b, "application/octet-stream")) for i, b in enumerate(files)]
        elif mime == "application/json":
            out["data"] = json.dumps(draw(from_schema(doc, schema))).encode()
            headers["Content-Type"] = mime
        else:
            out["data"] = draw(binary)
            headers["Content-Type"] = mime
    return out


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    ws = Workspace.at(tmp_path_factory.mktemp("fuzz"))
    model, card = tiny_encoder(ws)
    save_linear_head(Registry(ws.artifacts), torch.nn.Linear(model.cfg.dim, 2), card.id, "two")
    server = LiveServer(ws.root, {"encoder": card.id, "max_images": 3}, env={"FTH_API_KEYS": KEY}).start()
    yield server.url, requests.get(f"{server.url}/openapi.json").json()
    assert server.stop() == 0


OPERATIONS = [
    ("/v1/embed", "post"),
    ("/v1/predict", "post"),
    ("/v1/models", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/openapi.json", "get"),
]


@pytest.mark.parametrize("path,method", OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_fuzz_from_openapi_no_5xx(live, path, method):
    url, doc = live
    session = requests.Session()
    examples = 250 if path == "/v1/embed" else 25

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(req=requests_for(doc, path, method))
    def check(req):
        resp = session.request(url=f"{url}{path}", timeout=30, **req)
        assert resp.status_code < 500, (req, resp.status_code, resp.text[:300])
        ctype = resp.headers.get("Content-Type", "")
        body = resp.json() if ctype.startswith("application/json") else None
        problems = check_response(doc, path, method, resp.status_code, ctype, body)
        assert not problems, (req, problems)

    check()
    assert requests.get(f"{url}/readyz").status_code == 200
