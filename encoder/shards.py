"""WebDataset-format tar shards of catalog frames (`fth shards export`) and the dataset that streams them.

Format (the WebDataset convention, readable by the `webdataset` package too): plain POSIX tars named
`shard-000000.tar`, ...; each sample is the members `<key>.<ext>` (the frame's original encoded bytes) and
`<key>.json` (`{"id": frame id, "key": key}`), where key is the 9-digit position of the frame in the export's
seeded shuffle, so shard k holds keys [start_k, start_k + count_k). `index.json` beside the shards records each
shard's name, start and count, the frame-set digest and the export seed.

With `size=(H, W)` the export stores each frame re-encoded (JPEG, `quality`) at training resolution: scaled with
its aspect kept to the smallest size covering H x W (a 1080x1920 frame at 576x960 -> 576x1024), never enlarged, so
random resized crops see the whole frame as before at a fraction of the decode cost. The index records `size` and
`quality`; frame ids stay those of the catalog (the original bytes), so the frame-set digest is unchanged.

Where: a local folder, or `s3://bucket/prefix` on the workspace's S3 endpoint (`s3_endpoint` in its workspace.yaml,
else `$AWS_ENDPOINT_URL`): each tar is built in memory and stored with one checked PUT (`store.backends.S3Frames`),
`index.json` last; a reader fetches a whole shard when it first needs it (two kept in memory per process).

Streaming: per epoch, the shard list is permuted from (seed, epoch) and rank r takes shards r, r + world, ...;
inside a shard the order is permuted from (seed, epoch, shard). The rank's stream is cut into batches; the dataset
is keyed `(epoch, batch)`, so a DataLoader (persistent workers or not) returns batches in stream order whatever the
worker count, and a start batch resumes mid-epoch exactly. Every rank runs the same number of batches per epoch
(the smallest rank's), so DDP ranks never wait on each other at an epoch end.
"""

from __future__ import annotations

import contextlib
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
from torch.utils.data import Dataset, Sampler

from encoder.data import BAD_IMAGE, FrameRecord, collate, decode_place, frame_digest, make_sample
from encoder.loader import make_loader
from encoder.train_config import DataConfig
from store.fsutil import atomic_write

log = logging.getLogger(__name__)

INDEX = "index.json"


