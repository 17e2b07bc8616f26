"""The training input pipeline: device decode against PIL decode, persistent workers, shards at training resolution,
per-device attention crossovers, and `torch.compile` of the MAE."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from PIL import Image
from test_data import batches, same
from test_train_support import PYTHON, frame_bytes, run

from encoder.attention import bind_crossover, crossover_for
from encoder.config import AttentionConfig, MAEConfig
from encoder.data import FrameData, catalog_records, collate, make_sample
from encoder.decode import device_images
from encoder.loader import auto_workers
from encoder.mae import MAE
from encoder.shards import ShardData, shard_data
from encoder.train_config import DataConfig
from fth.config import build

SIZE = (96, 160)  # output (H, W) for 240x400 source frames: crops are resized down and up


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """A catalog of 14 frames at 240x400 plus one garbage .jpg."""
    from datetime import UTC, datetime, timedelta

    from store.catalog import Catalog

    root = tmp_path_factory.mktemp("ws")
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    with Catalog(root) as catalog:
        for i in range(15):
            data = frame_bytes(i, (400, 240)) if i < 14 else b"\xff\xd8\xff\xe0 garbage"
            catalog.add_frame(data, "cam1", t0 + timedelta(seconds=i), 400, 240)
    return root


def close_images(a: torch.Tensor, b: torch.Tensor, inner: int, mean: float) -> None:
    """(B, H, W, 3) uint8 images agree within `inner` levels away from the one-pixel border (PIL's filter reads
    pixels just outside the crop box there, the tensor path clamps at the box) and within `mean` on average."""
    d = (a.int() - b.int()).abs()
    assert d[:, 1:-1, 1:-1].max().item() <= inner, d[:, 1:-1, 1:-1].max().item()
    assert d.float().mean().item() <= mean, d.float().mean().item()


def test_device_path_gives_the_pil_paths_crops_masks_and_images(frames):
    """The two decode places draw the same boxes, flips and masks, and agree on pixels within decoder tolerance,
    through the real loader (2 persistent workers, two epochs, a mid-epoch start) and the corrupt frame's skip."""
    records = catalog_records(DataConfig(workspace=str(frames)))
    pil = FrameData(records, SIZE, 60, DataConfig(num_workers=0, decode="pil"), 0, batch_size=4)
    dev = FrameData(records, SIZE, 60, DataConfig(num_workers=2, decode="device"), 0, batch_size=4)
    for epoch, start in ((0, 0), (1, 1)):
        for a, b in zip(pil.epoch_batches(epoch, start), dev.epoch_batches(epoch, start), strict=True):
            assert "frames" in b and "image" not in b
            assert torch.equal(a["box"], b["box"]) and torch.equal(a["flip"], b["flip"])
            assert torch.equal(a["noise"], b["noise"]) and torch.equal(a["index"], b["index"])
            assert (a["skipped"], a["bad"], a["ids"]) == (b["skipped"], b["bad"], b["ids"])
            close_images(device_images(b, SIZE, torch.device("cpu")), a["image"], inner=1, mean=0.3)


