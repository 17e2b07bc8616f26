"""The MAE training loop: micro-batches -> one optimiser step, checkpoints, and exact resume.

One optimiser step = `accum_steps` micro-batches; DDP's gradient all-reduce is skipped (`no_sync`) on all but the
last. Each micro-batch loss is divided by `accum_steps`, so with equal micro-batches the gradient equals that of one
big batch, and DDP's mean over ranks makes world size W x batch b equal world size 1 x batch W*b. A non-finite loss
(or gradient norm) skips the step on every rank and is counted; `max_nonfinite` in a row stops the run.

The learning rate is a pure function of the step, the data order of (seed, epoch) and the sample randomness of
(seed, epoch, index) (see `encoder.data`), so a checkpoint needs only the step to know where the data stands; it also
stores model, optimiser, GradScaler, every rank's RNG states and counters. Checkpoints are written to a temporary
file, fsynced and renamed, and only the newest `keep` are kept.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from encoder.mae import MAE
from encoder.optim import lr_at, set_lr
from encoder.preprocess import normalize
from encoder.train_config import TrainConfig
from store.fsutil import atomic_write

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Raised after `max_nonfinite` consecutive non-finite losses."""


class TrainData(Protocol):
    """What the loop needs from a dataset: batches from any point of the run on, `per_epoch` per epoch, through
    every later epoch (one loader iterator for the run: its workers prefetch across epoch boundaries)."""

    digest: str

    def batches_per_epoch(self) -> int: ...

    def run_batches(self, epoch: int, start_batch: int, per_epoch: int) -> Iterator[dict[str, Any]]: ...


class Sink(Protocol):
    """Where the loop reports: scalars, a reconstruction panel, progress."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def panel(self, step: int, mae: MAE, batch: dict[str, Any]) -> None: ...

    def progress(self, step: int, values: dict[str, float]) -> None: ...


@dataclass
class Counters:
    nonfinite_total: int = 0
    nonfinite_streak: int = 0
    skipped_frames: int = 0
    bad_frames: list[str] = field(default_factory=list)


# -- checkpoints ------------------------------------------------------------------------------------------------------

CKPT = re.compile(r"ckpt-(\d{8})\.pt$")


def checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in `folder`, oldest step first."""
    return sorted((p for p in folder.glob("ckpt-*.pt") if CKPT.search(p.name)), key=lambda p: p.name)


def save_checkpoint(state: dict[str, Any], folder: Path, step: int, keep: int) -> Path:
    """Write atomically (tmp + fsync + rename + fsync dir), then delete all but the newest `keep`."""
    final = folder / f"ckpt-{step:08d}.pt"
    with atomic_write(final) as f:
        torch.save(state, f)
    for old in checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -- the loop ---------------------------------------------------------------------------------------------------------


