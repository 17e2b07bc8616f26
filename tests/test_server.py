"""The embedding service against a real gunicorn process on a loopback port: correctness under concurrency, every
bad input with its status (and the server still answering), auth, heads, models, health, metrics and the
OpenAPI contract."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import schemathesis
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from safetensors.numpy import load as load_safetensors
from serving import LiveServer, clock_minutes, linear_head, tiny_encoder

from encoder.preprocess import prepare
from store.artifacts import Registry
from store.paths import Workspace

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {"max_images": 16, "max_body_bytes": 2_000_000, "max_pixels": 4_000_000, "max_batch": 16}


def encode(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def random_image(seed: int, size: tuple[int, int] | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = size or (int(rng.integers(40, 200)), int(rng.integers(40, 200)))
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    ws = Workspace.at(tmp_path_factory.mktemp("serve"))
    model, card = tiny_encoder(ws, seed=1)
    other_model, other = tiny_encoder(ws, seed=2)
    registry = Registry(ws.artifacts)
    torch.manual_seed(0)
    linear = torch.nn.Linear(model.cfg.dim, 3)
    grid = model.grid(*model.cfg.img_size)
    linear = torch.nn.Linear(model.cfg.dim, 2)
    head = linear_head(registry, linear, card.id, "clock")  # time_of_day on pooled vectors
    grid_linear = torch.nn.Linear(model.cfg.dim, 1)
    grid_head = linear_head(registry, grid_linear, card.id, "grid_count", "people_count", "grid", (-2,), grid)
    linear_head(registry, torch.nn.Linear(model.cfg.dim, 2), other.id, "wrong_encoder")
    server = LiveServer(ws.root, {"encoder": card.id, **LIMITS}, env={"FTH_API_KEYS": f"other-key,{KEY}"}).start()
    doc = requests.get(f"{server.url}/openapi.json").json()
    yield {
        "url": server.url, "model": model, "card": card, "linear": linear, "grid_linear": grid_linear,
        "head": head, "grid_head": grid_head, "doc": doc, "server": server,
    }  # fmt: skip
    assert server.stop() == 0, server.log()


def post(url: str, path: str, data=None, headers=None, **kw) -> requests.Response:
    return requests.post(f"{url}{path}", data=data, headers={**AUTH, **(headers or {})}, timeout=60, **kw)


def expected(model, arrays: list[np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return model.embed(prepare([Image.fromarray(a) for a in arrays], model.cfg)).numpy()


def assert_conforms(served, path: str, method: str, resp: requests.Response) -> None:
    """The answer is one the OpenAPI document allows: a documented status, content type and body (schemathesis)."""
    doc = served["doc"]
    assert str(resp.status_code) in doc["paths"][path][method.lower()]["responses"], resp.status_code
    schemathesis.openapi.from_dict(doc)[path][method].validate_response(resp)


def test_32_concurrent_clients_get_their_own_embeddings(served):
    model, url = served["model"], served["url"]
    images = [random_image(i) for i in range(32)]
    formats = [("PNG", "image/png", {}), ("WEBP", "image/webp", {"lossless": True})]

    def one(i: int) -> tuple[int, dict]:
        fmt, mime, kw = formats[i % 2]
        resp = post(url, "/v1/embed", encode(images[i], fmt, **kw), {"Content-Type": mime})
        assert resp.status_code == 200, resp.text
        assert_conforms(served, "/v1/embed", "POST", resp)
        return i, resp.json()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
    want = expected(model, images)  # (32, D)
    for i, body in answers:
        assert body["encoder"] == served["card"].id and body["count"] == 1
        np.testing.assert_allclose(np.array(body["embeddings"][0]), want[i], atol=2e-4, rtol=1e-4)
    assert not np.allclose(want[0], want[1])  # the images differ, so a mixed-up answer would fail


def test_multipart_json_base64_tokens_and_binary_answers(served):
    model, url = served["model"], served["url"]
    images = [random_image(100 + i, (64, 96)) for i in range(3)]
    jpeg = encode(images[0], "JPEG", quality=95)
    arrays = [np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")), images[1], images[2]]
    want = expected(model, arrays)
    files = [("files", ("a.jpg", jpeg, "image/jpeg"))] + [
        ("files", (f"{i}.png", encode(a), "image/png")) for i, a in enumerate(images[1:])
    ]
    multipart = post(url, "/v1/embed?tokens=true", files=files)
    assert multipart.status_code == 200, multipart.text
    body = multipart.json()
    np.testing.assert_allclose(np.array(body["embeddings"]), want, atol=2e-4)
    with torch.inference_mode():
        grids = model.forward_features(prepare([Image.fromarray(a) for a in arrays], model.cfg)).numpy()
    assert body["grid"] == [8, 12]
    np.testing.assert_allclose(np.array(body["tokens"]), grids, atol=2e-4)

    b64 = {"images": [base64.b64encode(jpeg).decode()] + [base64.b64encode(encode(a)).decode() for a in images[1:]]}
    npy = post(url, "/v1/embed", json.dumps(b64), {"Content-Type": "application/json", "Accept": "application/x-npy"})
    assert npy.status_code == 200 and npy.headers["X-Encoder-Id"] == served["card"].id
    np.testing.assert_allclose(np.load(io.BytesIO(npy.content)), want, atol=2e-4)

    st = post(url, "/v1/embed?tokens=true", files=files, headers={"Accept": "application/safetensors"})
    assert st.status_code == 200
    arrays_back = load_safetensors(st.content)
    np.testing.assert_allclose(arrays_back["embeddings"], want, atol=2e-4)
    np.testing.assert_allclose(arrays_back["tokens"], grids, atol=2e-4)


def _bomb() -> bytes:
    return encode(np.zeros((2000, 2500), np.uint8))  # 5M pixels > max_pixels=4M, ~10 kB on the wire


def _truncated_jpeg() -> bytes:
    return encode(random_image(7, (64, 96)), "JPEG")[:-400]


def raw(data: bytes, mime: str = "image/png", **extra) -> dict:
    headers = {"Content-Type": mime, **extra.pop("headers", {})}
    return {"data": data, "headers": headers, **extra}


def many(n: int) -> dict:
    return {"files": [("files", (f"{i}.png", b"x", "image/png")) for i in range(n)]}


BAD = [
    ("empty body", lambda: raw(b""), 400, "empty_image"),
    ("truncated jpeg", lambda: raw(_truncated_jpeg(), "image/jpeg"), 400, "corrupt_image"),
    ("garbage png", lambda: raw(b"\x89PNG\r\n\x1a\n" + b"x" * 200), 400, "corrupt_image"),
    ("gif", lambda: raw(encode(random_image(1, (8, 8)), "GIF")), 415, "unsupported_image"),
    ("text/plain", lambda: raw(b"hello", "text/plain"), 415, "unsupported_media_type"),
    ("bomb", lambda: raw(_bomb()), 413, "too_many_pixels"),
    ("body too large", lambda: raw(b"\0" * 2_100_000), 413, None),
    ("too many images", lambda: many(17), 413, "too_many_images"),
    ("bad json", lambda: raw(b"{nope", "application/json"), 400, "bad_json"),
    ("json wrong shape", lambda: raw(b'{"image": 1}', "application/json"), 422, "invalid_json"),
    ("bad base64", lambda: raw(b'{"images": ["%%%"]}', "application/json"), 422, "invalid_base64"),
    ("bad flag", lambda: raw(encode(random_image(2)), params={"tokens": "maybe"}), 400, "bad_parameter"),
    ("accept html", lambda: raw(encode(random_image(3)), headers={"Accept": "text/html"}), 406, "not_acceptable"),
]


@pytest.mark.parametrize("name,make,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_status_and_server_keeps_answering(served, name, make, status, code):
    kwargs = make()
    resp = post(served["url"], "/v1/embed", **kwargs)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"] and (code is None or err["code"] == code)
    assert_conforms(served, "/v1/embed", "POST", resp)
    good = post(served["url"], "/v1/embed", encode(random_image(5)), {"Content-Type": "image/png"})
    assert good.status_code == 200


def test_unknown_route_and_method_answer_json(served):
    url = served["url"]
    assert requests.get(f"{url}/nope", headers=AUTH).json()["error"]["code"] == "not_found"
    resp = requests.get(f"{url}/v1/embed", headers=AUTH)
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


def test_auth(served):
    url, png = served["url"], encode(random_image(9))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        resp = requests.post(f"{url}/v1/embed", data=png, headers={"Content-Type": "image/png", **headers})
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    assert requests.get(f"{url}/v1/models").status_code == 401
    ok = requests.post(
        f"{url}/v1/embed", data=png, headers={"Content-Type": "image/png", "Authorization": "Bearer other-key"}
    )
    assert ok.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert requests.get(f"{url}{path}").status_code == 200


def test_predict_shares_one_pass_and_matches_heads_in_process(served):
    model, url = served["model"], served["url"]
    images = [random_image(200 + i, (64, 96)) for i in range(2)]
    files = [("files", (f"{i}.png", encode(a), "image/png")) for i, a in enumerate(images)]
    resp = post(url, f"/v1/predict?heads=clock,{served['grid_head'].id}", files=files)
    assert resp.status_code == 200, resp.text
    assert_conforms(served, "/v1/predict", "POST", resp)
    body = resp.json()
    assert body["encoder"] == served["card"].id and [h["name"] for h in body["heads"]] == ["clock", "grid_count"]
    x = prepare([Image.fromarray(a) for a in images], model.cfg)
    with torch.inference_mode():
        want = clock_minutes(served["linear"](model.embed(x)))
        grid = model.forward_features(x, layers=[-2])[0]  # (B, gh, gw, D)
        want_grid = served["grid_linear"](grid.mean(dim=(1, 2)))[:, 0].exp().numpy()
    clock, grid_count = body["heads"]
    assert clock["id"] == served["head"].id and clock["task"] == "time_of_day"
    np.testing.assert_allclose([o["minutes"] for o in clock["outputs"]], want, atol=0.1)
    np.testing.assert_allclose([o["count"] for o in grid_count["outputs"]], want_grid, rtol=1e-3)
    unknown = post(url, "/v1/predict?heads=wrong_encoder", files=files)
    assert unknown.status_code == 404 and "wrong_encoder" in unknown.json()["error"]["message"]


def test_models_readyz_metrics(served):
    url = served["url"]
    models = requests.get(f"{url}/v1/models", headers=AUTH)
    assert_conforms(served, "/v1/models", "GET", models)
    assert models.json()["encoder"]["id"] == served["card"].id
    assert sorted(h["name"] for h in models.json()["heads"]) == ["clock", "grid_count"]  # mismatched head refused
    assert requests.get(f"{url}/readyz").json() == {"status": "ready", "encoder": served["card"].id}
    text = requests.get(f"{url}/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
               for s in f.samples}  # fmt: skip
    assert samples[("fth_requests_total", (("code", "200"), ("route", "/v1/embed")))] > 0
    assert ("fth_request_seconds_bucket", (("le", "+Inf"), ("route", "/v1/embed"))) in samples
    assert ("fth_queue_wait_seconds_count", ()) in samples
    assert samples[("fth_queue_depth", ())] == 0
    assert samples[("fth_batch_size_count", ())] > 0


def test_openapi_documents_exactly_the_routes(served):
    doc = served["doc"]
    assert doc["openapi"].startswith("3.")
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    served_routes = {("/healthz", "GET"), ("/readyz", "GET"), ("/metrics", "GET"), ("/openapi.json", "GET")}
    served_routes |= {("/v1/models", "GET"), ("/v1/embed", "POST"), ("/v1/predict", "POST")}
    served_routes |= {("/v1/frames/{frame_id}", "GET")}  # signed frame URLs for labelling tools (server.frames)
    assert documented == served_routes