def cover_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of a `width` x `height` frame scaled, aspect kept, to the smallest size covering `size` = (H, W); never
    larger than the frame."""
    h, w = size
    scale = min(1.0, max(h / height, w / width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resized_jpeg(data: bytes, size: tuple[int, int], quality: int) -> bytes:
    """Encoded frame -> JPEG at `cover_size` (antialiased bilinear, as `encoder.preprocess.to_array`)."""
    with Image.open(io.BytesIO(data)) as im:
        target = cover_size(im.width, im.height, size)
        im.draft("RGB", target)  # JPEG: decode at a reduced DCT scale when that still covers the target
        image = im.convert("RGB")
    if image.size != target:
        image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def s3_place(url: str | Path, workspace: str | Path | None = None):
    """The `S3Frames` store of an `s3://bucket/prefix` shard location, or None for a local folder."""
    if not str(url).startswith("s3://"):
        return None
    from store.backends import S3Frames, settings
    from store.paths import Workspace

    return S3Frames(str(url), settings(Workspace.at(workspace)).s3_endpoint)


def export_shards(
    records: Sequence[FrameRecord],
    out: str | Path,
    per_shard: int = 1000,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    quality: int = 90,
    workspace: str | Path | None = None,
) -> dict:
    """Write `records` (shuffled with `seed`) as tar shards of `per_shard` frames into `out`; returns the index.

    `size` = (H, W): store each frame re-encoded at training resolution (see the module docstring) with JPEG
    `quality`; None keeps the original bytes. Each tar is written under a temporary name and renamed, and
    `index.json` is written last, so a reader never sees a half shard. Frames whose file is missing are left out and
    counted in `index["missing"]`; with `size`, so are frames that do not decode (counted in `index["unreadable"]`).
    """
    remote = s3_place(out, workspace)
    if remote is None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(records))
    frames: list[tuple[FrameRecord, str, bytes]] = []  # (record, extension, bytes) in export order
    missing = unreadable = 0
    for rec in (records[i] for i in order):
        try:
            data = rec.read()  # through the workspace's frame store (a local folder or S3)
        except (FileNotFoundError, IsADirectoryError):
            missing += 1
            continue
        if size is None:
            frames.append((rec, Path(str(rec.path)).suffix.lstrip(".").lower() or "jpg", data))
            continue
        try:
            frames.append((rec, "jpg", resized_jpeg(data, size, quality)))
        except BAD_IMAGE as e:
            unreadable += 1
            log.warning("leaving out unreadable frame %s (%s): %s", rec.id[:16], rec.path, e)
    shards = []
    for k, start in enumerate(range(0, len(frames), per_shard)):
        chunk = frames[start : start + per_shard]
        name = f"shard-{k:06d}.tar"
        buf = io.BytesIO()
        with (
            atomic_write(out / name) if remote is None else contextlib.nullcontext(buf) as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for i, (rec, ext, data) in enumerate(chunk):
                key = f"{start + i:09d}"
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.json", json.dumps({"id": rec.id, "key": key}).encode())
        if remote is not None:
            remote.put(name, buf.getvalue())
        shards.append({"name": name, "start": start, "count": len(chunk)})
    index = {
        "format": "webdataset",
        "digest": frame_digest(rec.id for rec, _, _ in frames),
        "count": len(frames),
        "missing": missing,
        "unreadable": unreadable,
        "seed": seed,
        "size": list(size) if size else None,
        "quality": quality if size else None,
        "shards": shards,
    }
    if remote is None:
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    else:
        remote.put(INDEX, (json.dumps(index, indent=2) + "\n").encode())
    log.info("exported %d frames as %d shards in %s (%d missing left out)", len(frames), len(shards), out, missing)
    return index


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def read_index(folder: str | Path, workspace: str | Path | None = None) -> dict:
    remote = s3_place(folder, workspace)
    if remote is not None:
        try:
            return json.loads(remote.read(INDEX))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no {INDEX} in {folder}: not a shard folder written by `fth shards export`"
            ) from None
    path = Path(folder) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"no {INDEX} in {folder}: not a shard folder written by `fth shards export`")
    return json.loads(path.read_text())


class ShardDataset(Dataset):
    """This rank's part of a shard folder as collated batches, keyed `(epoch, batch)` (use with
    `DataLoader(batch_size=None)` and `BatchKeys`); iterating it yields the batches of `set_epoch`'s epoch.

    Args:
        folder: shard folder with `index.json`.
        size: output (H, W).  num_patches: N of the mask noise.  cfg: augmentation settings.  seed: run seed.
        batch_size: images per batch.  world, rank: DDP world size and this rank.
        decode: `pil` or `device` (see `encoder.data.make_sample`).
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
        decode: str = "pil",
    ):
        self.remote = s3_place(folder, cfg.workspace)
        self.folder = Path(folder) if self.remote is None else str(folder)
        self.index = read_index(folder, cfg.workspace)
        self.shards = self.index["shards"]
        if len(self.shards) < world:
            raise ValueError(f"{len(self.shards)} shards cannot be split over {world} ranks; export smaller shards")
        self.size, self.num_patches, self.cfg, self.seed = tuple(size), num_patches, cfg, seed
        self.batch_size, self.world, self.rank, self.decode = batch_size, world, rank, decode
        self.epoch, self.start_batch = 0, 0
        self.digest = self.index["digest"]
        self._streams: dict[int, list[tuple[int, int]]] = {}  # epoch -> this rank's stream (one epoch cached)
        self._reader: _TarReader | None = None  # opened lazily in whichever process reads

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _stream(self, rank: int, epoch: int | None = None) -> list[tuple[int, int]]:
        """(shard number, key) of every sample of `rank` in `epoch` (default: the set epoch), in order."""
        epoch = self.epoch if epoch is None else epoch
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        stream = []
        for s in order[rank :: self.world]:
            shard = self.shards[s]
            inner = np.random.default_rng([self.seed, epoch, int(s)]).permutation(shard["count"])
            stream += [(int(s), shard["start"] + int(i)) for i in inner]
        return stream

    def batches_per_epoch(self) -> int:
        """The same for every epoch and rank: the frames of the `len(shards) // world` smallest shards (the least a
        rank can draw) in whole batches."""
        counts = sorted(s["count"] for s in self.shards)
        return sum(counts[: len(self.shards) // self.world]) // self.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for b in range(self.start_batch, self.batches_per_epoch()):
            yield self[(self.epoch, b)]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        """Batch `b` of this rank's stream in `epoch`."""
        epoch, b = key
        if epoch not in self._streams:
            self._streams = {epoch: self._stream(self.rank, epoch)}
        if self._reader is None:
            self._reader = _TarReader(self.folder, self.shards, self.remote)
        stream = self._streams[epoch]
        positions = range(b * self.batch_size, (b + 1) * self.batch_size)
        return collate([self._sample(stream, epoch, p, self._reader) for p in positions])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}  # open tar files stay in the process that opened them

    def _sample(self, stream: list[tuple[int, int]], epoch: int, pos: int, reader: _TarReader) -> dict[str, Any]:
        bad: list[str] = []
        _, key0 = stream[pos]
        for k in range(self.cfg.max_skip + 1):
            shard, key = stream[(pos + k) % len(stream)]
            meta, data = reader.read(shard, key)
            try:
                sample = make_sample(data, self.seed, epoch, key0, self.size, self.num_patches, self.cfg, self.decode)
            except BAD_IMAGE as e:
                if k == 0:
                    bad.append(meta["id"])
                    name = self.shards[shard]["name"]
                    log.warning("skipping unreadable frame %s in %s: %s", meta["id"][:16], name, e)
                continue
            return {**sample, "id": meta["id"], "skipped": len(bad), "bad": bad}
        raise RuntimeError(f"{self.cfg.max_skip + 1} frames in a row are unreadable near stream position {pos}")


class RunBatchKeys(Sampler[tuple[int, int]]):
    """`(epoch, batch)` from `start_batch` of `epoch` on, `per_epoch` batches per epoch, through every later epoch
    (as `encoder.data.RunKeys`: one loader iterator for the whole run, prefetching across epoch boundaries)."""

    def __init__(self, epoch: int, start_batch: int, per_epoch: int):
        self.epoch, self.start, self.per_epoch = epoch, start_batch, per_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start
        while True:
            yield from ((epoch, b) for b in range(start, self.per_epoch))
            epoch, start = epoch + 1, 0


class BatchKeys(Sampler[tuple[int, int]]):
    """Yields `(epoch, batch)` for the batches of `dataset`'s set epoch from its start batch on."""

    def __init__(self, dataset: ShardDataset):
        self.dataset = dataset

    def __iter__(self) -> Iterator[tuple[int, int]]:
        ds = self.dataset
        return ((ds.epoch, b) for b in range(ds.start_batch, ds.batches_per_epoch()))

    def __len__(self) -> int:
        return len(self.dataset)


class _TarReader:
    """Random access into shards by key; keeps the two most recently used tars open."""

    def __init__(self, folder: Path | str, shards: list[dict], remote=None):
        self.folder, self.shards, self.remote = folder, shards, remote
        self.open: OrderedDict[int, tuple[tarfile.TarFile, dict[str, dict[str, tarfile.TarInfo]]]] = OrderedDict()

    def read(self, shard: int, key: int) -> tuple[dict, bytes]:
        """(metadata, encoded image bytes) of sample `key` in shard number `shard`."""
        if shard not in self.open:
            name = self.shards[shard]["name"]
            if self.remote is None:
                tar = tarfile.open(self.folder / name, "r:")  # noqa: SIM115 (kept open, closed in close)
            else:  # the whole shard, fetched once into memory
                tar = tarfile.open(fileobj=io.BytesIO(self.remote.read(name)), mode="r:")  # noqa: SIM115
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
    """`ShardDataset` behind the same interface as `encoder.data.FrameData` (`epoch_batches`, `digest`); one
    DataLoader (persistent workers) serves every epoch."""

    def __init__(self, dataset: ShardDataset, cfg: DataConfig, device_type: str = "cpu"):
        self.dataset, self.cfg, self.device_type, self.digest = dataset, cfg, device_type, dataset.digest
        self.decode = dataset.decode
        self.loader = None

    def batches_per_epoch(self) -> int:
        return self.dataset.batches_per_epoch()

    def epoch_batches(self, epoch: int, start_batch: int = 0):
        self.dataset.set_epoch(epoch, start_batch)
        if self.loader is None or not self.cfg.persistent_workers:
            keys = BatchKeys(self.dataset)
            self.loader = make_loader(self.dataset, self.cfg, self.device_type, batch_size=None, sampler=keys)
        return self.loader

    def run_batches(self, epoch: int, start_batch: int, per_epoch: int) -> Iterator[dict[str, Any]]:
        """Batches from `start_batch` of `epoch` on through all later epochs (see `RunBatchKeys`)."""
        keys = RunBatchKeys(epoch, start_batch, per_epoch)
        return iter(make_loader(self.dataset, self.cfg, self.device_type, batch_size=None, sampler=keys))


def shard_data(
    folder: str | Path,
    size: tuple[int, int],
    num_patches: int,
    cfg: DataConfig,
    seed: int,
    batch_size: int,
    world: int = 1,
    rank: int = 0,
    device_type: str = "cpu",
) -> ShardData:
    """The rank's `ShardData`, decoding where `cfg.decode` says for `device_type`; warns when the shards were
    exported at a size smaller than the model's input (random crops would then upsample more than from originals)."""
    ds = ShardDataset(folder, size, num_patches, cfg, seed, batch_size, world, rank, decode_place(cfg, device_type))
    stored = ds.index.get("size")
    if stored and (stored[0] < size[0] or stored[1] < size[1]):
        log.warning("shards in %s were exported at %dx%d, smaller than the model input %dx%d", folder, *stored, *size)
    return ShardData(ds, cfg, device_type)
