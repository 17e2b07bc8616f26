"""Training data for MAE pretraining: catalog frames -> augmented uint8 images + per-sample mask noise.

Everything random about a sample is a pure function of (seed, epoch, sample index): the crop, the flip and the MAE
mask noise come from `numpy.random.default_rng([seed, epoch, index])`. The order of an epoch is a permutation drawn
from (seed, epoch), split across ranks the way `torch.utils.data.DistributedSampler` does (rank r takes every
world-th index), and `EpochSampler` can start part-way into its rank's share. So a run resumed from a checkpoint
sees exactly the samples, crops and masks it would have seen, and world size 2 x batch 4 sees the same global batch
as world size 1 x batch 8, whatever the worker count.

Augmentation follows MAE (He et al. 2021): random resized crop with area scale in [0.2, 1.0] and an aspect ratio
near the target's (sampled log-uniformly in `crop_ratio` times the target's W/H), then a horizontal flip.
A frame that is missing or does not decode is skipped: the next frame in index order takes its place (so batch
shapes never change and DDP ranks stay in step) and the sample carries `skipped = 1` and the bad frame's id.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from encoder.train_config import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameRecord:
    """One training frame: its catalog id (sha256 of the file bytes) and where its file is."""

    id: str
    path: Path


def catalog_records(cfg: DataConfig) -> list[FrameRecord]:
    """Frames of the workspace catalog matching `cfg`'s sources, time range and flags, oldest first."""
    from datetime import datetime

    from store.catalog import Catalog
    from store.paths import Workspace

    ws = Workspace.at(cfg.workspace)
    if not ws.catalog.is_file():
        raise FileNotFoundError(f"no frame catalog at {ws.catalog}; collect frames first (fth collect)")

    def when(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    catalog = Catalog(ws.root, recover=False)
    try:
        rows = []
        for source in cfg.sources or [None]:
            rows += catalog.frames(
                source=source,
                since=when(cfg.since),
                until=when(cfg.until),
                include_stale=cfg.include_stale,
                include_duplicates=cfg.include_duplicates,
            )
    finally:
        catalog.close()
    return [FrameRecord(r.id, ws.root / r.path) for r in rows]


def frame_digest(ids: Iterable[str]) -> str:
    """A short content digest of a frame set: sha256 over its sorted frame ids (order-independent)."""
    h = hashlib.sha256()
    for frame_id in sorted(ids):
        h.update(frame_id.encode() + b"\n")
    return "frames-" + h.hexdigest()[:16]


# -- per-sample augmentation ------------------------------------------------------------------------------------------


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    aspect: float,
    scale: Sequence[float] = (0.2, 1.0),
    ratio: Sequence[float] = (0.75, 4 / 3),
) -> tuple[int, int, int, int]:
    """A random crop (left, top, right, bottom) covering `scale` of the area with W/H near `aspect` x `ratio`.

    Ten tries as in torchvision's RandomResizedCrop; if none fits, the largest centred crop of the target aspect.
    """
    area = width * height
    log_lo, log_hi = math.log(aspect * ratio[0]), math.log(aspect * ratio[1])
    draws = rng.random((10, 2))  # fixed number of draws, so later draws do not depend on which try succeeded
    for u_area, u_ratio in draws:
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        r = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= width and 0 < ch <= height:
            offsets = rng.random(2)
            left, top = int(offsets[0] * (width - cw + 1)), int(offsets[1] * (height - ch + 1))
            return left, top, left + cw, top + ch
    cw, ch = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
    cw, ch = min(cw, width), min(ch, height)
    left, top = (width - cw) // 2, (height - ch) // 2
    return left, top, left + cw, top + ch


