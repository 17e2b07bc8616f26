"""The four head tasks: label encoding, loss, additive metric statistics, the naive baseline, and JSON decoding.

- `people_count`: Poisson NLL on a log-rate output (or squared error on log(1 + count)); MAE, RMSE; the baseline
  predicts the training mean.
- `time_of_day`: the 24 h clock as an angle, predicted as (sin, cos); loss 1 - cos(error) on the unit circle; mean
  absolute error in minutes with wrap-around; the baseline predicts the training circular mean.
- `depth`: log-depth map, upsampled (bilinear) to the label size; scale-invariant log loss of Eigen et al. 2014
  (NeurIPS, "Depth map prediction from a single image using a multi-scale deep network", lambda = 0.5); AbsRel, RMSE,
  delta < 1.25 over valid (> 0) pixels; the baseline predicts the per-pixel mean training log-depth (a fixed camera's
  scene layout, the bar a head must clear).
- `segmentation`: class logits upsampled to the label size; cross-entropy with an ignore index; mIoU, overall and
  per-class pixel accuracy; the baseline predicts the per-pixel majority training class.

Metrics are computed from additive statistics (`stats` per batch, summed, then `finalize`) so dense validation sets
are evaluated in chunks. Dense tasks also report their metrics on the "changed" pixels (`Task.changed`): where the
per-pixel baseline is wrong, i.e. what differs from a fixed camera's static scene; over all pixels the static scene
dominates (sim depth: AbsRel ~0.006 for the baseline, people are <1% of the pixels).
Shapes: B batch, K classes, (h, w) head output, (H, W) label size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

TaskName = Literal["people_count", "time_of_day", "depth", "segmentation"]
DAY = 86400.0


@dataclass
class TaskConfig:
    """Which task and its options.

    Args:
        name: the task.
        count_loss: `poisson` (NLL on a log-rate) or `log` (squared error on log(1 + count)) for people_count.
        classes: class names for segmentation (index i = classes[i]).
        ignore_index: label value skipped by loss and metrics (segmentation).
        si_lambda: weight of the scale term of the scale-invariant log loss (0 = plain log MSE, 1 = fully invariant).
        time_unit: unit of NUMERIC time-of-day labels: `hours` in [0, 24) (the catalog's local time of day and the
            sim's labels), `minutes` or `seconds` since midnight. "HH:MM[:SS]" strings need no unit.
    """

    name: TaskName = "people_count"
    count_loss: Literal["poisson", "log"] = "poisson"
    classes: tuple[str, ...] = ()
    ignore_index: int = 255
    si_lambda: float = 0.5
    time_unit: Literal["hours", "minutes", "seconds"] = "hours"


UNIT_SECONDS = {"hours": 3600.0, "minutes": 60.0, "seconds": 1.0}


def parse_time_of_day(value: Any, unit: str = "hours") -> float:
    """Local time of day -> seconds since midnight. Accepts a number in `unit` (hours by default), "HH:MM[:SS[.f]]",
    an ISO datetime string (its local clock time is used), `datetime` or `time`."""
    if isinstance(value, datetime):
        value = value.time()
    if isinstance(value, time):
        return value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6
    if isinstance(value, bool):
        raise ValueError(f"time of day {value!r}: expected a number or HH:MM[:SS]")
    if isinstance(value, int | float | np.integer | np.floating):
        seconds = float(value) * UNIT_SECONDS[unit]
        if not 0 <= seconds < DAY:
            raise ValueError(f"time of day {value!r} {unit}: outside one day (is time_unit right?)")
        return seconds
    text = str(value).strip()
    if "T" in text or (" " in text and "-" in text):
        try:
            return parse_time_of_day(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            pass
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return parse_time_of_day(float(text), unit)
        if len(parts) in (2, 3):
            h, m = int(parts[0]), int(parts[1])
            s = float(parts[2]) if len(parts) == 3 else 0.0
            if 0 <= h < 24 and 0 <= m < 60 and 0 <= s < 61:
                return h * 3600 + m * 60 + s
    except ValueError:
        pass
    raise ValueError(f"time of day {value!r}: expected a number of {unit} or HH:MM[:SS]")


def format_time(seconds: float) -> str:
    minutes = int(round(seconds / 60.0)) % 1440
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _resize(out: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W) bilinear; identity when already that size."""
    if tuple(out.shape[-2:]) == tuple(size):
        return out
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class Task:
    """Interface every task implements; `primary` is the validation metric early stopping watches."""

    name: str = ""
    dense: bool = False
    out_dim: int = 1
    primary: str = ""
    higher_is_better: bool = False

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    def targets(self, values: Any) -> torch.Tensor:
        """Label values (list or array, one per frame) -> target tensor."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stats(self, out: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def finalize(self, stats: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def baseline(self, train_target: torch.Tensor) -> torch.Tensor:
        """The naive predictor's output for one frame, (1, ...) in head-output space, broadcast over a batch."""
        raise NotImplementedError

    def prior(self, train_target: torch.Tensor) -> torch.Tensor:
        """Dense tasks: the per-pixel scene prior (1, out, H, W) in head-output space (see HeadConfig.prior)."""
        return self.baseline(train_target)

    def changed(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Dense tasks: `target` with every pixel the baseline `base` (1, out, H, W) already gets right marked invalid,
        so metrics read only what differs from the static scene (a fixed camera's people); None for scalar tasks."""
        return None

    def output_bias(self, train_target: torch.Tensor) -> torch.Tensor | None:
        """Initial bias of the head's output layer (out_dim,): the naive prediction, so fitting starts there."""
        return None

    def decode(self, out: torch.Tensor, size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
        """Head output (B, ...) -> one JSON-able prediction per frame."""
        raise NotImplementedError

    def evaluate(self, outs_and_targets) -> dict[str, Any]:
        """Iterable of (out, target) batches -> metrics."""
        total: dict[str, Any] = {}
        for out, target in outs_and_targets:
            for k, v in self.stats(out, target).items():
                total[k] = total[k] + v if k in total else v
        return self.finalize(total)


class PeopleCount(Task):
    name, out_dim, primary = "people_count", 1, "mae"

    def targets(self, values: Any) -> torch.Tensor:
        y = torch.as_tensor(np.asarray(values, dtype=np.float32))
        if y.dim() != 1 or (y < 0).any() or not torch.isfinite(y).all():
            raise ValueError("people_count labels must be one finite, non-negative number per frame")
        return y

    def count(self, out: torch.Tensor) -> torch.Tensor:
        z = out[:, 0]
        return z.clamp(max=20).exp() if self.cfg.count_loss == "poisson" else z.expm1().clamp_min(0)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = out[:, 0]
        if self.cfg.count_loss == "poisson":
            return F.poisson_nll_loss(z.clamp(max=20), target, log_input=True, full=False)
        return F.mse_loss(z, target.log1p())

    def stats(self, out, target):
        err = self.count(out) - target
        return {"abs": err.abs().sum().item(), "sq": (err * err).sum().item(), "n": target.numel()}

    def finalize(self, s):
        return {"mae": s["abs"] / s["n"], "rmse": math.sqrt(s["sq"] / s["n"]), "n": s["n"]}

    def baseline(self, train_target):
        mean = train_target.float().mean().clamp_min(1e-6)
        z = mean.log() if self.cfg.count_loss == "poisson" else mean.log1p()
        return z.reshape(1, 1)

    def output_bias(self, train_target):
        return self.baseline(train_target).reshape(1)

    def decode(self, out, size=None):
        return [{"count": float(c)} for c in self.count(out).tolist()]


class TimeOfDay(Task):
    name, out_dim, primary = "time_of_day", 2, "mae_minutes"

    def targets(self, values: Any) -> torch.Tensor:
        unit = self.cfg.time_unit
        values = list(values)
        numbers = [float(v) for v in values if isinstance(v, int | float | np.integer | np.floating)]
        if unit != "hours" and len(numbers) >= 10 and max(numbers) < 24:
            raise ValueError(
                f"all {len(numbers)} numeric times of day are below 24 but time_unit is {unit!r}: hours of day? "
                "(set the task's time_unit to hours)"
            )
        return torch.tensor([parse_time_of_day(v, unit) for v in values], dtype=torch.float32)

    @staticmethod
    def angle(seconds: torch.Tensor) -> torch.Tensor:
        return seconds * (2 * math.pi / DAY)

    def seconds(self, out: torch.Tensor) -> torch.Tensor:
        return torch.remainder(torch.atan2(out[:, 0], out[:, 1]) * (DAY / (2 * math.pi)), DAY)

    def loss(self, out, target):
        a = self.angle(target)
        unit = out / out.norm(dim=1, keepdim=True).clamp_min(1e-6)  # (B, 2) on the unit circle
        return (1 - unit[:, 0] * a.sin() - unit[:, 1] * a.cos()).mean()

    def stats(self, out, target):
        diff = torch.remainder(self.seconds(out) - target, DAY)
        minutes = torch.minimum(diff, DAY - diff) / 60.0
        return {"abs_min": minutes.sum().item(), "n": target.numel()}

    def finalize(self, s):
        return {"mae_minutes": s["abs_min"] / s["n"], "n": s["n"]}

    def baseline(self, train_target):
        a = self.angle(train_target.float())
        return torch.stack([a.sin().mean(), a.cos().mean()]).reshape(1, 2)

    def decode(self, out, size=None):
        return [{"time": format_time(s), "minutes": round(s / 60.0, 2)} for s in self.seconds(out).tolist()]


class Depth(Task):
    name, dense, out_dim, primary = "depth", True, 1, "absrel"

    def targets(self, values: Any) -> torch.Tensor:
        t = torch.as_tensor(np.stack([np.asarray(v, dtype=np.float32) for v in values]))
        if t.dim() != 3 or (t < 0).any() or not torch.isfinite(t).all():
            raise ValueError("depth labels must be (H, W) maps of finite, non-negative depth (0 = invalid)")
        return t

    def depth(self, out: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return _resize(out, size or tuple(out.shape[-2:]))[:, 0].clamp(-20, 20).exp()  # (B, H, W)

    def loss(self, out, target):
        z = _resize(out, tuple(target.shape[-2:]))[:, 0]  # (B, H, W) log-depth
        valid = target > 0
        d = torch.where(valid, z - target.clamp_min(1e-6).log(), torch.zeros_like(z))
        n = valid.flatten(1).sum(1)  # (B,)
        has = n > 0
        n = n.clamp_min(1)
        mean_sq = (d * d).flatten(1).sum(1) / n
        mean = d.flatten(1).sum(1) / n
        per_image = mean_sq - self.cfg.si_lambda * mean * mean
        return per_image[has].mean() if has.any() else z.sum() * 0

    def stats(self, out, target):
        pred = self.depth(out, tuple(target.shape[-2:]))
        valid = target > 0
        p, t = pred[valid], target[valid]
        ratio = torch.maximum(p / t, t / p)
        return {
            "absrel": ((p - t).abs() / t).sum().item(),
            "sq": ((p - t) ** 2).sum().item(),
            "d1": (ratio < 1.25).sum().item(),
            "n": t.numel(),
        }

    def finalize(self, s):
        n = max(s["n"], 1)
        return {"absrel": s["absrel"] / n, "rmse": math.sqrt(s["sq"] / n), "delta1": s["d1"] / n, "pixels": s["n"]}

    def baseline(self, train_target):
        valid = train_target > 0
        logs = torch.where(valid, train_target.clamp_min(1e-6).log(), torch.zeros_like(train_target))
        counts = valid.sum(0)  # (H, W)
        overall = logs.sum() / valid.sum().clamp_min(1)
        per_pixel = torch.where(counts > 0, logs.sum(0) / counts.clamp_min(1), overall)
        return per_pixel[None, None]  # (1, 1, H, W)

    def changed(self, base, target):
        """Valid pixels where the per-pixel baseline is off by more than 10% (people in front of the scene)."""
        b = self.depth(base, tuple(target.shape[-2:]))  # (1, H, W)
        keep = (target > 0) & ((b - target).abs() > 0.1 * target)
        return torch.where(keep, target, torch.zeros_like(target))

    def output_bias(self, train_target):
        valid = train_target > 0
        return (train_target[valid].log().mean() if valid.any() else torch.tensor(0.0)).reshape(1)

    def decode(self, out, size=None):
        return [{"depth": d.tolist(), "shape": list(d.shape)} for d in self.depth(out, size)]


class Segmentation(Task):
    name, dense, primary, higher_is_better = "segmentation", True, "miou", True

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        if len(cfg.classes) < 2:
            raise ValueError("segmentation needs a class list of at least two names (TaskConfig.classes)")
        self.out_dim = len(cfg.classes)

    def targets(self, values: Any) -> torch.Tensor:
        arr = np.stack([np.asarray(v) for v in values]).astype(np.int64)
        bad = (arr >= self.out_dim) & (arr != self.cfg.ignore_index) | (arr < 0)
        if bad.any():
            raise ValueError(
                f"segmentation labels hold {int(bad.sum())} pixels with class indices outside 0..{self.out_dim - 1} "
                f"(ignore index {self.cfg.ignore_index}): {sorted(set(arr[bad].tolist()))[:5]}"
            )
        small = self.out_dim < 256 and 0 <= self.cfg.ignore_index < 256
        return torch.from_numpy(arr.astype(np.uint8 if small else np.int32))

    def loss(self, out, target):
        logits = _resize(out, tuple(target.shape[-2:]))
        return F.cross_entropy(logits, target.long(), ignore_index=self.cfg.ignore_index)

    def stats(self, out, target):
        k = self.out_dim
        pred = _resize(out, tuple(target.shape[-2:])).argmax(1)
        t = target.long()
        valid = t != self.cfg.ignore_index
        conf = torch.bincount(t[valid] * k + pred[valid], minlength=k * k).reshape(k, k)  # (true, predicted)
        return {"conf": conf.double()}

    def finalize(self, s):
        conf = s["conf"]
        tp, gt, pr = conf.diag(), conf.sum(1), conf.sum(0)
        union = gt + pr - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        acc = torch.where(gt > 0, tp / gt.clamp_min(1), torch.full_like(tp, float("nan")))
        names = self.cfg.classes
        return {
            "miou": float(iou[union > 0].mean()) if (union > 0).any() else 0.0,
            "pixel_acc": float(tp.sum() / gt.sum().clamp_min(1)),
            "iou": {n: None if math.isnan(v) else v for n, v in zip(names, iou.tolist(), strict=True)},
            "class_acc": {n: None if math.isnan(v) else v for n, v in zip(names, acc.tolist(), strict=True)},
            "pixels": int(gt.sum()),
        }

    def class_counts(self, train_target: torch.Tensor) -> torch.Tensor:
        """Per-pixel label counts over the training maps: (K + 1, H*W), the last row counting ignored pixels."""
        k, (h, w) = self.out_dim, train_target.shape[-2:]
        counts = torch.zeros(k + 1, h * w)
        for i in range(0, train_target.shape[0], 256):
            t = train_target[i : i + 256].long().reshape(-1, h * w)  # (b, H*W)
            t = torch.where(t == self.cfg.ignore_index, torch.full_like(t, k), t)
            counts.scatter_add_(0, t, torch.ones_like(t, dtype=torch.float32))
        return counts

    def baseline(self, train_target):
        k, (h, w) = self.out_dim, train_target.shape[-2:]
        majority = self.class_counts(train_target)[:k].argmax(0)  # (H*W,)
        return F.one_hot(majority, k).T.reshape(1, k, h, w).float()

    def prior(self, train_target):
        """Log per-pixel class frequency (add-one smoothed): (1, K, H, W)."""
        k, (h, w) = self.out_dim, train_target.shape[-2:]
        counts = self.class_counts(train_target)[:k] + 1.0
        freq = counts / counts.sum(0, keepdim=True)
        return freq.log().reshape(1, k, h, w)

    def changed(self, base, target):
        """Pixels whose class differs from the per-pixel majority (the baseline scores 0 there)."""
        b = _resize(base, tuple(target.shape[-2:])).argmax(1)  # (1, H, W)
        keep = (target.long() != b) & (target.long() != self.cfg.ignore_index)
        return torch.where(keep, target, torch.full_like(target, self.cfg.ignore_index))

    def output_bias(self, train_target):
        t = train_target.long().flatten()
        freq = torch.bincount(t[t != self.cfg.ignore_index], minlength=self.out_dim)[: self.out_dim].float()
        return (freq / freq.sum().clamp_min(1)).clamp_min(1e-4).log()

    def decode(self, out, size=None):
        maps = _resize(out, size or tuple(out.shape[-2:])).argmax(1)
        return [{"segmentation": m.tolist(), "shape": list(m.shape), "classes": list(self.cfg.classes)} for m in maps]


TASKS: dict[str, type[Task]] = {
    "people_count": PeopleCount,
    "time_of_day": TimeOfDay,
    "depth": Depth,
    "segmentation": Segmentation,
}


def make_task(cfg: TaskConfig | str) -> Task:
    if isinstance(cfg, str):
        cfg = TaskConfig(name=cfg)  # type: ignore[arg-type]
    return TASKS[cfg.name](cfg)
