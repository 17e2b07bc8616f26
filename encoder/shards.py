"""WebDataset-format tar shards of catalog frames (`fth shards export`) and the dataset that streams them.

Format (the WebDataset convention, readable by the `webdataset` package too): plain POSIX tars named
`shard-000000.tar`, ...; each sample is the members `<key>.<ext>` (the frame's original encoded bytes) and
`<key>.json` (`{"id": frame id, "key": key}`), where key is the 9-digit position of the frame in the export's
seeded shuffle, so shard k holds keys [start_k, start_k + count_k). `index.json` beside the shards records each
shard's name, start and count, the frame-set digest and the export seed.

Streaming: per epoch, the shard list is permuted from (seed, epoch) and rank r takes shards r, r + world, ...;
inside a shard the order is permuted from (seed, epoch, shard). The rank's stream is cut into batches and batch b
is built by DataLoader worker b mod num_workers, so the loader returns batches in stream order whatever the worker
count, and `set_epoch(epoch, start_batch)` resumes mid-epoch exactly. Every rank runs the same number of batches
per epoch (the smallest rank's), so DDP ranks never wait on each other at an epoch end.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from encoder.data import BAD_IMAGE, FrameRecord, collate, frame_digest, make_sample
from encoder.train_config import DataConfig
from store.fsutil import atomic_write

log = logging.getLogger(__name__)

INDEX = "index.json"


def export_shards(records: Sequence[FrameRecord], out: str | Path, per_shard: int = 1000, seed: int = 0) -> dict:
    """Write `records` (shuffled with `seed`) as tar shards of `per_shard` frames into `out`; returns the index.

    Each tar is written under a temporary name and renamed, and `index.json` is written last, so a reader never
    sees a half shard. Frames whose file is missing are left out and counted in `index["missing"]`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(records))
    present = [records[i] for i in order if records[i].path.is_file()]
    missing = len(records) - len(present)
    shards = []
    for k, start in enumerate(range(0, len(present), per_shard)):
        chunk = present[start : start + per_shard]
        name = f"shard-{k:06d}.tar"
        with atomic_write(out / name) as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i, rec in enumerate(chunk):
                key = f"{start + i:09d}"
                ext = rec.path.suffix.lstrip(".").lower() or "jpg"
                _add(tar, f"{key}.{ext}", rec.path.read_bytes())
                _add(tar, f"{key}.json", json.dumps({"id": rec.id, "key": key}).encode())
        shards.append({"name": name, "start": start, "count": len(chunk)})
    index = {
        "format": "webdataset",
        "digest": frame_digest(r.id for r in present),
        "count": len(present),
        "missing": missing,
        "seed": seed,
        "shards": shards,
    }
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    log.info("exported %d frames as %d shards in %s (%d missing left out)", len(present), len(shards), out, missing)
    return index


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def read_index(folder: str | Path) -> dict:
    path = Path(folder) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"no {INDEX} in {folder}: not a shard folder written by `fth shards export`")
    return json.loads(path.read_text())


