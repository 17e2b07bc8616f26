"""MAE: masking invariants, the loss on masked patches only, learning on a fixed batch, preset sizes and configs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from encoder.config import MAEConfig
from encoder.mae import MAE, patchify, random_masking, unpatchify
from fth.config import ConfigError, build


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), b=st.integers(1, 4), ratio=st.sampled_from([0.0, 0.25, 0.5, 0.7, 0.75, 0.9]))
def test_masking_invariants(n, b, ratio):
    keep = int(n * (1 - ratio))
    if keep < 1:
        with pytest.raises(ValueError, match="leaves no visible patch"):
            random_masking(torch.zeros(b, n, 3), ratio)
        return
    x = torch.arange(n, dtype=torch.float32)[None, :, None].expand(b, n, 3)  # token value = its raster index
    m = random_masking(x, ratio, torch.Generator().manual_seed(n))
    assert m.visible.shape == (b, keep, 3) and m.ids_keep.shape == (b, keep)
    assert torch.equal(m.visible[..., 0].long(), m.ids_keep)  # the visible tokens are those at ids_keep
    assert (m.ids_keep.diff(dim=1) > 0).all()  # raster order
    assert torch.equal(m.mask.sum(1), torch.full((b,), float(n - keep)))
    assert (m.mask.gather(1, m.ids_keep) == 0).all()
    # ids_restore inverts the shuffle: [visible, masked] gathered with it is raster order again
    masked_ids = torch.stack([(row == 1).nonzero().flatten() for row in m.mask])  # (B, N-K), ascending
    shuffled = torch.cat([m.ids_keep, masked_ids], dim=1)
    assert torch.equal(shuffled.gather(1, m.ids_restore), torch.arange(n).expand(b, n))


def test_seed_grid_keeps_72_of_240_and_samples_differ():
    m = random_masking(torch.randn(8, 240, 4), 0.7, torch.Generator().manual_seed(0))
    assert m.ids_keep.shape == (8, 72)
    assert len({tuple(r.tolist()) for r in m.ids_keep}) == 8  # a different mask per sample


def test_patchify_roundtrip_non_square():
    imgs = torch.randn(2, 3, 16, 40)
    patches = patchify(imgs, 8)  # (2, 2 * 5, 192)
    assert patches.shape == (2, 10, 192)
    torch.testing.assert_close(patches[0, 6].view(8, 8, 3), imgs[0, :, 8:16, 8:16].permute(1, 2, 0))  # row 1, col 1
    assert torch.equal(unpatchify(patches, 8, (2, 5)), imgs)


@pytest.fixture(scope="module")
def tiny() -> MAE:
    torch.manual_seed(0)
    return MAE(build(MAEConfig, "tiny"))


@torch.no_grad()
def test_forward_shapes_and_norm_pix_target(tiny):
    imgs = torch.randn(3, 3, 64, 96)
    out = tiny(imgs, generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (3, 96, 8 * 8 * 3) and out.mask.shape == (3, 96) and out.loss.ndim == 0
    assert torch.equal(out.mask.sum(1), torch.full((3,), 72.0))  # int(96 * 0.25) = 24 visible
    target = tiny.target(imgs)
    torch.testing.assert_close(target.mean(-1), torch.zeros(3, 96), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.std(-1), torch.ones(3, 96), atol=1e-3, rtol=0)


@torch.no_grad()
def test_loss_ignores_visible_predictions_and_reacts_to_masked(tiny):
    imgs = torch.randn(2, 3, 64, 96)
    out = tiny(imgs, generator=torch.Generator().manual_seed(1))
    visible = (out.mask == 0)[..., None]
    torch.testing.assert_close(tiny.forward_loss(imgs, out.pred, out.mask), out.loss)
    perturbed = out.pred + 100.0 * visible * torch.randn_like(out.pred)
    assert torch.equal(tiny.forward_loss(imgs, perturbed, out.mask), out.loss)
    perturbed = out.pred + 0.1 * (~visible) * torch.randn_like(out.pred)
    assert tiny.forward_loss(imgs, perturbed, out.mask) != out.loss
    manual = ((out.pred - tiny.target(imgs)) ** 2).mean(-1)[out.mask == 1].mean()
    torch.testing.assert_close(out.loss, manual)


@torch.no_grad()
def test_visible_loss_weight_counts_visible_patches():
    torch.manual_seed(0)
    mae = MAE(build(MAEConfig, "tiny", ["visible_loss_weight=1.0"]))
    imgs = torch.randn(2, 3, 64, 96)
    out = mae(imgs, generator=torch.Generator().manual_seed(1))
    every_patch = ((out.pred - mae.target(imgs)) ** 2).mean(-1).mean()  # weight 1: all patches alike
    torch.testing.assert_close(out.loss, every_patch)
    visible = (out.mask == 0)[..., None]
    assert mae.forward_loss(imgs, out.pred + 0.1 * visible * torch.randn_like(out.pred), out.mask) != out.loss


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss():
    torch.manual_seed(0)
    mae = MAE(build(MAEConfig, "tiny"))
    imgs = torch.randn(4, 3, 64, 96)
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = mae(imgs, generator=torch.Generator().manual_seed(0)).loss  # the same masks every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_seed_preset_parameter_counts():
    cfg = build(MAEConfig, "seed")
    assert cfg.encoder.img_size == (576, 960) and cfg.encoder.patch_size == 48 and cfg.mask_ratio == 0.7
    assert cfg.encoder.attention.num_landmarks == 256 and cfg.encoder.heads == 10
    with torch.device("meta"):  # shapes only, no memory or init cost
        mae = MAE(cfg)
    enc = sum(p.numel() for p in mae.encoder.parameters())
    dec = sum(p.numel() for p in mae.parameters()) - enc
    assert 70e6 <= enc <= 90e6, enc
    assert 25e6 <= dec <= 35e6, dec
    assert mae.encoder.base_grid == (12, 20)


def test_tiny_preset_is_a_few_hundred_k_params(tiny):
    assert 1e5 <= sum(p.numel() for p in tiny.parameters()) <= 1e6


def test_unknown_key_in_a_model_yaml_names_key_and_file(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("encoder:\n  attention:\n    landmarks: 64\n")
    with pytest.raises(ConfigError, match=r"unknown key 'encoder.attention.landmarks' in .*model.yaml"):
        build(MAEConfig, path)
    path.write_text("encoder:\n  attention:\n    backend: fast\n")
    with pytest.raises(ConfigError, match=r"'encoder.attention.backend' in .*model.yaml"):
        build(MAEConfig, path)
