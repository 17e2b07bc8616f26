"""The gate between an old head and its replacement, and the comparison it reads.

`compare` runs two heads' outputs against the same held-out targets: each one's metrics (the task's `evaluate`), each
frame's error (the task's `frame_errors`) and the negative flips (the task's `negative_flips`: frames the new answer
gets worse than the old one by more than the task's tolerance). `fth heads adapt` uses it for an old head on old
features vs the same head through the adapter on new features; the gate for an old head on old features vs its refit
on new features.

`decide`: a refit head is promoted only if its primary metric is not worse than the old head's beyond `tolerance`
(relative: 0.02 lets an MAE of 10.0 become 10.2, an mIoU of 0.50 become 0.49) and its negative flip rate is at most
`max_flip_rate`; otherwise the old head stays in service through the adapter (`keep-adapted`) and the reason says
which bound failed, with both numbers.
Shapes: B frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from heads.tasks import Task

PROMOTE, KEEP = "promote", "keep-adapted"


@dataclass
class GateConfig:
    """Args:
    tolerance: how much worse (relative to the old head's primary metric) a refit head may be and still be promoted.
    max_flip_rate: the largest fraction of held-out frames that may flip (right before, worse now) on promotion.
    """

    tolerance: float = 0.02
    max_flip_rate: float = 0.05


def evaluate(task: Task, out: torch.Tensor, target: torch.Tensor, batch: int = 32) -> dict[str, Any]:
    """Metrics of outputs (B, ...) against targets (B, ...), in batches (dense metrics upsample per batch)."""
    return task.evaluate((out[i : i + batch], target[i : i + batch]) for i in range(0, out.shape[0], batch))


def frame_errors(task: Task, out: torch.Tensor, target: torch.Tensor, batch: int = 32) -> torch.Tensor | None:
    """(B,) per-frame errors, or None for a task that does not define them."""
    try:
        return torch.cat([task.frame_errors(out[i : i + batch], target[i : i + batch])
                          for i in range(0, out.shape[0], batch)])  # fmt: skip
    except NotImplementedError:
        return None


def compare(task: Task, old_out: torch.Tensor, new_out: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Old vs new outputs on the same frames -> {old, new (metrics), primary, old_primary, new_primary, retention,
    flips, flip_rate, n}; retention is new/old for higher-is-better metrics and old/new otherwise (1.0 = as good)."""
    old_m, new_m = evaluate(task, old_out, target), evaluate(task, new_out, target)
    a, b = old_m.get(task.primary), new_m.get(task.primary)
    doc: dict[str, Any] = {"primary": task.primary, "higher_is_better": task.higher_is_better, "old": old_m,
                           "new": new_m, "old_primary": a, "new_primary": b, "retention": retention(task, a, b),
                           "n": int(target.shape[0]), "flips": None, "flip_rate": None}  # fmt: skip
    old_err, new_err = frame_errors(task, old_out, target), frame_errors(task, new_out, target)
    if old_err is not None and new_err is not None:
        flips = int(task.negative_flips(old_err, new_err).sum())
        doc.update(flips=flips, flip_rate=flips / max(1, doc["n"]), flip_tolerance=task.flip_tolerance,
                   relative_flip=task.relative_flip)  # fmt: skip
    return doc


def retention(task: Task, old: float | None, new: float | None) -> float | None:
    """The share of the old head's quality the new one keeps (1.0 = as good, above 1 = better)."""
    if old is None or new is None or math.isnan(old) or math.isnan(new):
        return None
    if task.higher_is_better:
        return new / old if old else (1.0 if new >= old else 0.0)
    return old / new if new else (1.0 if old == 0 else math.inf)


def decide(task: Task, cmp: dict[str, Any], cfg: GateConfig) -> tuple[str, str]:
    """(promote | keep-adapted, why) for a refit head compared with the old head by `compare` (new = the refit)."""
    old, new, rate = cmp["old_primary"], cmp["new_primary"], cmp["flip_rate"]
    name = task.primary
    if old is None or new is None or math.isnan(old) or math.isnan(new):
        return KEEP, f"{name} is undefined on the held-out frames (old {old}, refit {new})"
    bound = old * (1 - cfg.tolerance) if task.higher_is_better else old * (1 + cfg.tolerance)
    worse = new < bound if task.higher_is_better else new > bound
    if worse:
        side = "below" if task.higher_is_better else "above"
        return KEEP, (f"{name} {new:.4g} is {side} the bound {bound:.4g} (old {old:.4g}, tolerance "
                      f"{cfg.tolerance:.0%})")  # fmt: skip
    if rate is None:
        return KEEP, f"{task.name} defines no per-frame error, so the negative flip rate cannot be bounded"
    if rate > cfg.max_flip_rate:
        return KEEP, (f"negative flip rate {rate:.1%} ({cmp['flips']} of {cmp['n']} frames) exceeds "
                      f"{cfg.max_flip_rate:.1%} ({name} {new:.4g} vs old {old:.4g})")  # fmt: skip
    return PROMOTE, (f"{name} {new:.4g} vs old {old:.4g} (within {cfg.tolerance:.0%}), negative flip rate "
                     f"{rate:.1%} <= {cfg.max_flip_rate:.1%}")  # fmt: skip
