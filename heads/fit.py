"""Fitting a head on in-memory features: time-ordered split, AdamW, early stopping, metrics beside the baseline.

`fit_from_arrays(task, features, labels, times, cfg)` is the whole engine; `fth heads fit` only has to read the
embeddings and labels, join them on frame id and call it. Features are converted once to one float32 tensor and the
loop indexes it directly (full batch when the training set fits `batch_size`, else shuffled minibatches): no
DataLoader, no per-step copies. Dense targets are strided by `dense_train_stride` for the training loss and the early-
stopping evaluations; the reported metrics are computed at full label size.

The split is by capture time, never at random: frames seconds apart from one stream are near-duplicates, and a random
split would put their twins on both sides (the validation error would then measure memory, not generalisation).
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

from heads.features import FeatureRecipe, as_float_tensor
from heads.models import HeadConfig, build_head, init_output_bias, num_params, output_bias, resolve_kind
from heads.tasks import Task, TaskConfig, make_task

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """How a head is fitted (the architecture is `head`).

    Args:
        head: the head's architecture; in/out widths and grid are filled from the features and the task.
        lr, weight_decay: AdamW.
        max_steps: optimiser steps at most.  batch_size: full batch when the training set is no larger.
        eval_every: steps between validation evaluations.  patience: evaluations without improvement before stopping.
        val_fraction: the latest fraction of frames (by capture time) held out for validation.
        split_gap_s: training frames captured within this many seconds before the first validation frame are dropped.
        dense_train_stride: label stride for the dense training loss (1 = full size; metrics are always full size).
        eval_batch: frames per evaluation batch for dense tasks.
        seed: seeds initialisation and batch order (the fit is deterministic given it).
        min_train: refuse to fit on fewer training frames than this.
        threads: torch CPU threads while fitting (0 = leave torch's setting). On a shared, busy machine 1 thread is
            often faster for these small heads than 2 contending ones.
    """

    head: HeadConfig = field(default_factory=HeadConfig)
    lr: float = 3e-3
    weight_decay: float = 0.05
    max_steps: int = 400
    batch_size: int = 1024
    eval_every: int = 20
    patience: int = 10
    val_fraction: float = 0.2
    split_gap_s: float = 0.0
    dense_train_stride: int = 4
    eval_batch: int = 32
    seed: int = 0
    min_train: int = 4
    threads: int = 0


@dataclass
class FitResult:
    head: nn.Module
    task: Task
    recipe: FeatureRecipe
    head_cfg: HeadConfig
    metrics: dict[str, Any]
    baseline: dict[str, Any]
    best_step: int
    history: list[dict[str, float]]
    train_idx: np.ndarray
    val_idx: np.ndarray
    seconds: float
    params: int

    def summary(self) -> dict[str, Any]:
        """JSON-able summary for cards and CLI tables."""
        return {
            "task": self.task.name,
            "head": resolve_kind(self.head_cfg),
            "params": self.params,
            "n_train": len(self.train_idx),
            "n_val": len(self.val_idx),
            "best_step": self.best_step,
            "fit_seconds": round(self.seconds, 3),
            "val": self.metrics,
            "baseline": self.baseline,
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


def time_split(times: Any, val_fraction: float, gap_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): validation = the latest `val_fraction` of frames by time, minus a gap before it."""
    t = to_epoch_seconds(times)
    n = len(t)
    order = np.argsort(t, kind="stable")
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    val = order[n - n_val :]
    start = t[val].min()
    train = order[: n - n_val]
    train = train[t[train] < start - gap_s] if gap_s > 0 else train
    return np.sort(train), np.sort(val)


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


def _baseline_metrics(task: Task, train_y: torch.Tensor, val_y: torch.Tensor, batch: int) -> dict[str, Any]:
    const = task.baseline(train_y)

    def batches():
        for i in range(0, val_y.shape[0], batch):
            target = val_y[i : i + batch]
            yield const.expand(target.shape[0], *const.shape[1:]), target

    return task.evaluate(batches())


def _better(task: Task, new: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    return new > best if task.higher_is_better else new < best


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
        features: array/tensor, float16 or float32, rows aligned with `labels` and `times`.
        labels: one label per frame in the task's form (counts, times of day, depth maps, class-index masks).
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
        return _fit(task, features, labels, times, cfg, recipe)
    finally:
        torch.set_num_threads(previous)


def _fit(task: Task, features: Any, labels: Any, times: Any, cfg: FitConfig, recipe: FeatureRecipe | None) -> FitResult:
    start = _time.perf_counter()
    torch.manual_seed(cfg.seed)
    x = as_float_tensor(features)
    y = task.targets(labels)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} labels: they must be aligned one to one")
    if recipe is None:
        recipe = FeatureRecipe.infer(x)
    recipe.check(x)
    if times is None:
        log.warning("no capture times given: splitting by the given row order")
        times = np.arange(x.shape[0], dtype=np.float64)
    if len(times) != x.shape[0]:
        raise ValueError(f"{len(times)} capture times for {x.shape[0]} frames")
    train_idx, val_idx = time_split(times, cfg.val_fraction, cfg.split_gap_s)
    if len(train_idx) < cfg.min_train:
        raise ValueError(f"only {len(train_idx)} training frames after the time split (need {cfg.min_train})")

    prior = task.dense and cfg.head.prior and resolve_kind(cfg.head) == "dense"
    head_cfg = replace(cfg.head, in_dim=recipe.dim, out_dim=task.out_dim, grid=recipe.grid, dense=task.dense,
                       prior=prior, prior_size=tuple(y.shape[-2:]) if prior else (0, 0))  # fmt: skip
    head = build_head(head_cfg)
    x_tr, x_va = x[torch.from_numpy(train_idx)], x[torch.from_numpy(val_idx)]
    y_tr, y_va = y[torch.from_numpy(train_idx)], y[torch.from_numpy(val_idx)]
    # a prior head outputs at full label size: its loss reads every pixel (a strided target would blur the prior)
    stride = cfg.dense_train_stride if task.dense and not prior else 1
    y_tr_fit, y_va_fit = _strided(y_tr, stride), _strided(y_va, stride)
    head.norm.fit(x_tr)
    if prior:
        with torch.no_grad():
            head.prior.copy_(task.prior(y_tr))
            last = output_bias(head)
            last.zero_()
            [m for m in head.modules() if isinstance(m, nn.Conv2d)][-1].weight.zero_()  # start at the prior
    else:
        init_output_bias(head, task.output_bias(y_tr))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
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
        best = _evaluate(task, head, x_va, y_va_fit, eval_batch)[task.primary]
        best_state = copy.deepcopy(head.state_dict())
        history.append({"step": 0, "loss": float("nan"), task.primary: best})
    for step in range(1, cfg.max_steps + 1):
        head.train()
        if bs == n_tr:
            xb, yb = x_tr, y_tr_fit
        else:
            if pos + bs > n_tr:
                perm, pos = torch.randperm(n_tr, generator=gen), 0
            idx = perm[pos : pos + bs]
            pos += bs
            xb, yb = x_tr[idx], y_tr_fit[idx]
        loss = task.loss(head(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.eval_every and step != cfg.max_steps:
            continue
        score = _evaluate(task, head, x_va, y_va_fit, eval_batch)[task.primary]
        history.append({"step": step, "loss": loss.item(), task.primary: score})
        if _better(task, score, best):
            best, best_step, bad = score, step, 0
            best_state = copy.deepcopy(head.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    metrics = _evaluate(task, head, x_va, y_va, eval_batch)
    baseline = _baseline_metrics(task, y_tr, y_va, eval_batch)
    changed = task.changed(task.baseline(y_tr), y_va) if task.dense else None
    if changed is not None:  # the same metrics on the pixels the baseline gets wrong (see heads.tasks)
        metrics["changed"] = _evaluate(task, head, x_va, changed, eval_batch)
        baseline["changed"] = _baseline_metrics(task, y_tr, changed, eval_batch)
    seconds = _time.perf_counter() - start
    log.info(
        "%s %s head: %s %.4g (baseline %.4g) on %d validation frames, best step %d, %.1fs",
        task.name,
        resolve_kind(head_cfg),
        task.primary,
        metrics[task.primary],
        baseline[task.primary],
        len(val_idx),
        best_step,
        seconds,
    )
    return FitResult(
        head, task, recipe, head_cfg, metrics, baseline, best_step, history, train_idx, val_idx, seconds,
        num_params(head),
    )  # fmt: skip


def predict_outputs(head: nn.Module, features: Any, batch: int = 256) -> torch.Tensor:
    """Raw head outputs over features (B, ...) -> (B, out) or (B, out, h, w)."""
    return torch.cat(list(run_head(head, as_float_tensor(features), batch)))
