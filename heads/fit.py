"""Fitting a head on features: time-ordered train / validation / test split, AdamW, early stopping, honest metrics.

`fit_from_arrays(task, features, labels, times, cfg)` is the whole engine; `fth heads fit` only has to read the
embeddings and labels, join them on frame id and call it.

- The split is by capture time, never at random: frames seconds apart from one stream are near-duplicates, and a
  random split would put their twins on both sides. Oldest first: train | gap | validation | gap | test. Validation
  picks the step (early stopping); the reported metrics are on the test frames, which nothing was tuned on, and so is
  the baseline's (the best constant for the metric, fitted on the training labels).
- Features go through the head's frozen `Reduce` stage once (in chunks, so a float16 memory map of grids is never
  copied whole to float32); the trainable part then trains on the reduced features in shuffled minibatches.
- Map targets are strided by `dense_train_stride` for the training loss and the early-stopping evaluations; the
  reported metrics are computed at full label size.
"""

from __future__ import annotations

import copy
import logging
import math
import time as _time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import torch
from torch import nn

from heads.models import (
    HeadConfig,
    as_float,
    build_head,
    init_output_bias,
    num_params,
    output_bias,
    pooled_axes_for,
    resolve_kind,
)
from heads.tasks import Task, TaskConfig, make_task
from store.recipe import FeatureRecipe

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """How a head is fitted (the architecture is `head`).

    Args:
        head: the head's architecture; in/out widths and grid are filled from the features and the task.
        lr, weight_decay: AdamW.
        max_steps: optimiser steps at most.  batch_size: frames per step (the whole training set when smaller).
        eval_every: steps between validation evaluations.  patience: evaluations without improvement before stopping.
        val_fraction: the fraction of frames (by capture time, before the test frames) that picks the step.
        test_fraction: the latest fraction of frames, held out for the reported metrics (0: report validation).
        split_gap_s: frames captured within this many seconds before the first frame of the next split are dropped,
            so near-duplicate neighbours never sit on both sides of a boundary.
        dense_train_stride: label stride for the dense training loss (1 = full size; metrics are always full size).
        eval_batch: frames per evaluation batch for map outputs.
        seed: seeds initialisation and batch order (the fit is deterministic given it).
        min_train: refuse to fit on fewer training frames than this.
        threads: torch CPU threads while fitting (0 = leave torch's setting).
        linear_probe: also fit a linear probe on the same features and split, reported as the `probe` baseline.
    """

    head: HeadConfig = field(default_factory=HeadConfig)
    lr: float = 3e-3
    weight_decay: float = 0.05
    max_steps: int = 400
    batch_size: int = 256
    eval_every: int = 20
    patience: int = 10
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_gap_s: float = 0.0
    dense_train_stride: int = 4
    eval_batch: int = 32
    seed: int = 0
    min_train: int = 4
    threads: int = 0
    linear_probe: bool = False


