"""Sampling and loading for training data: which sample keys a rank reads, in what order, through what DataLoader.

`EpochSampler` orders one epoch for one rank (a seeded permutation split like `DistributedSampler`, able to start
part-way). Keys carry their epoch (`EpochKeys` for one epoch, `RunKeys` for the rest of a run), so persistent
workers never need per-epoch state, and one loader iterator can serve a whole run, its workers prefetching across
epoch boundaries. `make_loader` applies the run's worker count (`auto_workers`: cores per local rank less one),
prefetching and pinning.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from encoder.train_config import DataConfig


class EpochSampler(Sampler[int]):
    """This rank's indices of a seeded per-epoch permutation, optionally starting part-way (for exact resume).

    Like `DistributedSampler`, rank r takes positions r, r + world, ... of the permutation; unlike it, the tail that
    does not divide by the world size is dropped (never padded), so every rank has the same number of samples.

    Args:
        n: dataset length.  world, rank: DDP world size and this rank.  seed: the run seed.
        shuffle: permute per epoch (False: identity order, for inspection).
    """

    def __init__(self, n: int, world: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        if n < world:
            raise ValueError(f"{n} samples cannot be split over {world} ranks")
        self.n, self.world, self.rank, self.seed, self.shuffle = n, world, rank, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch, and skip the first `start` of this rank's samples in it."""
        self.epoch, self.start = epoch, start

    def rank_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        per_rank = self.n // self.world
        return order[: per_rank * self.world][self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.start :].tolist())

    def __len__(self) -> int:
        return self.n // self.world - self.start


class EpochKeys(Sampler[tuple[int, int]]):
    """Yields `(epoch, index)` for each index of `sampler`: the key a persistent worker needs (it never sees
    `set_epoch`, which runs in the main process)."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.sampler.epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class RunKeys(Sampler[tuple[int, int]]):
    """`(epoch, index)` keys from batch `start_batch` of `epoch` on, through every later epoch without end: one
    DataLoader iterator then serves the whole run, and its workers prefetch across epoch boundaries (no stall at
    an epoch start). Each epoch yields exactly `per_epoch` batches of `batch_size` (the rest is dropped, as
    `drop_last` does)."""

    def __init__(self, sampler: EpochSampler, epoch: int, start_batch: int, per_epoch: int, batch_size: int):
        self.sampler, self.epoch, self.start = sampler, epoch, start_batch * batch_size
        self.stop = per_epoch * batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start
        while True:
            self.sampler.set_epoch(epoch)
            for i in self.sampler.rank_indices()[start : self.stop].tolist():
                yield epoch, i
            epoch, start = epoch + 1, 0


def usable_cores() -> int:
    """CPU cores this process may use: its affinity set, capped by a cgroup v2 CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def auto_workers() -> int:
    """Loader workers for one rank: the cores this process may use, shared by the node's local ranks, less one for
    the training loop itself (at least 1)."""
    cores = usable_cores()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(1, local) - 1)


def make_loader(dataset: Any, cfg: DataConfig, device_type: str, **kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader with the run's worker count (`-1`: `auto_workers`), prefetching, pinning (CUDA only) and, with
    `cfg.persistent_workers`, workers that live for the whole run: make it once and iterate it once per epoch."""
    workers = auto_workers() if cfg.num_workers < 0 else cfg.num_workers
    extra = {}
    if workers > 0:
        extra = {"persistent_workers": cfg.persistent_workers, "prefetch_factor": cfg.prefetch_factor}
    return torch.utils.data.DataLoader(
        dataset,
        num_workers=workers,
        pin_memory=cfg.pin_memory and device_type == "cuda",
        **extra,
        **kwargs,
    )
