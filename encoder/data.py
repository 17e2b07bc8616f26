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

Two places can decode (`DataConfig.decode`), with the same random draws (`draw_sample`):
- `pil`: loader workers decode with PIL and crop, resize and flip; a batch carries `image` (B, H, W, 3) uint8.
- `device`: workers only read the bytes and the JPEG header (the crop box needs the frame size); a batch carries the
  encoded `frames`, their `box` and `flip`, and `encoder.decode.device_images` decodes, crops, resizes and flips the
  batch on the training device (nvJPEG on CUDA; the same tensor ops on CPU).
Samples are keyed `(epoch, index)`, so persistent workers need no per-epoch state: the epoch travels with the key.

Replay (`DataConfig.replay_fraction`, continued pretraining): indices past the window's frames read older frames,
a fresh draw each epoch from (seed, epoch) (`ReplayDraw`), so the mix is exact under resume and any worker count.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from encoder.loader import EpochKeys, EpochSampler, RunKeys, make_loader
from encoder.train_config import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameRecord:
    """One training frame: its catalog id (sha256 of the file bytes) and where its bytes are: `path` in the
    workspace's frame store `store` (a local folder or S3, `store.backends`), or a plain file when `store` is None."""

    id: str
    path: Path | str
    store: Any = None

    def read(self) -> bytes:
        """The encoded frame; FileNotFoundError when it is gone."""
        return self.store.read(self.path) if self.store is not None else Path(self.path).read_bytes()


def catalog_records(cfg: DataConfig) -> list[FrameRecord]:
    """Frames of the workspace catalog matching `cfg`'s sources, time range and flags, oldest first."""
    from datetime import datetime

    from store.backends import CatalogMissing, open_catalog
    from store.paths import Workspace

    ws = Workspace.at(cfg.workspace)

    def when(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    try:
        catalog = open_catalog(ws, create=False)
    except CatalogMissing as e:
        raise FileNotFoundError(f"{e}; collect frames first (fth collect)") from None
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
    store = catalog.frame_store
    return [FrameRecord(r.id, r.path, store) for r in rows]


def replay_records(cfg: DataConfig) -> list[FrameRecord]:
    """The replay pool: frames of the same sources and flags captured before `cfg.since`, oldest first."""
    from dataclasses import replace

    from fth.config import ConfigError

    if not 0.0 <= cfg.replay_fraction < 1.0:
        raise ConfigError(f"data.replay_fraction {cfg.replay_fraction} must be in [0, 1)")
    if cfg.source != "catalog":
        raise ConfigError("data.replay_fraction needs data.source catalog (replay draws from catalog frames)")
    if not cfg.since:
        raise ConfigError("data.replay_fraction needs data.since: replay draws from frames captured before it")
    pool = catalog_records(replace(cfg, since=None, until=cfg.since))
    if not pool:
        raise ConfigError(
            f"data.replay_fraction {cfg.replay_fraction}: no frames captured before {cfg.since} to replay"
        )
    return pool


def replay_count(new: int, fraction: float) -> int:
    """Older frames per epoch so that they are `fraction` of it: round(new x f / (1 - f))."""
    return round(new * fraction / (1.0 - fraction)) if fraction > 0 else 0


class ReplayDraw:
    """Which older frame each replay slot of an epoch reads: `count` indices into a pool of `pool` frames, drawn
    from (seed, epoch), without replacement unless the pool is smaller than `count`. One epoch's draw is cached."""

    STREAM = 7  # keeps these draws apart from the per-sample streams of (seed, epoch, index)

    def __init__(self, pool: int, count: int, seed: int):
        self.pool, self.count, self.seed = pool, count, seed
        self._epoch, self._draw = -1, np.empty(0, dtype=np.int64)

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch, self.STREAM, 0])
            self._draw = rng.choice(self.pool, self.count, replace=self.count > self.pool)
            self._epoch = epoch
        return self._draw


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


@dataclass(frozen=True)
class Draw:
    """The random choices of one sample: crop box (left, top, right, bottom) in source pixels, flip, mask noise (N,)."""

    box: tuple[int, int, int, int]
    flip: bool
    noise: np.ndarray


