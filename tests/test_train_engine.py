"""Training loop pieces in process: parameter groups, the lr schedule, non-finite steps, checkpoint rotation."""

from __future__ import annotations

import math

import pytest
import torch

from encoder.config import MAEConfig
from encoder.engine import NonFiniteLoss, Trainer, checkpoints, save_checkpoint
from encoder.mae import MAE
from encoder.optim import build_optimizer, lr_at, param_groups, peak_lr
from encoder.train_config import OptimConfig, TrainConfig


def test_no_weight_decay_on_biases_norms_positions_and_tokens():
    mae = MAE(MAEConfig())
    decay, no_decay = param_groups(mae, 0.05)
    names = {id(p): n for n, p in mae.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    yes = {names[id(p)] for p in decay["params"]}
    assert {"encoder.cls_token", "mask_token", "encoder.norm.weight", "encoder.blocks.0.norm1.bias"} <= no
    assert "encoder.patch_embed.bias" in no and "encoder.patch_embed.weight" in yes
    assert "encoder.blocks.0.mlp.fc1.weight" in yes and decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0
    assert len(yes) + len(no) == len(list(mae.parameters()))


def test_lr_scales_with_batch_warms_up_then_cosine():
    assert peak_lr(OptimConfig(base_lr=1.5e-4), 4096) == pytest.approx(2.4e-3)
    lrs = [lr_at(s, 1.0, 10, 110, 0.1) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55) and lrs[-1] > 0.1
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


class NoData:
    digest = "frames-test"

    def batches_per_epoch(self) -> int:
        return 4


class Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


def batch(n: int = 2) -> dict:
    return {"image": torch.randint(0, 255, (n, 64, 96, 3), dtype=torch.uint8), "noise": torch.rand(n, 96),
            "skipped": 0, "bad": []}  # fmt: skip


def test_non_finite_losses_skip_the_step_and_stop_after_k(tmp_path):
    cfg = TrainConfig(batch_size=2, max_nonfinite=3, max_steps=10)
    mae = MAE(cfg.model)
    opt = build_optimizer(mae, cfg.optim, 1e-3, torch.device("cpu"))
    trainer = Trainer(cfg, mae, mae, opt, NoData(), torch.device("cpu"), 1e-3, 1, tmp_path, Quiet())
    assert math.isfinite(trainer.train_step([batch()])["loss"])
    with torch.no_grad():
        mae.decoder_pred.bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in mae.state_dict().items()}
    for _ in range(2):
        assert math.isnan(trainer.train_step([batch()])["loss"])
    assert trainer.counters.nonfinite_total == 2
    after = mae.state_dict()
    assert all(_same(before[k], after[k]) for k in after)  # skipped steps leave the weights alone
    with pytest.raises(NonFiniteLoss, match="3 non-finite losses in a row"):
        trainer.train_step([batch()])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def test_checkpoints_are_rotated_and_leave_no_temporaries(tmp_path):
    for step in range(1, 6):
        save_checkpoint({"step": step}, tmp_path, step, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["ckpt-00000004.pt", "ckpt-00000005.pt"]
    assert torch.load(checkpoints(tmp_path)[-1])["step"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