class ShardDataset(IterableDataset):
    """Streams this rank's part of a shard folder as collated batches (use with `DataLoader(batch_size=None)`).

    Args:
        folder: shard folder with `index.json`.
        size: output (H, W).  num_patches: N of the mask noise.  cfg: augmentation settings.  seed: run seed.
        batch_size: images per batch.  world, rank: DDP world size and this rank.
    """

    def __init__(
        self,
        folder: str | Path,
        size: tuple[int, int],
        num_patches: int,
        cfg: DataConfig,
        seed: int,
        batch_size: int,
        world: int = 1,
        rank: int = 0,
    ):
        self.folder, self.index = Path(folder), read_index(folder)
        self.shards = self.index["shards"]
        if len(self.shards) < world:
            raise ValueError(f"{len(self.shards)} shards cannot be split over {world} ranks; export smaller shards")
        self.size, self.num_patches, self.cfg, self.seed = tuple(size), num_patches, cfg, seed
        self.batch_size, self.world, self.rank = batch_size, world, rank
        self.epoch, self.start_batch = 0, 0
        self.digest = self.index["digest"]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _stream(self, rank: int) -> list[tuple[int, int]]:
        """(shard number, key) of every sample of `rank` in this epoch, in order."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards))
        stream = []
        for s in order[rank :: self.world]:
            shard = self.shards[s]
            inner = np.random.default_rng([self.seed, self.epoch, int(s)]).permutation(shard["count"])
            stream += [(int(s), shard["start"] + int(i)) for i in inner]
        return stream

    def batches_per_epoch(self) -> int:
        return min(len(self._stream(r)) for r in range(self.world)) // self.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        stream, nbatches = self._stream(self.rank), self.batches_per_epoch()
        reader = _TarReader(self.folder, self.shards)
        try:
            for b in range(self.start_batch + wid, nbatches, nw):
                positions = range(b * self.batch_size, (b + 1) * self.batch_size)
                yield collate([self._sample(stream, p, reader) for p in positions])
        finally:
            reader.close()

    def _sample(self, stream: list[tuple[int, int]], pos: int, reader: _TarReader) -> dict[str, Any]:
        bad: list[str] = []
        for k in range(self.cfg.max_skip + 1):
            shard, key = stream[(pos + k) % len(stream)]
            meta, data = reader.read(shard, key)
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    image = im.convert("RGB")
            except BAD_IMAGE as e:
                if k == 0:
                    bad.append(meta["id"])
                    name = self.shards[shard]["name"]
                    log.warning("skipping unreadable frame %s in %s: %s", meta["id"][:16], name, e)
                continue
            _, key0 = stream[pos]
            sample = make_sample(image, self.seed, self.epoch, key0, self.size, self.num_patches, self.cfg)
            return {**sample, "skipped": len(bad), "bad": bad}
        raise RuntimeError(f"{self.cfg.max_skip + 1} frames in a row are unreadable near stream position {pos}")


class _TarReader:
    """Random access into shards by key; keeps the two most recently used tars open."""

    def __init__(self, folder: Path, shards: list[dict]):
        self.folder, self.shards = folder, shards
        self.open: OrderedDict[int, tuple[tarfile.TarFile, dict[str, dict[str, tarfile.TarInfo]]]] = OrderedDict()

    def read(self, shard: int, key: int) -> tuple[dict, bytes]:
        """(metadata, encoded image bytes) of sample `key` in shard number `shard`."""
        if shard not in self.open:
            tar = tarfile.open(self.folder / self.shards[shard]["name"], "r:")  # noqa: SIM115 (kept open, closed in close)
            samples: dict[str, dict[str, tarfile.TarInfo]] = {}
            for m in tar.getmembers():
                stem, _, ext = m.name.partition(".")
                samples.setdefault(stem, {})["json" if ext == "json" else "image"] = m
            self.open[shard] = (tar, samples)
            while len(self.open) > 2:
                self.open.popitem(last=False)[1][0].close()
        self.open.move_to_end(shard)
        tar, samples = self.open[shard]
        members = samples[f"{key:09d}"]
        return json.loads(tar.extractfile(members["json"]).read()), tar.extractfile(members["image"]).read()

    def close(self) -> None:
        for tar, _ in self.open.values():
            tar.close()
        self.open.clear()


class ShardData:
    """`ShardDataset` behind the same interface as `encoder.data.FrameData` (`epoch_batches`, `digest`)."""

    def __init__(self, dataset: ShardDataset, cfg: DataConfig, device_type: str = "cpu"):
        self.dataset, self.cfg, self.device_type, self.digest = dataset, cfg, device_type, dataset.digest

    def batches_per_epoch(self) -> int:
        return self.dataset.batches_per_epoch()

    def epoch_batches(self, epoch: int, start_batch: int = 0):
        from encoder.data import make_loader

        self.dataset.set_epoch(epoch, start_batch)
        return make_loader(self.dataset, self.cfg, self.device_type, batch_size=None)