def draw_sample(
    seed: int, epoch: int, index: int, width: int, height: int, size: tuple[int, int], num_patches: int, cfg: DataConfig
) -> Draw:
    """Every random choice of sample `index` of `epoch` for a `width` x `height` frame, from (seed, epoch, index)."""
    rng = sample_rng(seed, epoch, index)
    h, w = size
    box = crop_box(rng, width, height, w / h, cfg.crop_scale, cfg.crop_ratio)
    flip = bool(rng.random() < 0.5 and cfg.hflip)  # always drawn, so the noise does not depend on cfg.hflip
    noise = rng.random(num_patches, dtype=np.float32)  # (N,)
    return Draw(box, flip, noise)


def augment(image: Image.Image, draw: Draw, size: tuple[int, int]) -> np.ndarray:
    """PIL image -> (H, W, 3) uint8: `draw`'s crop resized to `size` = (H, W), flipped if drawn."""
    h, w = size
    out = image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR, box=draw.box)
    if draw.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(out, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def make_sample(
    data: bytes,
    seed: int,
    epoch: int,
    index: int,
    size: tuple[int, int],
    num_patches: int,
    cfg: DataConfig,
    decode: str = "pil",
) -> dict[str, Any]:
    """Encoded frame bytes -> one training sample; raises one of `BAD_IMAGE` when the frame is unreadable.

    `decode="pil"`: decoded and augmented here, `image` (H, W, 3) uint8. `decode="device"`: only the header is
    parsed here, and `frame` is the encoded JPEG as a (bytes,) uint8 tensor (or, for a non-JPEG file, its decoded
    (3, h, w) uint8 pixels) for `encoder.decode.device_images`. Both carry `box`, `flip`, `noise` (N,) and `index`.
    """
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        if decode == "pil" or im.format != "JPEG":
            im.load()  # a truncated or garbage file raises here, not later
            image = im.convert("RGB")
    draw = draw_sample(seed, epoch, index, width, height, size, num_patches, cfg)
    sample: dict[str, Any] = {
        "noise": torch.from_numpy(draw.noise),
        "index": index,
        "box": torch.tensor(draw.box),
        "flip": draw.flip,
    }
    if decode == "pil":
        sample["image"] = torch.from_numpy(augment(image, draw, size))
    elif im.format == "JPEG":
        sample["frame"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # (bytes,)
    else:
        sample["frame"] = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # (3, h, w)
    return sample


BAD_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_place(cfg: DataConfig, device_type: str) -> str:
    """`pil` or `device`: where `cfg.decode` puts JPEG decoding when training on `device_type`. The device path needs
    torchvision (the `gpu` extra): `auto` falls back to PIL without it, an explicit `device` is a one-line error."""
    import importlib.util

    has_tv = importlib.util.find_spec("torchvision") is not None
    if cfg.decode == "auto":
        if device_type == "cuda" and not has_tv:
            log.warning("data.decode auto: torchvision is not installed (pip install 'fth[gpu]'); decoding with PIL")
        return "device" if device_type == "cuda" and has_tv else "pil"
    if cfg.decode == "device" and not has_tv:
        raise ValueError("data.decode device needs torchvision (pip install 'fth[gpu]'), or set data.decode=pil")
    return cfg.decode


class FrameDataset(Dataset):
    """Map-style dataset over `FrameRecord`s, keyed `(epoch, index)` (a bare index uses `set_epoch`'s epoch).

    Args:
        records: the frames, in a fixed order (index i is record i).
        size: output (H, W).
        num_patches: N, the length of the mask noise per sample.
        cfg: augmentation and skipping settings.
        seed: the run seed.
        decode: `pil` (decode in the worker) or `device` (ship the encoded frame; see `make_sample`).
        replay: the replay pool (older frames); `replay_count` of them join each epoch (see `ReplayDraw`).
    """

    def __init__(
        self,
        records: Sequence[FrameRecord],
        size: tuple[int, int],
        num_patches: int,
        cfg: DataConfig,
        seed: int,
        decode: str = "pil",
        replay: Sequence[FrameRecord] = (),
        replay_count: int = 0,
    ):
        if not records:
            raise ValueError("no frames to train on (check data.sources / since / until)")
        self.records, self.size, self.num_patches = list(records), tuple(size), num_patches
        self.cfg, self.seed, self.epoch, self.decode = cfg, seed, 0, decode
        self.replay = list(replay)
        self.draw = ReplayDraw(len(self.replay), replay_count if self.replay else 0, seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) + self.draw.count

    def record(self, epoch: int, index: int) -> FrameRecord:
        """The frame sample `index` of `epoch` reads: a window frame, or past them an older one (replay)."""
        if index < len(self.records):
            return self.records[index]
        return self.replay[self.draw(epoch)[index - len(self.records)]]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        bad: list[str] = []
        for k in range(self.cfg.max_skip + 1):
            record = self.record(epoch, (index + k) % len(self))
            try:
                data = record.read()
                sample = make_sample(data, self.seed, epoch, index, self.size, self.num_patches, self.cfg, self.decode)
            except BAD_IMAGE as e:
                if k == 0:
                    bad.append(record.id)
                    log.warning("skipping unreadable frame %s (%s): %s", record.id[:16], record.path, e)
                continue
            return {**sample, "id": record.id, "skipped": len(bad), "bad": bad}
        raise RuntimeError(f"{self.cfg.max_skip + 1} frames in a row from index {index} are unreadable")


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples -> batch: noise (B, N), index (B,), box (B, 4), flip (B,) bool, frame ids, skipped count, bad frame
    ids, and either `image` (B, H, W, 3) uint8 (decoded in the worker) or `frames`, a list of B encoded frames."""
    batch = {
        "ids": [s.get("id", "") for s in samples],
        "noise": torch.stack([s["noise"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
        "box": torch.stack([s["box"] for s in samples]),
        "flip": torch.tensor([s["flip"] for s in samples]),
        "skipped": sum(s.get("skipped", 0) for s in samples),
        "bad": [b for s in samples for b in s.get("bad", [])],
    }
    if "image" in samples[0]:
        batch["image"] = torch.stack([s["image"] for s in samples])
    else:
        batch["frames"] = [s["frame"] for s in samples]
    return batch


class FrameData:
    """Catalog frames for one rank: `epoch_batches(epoch, start_batch)` -> the loader of that epoch from a batch on.

    One DataLoader serves every epoch: the sampler (main process) carries the epoch and the start, and each key it
    yields is `(epoch, index)`, so persistent workers stay exact across epochs and resumes.

    Args:
        records: all frames of the run (every rank gets the same list).
        size: output (H, W).  num_patches: N.  cfg: data settings.  seed: run seed.
        batch_size: per rank.  world, rank: DDP layout.  device_type: `cpu` or `cuda` (pinning, decode place).
        replay: older frames to mix in, `cfg.replay_fraction` of each epoch (see `FrameDataset`).

    `digest` is over every frame the run may read (window and replay pool); `digests` names the two parts.
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
        replay: Sequence[FrameRecord] = (),
    ):
        self.decode = decode_place(cfg, device_type)
        count = replay_count(len(records), cfg.replay_fraction) if replay else 0
        self.dataset = FrameDataset(records, size, num_patches, cfg, seed, self.decode, replay, count)
        self.sampler = EpochSampler(len(self.dataset), world, rank, seed)
        self.cfg, self.batch_size, self.device_type = cfg, batch_size, device_type
        self.digest = frame_digest(r.id for r in [*records, *replay])
        self.digests = {"window": frame_digest(r.id for r in records)}
        if replay:
            self.digests["replay"] = frame_digest(r.id for r in replay)
        self.loader: torch.utils.data.DataLoader | None = None

    def batches_per_epoch(self) -> int:
        return (self.sampler.n // self.sampler.world) // self.batch_size

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> torch.utils.data.DataLoader:
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_batch * self.batch_size)
        if self.loader is None or not self.cfg.persistent_workers:
            self.loader = make_loader(
                self.dataset,
                self.cfg,
                self.device_type,
                batch_size=self.batch_size,
                sampler=EpochKeys(self.sampler),
                drop_last=True,
                collate_fn=collate,
            )
        return self.loader

    def run_batches(self, epoch: int, start_batch: int, per_epoch: int) -> Iterator[dict[str, Any]]:
        """Batches from `start_batch` of `epoch` on, `per_epoch` per epoch, through all later epochs (see
        `RunKeys`): what the training loop consumes."""
        keys = RunKeys(EpochSampler(self.sampler.n, self.sampler.world, self.sampler.rank, self.sampler.seed),
                       epoch, start_batch, per_epoch, self.batch_size)  # fmt: skip
        loader = make_loader(
            self.dataset, self.cfg, self.device_type, batch_size=self.batch_size, sampler=keys, collate_fn=collate
        )
        return iter(loader)
