"""The Python client against the app served on a loopback port by werkzeug's threaded server (the `--dev` path):
numpy out equal to the in-process encoder, token grids, head predictions, retry on 503, and errors raised."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from serving import clock_minutes, linear_head, tiny_encoder
from werkzeug.serving import make_server

from encoder.preprocess import prepare
from server.app import create_app
from server.client import APIError, Client
from store.artifacts import Registry


@pytest.fixture
def live(workspace, monkeypatch):
    monkeypatch.setenv("FTH_API_KEYS", "k1")
    model, card = tiny_encoder(workspace)
    linear = torch.nn.Linear(model.cfg.dim, 2)
    linear_head(Registry(workspace.artifacts), linear, card.id, "pair")
    app = create_app({"workspace": str(workspace.root), "warmup": False})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", app, model, card, linear
    server.shutdown()
    app.extensions["fth"].close()


def test_embed_tokens_predict(live, tmp_path):
    url, _, model, card, linear = live
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (50 + 10 * i, 80, 3), np.uint8) for i in range(3)]
    path = tmp_path / "a.png"
    Image.fromarray(arrays[0]).save(path)
    client = Client(url, "k1")
    emb = client.embed([path, arrays[1], Image.fromarray(arrays[2])])
    x = prepare([Image.fromarray(a) for a in arrays], model.cfg)
    with torch.inference_mode():
        want = model.embed(x).numpy()
        grids = model.forward_features(x).numpy()
        heads = clock_minutes(linear(model.embed(x)))
    assert emb.dtype == np.float32 and emb.shape == (3, model.cfg.dim) and client.encoder_id == card.id
    np.testing.assert_allclose(emb, want, atol=2e-4)
    emb2, tokens = client.embed(arrays, tokens=True)
    np.testing.assert_allclose(tokens, grids, atol=2e-4)
    out = client.predict(arrays, ["pair"])
    np.testing.assert_allclose([o["minutes"] for o in out["pair"]], heads, atol=0.1)
    assert client.models()["encoder"]["id"] == card.id


def test_retries_503_then_succeeds_and_raises_other_errors(live):
    url, app, *_ = live
    service = app.extensions["fth"]
    service.ready.clear()  # /v1/embed answers 503 not_ready with Retry-After until set again
    threading.Timer(0.5, service.ready.set).start()
    client = Client(url, "k1", retries=6, backoff_s=0.05)
    assert client.embed([np.zeros((64, 96, 3), np.uint8)]).shape[0] == 1
    service.ready.clear()
    with pytest.raises(APIError) as e:
        Client(url, "k1", retries=1, backoff_s=0.01).embed([np.zeros((8, 8, 3), np.uint8)])
    assert e.value.status == 503 and e.value.code == "not_ready"
    service.ready.set()
    with pytest.raises(APIError) as e:
        Client(url, "wrong").embed([np.zeros((8, 8, 3), np.uint8)])
    assert e.value.status == 401
    with pytest.raises(APIError) as e:
        Client(url, "k1").predict([np.zeros((8, 8, 3), np.uint8)], ["nope"])
    assert e.value.status == 404 and e.value.code == "unknown_head"


def test_models_raises_the_clients_error(live):
    """Issue 15: `Client.models()` raised requests' HTTPError; it raises APIError like the other calls."""
    url, *_ = live
    with pytest.raises(APIError) as e:
        Client(url, "wrong").models()
    assert e.value.status == 401 and e.value.code == "unauthorized"