def augment(image: Image.Image, rng: np.random.Generator, size: tuple[int, int], cfg: DataConfig) -> np.ndarray:
    """PIL image -> (H, W, 3) uint8: random resized crop to `size` = (H, W), then maybe a horizontal flip."""
    h, w = size
    image = image.convert("RGB")
    box = crop_box(rng, image.width, image.height, w / h, cfg.crop_scale, cfg.crop_ratio)
    out = image.resize((w, h), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5 and cfg.hflip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(out, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def make_sample(
    image: Image.Image, seed: int, epoch: int, index: int, size: tuple[int, int], num_patches: int, cfg: DataConfig
) -> dict[str, Any]:
    """One training sample: augmented image (H, W, 3) uint8 and MAE mask noise (N,), both from (seed, epoch, index)."""
    rng = sample_rng(seed, epoch, index)
    pixels = augment(image, rng, size, cfg)
    noise = rng.random(num_patches, dtype=np.float32)  # (N,)
    return {"image": torch.from_numpy(pixels), "noise": torch.from_numpy(noise), "index": index}


def load_image(path: Path) -> Image.Image:
    """Open and fully decode an image (a truncated or garbage file raises here, not later)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


BAD_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class FrameDataset(Dataset):
    """Map-style dataset over `FrameRecord`s; call `set_epoch` before each epoch (the augmentation depends on it).

    Args:
        records: the frames, in a fixed order (index i is record i).
        size: output (H, W).
        num_patches: N, the length of the mask noise per sample.
        cfg: augmentation and skipping settings.
        seed: the run seed.
    """

    def __init__(
        self, records: Sequence[FrameRecord], size: tuple[int, int], num_patches: int, cfg: DataConfig, seed: int
    ):
        if not records:
            raise ValueError("no frames to train on (check data.sources / since / until)")
        self.records, self.size, self.num_patches = list(records), tuple(size), num_patches
        self.cfg, self.seed, self.epoch = cfg, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        bad: list[str] = []
        for k in range(self.cfg.max_skip + 1):
            record = self.records[(index + k) % len(self.records)]
            try:
                image = load_image(record.path)
            except BAD_IMAGE as e:
                if k == 0:
                    bad.append(record.id)
                    log.warning("skipping unreadable frame %s (%s): %s", record.id[:16], record.path, e)
                continue
            sample = make_sample(image, self.seed, self.epoch, index, self.size, self.num_patches, self.cfg)
            return {**sample, "skipped": len(bad), "bad": bad}
        raise RuntimeError(f"{self.cfg.max_skip + 1} frames in a row from index {index} are unreadable")


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples -> batch: images (B, H, W, 3) uint8, noise (B, N), index (B,), skipped count, bad frame ids."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "noise": torch.stack([s["noise"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
        "skipped": sum(s.get("skipped", 0) for s in samples),
        "bad": [b for s in samples for b in s.get("bad", [])],
    }


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


def make_loader(dataset: Any, cfg: DataConfig, device_type: str, **kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader with the run's worker count and pinning; workers are not persistent (a new epoch re-forks them
    with the dataset's new epoch)."""
    return torch.utils.data.DataLoader(
        dataset,
        num_workers=cfg.num_workers,
        pin_memory=cfg.pin_memory and device_type == "cuda",
        **kwargs,
    )


class FrameData:
    """Catalog frames for one rank: `epoch_batches(epoch, start_batch)` -> the loader of that epoch from a batch on.

    Args:
        records: all frames of the run (every rank gets the same list).
        size: output (H, W).  num_patches: N.  cfg: data settings.  seed: run seed.
        batch_size: per rank.  world, rank: DDP layout.  device_type: `cpu` or `cuda` (pinning).
    """

    def __init__(
        self,
        records: Sequence[FrameRecord],
        size: tuple[int, int],
        num_patches: int,
        cfg: DataConfig,
        seed: int,
        batch_size: int,
        world: int = 1,
        rank: int = 0,
        device_type: str = "cpu",
    ):
        self.dataset = FrameDataset(records, size, num_patches, cfg, seed)
        self.sampler = EpochSampler(len(records), world, rank, seed)
        self.cfg, self.batch_size, self.device_type = cfg, batch_size, device_type
        self.digest = frame_digest(r.id for r in records)

    def batches_per_epoch(self) -> int:
        return (self.sampler.n // self.sampler.world) // self.batch_size

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> torch.utils.data.DataLoader:
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_batch * self.batch_size)
        return make_loader(
            self.dataset,
            self.cfg,
            self.device_type,
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=True,
            collate_fn=collate,
        )
