"""Fitting on synthetic features with known structure: each head beats its naive baseline on later (held-out) frames,
the attention-pooling head beats the linear probe where the signal is spatial, and fitting is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heads.fit import FitConfig, fit_from_arrays, time_split
from heads.models import HeadConfig
from heads.tasks import TaskConfig
from tests import synthetic_features as synthetic

# threads=1: these heads are small, and one thread is steadier than two on a shared, busy machine.
SCALAR = dict(batch_size=128, max_steps=300, eval_every=20, lr=3e-3, threads=1)
DENSE = dict(batch_size=32, max_steps=120, eval_every=20, lr=3e-3, threads=1)


@pytest.fixture(scope="module")
def counts():
    return synthetic.spatial_counts(1200, grid=(6, 10), dim=32, seed=1)


def test_attention_pool_beats_baseline_and_linear_probe_on_spatial_counts(counts):
    x, y, t = counts
    attn = fit_from_arrays("people_count", x, y, t, FitConfig(head=HeadConfig(kind="attnpool", hidden=64), **SCALAR))
    lin = fit_from_arrays("people_count", x, y, t, FitConfig(head=HeadConfig(kind="linear"), **SCALAR))
    base = attn.baseline["mae"]
    assert attn.baseline == lin.baseline
    # stated margins: attention pooling at most 60% of the mean predictor's MAE and at most 75% of the linear probe's
    assert attn.metrics["mae"] < 0.6 * base, (attn.metrics, base)
    assert attn.metrics["mae"] < 0.75 * lin.metrics["mae"], (attn.metrics, lin.metrics)
    assert attn.metrics["rmse"] < attn.baseline["rmse"]
    assert attn.params < 2_000_000


def test_time_of_day_head_beats_circular_mean():
    x, y, t = synthetic.clock_features(3000, dim=32, seed=2)
    res = fit_from_arrays("time_of_day", x, y, t, FitConfig(head=HeadConfig(kind="mlp", hidden=64), **SCALAR))
    assert res.baseline["mae_minutes"] > 300  # uniform times: the circular mean is ~6 h off on average
    assert res.metrics["mae_minutes"] < 0.1 * res.baseline["mae_minutes"], res.metrics


def test_depth_decoder_beats_per_pixel_mean():
    x, y, t = synthetic.depth_grids(300, grid=(6, 10), dim=32, seed=3)
    res = fit_from_arrays("depth", x, y, t, FitConfig(head=HeadConfig(kind="dense", channels=32), **DENSE))
    m, b = res.metrics, res.baseline
    assert m["pixels"] == b["pixels"] == int((y[res.test_idx] > 0).sum())  # invalid pixels ignored, full label size
    assert m["absrel"] < 0.5 * b["absrel"], (m, b)
    assert m["delta1"] > b["delta1"] + 0.3, (m, b)
    assert m["rmse"] < b["rmse"]


def test_segmentation_decoder_beats_per_pixel_majority():
    x, y, t = synthetic.segment_grids(300, grid=(6, 10), dim=32, classes=4, seed=4)
    task = TaskConfig("segmentation", classes=("road", "person", "car", "sky"))
    res = fit_from_arrays(task, x, y, t, FitConfig(head=HeadConfig(kind="dense", channels=32), **DENSE))
    assert res.metrics["miou"] > res.baseline["miou"] + 0.3, (res.metrics["miou"], res.baseline["miou"])
    assert res.metrics["pixels"] == int((y[res.test_idx] != 255).sum())
    assert set(res.metrics["class_acc"]) == {"road", "person", "car", "sky"}


def test_fit_is_deterministic_given_the_seed(counts):
    x, y, t = counts
    x, y, t = x[:300], y[:300], t[:300]
    cfg = FitConfig(head=HeadConfig(kind="attnpool", hidden=32), batch_size=64, max_steps=40, threads=1)
    a = fit_from_arrays("people_count", x, y, t, cfg)
    b = fit_from_arrays("people_count", x, y, t, cfg)
    assert a.metrics == b.metrics and a.history == b.history
    for (ka, va), (kb, vb) in zip(a.head.state_dict().items(), b.head.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_float16_features_are_accepted(counts):
    x, y, t = counts
    res = fit_from_arrays("people_count", x[:200].astype(np.float16), y[:200], t[:200], FitConfig(max_steps=5))
    assert res.recipe.form == "grid" and res.recipe.grid == (6, 10) and res.recipe.dim == 32


def test_time_split_is_train_then_validation_then_test_with_gaps():
    times = np.array([50, 10, 40, 20, 30, 60, 70, 80, 90, 100], dtype=float)
    sp = time_split(times, 0.2, 0.2)
    assert sorted(times[sp.test]) == [90, 100] and sorted(times[sp.val]) == [70, 80]
    assert times[sp.train].max() < times[sp.val].min() and len(sp.train) == 6
    sp = time_split(times, 0.2, 0.2, gap_s=15)
    assert sorted(times[sp.test]) == [90, 100] and sp.gap_before_test == 1  # 80 is within 15 s of 90
    assert sorted(times[sp.val]) == [60, 70] and sp.gap_before_val == 1  # 50 is within 15 s of 60
    assert "dropped 2" in sp.describe() and "of 10 labelled frames" in sp.describe()
    iso = ["2024-05-01T10:00:00+00:00", "2024-05-01T09:00:00+00:00", "2024-05-01T11:00:00+00:00"]
    assert time_split(iso, 0.34).val.tolist() == [2]


def test_a_gap_that_eats_most_labels_is_reported():
    """530 labels 1 s apart with a 600 s gap: most are dropped, and the split says so and names the setting."""
    sp = time_split(np.arange(530.0), 0.2, 0.2, gap_s=600)
    assert sp.gap_before_val + sp.gap_before_test + len(sp.train) + len(sp.val) + len(sp.test) == 530
    assert any("split_gap_s=600" in w for w in sp.warnings())
    with pytest.raises(ValueError, match="split_gap_s"):
        x = np.zeros((530, 4), np.float32)
        fit_from_arrays("people_count", x, np.zeros(530), np.arange(530.0), FitConfig(split_gap_s=600))


def test_baseline_is_the_best_constant_for_mae():
    """On a mostly empty camera the median (0) beats the mean as a constant for MAE; the baseline is the median."""
    y = np.array([0] * 80 + [5] * 20, dtype=np.float32)
    x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    res = fit_from_arrays("people_count", x, y, np.arange(100.0), FitConfig(max_steps=2, test_fraction=0.5))
    test_y = y[res.test_idx]
    assert res.baseline["mae"] == pytest.approx(np.abs(test_y - 0).mean(), abs=1e-4)


def test_fit_errors():
    x, y, t = synthetic.clock_features(20, dim=8)
    with pytest.raises(ValueError, match="19 labels"):
        fit_from_arrays("time_of_day", x, y[:19], t)
    with pytest.raises(ValueError, match="training frames"):
        fit_from_arrays("time_of_day", x[:3], y[:3], t[:3])
    with pytest.raises(ValueError, match="token-grid"):
        fit_from_arrays("depth", x, np.ones((20, 4, 4), np.float32), t)
    with pytest.raises(ValueError, match="20 people_count labels are negative"):
        fit_from_arrays("people_count", x, -np.ones(20), t)