def test_a_frame_that_fails_on_the_device_is_replaced_and_counted():
    good = [frame_bytes(i, (400, 240)) for i in range(3)]
    truncated = good[1][: len(good[1]) // 3]  # the header parses in the worker, the data does not decode
    cfg = DataConfig()
    samples = [make_sample(d, 0, 0, i, SIZE, 60, cfg, "device") | {"id": f"f{i}"} for i, d in enumerate(good)]
    samples[1] = make_sample(truncated, 0, 0, 1, SIZE, 60, cfg, "device") | {"id": "bad"}
    batch = collate([s | {"skipped": 0, "bad": []} for s in samples])
    images = device_images(batch, SIZE, torch.device("cpu"))
    assert images.shape == (3, *SIZE, 3) and batch["skipped"] == 1 and batch["bad"] == ["bad"]
    assert torch.equal(images[1], images[0])  # the first good frame of the batch, with its own box and flip


def test_persistent_workers_match_fresh_workers_every_epoch(frames):
    records = catalog_records(DataConfig(workspace=str(frames)))
    fresh = FrameData(records, SIZE, 60, DataConfig(num_workers=0), 3, batch_size=3)
    kept = FrameData(records, SIZE, 60, DataConfig(num_workers=2, persistent_workers=True, prefetch_factor=2), 3, 3)
    first = None
    for epoch, start in ((0, 0), (1, 0), (1, 2), (2, 1)):
        loader = kept.epoch_batches(epoch, start)
        first = first or loader
        assert loader is first  # one loader, one set of worker processes, for the whole run
        assert same(batches(loader), batches(fresh.epoch_batches(epoch, start)))


def test_the_run_long_stream_is_the_epochs_back_to_back(frames, tmp_path):
    """What the training loop consumes: one iterator from (epoch 1, batch 2) on, equal to the per-epoch loaders."""
    records = catalog_records(DataConfig(workspace=str(frames)))
    fresh = FrameData(records, SIZE, 60, DataConfig(num_workers=0), 5, batch_size=4)
    run_long = FrameData(records, SIZE, 60, DataConfig(num_workers=2), 5, batch_size=4)
    per_epoch = fresh.batches_per_epoch()
    expected = batches(fresh.epoch_batches(1, 2)) + batches(fresh.epoch_batches(2)) + batches(fresh.epoch_batches(3))
    stream = run_long.run_batches(1, 2, per_epoch)
    assert same(batches(next(stream) for _ in expected), expected)

    out = tmp_path / "shards"
    run([PYTHON, "-m", "fth", "shards", "export", str(out), "--workspace", str(frames), "--per-shard", "4"])
    ref = shard_data(out, SIZE, 60, DataConfig(num_workers=0), 0, 2, world=2, rank=1)
    two = shard_data(out, SIZE, 60, DataConfig(num_workers=2), 0, 2, world=2, rank=1)
    per_epoch = ref.batches_per_epoch()
    assert per_epoch == 3  # shards of 4, 4, 4, 3 (the garbage frame kept as bytes): two smallest = 7 frames
    expected = batches(ref.epoch_batches(0, 1)) + batches(ref.epoch_batches(1))
    stream = two.run_batches(0, 1, per_epoch)
    assert same(batches(next(stream) for _ in expected), expected)


def test_auto_workers_share_the_cores_among_local_ranks(monkeypatch):
    monkeypatch.setattr("encoder.loader.usable_cores", lambda: 32)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert auto_workers() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert auto_workers() == 1


def test_shards_export_at_training_size_and_both_decode_places_read_them(frames, tmp_path):
    out = tmp_path / "shards"
    cmd = [PYTHON, "-m", "fth", "shards", "export", str(out), "--workspace", str(frames), "--per-shard", "5"]
    proc = run([*cmd, "--size", "120x160", "--quality", "85"])
    assert "14 frames in 3 shards at 120x160" in proc.stdout and "1 catalog frames did not decode" in proc.stdout
    index = json.loads((out / "index.json").read_text())
    assert index["size"] == [120, 160] and index["quality"] == 85 and index["unreadable"] == 1
    with tarfile.open(out / "shard-000000.tar") as tar:
        data = tar.extractfile("000000000.jpg").read()
    assert Image.open(io.BytesIO(data)).size == (200, 120)  # 240x400 covering 120x160, aspect kept
    plain = catalog_records(DataConfig(workspace=str(frames)))
    assert index["digest"] == FrameData(plain[:-1], SIZE, 60, DataConfig(num_workers=0), 0, 4).digest

    cfg = DataConfig(num_workers=0)
    pil = shard_data(out, SIZE, 60, cfg, 0, 4, device_type="cpu")
    dev = shard_data(out, SIZE, 60, DataConfig(num_workers=2, decode="device"), 0, 4, device_type="cpu")
    assert isinstance(pil, ShardData) and (pil.decode, dev.decode) == ("pil", "device")
    got = list(zip(pil.epoch_batches(1, 1), dev.epoch_batches(1, 1), strict=True))
    assert len(got) == pil.batches_per_epoch() - 1 == 2
    for a, b in got:
        assert a["image"].shape == (4, *SIZE, 3) and torch.equal(a["box"], b["box"])
        assert max(a["box"][:, 2].tolist()) <= 200 and max(a["box"][:, 3].tolist()) <= 120
        close_images(device_images(b, SIZE, torch.device("cpu")), a["image"], inner=1, mean=0.3)


def test_crossover_is_per_device(tmp_path, monkeypatch, caplog):
    table = tmp_path / "crossovers.json"
    table.write_text(json.dumps({"cpu": {"crossover": 3072}, "Fancy GPU": {"crossover": 20000}}))
    monkeypatch.setattr("encoder.attention.CROSSOVERS", table)
    assert crossover_for(AttentionConfig(), torch.device("cpu")) == 3072
    assert crossover_for(AttentionConfig(crossover=99), torch.device("cpu")) == 99  # explicit wins
    monkeypatch.setattr("encoder.attention.device_name", lambda device: "Fancy GPU")
    assert crossover_for(AttentionConfig(), torch.device("cpu")) == 20000
    monkeypatch.setattr("encoder.attention.device_name", lambda device: "Unmeasured GPU")
    assert crossover_for(AttentionConfig(), torch.device("cpu")) == 3072 and "no measured" in caplog.text


def test_mae_compiles_as_one_graph_and_matches_eager():
    """Dynamo traces the whole training forward + backward with no graph break (`fullgraph=True`); `aot_eager`
    keeps this a few seconds on CPU (inductor's C++ build took over a minute here; bench/gpu.py measures inductor)."""
    torch.manual_seed(0)
    mae = MAE(build(MAEConfig, "tiny"))
    bind_crossover(mae, torch.device("cpu"))
    x, noise = torch.randn(2, 3, 64, 96), torch.rand(2, 96)
    compiled = torch.compile(mae, backend="aot_eager", fullgraph=True)
    loss = compiled(x, noise=noise).loss
    loss.backward()
    grads = {k: p.grad.clone() for k, p in mae.named_parameters()}
    mae.zero_grad()
    ref = mae(x, noise=noise).loss
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for k, p in mae.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, msg=k)


@pytest.mark.gpu
def test_nvjpeg_path_on_cuda_matches_the_pil_path():
    """nvJPEG's IDCT differs from libjpeg-turbo's by a level or two: a looser pixel tolerance than on CPU."""
    datas = [frame_bytes(i, (1920, 1080)) for i in range(8)]
    cfg = DataConfig()
    size = (576, 960)
    pil = collate([make_sample(d, 0, 1, i, size, 240, cfg, "pil") | {"skipped": 0} for i, d in enumerate(datas)])
    dev = collate([make_sample(d, 0, 1, i, size, 240, cfg, "device") | {"skipped": 0} for i, d in enumerate(datas)])
    images = device_images(dev, size, torch.device("cuda"))
    assert images.device.type == "cuda" and torch.equal(pil["box"], dev["box"])
    close_images(images.cpu(), pil["image"], inner=8, mean=1.0)
