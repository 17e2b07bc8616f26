"""`fth heads adapt`: maps from a new encoder's features to an old one's, the old heads served through them.

A real pair of different encoders (the tiny preset at seeds 0 and 1) on 200 sim frames; two heads fitted on OLD by
`fth heads fit` (time of day on pooled vectors, people count on a two-block token grid). Through the adapter the old
heads keep their quality on NEW's features; straight on NEW's features they are far worse (the adapter test the issue
asks for). The adapted heads load through `load_head` / `load_heads` and answer from the Flask app on NEW.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from heads_update import fit, run, update_workspace
from PIL import Image

from heads import adapt, artifact
from heads.tasks import TaskConfig, make_task
from store.artifacts import Registry


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    ws, old, new = update_workspace(tmp_path_factory.mktemp("adapt"))
    tod = fit(ws, old.id, "--task", "time_of_day", "--labels", "catalog")
    people = fit(ws, old.id, "--task", "people_count", "--labels", str(ws.root / "labels/people.csv"),
                 "--layers=-2,-1")  # fmt: skip
    rc, out, err = run("heads", "adapt", "--workspace", str(ws.root), "--from", old.id, "--to", new.id,
                       "--frames", "200")  # fmt: skip
    assert rc == 0, err
    path = out.strip().splitlines()[-1].split(" ", 1)[1]
    return ws, old, new, {"tod": tod, "people": people}, json.loads(open(path).read()), out


def test_old_heads_through_the_adapter_beat_old_heads_on_raw_new_features(adapted):
    ws, old, new, heads, doc, out = adapted
    assert "retention" in out and "neg. flips" in out  # the printed table
    rows = {r["head"]: r for r in doc["heads"]}
    assert set(rows) == set(heads.values())
    for row in rows.values():
        assert row["labels"] == "unchanged" and row["n"] == 40 and row["part"] == "test"
        # lower is better for both tasks: through the adapter near the old quality, raw new features far worse
        assert row["adapted"] < row["raw_new"] * 0.8, row
        assert row["retention"] > 0.9, row
        assert 0 <= row["flip_rate"] <= 0.1, row
    # the adapters: one per recipe, cards with from/to, method and held-out R^2
    cards = {c.config["key"]: c for c in Registry(ws.artifacts).list("adapter")}
    assert set(cards) == {"pooled", "tokens.-2+tokens"}
    for card in cards.values():
        assert card.parents == {"from": old.id, "to": new.id}
        assert card.config["method"] == "ridge" and card.metrics["fit_frames"] == 160
        assert card.metrics["heldout_r2"] > 0.5
        assert set(card.metrics["r2_by_method"]) == {"ridge", "procrustes"}
    assert cards["tokens.-2+tokens"].config["recipe"]["dim"] == 128  # two blocks of 64, concatenated


def test_adapted_heads_load_for_the_new_encoder_and_serve_there(adapted):
    from server.app import create_app

    ws, old, new, heads, _, _ = adapted
    registry = Registry(ws.artifacts)
    head = artifact.load_head(heads["people"], registry, new.id)
    assert head.encoder_id == new.id and head.adapter_id and head.adapter_id.startswith("adapter-")
    assert artifact.load_head(heads["people"], registry, old.id).adapter_id is None
    third = Registry(ws.artifacts).card(new.id)  # an encoder with no adapter from it: still refused, with the hint
    from fth.model_init import random_init_like

    other = random_init_like(registry, third.id, seed=2)
    with pytest.raises(artifact.EncoderMismatchError, match="fth heads adapt"):
        artifact.load_head(heads["people"], registry, other.id)

    app = create_app({"workspace": str(ws.root), "encoder": new.id, "warmup": False})  # auto heads
    try:
        frame = np.asarray(Image.open(ws.root / ws_path(ws)).convert("RGB"))
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "PNG")
        resp = app.test_client().post("/v1/predict", data=buf.getvalue(), content_type="image/png")
        assert resp.status_code == 200, resp.get_data(as_text=True)
        body = resp.get_json()
        assert body["encoder"] == new.id
        answers = {h["name"]: h for h in body["heads"]}
        assert set(answers) == {"time_of_day", "people_count"}  # OLD's heads, served on NEW through the adapters
        # the same numbers as the adapted head on NEW's features computed here
        from encoder.checkpoint import load_encoder
        from encoder.preprocess import prepare

        model, _ = load_encoder(new.id, registry)
        with torch.inference_mode():
            feats = head.recipe.assemble(model.tables(prepare([Image.fromarray(frame)], model.cfg),
                                                      head.recipe.tables()))  # fmt: skip
        want = artifact.predict(head, feats)[0]["count"]
        assert answers["people_count"]["outputs"][0]["count"] == pytest.approx(want, rel=1e-4, abs=1e-5)
    finally:
        app.extensions["fth"].close()


def ws_path(ws) -> str:
    from store.frame_index import FrameIndex

    return FrameIndex(ws.root, ws.catalog).rows[-1].path


def test_adapt_refuses_bad_input(adapted):
    ws, old, new, _, _, _ = adapted
    rc, _, err = run("heads", "adapt", "--workspace", str(ws.root), "--from", old.id, "--to", old.id)
    assert rc == 2 and "same encoder" in err
    rc, _, err = run("heads", "adapt", "--workspace", str(ws.root), "--from", old.id, "--to", "encoder-ffff0000")
    assert rc == 2 and "not found" in err and len(err.strip().splitlines()) == 1


def test_procrustes_is_scipys_solution_and_needs_equal_widths():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    y = 2.5 * x @ q + 1.0 + 0.01 * rng.normal(size=(300, 8))
    m = adapt.Moments()
    m.add(x, y)
    w, b = adapt.solve(m, "procrustes")
    r, _ = scipy.linalg.orthogonal_procrustes(x - x.mean(0), y - y.mean(0))
    assert np.allclose(w / np.linalg.norm(w[:, 0]), r, atol=1e-6)  # the same rotation, times the best scale
    assert np.linalg.norm(w[:, 0]) == pytest.approx(2.5, rel=0.01)
    fit = adapt.fit_adapter(x, y, "procrustes")
    assert fit.r2["procrustes"] > 0.99 and fit.r2["ridge"] > 0.99
    with pytest.raises(adapt.NotApplicable, match="equal widths"):
        adapt.fit_adapter(x, y[:, :5], "procrustes")
    assert "not applicable" in adapt.fit_adapter(x, y[:, :5], "ridge").r2["procrustes"]


def test_per_frame_errors_are_the_tasks_own_metric_per_frame():
    count = make_task("people_count")
    out, target = torch.tensor([[0.0], [np.log(3.0)]]), torch.tensor([1.0, 1.0])
    err = count.frame_errors(out, target)
    assert err.tolist() == pytest.approx([0.0, 2.0], abs=1e-5)
    assert err.mean().item() == pytest.approx(count.evaluate([(out, target)])["mae"])
    assert count.negative_flips(torch.tensor([0.0, 0.0]), torch.tensor([0.4, 0.6])).tolist() == [False, True]
    seg = make_task(TaskConfig(name="segmentation", classes=("a", "b")))
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, :] = 1.0  # top row b, bottom row a
    assert seg.frame_errors(logits, torch.tensor([[[1, 1], [0, 0]]], dtype=torch.uint8)).item() == 0.0
    assert seg.frame_errors(logits, torch.tensor([[[0, 0], [1, 1]]], dtype=torch.uint8)).item() == 1.0
