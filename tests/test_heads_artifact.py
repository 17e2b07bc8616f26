"""Registered heads: round trip through the registry, refusal on another encoder or other features, JSON predictions
for every task, and the diagnostic plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from heads.artifact import EncoderMismatchError, load_head, predict, save_head
from heads.fit import FitConfig, fit_from_arrays, predict_outputs
from heads.tasks import TaskConfig
from store.artifacts import Registry
from store.recipe import FeatureError
from tests import synthetic_features as synthetic

ENC = "encoder-0123456789abcdef"
QUICK = dict(batch_size=64, max_steps=20, eval_every=10, threads=1)


@pytest.fixture(scope="module")
def fits():
    cnt = synthetic.spatial_counts(200, seed=5)
    tod = synthetic.clock_features(200, dim=16, seed=5)
    dep = synthetic.depth_grids(60, seed=5)
    seg = synthetic.segment_grids(60, classes=3, seed=5)
    seg_task = TaskConfig("segmentation", classes=("bg", "person", "car"))
    return {
        "people_count": (fit_from_arrays("people_count", *cnt, FitConfig(**QUICK)), cnt),
        "time_of_day": (fit_from_arrays("time_of_day", *tod, FitConfig(**QUICK)), tod),
        "depth": (fit_from_arrays("depth", *dep, FitConfig(**QUICK)), dep),
        "segmentation": (fit_from_arrays(seg_task, *seg, FitConfig(**QUICK)), seg),
    }


@pytest.mark.parametrize("task", ["people_count", "time_of_day", "depth", "segmentation"])
def test_round_trip_predicts_the_same(tmp_path, fits, task):
    result, (x, y, t) = fits[task]
    registry = Registry(tmp_path / "artifacts")
    card = save_head(result, registry, encoder_id=ENC, name=f"{task}-test")
    assert card.id.startswith("head-") and card.parents["encoder"] == ENC
    assert card.config["recipe"]["form"] == result.recipe.form and card.config["task"]["name"] == task
    assert card.metrics["baseline"] == json.loads(json.dumps(result.baseline))
    head = load_head(card.id, registry, encoder_id=ENC)
    before = predict_outputs(result.head, x[:5])
    after = predict_outputs(head.module, x[:5])
    assert torch.equal(before, after)
    preds = predict(head, x[:3])
    assert len(preds) == 3 and json.loads(json.dumps(preds)) == preds
    one = predict(head, x[0])  # one frame without a batch axis
    assert len(one) == 1 and one[0].keys() == preds[0].keys()
    if task == "people_count":
        assert isinstance(preds[0]["count"], float) and preds[0]["count"] >= 0
        assert one[0]["count"] == pytest.approx(preds[0]["count"], rel=1e-5)
    if task == "time_of_day":
        hh, mm = preds[0]["time"].split(":")
        assert 0 <= int(hh) < 24 and 0 <= int(mm) < 60 and 0 <= preds[0]["minutes"] < 1440
    if task in ("depth", "segmentation"):  # maps at the decoder's output size: one 2x upsampling stage
        assert np.asarray(preds[0][task]).shape == (x.shape[1] * 2, x.shape[2] * 2) == tuple(preds[0]["shape"])
    if task == "segmentation":
        assert preds[0]["classes"] == ["bg", "person", "car"]


def test_head_refuses_another_encoder_and_other_features(tmp_path, fits):
    result, (x, _, _) = fits["people_count"]
    registry = Registry(tmp_path / "artifacts")
    card = save_head(result, registry, encoder_id=ENC)
    with pytest.raises(EncoderMismatchError, match=f"fitted on encoder {ENC}.*encoder-ffff"):
        load_head(card.id, registry, encoder_id="encoder-ffff000000000000")
    head = load_head(card.path, registry, encoder_id=ENC)
    with pytest.raises(FeatureError, match=r"grid 6x10 D=32"):
        predict(head, x[:, :5])  # another grid
    with pytest.raises(FeatureError, match="pooled"):
        predict(head, x[:4].mean(axis=(1, 2)))
    with pytest.raises(ValueError, match="encoder id"):
        save_head(result, registry)


def test_each_task_plots_a_png(tmp_path, fits):
    for task in ("people_count", "time_of_day", "depth", "segmentation"):
        result, (x, y, _) = fits[task]
        t = result.task
        test = result.test_idx
        out = predict_outputs(result.head, x[test])
        target = t.targets([y[i] for i in test])
        images = [np.full((*target.shape[-2:], 3), 100, np.uint8)] * 2 if t.plot_frames() else None
        path = t.plot(tmp_path / f"{task}.png", out, target, images, f"{task} test")
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_a_pooled_head_projected_onto_its_frames_span_round_trips(tmp_path):
    x, y, t = synthetic.clock_features(60, dim=400, seed=3)  # 400 wide, 36 training frames: projected
    result = fit_from_arrays("time_of_day", x, y, t, FitConfig(**QUICK))
    axes = result.head_cfg.pooled_axes
    assert axes == len(result.split.train) - 1
    registry = Registry(tmp_path / "artifacts")
    card = save_head(result, registry, encoder_id=ENC)
    assert card.config["head"]["pooled_axes"] == axes
    head = load_head(card.id, registry, encoder_id=ENC)
    assert head.module.reduce.basis.shape == (400, axes)
    assert torch.equal(predict_outputs(result.head, x[:5]), predict_outputs(head.module, x[:5]))
