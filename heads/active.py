"""Ensembles of tiny heads, and the uncertainty they give a frame: where to spend the next labels.

An ensemble is K heads of one task fitted through the one fitting path (`heads.fit.fit_from_arrays`, what `fth heads
fit` runs), each on its own bootstrap resample of the labelled frames (drawn with replacement, as in bagging) and its
own seed (initialisation and batch order). Heads are tiny, so K = 5 costs about five fits of seconds each. A frame's
uncertainty is how much the members disagree on it, in the task's own terms (`Task.uncertainty`: variance of counts,
BALD mutual information of class maps, circular spread of clock times, variance of log depth, box disagreement);
Lakshminarayanan et al. 2017 ("Simple and scalable predictive uncertainty estimation using deep ensembles") is the
method, Beluch et al. 2018 ("The power of ensembles for active learning") its use for choosing labels.

Each member splits its resample by capture time as every fit does (train | validation, no test part: the ensemble
reports nothing, it only scores frames); a frame drawn twice lands on one side of the split unless both copies sit
exactly at the boundary. Shapes: K members, N frames, L labelled frames.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from heads.fit import FitConfig, fit_from_arrays, predict_outputs
from heads.join import labelled_rows
from heads.labels import LabelSet
from heads.tasks import Task
from store.recipe import FeatureRecipe

DEFAULT_K = 5


@dataclass
class Ensemble:
    """K fitted heads of one task on one feature recipe."""

    task: Task
    members: list[nn.Module]
    recipe: FeatureRecipe | None
    seconds: float  # wall time of the K fits

    def outputs(self, features: Any, batch: int = 256) -> torch.Tensor:
        """Raw features (N, ...) -> every member's raw outputs stacked (K, N, ...)."""
        return torch.stack([predict_outputs(head, features, batch) for head in self.members])

    def uncertainty(self, features: Any, chunk: int = 512) -> np.ndarray:
        """(N,) the task's disagreement score per frame (higher = the members differ more), in chunks of frames so
        the K dense outputs of a large pool are never all held at once."""
        parts = [self.task.uncertainty(self.outputs(features[i : i + chunk])) for i in range(0, len(features), chunk)]
        return torch.cat(parts).double().numpy() if parts else np.zeros(0)


def bootstrap(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """k resamples of range(n), each n indices drawn with replacement, sorted (seeded)."""
    rng = np.random.default_rng(seed)
    return [np.sort(rng.integers(0, n, size=n)) for _ in range(k)]


def fit_ensemble(
    task: Task,
    features: Any,
    labels: Sequence[Any],
    times: Sequence[Any] | None,
    cfg: FitConfig,
    recipe: FeatureRecipe | None = None,
    k: int = DEFAULT_K,
    seed: int = 0,
) -> Ensemble:
    """Fit K heads of `task` on features (L, ...) aligned with `labels` and capture `times`, each on a bootstrap
    resample with seed `cfg.seed + seed + member`; every fit goes through `heads.fit.fit_from_arrays`."""
    if k < 1:
        raise ValueError(f"an ensemble needs at least one member, got {k}")
    n = len(labels)
    start = time.perf_counter()
    cfg = dataclasses.replace(cfg, test_fraction=0.0, linear_probe=False)
    t = np.arange(n, dtype=np.float64) if times is None else times
    members = []
    for m, rows in enumerate(bootstrap(n, k, seed)):
        x = features[torch.from_numpy(rows)] if isinstance(features, torch.Tensor) else np.asarray(features)[rows]
        member_cfg = dataclasses.replace(cfg, seed=cfg.seed + seed + m)
        result = fit_from_arrays(task, x, [labels[i] for i in rows], [t[i] for i in rows], member_cfg, recipe)
        members.append(result.head.eval())
    return Ensemble(task, members, recipe, time.perf_counter() - start)


def ensemble_from_labels(
    task: Task,
    labels: LabelSet,
    frame_ids: Sequence[str],
    features: Any,
    times: Sequence[Any],
    cfg: FitConfig,
    recipe: FeatureRecipe | None = None,
    k: int = DEFAULT_K,
    seed: int = 0,
) -> Ensemble:
    """`fit_ensemble` on the labelled subset of frames (`features`, `times` aligned with `frame_ids`), joined on our
    frame id as `heads.join.fit_from_labels` joins a single fit."""
    return fit_ensemble(task, *labelled_rows(labels, frame_ids, features, times), cfg, recipe, k, seed)
