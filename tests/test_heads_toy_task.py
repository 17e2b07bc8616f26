"""A task is one file: this module defines a toy task (mean brightness of a frame), registers it, and fits, predicts
and serves it through the unchanged `fth heads fit` / `fth heads predict` commands and the Flask app, with no edit to
`heads/`, `server/` or `fth/`."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from fth_cli import run
from PIL import Image
from serving import tiny_encoder

from heads import labels as L
from heads.tasks import TASKS, Task, register_task
from store.catalog import Catalog


@register_task
class Brightness(Task):
    """Mean pixel value of a frame in [0, 1], from pooled embeddings; MAE against the median."""

    name, out_dim, primary, unit = "toy_brightness", 1, "mae", "grey level"
    default_form = "pooled"

    def readers(self):
        return {"csv": lambda path, ctx, task: L.read_task_csv(path, ctx, task)}

    def targets(self, values):
        return torch.tensor(L.numbers(values, "brightness labels"), dtype=torch.float32)

    def loss(self, out, target):
        return (out[:, 0] - target).abs().mean()

    def stats(self, out, target):
        return {"abs": (out[:, 0] - target).abs().sum().item(), "n": target.numel()}

    def finalize(self, s):
        return {"mae": s["abs"] / s["n"], "n": s["n"]}

    def baseline(self, train_target):
        return train_target.median().reshape(1, 1)

    def decode(self, out, sizes=None):
        return [{"brightness": float(v)} for v in out[:, 0].tolist()]

    def describe(self, answer):
        return f"brightness {answer['brightness']:.3f}"

    def plot(self, path, out, target, images, title):
        from heads.plots import scatter

        return scatter(path, target.numpy(), out[:, 0].numpy(), title, "true brightness", "predicted brightness")


@pytest.fixture
def toy(workspace, tmp_path):
    """60 flat grey frames whose brightness follows a slow wave, their labels as a CSV of catalog paths."""
    _, card = tiny_encoder(workspace, seed=0)
    rows = []
    start = datetime(2026, 5, 1, tzinfo=UTC)
    with Catalog(workspace.root) as cat:
        for i in range(60):
            level = 0.5 + 0.4 * math.sin(i / 5)
            noise = np.random.default_rng(i).integers(-8, 9, (64, 96, 3))
            arr = np.clip(level * 255 + noise, 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            row, _ = cat.add_frame(buf.getvalue(), "toy", start + timedelta(minutes=i), 96, 64, ext="png")
            rows.append((row.path, round(float(arr.mean()) / 255, 4)))
    labels = tmp_path / "brightness.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([("path", "value"), *rows])
    return workspace, card, labels, rows


def test_a_task_defined_here_fits_predicts_and_serves(toy):
    from server.app import create_app

    ws, card, labels, rows = toy
    assert "toy_brightness" in TASKS
    rc, out, err = run("heads", "fit", "--workspace", str(ws.root), "--task", "toy_brightness", "--labels",
                       str(labels), "--set", "split_gap_s=0", "--set", "threads=1")  # fmt: skip
    assert rc == 0, err
    head_id = out.strip().splitlines()[-1].removeprefix("head: ")
    doc = json.loads((ws.root / "heads" / head_id / "metrics.json").read_text())
    assert doc["primary"] == "mae" and doc["unit"] == "grey level" and doc["reported_on"] == "test"
    assert doc["metrics"]["mae"] < 0.5 * doc["baseline"]["mae"], (doc["metrics"], doc["baseline"])
    assert (ws.root / "heads" / head_id / "toy_brightness.png").is_file()

    image = ws.root / rows[-1][0]
    rc, out, err = run("heads", "predict", "--workspace", str(ws.root), "--head", head_id, "--json", str(image))
    assert rc == 0, err
    answer = json.loads(out.strip().splitlines()[-1])
    assert abs(answer["brightness"] - rows[-1][1]) < 0.1, (answer, rows[-1], doc["metrics"])

    app = create_app({"workspace": str(ws.root), "encoder": card.id, "warmup": False})
    try:
        resp = app.test_client().post("/v1/predict", data=Path(image).read_bytes(), content_type="image/png")
        assert resp.status_code == 200, resp.get_data(as_text=True)
        (head,) = resp.get_json()["heads"]
        assert head["task"] == "toy_brightness"
        assert head["outputs"][0]["brightness"] == pytest.approx(answer["brightness"], abs=1e-4)
    finally:
        app.extensions["fth"].close()