@dataclass
class Split:
    """Frame indices of each part, oldest first, and how many labelled frames each gap dropped."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    gap_before_val: int = 0
    gap_before_test: int = 0
    gap_s: float = 0.0

    @property
    def total(self) -> int:
        return len(self.train) + len(self.val) + len(self.test) + self.gap_before_val + self.gap_before_test

    def describe(self) -> str:
        gaps = self.gap_before_val + self.gap_before_test
        text = f"{len(self.train)} train, {len(self.val)} validation, {len(self.test)} test"
        if gaps:
            text += (f"; the {self.gap_s:g} s gaps dropped {gaps} (before validation {self.gap_before_val}, "
                     f"before test {self.gap_before_test})")  # fmt: skip
        return text + f" of {self.total} labelled frames (oldest first)"

    def warnings(self) -> list[str]:
        gaps = self.gap_before_val + self.gap_before_test
        if gaps * 2 > self.total:
            return [f"split_gap_s={self.gap_s:g} dropped {gaps} of {self.total} labelled frames; lower it "
                    "(--set split_gap_s=...) or label frames further apart in time"]  # fmt: skip
        return []


@dataclass
class FitResult:
    head: nn.Module
    task: Task
    recipe: FeatureRecipe
    head_cfg: HeadConfig
    metrics: dict[str, Any]  # on the test frames (validation when test_fraction is 0)
    baseline: dict[str, Any]  # the best constant, on the same frames
    val_metrics: dict[str, Any]
    best_step: int
    history: list[dict[str, float]]
    split: Split
    seconds: float
    params: int
    max_steps: int = 0
    reported_on: str = "test"
    probe: dict[str, Any] | None = None  # a linear probe's metrics on the same frames (FitConfig.linear_probe)

    @property
    def train_idx(self) -> np.ndarray:
        return self.split.train

    @property
    def val_idx(self) -> np.ndarray:
        return self.split.val

    @property
    def test_idx(self) -> np.ndarray:
        return self.split.test if len(self.split.test) else self.split.val

    @property
    def stopped_at_cap(self) -> bool:
        """The best step was the last one of a run that hit max_steps: more steps would likely help."""
        return self.best_step >= self.max_steps > 0

    def notes(self) -> list[str]:
        out = self.split.warnings()
        if self.stopped_at_cap:
            out.append(f"the fit was still improving at its last step ({self.max_steps}): raise max_steps "
                       "(--set max_steps=...)")  # fmt: skip
        if self.head_cfg.pooled_axes:
            cfg = self.head_cfg
            out.append(f"pooled vectors {cfg.in_dim} wide on {len(self.split.train)} training frames: the head reads "
                       f"the {cfg.pooled_axes} axes those frames span (label more frames to read more)")  # fmt: skip
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able summary for cards and CLI tables."""
        return {
            "task": self.task.name,
            "head": resolve_kind(self.head_cfg),
            "params": self.params,
            "n_train": len(self.split.train),
            "n_val": len(self.split.val),
            "n_test": len(self.split.test),
            "split": self.split.describe(),
            "reported_on": self.reported_on,
            "best_step": self.best_step,
            "max_steps": self.max_steps,
            "fit_seconds": round(self.seconds, 3),
            "primary": self.task.primary,
            "higher_is_better": self.task.higher_is_better,
            "unit": self.task.unit,
            "test": self.metrics,
            "val": self.val_metrics,
            "baseline": self.baseline,
            "probe": self.probe,
            "notes": self.notes(),
        }


