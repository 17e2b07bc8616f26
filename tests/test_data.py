"""Training data: crops, the per-epoch sampler, corrupt frames, workers and mid-epoch starts, WebDataset shards."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from test_train_support import PYTHON, make_catalog, run

from encoder.data import FrameData, FrameDataset, FrameRecord, catalog_records, crop_box
from encoder.loader import EpochSampler
from encoder.shards import ShardData, ShardDataset
from encoder.train_config import DataConfig


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    ids = make_catalog(root, 24, corrupt=1)
    return root, ids


def test_crop_box_stays_inside_with_scale_and_aspect_near_target():
    rng = np.random.default_rng(0)
    aspect = 96 / 64
    for _ in range(500):
        left, top, right, bottom = crop_box(rng, 960, 540, aspect, (0.2, 1.0), (0.75, 4 / 3))
        assert 0 <= left < right <= 960 and 0 <= top < bottom <= 540
        w, h = right - left, bottom - top
        if (w, h) != (810, 540):  # the fallback crop is the largest of the target aspect
            assert 0.2 * 0.98 <= w * h / (960 * 540) <= 1.0
            assert aspect * 0.75 * 0.97 <= w / h <= aspect * 4 / 3 * 1.03


def test_sampler_splits_ranks_like_distributed_sampler_and_starts_midway():
    full = EpochSampler(10, world=1, seed=3)
    full.set_epoch(2)
    order = list(full)
    parts = []
    for rank in range(2):
        s = EpochSampler(10, world=2, rank=rank, seed=3)
        s.set_epoch(2)
        parts.append(list(s))
        s.set_epoch(2, start=2)
        assert list(s) == parts[rank][2:] and len(s) == 3
    assert parts[0] == order[0::2] and parts[1] == order[1::2]
    full.set_epoch(3)
    assert list(full) != order and sorted(full) == list(range(10))


def test_corrupt_and_missing_frames_are_skipped_and_counted(catalog, tmp_path):
    root, ids = catalog
    records = catalog_records(DataConfig(workspace=str(root)))
    assert [r.id for r in records] == ids
    records.insert(3, FrameRecord("missing", tmp_path / "gone.jpg"))
    ds = FrameDataset(records, (64, 96), 96, DataConfig(), seed=0)
    bad = [i for i in range(len(ds)) if ds[i]["skipped"]]
    assert bad == [3, len(ds) - 1]
    assert ds[3]["bad"] == ["missing"] and ds[len(ds) - 1]["bad"] == [ids[-1]]
    sample = ds[3]  # replaced by the next frame, same shapes as any other sample
    assert sample["image"].shape == (64, 96, 3) and sample["image"].dtype == torch.uint8
    assert sample["noise"].shape == (96,)
    again = FrameDataset(records, (64, 96), 96, DataConfig(), seed=0)[5]
    assert torch.equal(ds[5]["image"], again["image"]) and torch.equal(ds[5]["noise"], again["noise"])
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["noise"], again["noise"])


def batches(loader):
    return [(b["index"].tolist(), b["image"], b["noise"], b["skipped"]) for b in loader]


def same(a, b):
    return len(a) == len(b) and all(
        x[0] == y[0] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) and x[3] == y[3]
        for x, y in zip(a, b, strict=True)
    )


def test_worker_loader_resumes_mid_epoch_exactly(catalog):
    root, _ = catalog
    records = catalog_records(DataConfig(workspace=str(root)))
    one = FrameData(records, (64, 96), 96, DataConfig(num_workers=0), 0, batch_size=4)
    two = FrameData(records, (64, 96), 96, DataConfig(num_workers=2), 0, batch_size=4)
    full = batches(one.epoch_batches(1))
    assert len(full) == one.batches_per_epoch() == 6
    assert same(batches(two.epoch_batches(1, start_batch=2)), full[2:])
    assert sum(b[3] for b in full) == 1  # the corrupt frame, once per epoch


def test_shards_export_and_each_rank_streams_its_part(catalog, tmp_path):
    root, ids = catalog
    out = tmp_path / "shards"
    proc = run([PYTHON, "-m", "fth", "shards", "export", str(out), "--workspace", str(root), "--per-shard", "5"])
    assert "24 frames in 5 shards" in proc.stdout
    index = json.loads((out / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [5, 5, 5, 5, 4]
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names[:2] == ["000000000.jpg", "000000000.json"]

    cfg = DataConfig(num_workers=0)
    parts = [ShardDataset(out, (64, 96), 96, cfg, seed=0, batch_size=3, world=2, rank=r) for r in range(2)]
    keys = []
    for ds in parts:
        ds.set_epoch(0)
        got = list(ds)
        assert len(got) == ds.batches_per_epoch() == 3  # min over ranks: 9 or 10 frames -> 3 batches of 3
        keys.append({k for b in got for k in b["index"].tolist()})
    assert not keys[0] & keys[1]
    shard_of = {k: k // 5 for k in range(24)}
    assert not {shard_of[k] for k in keys[0]} & {shard_of[k] for k in keys[1]}

    # Workers build alternate batches; the loader still returns the rank's stream in order, from any batch on.
    ref = batches(ShardData(parts[0], cfg).epoch_batches(0))
    two = ShardData(parts[0], DataConfig(num_workers=2)).epoch_batches(0, start_batch=1)
    assert same(batches(two), ref[1:])
