"""The server serves heads saved by the heads package (`heads.artifact`, the only head system): /v1/predict runs
the same features as `fth embed` stores (`ViT.tables`, assembled per the head's recipe: grid layers concatenated, or
pooled), decodes with the head's task, and a head fitted on another encoder is refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from serving import tiny_encoder

from encoder.preprocess import prepare
from heads import artifact
from heads.models import HeadConfig, build_head
from heads.tasks import TaskConfig, make_task
from server.app import create_app
from store.artifacts import Registry
from store.recipe import FeatureRecipe


def trained(encoder_id: str, form: str, layers: tuple[int, ...], kind: str) -> artifact.TrainedHead:
    dim = 64 * len(layers)
    grid = (8, 12) if form == "grid" else (0, 0)
    head_cfg = HeadConfig(kind=kind, in_dim=dim, out_dim=1, grid=grid)
    torch.manual_seed(len(layers))
    recipe = FeatureRecipe(form, layers, "mean", grid, dim)  # type: ignore[arg-type]
    return artifact.TrainedHead(build_head(head_cfg).eval(), make_task(TaskConfig()), recipe, head_cfg, encoder_id)


def test_heads_package_heads_are_served_and_mismatches_refused(workspace):
    model, card = tiny_encoder(workspace, seed=3)
    _, other = tiny_encoder(workspace, seed=4)
    registry = Registry(workspace.artifacts)
    grid_head = trained(card.id, "grid", (-1,), "attnpool")
    layers_head = trained(card.id, "grid", (-2, -1), "attnpool")
    pooled_head = trained(card.id, "pooled", (-1,), "linear")
    artifact.save_head(grid_head, registry, name="count_grid")
    artifact.save_head(layers_head, registry, name="count_layers")
    artifact.save_head(pooled_head, registry, name="count_pooled")
    wrong = artifact.save_head(trained(other.id, "grid", (-1,), "attnpool"), registry, name="wrong")
    with pytest.raises(artifact.EncoderMismatchError):
        artifact.load_head(wrong.id, registry, card.id)

    app = create_app({"workspace": str(workspace.root), "encoder": card.id, "warmup": False})
    try:
        image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG")
        resp = app.test_client().post(
            "/v1/predict?heads=count_grid,count_layers,count_pooled", data=buf.getvalue(), content_type="image/png"
        )
        assert resp.status_code == 200, resp.get_data(as_text=True)
        body = {h["name"]: h["outputs"] for h in resp.get_json()["heads"]}
        x = prepare([Image.fromarray(image)], model.cfg)
        with torch.inference_mode():
            last2, last = model.forward_features(x, layers=[-2, -1])  # (1, gh, gw, D) each
            want_grid = artifact.predict(grid_head, last)
            want_layers = artifact.predict(layers_head, torch.cat([last2, last], dim=-1))
            want_pooled = artifact.predict(pooled_head, last.mean(dim=(1, 2)))
        assert body["count_grid"][0]["count"] == pytest.approx(want_grid[0]["count"], rel=1e-4, abs=1e-5)
        assert body["count_layers"][0]["count"] == pytest.approx(want_layers[0]["count"], rel=1e-4, abs=1e-5)
        assert body["count_pooled"][0]["count"] == pytest.approx(want_pooled[0]["count"], rel=1e-4, abs=1e-5)
        names = sorted(h["name"] for h in app.test_client().get("/v1/models").get_json()["heads"])
        assert names == ["count_grid", "count_layers", "count_pooled"]  # the other encoder's head is not loaded
    finally:
        app.extensions["fth"].close()
