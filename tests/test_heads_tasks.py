"""Task losses, metrics, baselines and label decoding checked against values worked out by hand."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest
import torch

from heads.tasks import TaskConfig, format_time, make_task, parse_time_of_day


def test_parse_time_of_day_formats():
    assert parse_time_of_day("07:30") == 7 * 3600 + 1800
    assert parse_time_of_day("23:59:59.5") == 86399.5
    assert parse_time_of_day(1.5) == 5400.0  # numbers are hours of day, the catalog's and the sim's unit
    assert parse_time_of_day(3600, "seconds") == parse_time_of_day(60, "minutes") == 3600.0
    assert parse_time_of_day("2024-05-01T18:15:00+02:00") == 18 * 3600 + 900  # the camera's local clock
    assert parse_time_of_day(datetime(2024, 1, 1, 6, 0, 30)) == 6 * 3600 + 30
    for bad in ("25:00", "noon", -1, 24, True):
        with pytest.raises(ValueError, match="time of day"):
            parse_time_of_day(bad)
    assert format_time(86390) == "00:00" and format_time(13 * 3600 + 29 * 60 + 40) == "13:30"


def test_time_unit_mismatch_is_refused():
    hours = [float(h) for h in range(0, 24, 2)]
    with pytest.raises(ValueError, match="12 numeric times of day are below 24 but time_unit is 'seconds'"):
        make_task(TaskConfig("time_of_day", time_unit="seconds")).targets(hours)
    with pytest.raises(ValueError, match="outside one day"):
        make_task("time_of_day").targets([3600.0 * h for h in range(1, 12)])
    assert make_task("time_of_day").targets(hours)[1] == 7200.0


def _clock(seconds):
    a = torch.as_tensor(seconds, dtype=torch.float32) * 2 * math.pi / 86400
    return torch.stack([a.sin(), a.cos()], 1) * 3.0  # any length: the task normalises


def test_time_of_day_error_wraps_around_midnight():
    task = make_task("time_of_day")
    target = task.targets(["23:50", "00:10", "12:00"])
    out = _clock([600.0, 85800.0, 12 * 3600 + 300.0])  # 00:10, 23:50, 12:05
    m = task.evaluate([(out, target)])
    assert m["mae_minutes"] == pytest.approx((20 + 20 + 5) / 3, abs=1e-2)
    assert task.loss(_clock(target), target) == pytest.approx(0.0, abs=1e-6)
    assert task.loss(-_clock(target), target) == pytest.approx(2.0, abs=1e-5)  # opposite side of the clock


def test_circular_mean_baseline_straddles_midnight():
    task = make_task("time_of_day")
    train = task.targets(["23:00", "01:00", "23:30", "00:30"])
    base = task.baseline(train)
    assert task.decode(base)[0]["time"] == "00:00"  # an arithmetic mean would say 12:00


def test_count_loss_metrics_and_baseline():
    for loss in ("poisson", "log"):
        task = make_task(TaskConfig("people_count", count_loss=loss))
        y = task.targets([0, 2, 4])
        base = task.baseline(y).expand(3, 1)
        assert task.decode(base)[0]["count"] == pytest.approx(2.0, rel=1e-5)
        m = task.evaluate([(base, y)])
        assert m["mae"] == pytest.approx(4 / 3, rel=1e-5) and m["rmse"] == pytest.approx(math.sqrt(8 / 3), rel=1e-5)
        z = torch.zeros(3, 1, requires_grad=True)
        task.loss(z, y).backward()
        assert z.grad is not None and torch.isfinite(z.grad).all()


def test_depth_metrics_ignore_invalid_pixels_and_upsample():
    task = make_task("depth")
    target = torch.tensor([[[2.0, 2.0, 0.0, 4.0], [2.0, 2.0, 4.0, 4.0]]])  # (1, 2, 4), one invalid pixel
    out = torch.tensor([[[[math.log(2.0), math.log(5.0)]]]])  # (1, 1, 1, 2): left half 2 m, right half 5 m
    out = out.repeat_interleave(2, -1)  # (1, 1, 1, 4) columns 2, 2, 5, 5 -> bilinear in the loss/metrics
    m = task.evaluate([(out, target)])
    assert m["pixels"] == 7
    assert m["absrel"] == pytest.approx((3 * 0.25) / 7, rel=1e-4)  # three valid right pixels: |5 - 4| / 4
    assert m["rmse"] == pytest.approx(math.sqrt(3 / 7), rel=1e-4)
    assert m["delta1"] == pytest.approx(4 / 7)  # 5/4 = 1.25 is not < 1.25
    # scale invariance: with lambda = 1 a global scale error costs nothing
    si = make_task(TaskConfig("depth", si_lambda=1.0))
    exact = target.clamp_min(1e-6).log()[:, None]
    assert si.loss(exact + 0.7, target) == pytest.approx(0.0, abs=1e-6)
    assert task.loss(exact + 0.7, target) == pytest.approx(0.49 * 0.5, rel=1e-4)


def test_segmentation_miou_per_class_accuracy_and_ignore():
    task = make_task(TaskConfig("segmentation", classes=("a", "b", "c")))
    target = task.targets([np.array([[0, 0, 1, 1], [2, 2, 255, 255]])])
    logits = torch.zeros(1, 3, 2, 4)
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])  # the ignored pixels' predictions do not count
    logits.scatter_(1, pred[None, None], 5.0)
    m = task.evaluate([(logits, target)])
    # a: tp 1, fn 1, fp 1 -> 1/3; b: tp 2, fp 1 -> 2/3; c: tp 1, fn 1 -> 1/2
    assert m["iou"] == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 1 / 2})
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["class_acc"] == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.5})
    assert m["pixel_acc"] == pytest.approx(4 / 6) and m["pixels"] == 6
    with pytest.raises(ValueError, match=r"2 pixels with class indices outside 0..2 .*\[3, 7\]"):
        task.targets([np.array([[0, 3], [7, 255]])])
    with pytest.raises(ValueError, match="class list"):
        make_task(TaskConfig("segmentation", classes=("only",))).targets([np.zeros((2, 2))])


def test_segmentation_baseline_is_per_pixel_majority():
    task = make_task(TaskConfig("segmentation", classes=("a", "b")))
    train = task.targets([np.array([[0, 1]]), np.array([[0, 1]]), np.array([[1, 255]])])
    assert task.baseline(train).argmax(1).tolist() == [[[0, 1]]]