def to_epoch_seconds(times: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Capture times (epoch seconds, datetimes, ISO strings or numpy datetime64) -> float64 seconds."""
    arr = np.asarray(times)
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[us]").astype(np.int64) / 1e6
    if np.issubdtype(arr.dtype, np.number):
        return arr.astype(np.float64)
    out = []
    for t in times:
        if isinstance(t, str):
            t = datetime.fromisoformat(t.replace("Z", "+00:00"))
        out.append(t.timestamp() if isinstance(t, datetime) else float(t))
    return np.asarray(out, dtype=np.float64)


def time_split(times: Any, val_fraction: float, test_fraction: float = 0.0, gap_s: float = 0.0) -> Split:
    """Oldest first: train | gap | validation | gap | test, by capture time (see the module docstring)."""
    t = to_epoch_seconds(times)
    n = len(t)
    order = np.argsort(t, kind="stable")
    n_test = min(n - 2, max(1, int(round(n * test_fraction)))) if test_fraction > 0 else 0
    n_val = min(n - n_test - 1, max(1, int(round(n * val_fraction))))
    test = order[n - n_test :]
    rest = order[: n - n_test]
    gap_test = 0
    if n_test and gap_s > 0:
        keep = t[rest] < t[test].min() - gap_s
        gap_test, rest = int((~keep).sum()), rest[keep]
    n_val = min(n_val, max(len(rest) - 1, 0))
    val = rest[len(rest) - n_val :]
    train = rest[: len(rest) - n_val]
    gap_val = 0
    if gap_s > 0 and len(val):
        keep = t[train] < t[val].min() - gap_s
        gap_val, train = int((~keep).sum()), train[keep]
    return Split(np.sort(train), np.sort(val), np.sort(test), gap_val, gap_test, gap_s)


def _strided(target: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, H, W) -> (B, ~H/s, ~W/s) picking each cell's centre pixel (exact class ids and invalid zeros survive)."""
    if stride <= 1:
        return target
    o = stride // 2
    return target[:, o::stride, o::stride].contiguous()


@torch.no_grad()
def run_head(head: nn.Module, x: torch.Tensor, batch: int = 256) -> Iterator[torch.Tensor]:
    """Yield the head's outputs over `x` in batches (eval mode, no grad)."""
    head.eval()
    for i in range(0, x.shape[0], batch):
        yield head(x[i : i + batch])


def _evaluate(task: Task, head: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict[str, Any]:
    outs = run_head(head, x, batch)
    return task.evaluate((out, y[i * batch : (i + 1) * batch]) for i, out in enumerate(outs))


def _baseline_metrics(task: Task, const: torch.Tensor, y: torch.Tensor, batch: int) -> dict[str, Any]:
    def batches():
        for i in range(0, y.shape[0], batch):
            target = y[i : i + batch]
            yield const.expand(target.shape[0], *const.shape[1:]), target

    return task.evaluate(batches())


def _better(task: Task, new: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    return new > best if task.higher_is_better else new < best


@torch.no_grad()
def reduce_features(head: nn.Module, x: Any, chunk: int = 256) -> torch.Tensor:
    """Raw features (B, ...) (numpy, float16 memory map or tensor) -> the head's reduced float32 features, in chunks."""
    out = None
    for i in range(0, x.shape[0], chunk):
        part = head.reduce(as_float(x[i : i + chunk]))
        if out is None:  # written in place: a list of parts and a cat would hold the reduced features twice
            out = part.new_empty((x.shape[0], *part.shape[1:]))
        out[i : i + part.shape[0]] = part
    return out if out is not None else torch.zeros(0)


def _rows(x: Any, idx: np.ndarray) -> Any:
    return x[torch.from_numpy(idx)] if isinstance(x, torch.Tensor) else np.asarray(x)[idx]


class _RowView:
    """Rows `idx` of `x`, gathered a slice at a time: `Reduce.fit` reads the training frames in chunks, and a copy of
    them all (60% of 10k float16 grids of 12x20x1024 is 2.9 GB) would only be read once."""

    def __init__(self, x: Any, idx: np.ndarray):
        self.x, self.idx, self.shape = x, idx, (len(idx), *x.shape[1:])

    def __getitem__(self, s: slice) -> Any:
        return _rows(self.x, self.idx[s])


def fit_from_arrays(
    task: Task | TaskConfig | str,
    features: Any,
    labels: Any,
    times: Any | None,
    cfg: FitConfig | None = None,
    recipe: FeatureRecipe | None = None,
) -> FitResult:
    """Fit a head on features (B, D) or (B, gh, gw, D) with one label per frame, split by capture time.

    Args:
        task: the task (a `Task`, its config, or its name).
        features: array/tensor (float16 memory maps welcome), rows aligned with `labels` and `times`.
        labels: one label per frame in the task's form (counts, times of day, maps, boxes).
        times: capture time per frame (epoch seconds, datetimes or ISO strings); None keeps the given order as time.
        cfg: fitting options and head architecture.
        recipe: the feature recipe to record (layers, pooling); inferred from the shape when None.
    """
    cfg = cfg or FitConfig()
    task = task if isinstance(task, Task) else make_task(task)
    previous = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        result = _fit(task, features, labels, times, cfg, recipe)
        if cfg.linear_probe:
            probe_cfg = replace(cfg, linear_probe=False, head=replace(cfg.head, kind="linear", prior=False))
            result.probe = _fit(task, features, labels, times, probe_cfg, recipe).metrics
        return result
    finally:
        torch.set_num_threads(previous)


def _fit(task: Task, features: Any, labels: Any, times: Any, cfg: FitConfig, recipe: FeatureRecipe | None) -> FitResult:
    start = _time.perf_counter()
    torch.manual_seed(cfg.seed)
    y = task.targets(labels)
    n = features.shape[0]
    if n != y.shape[0]:
        raise ValueError(f"{n} feature rows but {y.shape[0]} labels: they must be aligned one to one")
    recipe = FeatureRecipe.infer(features) if recipe is None else recipe.completed(features)
    recipe.check(features)
    if times is None:
        log.warning("no capture times given: splitting by the given row order")
        times = np.arange(n, dtype=np.float64)
    if len(times) != n:
        raise ValueError(f"{len(times)} capture times for {n} frames")
    split = time_split(times, cfg.val_fraction, cfg.test_fraction, cfg.split_gap_s)
    if len(split.train) < cfg.min_train or not len(split.val):
        raise ValueError(f"only {len(split.train)} training frames after the time split (need {cfg.min_train}): "
                         f"{split.describe()}; label more frames, or lower split_gap_s / val_fraction / "
                         "test_fraction (--set key=value)")  # fmt: skip
    for note in split.warnings():
        log.warning(note)

    task.prepare(recipe.grid)
    prior = task.map_labels and cfg.head.prior and resolve_kind(replace(cfg.head, dense=True)) == "dense"
    head_cfg = replace(cfg.head, in_dim=recipe.dim, out_dim=task.out_dim, grid=recipe.grid, dense=task.dense,
                       prior=prior, prior_size=tuple(y.shape[-2:]) if prior else (0, 0))  # fmt: skip
    head_cfg = replace(head_cfg, **task.head_defaults())
    head_cfg = replace(head_cfg, pooled_axes=pooled_axes_for(head_cfg, len(split.train)))
    head = build_head(head_cfg)
    head.reduce.fit(_RowView(features, split.train), seed=cfg.seed)
    x = reduce_features(head, features)  # (B, ..., P) float32, computed once
    body = head.body
    idx = {k: torch.from_numpy(getattr(split, k)) for k in ("train", "val", "test")}
    x_tr, x_va, x_te = (x[idx[k]] for k in ("train", "val", "test"))
    y_tr, y_va, y_te = (y[idx[k]] for k in ("train", "val", "test"))
    # a prior head outputs at full label size: its loss reads every pixel (a strided target would blur the prior)
    stride = cfg.dense_train_stride if task.map_labels and not prior else 1
    y_tr_fit, y_va_fit = _strided(y_tr, stride), _strided(y_va, stride)
    if prior:
        with torch.no_grad():
            body.prior.copy_(task.prior(y_tr))
            output_bias(body).zero_()
            [m for m in body.modules() if isinstance(m, nn.Conv2d)][-1].weight.zero_()  # start at the prior
    else:
        init_output_bias(body, task.output_bias(y_tr))
    opt = torch.optim.AdamW(body.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # cosine decay to 5% of lr over max_steps: most of the gain comes early, the tail settles it
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.max_steps) / cfg.max_steps))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    eval_batch = cfg.eval_batch if task.dense else 4096

    n_tr, bs = x_tr.shape[0], min(cfg.batch_size, x_tr.shape[0])
    perm, pos = torch.randperm(n_tr, generator=gen), 0
    best, best_state, best_step, bad, history = None, None, 0, 0, []
    if prior:  # step 0 (the scene prior alone) is a candidate: a head never ends worse than where it started
        best = _evaluate(task, body, x_va, y_va_fit, eval_batch)[task.primary]
        best_state = copy.deepcopy(body.state_dict())
        history.append({"step": 0, "loss": float("nan"), task.primary: best})
    for step in range(1, cfg.max_steps + 1):
        body.train()
        if bs == n_tr:
            xb, yb = x_tr, y_tr_fit
        else:
            if pos + bs > n_tr:
                perm, pos = torch.randperm(n_tr, generator=gen), 0
            sel = perm[pos : pos + bs]
            pos += bs
            xb, yb = x_tr[sel], y_tr_fit[sel]
        loss = task.loss(body(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.eval_every and step != cfg.max_steps:
            continue
        score = _evaluate(task, body, x_va, y_va_fit, eval_batch)[task.primary]
        history.append({"step": step, "loss": loss.item(), task.primary: score})
        if _better(task, score, best):
            best, best_step, bad = score, step, 0
            best_state = copy.deepcopy(body.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        body.load_state_dict(best_state)
    head.eval()
    reported_on = "test" if len(split.test) else "validation"
    x_rep, y_rep = (x_te, y_te) if len(split.test) else (x_va, y_va)
    val_metrics = _evaluate(task, body, x_va, y_va, eval_batch)
    metrics = _evaluate(task, body, x_rep, y_rep, eval_batch)
    const = task.baseline(y_tr)
    baseline = _baseline_metrics(task, const, y_rep, eval_batch)
    changed = task.changed(const, y_rep) if task.map_labels else None
    if changed is not None:  # the same metrics on the pixels the baseline gets wrong (see the task)
        metrics["changed"] = _evaluate(task, body, x_rep, changed, eval_batch)
        baseline["changed"] = _baseline_metrics(task, const, changed, eval_batch)
    seconds = _time.perf_counter() - start
    log.info("%s %s head: %s %.4g (baseline %.4g) on %d %s frames, best step %d, %.1fs", task.name,
             resolve_kind(head_cfg), task.primary, metrics[task.primary], baseline[task.primary], y_rep.shape[0],
             reported_on, best_step, seconds)  # fmt: skip
    return FitResult(
        head, task, recipe, head_cfg, metrics, baseline, val_metrics, best_step, history, split, seconds,
        num_params(body), cfg.max_steps, reported_on,
    )  # fmt: skip


def predict_outputs(head: nn.Module, features: Any, batch: int = 256) -> torch.Tensor:
    """Raw head outputs over raw features (B, ...) -> (B, out) or (B, out, h, w)."""
    return torch.cat(list(run_head(head, as_float(features), batch)))
