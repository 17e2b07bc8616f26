"""Label-efficiency curves: a task's metric against the number of labelled frames, every fit scored on the same
held-out frames. The engine of `fth eval`; it fits through `heads.fit.fit_from_arrays`, the engine of `fth heads fit`.

- `held_out` sets the test frames once per task: the latest `test_fraction` of the labelled frames by capture time.
  The frames captured within `split_gap_s` before the first of them are dropped, so no training frame is a
  near-duplicate neighbour of a test frame. The rest, oldest first, is the pool labels are spent from.
- `fit_budget` fits on the earliest `k` frames of the pool plus the test frames, with `test_fraction` set so that
  exactly the test frames land in `fit_from_arrays`'s test split: inside the k frames it splits train | gap |
  validation as `fth heads fit` does (validation picks the step), and the metrics it reports, the head's and the
  best constant's (fitted on those k frames' training part), are on the common test frames. A split that puts any
  other frame in test is an error, never a silently different number.
Shapes: n labelled frames in capture order; features (n, D) or (n, gh, gw, D).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from heads.fit import FitConfig, fit_from_arrays, to_epoch_seconds


@dataclass
class HeldOut:
    """Indices into the labelled frames: `pool` (oldest first, labels are spent from its start) and `test`."""

    pool: np.ndarray
    test: np.ndarray
    gap: int  # frames dropped between the pool and the test frames

    def describe(self) -> str:
        return (f"{len(self.test)} held-out test frames (the latest), {len(self.pool)} frames to label from"
                + (f", {self.gap} dropped in the gap between" if self.gap else ""))  # fmt: skip


def held_out(times: Sequence[Any], test_fraction: float, gap_s: float) -> HeldOut:
    """The common test frames (the latest `test_fraction`, at least 1) and the pool before them (see module doc)."""
    t = to_epoch_seconds(times)
    order = np.argsort(t, kind="stable")
    n_test = max(1, int(round(len(t) * test_fraction)))
    if n_test >= len(t) - 2:
        raise ValueError(f"{len(t)} labelled frames leave nothing to train on after {n_test} test frames")
    test, rest = order[len(t) - n_test :], order[: len(t) - n_test]
    keep = t[rest] < t[test].min() - gap_s
    return HeldOut(rest[keep], np.sort(test), int((~keep).sum()))


def parse_sizes(text: str) -> list[int | None]:
    """`30,100,300,all` -> [30, 100, 300, None] (None = the whole pool)."""
    out: list[int | None] = []
    for part in str(text).split(","):
        part = part.strip()
        if part == "all":
            out.append(None)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise ValueError(f"--sizes {text!r}: expected positive label counts and `all`, e.g. 30,100,300,all")
    return out


@dataclass
class BudgetFit:
    """One fit at one label budget and head seed, scored on the common test frames."""

    labels: int  # frames the fit was given (train + gap + validation)
    seed: int
    metric: float
    baseline: float
    n_train: int
    n_val: int
    best_step: int


def fit_budget(
    task: Any,
    features: Any,
    values: Sequence[Any],
    times: Sequence[Any],
    split: HeldOut,
    k: int,
    cfg: FitConfig,
    recipe: Any = None,
    seed: int = 0,
) -> BudgetFit:
    """Fit `task`'s head on the earliest `k` pool frames and score it (and the best constant) on `split.test`."""
    k = min(k, len(split.pool))
    idx = np.concatenate([split.pool[:k], split.test])
    n_test = len(split.test)
    # round(len(idx) * fraction) == n_test exactly: the last n_test frames by time are the common test frames; the
    # validation share is of the budget (k), not of budget + test (at 30 labels and 80 test frames that took 22 of 30)
    fit_cfg = replace(cfg, seed=seed, test_fraction=(n_test + 0.25) / len(idx),
                      val_fraction=(max(1, round(k * cfg.val_fraction)) + 0.25) / len(idx))  # fmt: skip
    t = np.asarray(times, dtype=object)[idx]
    result = fit_from_arrays(task, features[idx], [values[i] for i in idx], list(t), fit_cfg, recipe)
    if sorted(result.split.test.tolist()) != list(range(k, k + n_test)):
        raise ValueError(f"the fit's test split ({len(result.split.test)} frames) is not the {n_test} common held-out "
                         "frames: capture times out of order?")  # fmt: skip
    primary = result.task.primary
    return BudgetFit(k, seed, float(result.metrics[primary]), float(result.baseline[primary]),
                     len(result.split.train), len(result.split.val), result.best_step)  # fmt: skip
