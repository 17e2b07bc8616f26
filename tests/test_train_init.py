"""Continued pretraining (`fth train --init ENCODER`): the warm start loads every weight (encoder from the registry,
decoder from the parent run's checkpoint), replay mixes older frames in at the stated share, the new card names its
parent and both frame sets, and another architecture is a one-line error naming the parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import torch
from test_train_support import make_catalog

from encoder.checkpoint import warm_start
from encoder.data import FrameData, catalog_records, replay_records
from encoder.engine import checkpoints
from encoder.mae import MAE
from encoder.train import main
from encoder.train_config import TrainConfig
from fth.cli import main as fth_main
from fth.config import build
from store.artifacts import Registry

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # make_catalog's frame i is captured at T0 + 10 s * i
SINCE = (T0 + timedelta(seconds=100)).isoformat()  # frames 10..23 are new, 0..9 older


def settings(ws, run_dir, *extra: str) -> list[str]:
    return [
        f"data.workspace={ws}", f"run_dir={run_dir}", "data.num_workers=0", "progress=false", "log_every=1",
        "panel_every=0", "tensorboard=false", "wandb=false", "optim.warmup_steps=1", "batch_size=4", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """24 frames; a parent encoder trained 3 steps on the older 10 and registered with its run folder."""
    ws = tmp_path_factory.mktemp("ws")
    make_catalog(ws, 24)
    run_dir = ws / "runs" / "parent"
    torch.set_num_threads(1)
    summary = main(build(TrainConfig, "mae_tiny", settings(ws, run_dir, "max_steps=3", f"data.until='{SINCE}'")))
    return ws, Registry(ws / "artifacts").card(summary["encoder"]), run_dir


def test_warm_start_loads_every_encoder_and_decoder_weight(parent):
    ws, card, run_dir = parent
    cfg = build(TrainConfig, "mae_tiny", [])
    torch.manual_seed(123)  # another init than the parent's
    mae = MAE(cfg.model)
    fresh = {k: v.clone() for k, v in mae.state_dict().items()}
    info = warm_start(mae, card.id, Registry(ws / "artifacts"))

    expected = torch.load(checkpoints(run_dir / "checkpoints")[-1], weights_only=False)["model"]
    loaded = mae.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():  # every weight, encoder and decoder, is the parent's ...
        assert torch.equal(loaded[name], tensor), f"{name} was not loaded"
    for name, _ in mae.named_parameters():  # ... and none of them could pass by staying at init
        assert not torch.equal(fresh[name], expected[name]), f"{name}: the parent's value equals a fresh init"
    encoder = Registry(ws / "artifacts").load(card.id)[0]
    assert all(torch.equal(mae.encoder.state_dict()[k], v) for k, v in encoder.items())
    assert info["encoder"] == card.id and info["encoder_data"] == card.parents["data"]
    assert info["decoder"] == str(checkpoints(run_dir / "checkpoints")[-1])


def test_without_its_run_the_encoder_alone_loads_and_the_decoder_starts_fresh(parent):
    ws, card, _ = parent
    registry = Registry(ws / "artifacts")
    weights, _ = registry.load(card.id)
    orphan = registry.register("encoder", weights, card.config, {"data": "frames-elsewhere"}, name="no-run")
    torch.manual_seed(123)
    mae = MAE(build(TrainConfig, "mae_tiny", []).model)
    fresh = {k: v.clone() for k, v in mae.state_dict().items()}
    info = warm_start(mae, orphan.id, registry)
    loaded = mae.state_dict()
    for name, tensor in weights.items():
        assert torch.equal(loaded[f"encoder.{name}"], tensor), f"encoder.{name} was not loaded"
        assert not torch.equal(fresh[f"encoder.{name}"], tensor), name
    assert all(torch.equal(loaded[k], fresh[k]) for k in loaded if not k.startswith("encoder."))
    assert info["decoder"] is None and "names no training run" in info["decoder_note"]


def test_replay_mixes_older_frames_at_the_stated_share(parent):
    ws = parent[0]
    extra = (f"data.since='{SINCE}'", "data.replay_fraction=0.3")
    cfg = build(TrainConfig, "mae_tiny", settings(ws, ws / "unused", *extra))
    new, old = catalog_records(cfg.data), replay_records(cfg.data)
    assert len(new) == 14 and len(old) == 10
    old_ids = {r.id for r in old}

    def epoch_ids(data: FrameData, epoch: int) -> list[str]:
        data.sampler.set_epoch(epoch)
        return [data.dataset.record(epoch, i).id for i in data.sampler]

    data = FrameData(new, (64, 96), 96, cfg.data, seed=0, batch_size=4, replay=old)
    assert len(data.dataset) == 20 and data.batches_per_epoch() == 5
    for epoch in range(3):
        ids = epoch_ids(data, epoch)
        assert sum(i in old_ids for i in ids) == 6  # 30% of 20 samples: 6 older frames with the 14 new ones
        assert {i for i in ids if i not in old_ids} == {r.id for r in new}
        assert len({i for i in ids if i in old_ids}) == 6  # drawn without replacement
    assert epoch_ids(data, 0) != epoch_ids(data, 1)  # a fresh draw each epoch ...
    again = FrameData(new, (64, 96), 96, cfg.data, seed=0, batch_size=4, replay=old)
    assert epoch_ids(again, 1) == epoch_ids(data, 1)  # ... the same one under the same seed
    sample = data.dataset[(0, 19)]  # the last index is a replay slot, and it decodes the older frame
    assert sample["id"] in old_ids and sample["image"].shape == (64, 96, 3)
    assert data.digests["window"] != data.digests["replay"] != data.digest


def test_fth_train_init_card_names_parent_and_both_frame_sets(parent, tmp_path):
    ws, card, _ = parent
    run_dir = tmp_path / "child"
    extra = ["max_steps=2", f"data.since='{SINCE}'", "data.replay_fraction=0.3"]
    args = [a for s in settings(ws, run_dir, *extra) for a in ("--set", s)]
    assert fth_main(["train", "--config", "mae_tiny", "--init", card.id[:14], *args]) == 0
    registry = Registry(ws / "artifacts")
    child = registry.newest("encoder")  # the continued encoder is the new default
    assert child.id != card.id and child.parents["run_dir"] == str(run_dir.resolve())
    assert child.parents["init"] == card.id and child.parents["init_data"] == card.parents["data"]
    assert child.parents["init_decoder"] is True
    assert child.parents["data"] != card.parents["data"] and child.parents["replay_fraction"] == 0.3
    assert child.parents["data_parts"]["replay"] == card.parents["data"]  # the parent's frames are the replay pool
    assert child.parents["since"] == SINCE


@pytest.mark.parametrize(
    ("ref", "override", "message"),
    [
        (None, "model.encoder.dim=32", "parameter encoder.cls_token has shape (1, 1, 64) there but (1, 1, 32)"),
        (None, "model.encoder.depth=2", "its parameter encoder.blocks.2."),
        ("encoder-0000ffff", "seed=0", "--init encoder-0000ffff: artifact 'encoder-0000ffff': not found"),
    ],
)
def test_wrong_init_is_a_one_line_error(parent, tmp_path, capsys, ref, override, message):
    ws, card, _ = parent
    args = [a for s in settings(ws, tmp_path / "bad", "max_steps=1", override) for a in ("--set", s)]
    assert fth_main(["train", "--config", "mae_tiny", "--init", ref or card.id, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "bad" / "checkpoints").exists()