class Trainer:
    """Runs optimiser steps of an MAE over `TrainData` until `total_steps`.

    Args:
        cfg: the run config.
        mae: the unwrapped model (its weights are what checkpoints and registration read).
        model: what to call forward on: `mae`, or its DDP / compiled wrapper.
        optimizer: built over `mae`'s parameters.
        data: the training data of this rank.
        device: where batches go.
        peak_lr: the scaled learning rate.  warmup: warmup steps.
        run_dir: checkpoints go to `run_dir/checkpoints`.
        sink: logging target (rank 0 gets a real one).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        mae: MAE,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: TrainData,
        device: torch.device,
        peak_lr: float,
        warmup: int,
        run_dir: Path,
        sink: Sink,
    ):
        self.cfg, self.mae, self.model, self.optimizer, self.data = cfg, mae, model, optimizer, data
        self.device, self.peak_lr, self.warmup, self.sink = device, peak_lr, warmup, sink
        self.ckpt_dir = run_dir / "checkpoints"
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.steps_per_epoch = data.batches_per_epoch() // cfg.accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"an epoch has {data.batches_per_epoch()} batches of {cfg.batch_size} per rank: fewer than "
                f"accum_steps={cfg.accum_steps}; use more frames or a smaller batch"
            )
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * self.steps_per_epoch
        self.step, self.counters = 0, Counters()
        self.autocast_dtype, self.scaler = _precision(cfg.precision, device)
        self.history: list[float] = []

    # -- state ----------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue; collective (every rank must call it: RNG states are gathered)."""
        rngs = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        return {
            "model": self.mae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "schedule": {"peak_lr": self.peak_lr, "warmup": self.warmup, "total": self.total_steps},
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "batch_in_epoch": (self.step % self.steps_per_epoch) * self.cfg.accum_steps,
            "world_size": self.world,
            "rng": rngs,
            "counters": vars(self.counters),
            "data_digest": self.data.digest,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mae.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.counters = Counters(**state["counters"])
        if state["world_size"] != self.world:
            log.warning(
                "resuming a world-size-%d run with %d ranks: the data split differs", state["world_size"], self.world
            )
        if state.get("data_digest") != self.data.digest:
            log.warning("resuming on a different frame set (%s, was %s)", self.data.digest, state.get("data_digest"))
        rngs = state["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])

    def save(self) -> Path | None:
        state = self.state_dict()
        if self.rank != 0:
            return None
        path = save_checkpoint(state, self.ckpt_dir, self.step, self.cfg.ckpt_keep)
        log.info("checkpoint %s (step %d)", path, self.step)
        return path

    # -- one step -------------------------------------------------------------------------------------------------

    def to_input(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """A collated batch -> normalised images (B, 3, H, W) and mask noise (B, N) on the device.

        A `decode="device"` batch is decoded and augmented here first; its `image` is then kept in the batch (for
        panels)."""
        if "image" not in batch:
            from encoder.decode import device_images

            batch["image"] = device_images(batch, tuple(self.cfg.model.encoder.img_size), self.device)
        images = batch["image"].to(self.device, non_blocking=True)
        return normalize(images, self.cfg.model.encoder), batch["noise"].to(self.device, non_blocking=True)

    def train_step(self, micro: list[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step over `accum_steps` micro-batches; returns loss, lr and grad norm (NaN if skipped)."""
        self.model.train()
        n = len(micro)
        total = torch.zeros((), device=self.device)
        for k, batch in enumerate(micro):
            imgs, noise = self.to_input(batch)
            sync = k == n - 1 or not hasattr(self.model, "no_sync")
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with torch.autocast(
                    self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
                ):
                    loss = self.model(imgs, noise=noise).loss
                scaled = loss / n
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += loss.detach().float() / n
        # One all-reduce carries the loss (for the skip decision, the same on every rank) and the skipped frames.
        stats = torch.stack([total, torch.tensor(float(sum(b["skipped"] for b in micro)), device=self.device)])
        if self.world > 1:
            dist.all_reduce(stats)
            stats[0] /= self.world
        loss_value, skipped = stats.tolist()
        self.counters.skipped_frames += int(skipped)
        for batch in micro:
            self.counters.bad_frames += [b for b in batch["bad"] if b not in self.counters.bad_frames]
        lr = lr_at(self.step, self.peak_lr, self.warmup, self.total_steps, self.cfg.optim.min_lr)
        grad_norm = float("nan")
        if math.isfinite(loss_value):
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            clip = self.cfg.optim.clip_grad if self.cfg.optim.clip_grad > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.mae.parameters(), clip))
        if not math.isfinite(loss_value) or (not self.scaler and not math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.counters.nonfinite_total += 1
            self.counters.nonfinite_streak += 1
            log.warning("step %d: non-finite loss %s / grad norm %s; step skipped", self.step, loss_value, grad_norm)
            if self.counters.nonfinite_streak >= self.cfg.max_nonfinite:
                raise NonFiniteLoss(
                    f"{self.counters.nonfinite_streak} non-finite losses in a row at step {self.step}: stopping. "
                    "Lower optim.base_lr, enable optim.clip_grad, or try precision=fp32."
                )
            return {"loss": loss_value, "lr": lr, "grad_norm": grad_norm}
        set_lr(self.optimizer, lr)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.counters.nonfinite_streak = 0
        return {"loss": loss_value, "lr": lr, "grad_norm": grad_norm}

    # -- the run --------------------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train from `self.step` to `total_steps`; returns final metrics."""
        cfg, accum = self.cfg, self.cfg.accum_steps
        effective = cfg.batch_size * accum * self.world
        epoch, pos = divmod(self.step, self.steps_per_epoch)
        batches = self.data.run_batches(epoch, pos * accum, self.steps_per_epoch * accum)
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            for _ in range(self.step % self.steps_per_epoch, self.steps_per_epoch):
                if self.step >= self.total_steps:
                    break
                t0 = time.perf_counter()
                micro = [next(batches) for _ in range(accum)]
                t1 = time.perf_counter()
                metrics = self.train_step(micro)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                t2 = time.perf_counter()
                self.step += 1
                self.history.append(metrics["loss"])
                metrics |= {"images_per_s": effective / max(t2 - t0, 1e-9), "data_wait_s": t1 - t0, "epoch": epoch}
                self.sink.progress(self.step, metrics)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self.sink.scalars(self.step, metrics | {"skipped_frames": self.counters.skipped_frames})
                if cfg.panel_every and self.step % cfg.panel_every == 0:
                    self.sink.panel(self.step, self.mae, micro[-1])
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < self.total_steps:
                    self.save()
                if cfg.step_delay:
                    time.sleep(cfg.step_delay)
        del batches  # stops the loader's workers (they prefetch past the last step)
        self.save()
        bad = [self.counters.bad_frames]
        if self.world > 1:
            bad = [None] * self.world
            dist.all_gather_object(bad, self.counters.bad_frames)
        return {
            "steps": self.step,
            "final_loss": self.history[-1] if self.history else None,
            "nonfinite_steps": self.counters.nonfinite_total,
            "skipped_frames": self.counters.skipped_frames,
            "bad_frames": sorted({b for part in bad for b in part}),
        }


def _precision(name: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """(autocast dtype or None for fp32, GradScaler for fp16 only)."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    if name == "fp32":
        return None, None
    if name == "bf16":
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler(device.type)
