"""ViT encoder: token-grid shapes on square and non-square frames, resolution changes, pooling, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from encoder.checkpoint import load_encoder, save_encoder
from encoder.config import MAEConfig, ViTConfig
from encoder.pos_embed import sincos_2d
from encoder.vit import ViT
from fth.config import build
from store.artifacts import ArtifactError, Registry


@pytest.fixture(scope="module")
def vit() -> ViT:
    torch.manual_seed(0)
    return ViT(build(MAEConfig, "tiny").encoder).eval()  # 64x96, patch 8, dim 64, depth 4


@torch.no_grad()
@pytest.mark.parametrize(("h", "w", "grid"), [(64, 96, (8, 12)), (64, 64, (8, 8)), (96, 48, (12, 6))])
def test_forward_features_shapes(vit, h, w, grid):
    x = torch.randn(2, 3, h, w)
    out = vit.forward_features(x)
    assert out.shape == (2, *grid, 64)
    taps = vit.forward_features(x, layers=[0, 2, -1])
    assert isinstance(taps, list) and len(taps) == 3 and all(t.shape == (2, *grid, 64) for t in taps)
    torch.testing.assert_close(taps[-1], out)  # the last block's normed output is the final output
    assert not torch.allclose(taps[0], taps[1])
    assert vit.embed(x).shape == (2, 64) and vit.embed(x, pool="cls").shape == (2, 64)


@torch.no_grad()
def test_embed_pools_mean_or_cls(vit):
    x = torch.randn(2, 3, 64, 96)
    tokens, _ = vit.forward_tokens(x)  # (B, 1 + N, D)
    torch.testing.assert_close(vit.embed(x), vit.forward_features(x).mean(dim=(1, 2)))
    torch.testing.assert_close(vit.embed(x, pool="cls"), tokens[:, 0])
    assert not torch.allclose(vit.embed(x), vit.embed(x, pool="cls"))
    assert not torch.allclose(vit.embed(x)[0], vit.embed(x)[1])  # depends on the image


@torch.no_grad()
def test_other_resolution_regenerates_positions(vit):
    assert vit.base_grid == (8, 12)
    x = torch.randn(1, 3, 96, 128)  # 12 x 16 grid, not the built one
    tokens, grid = vit.patch_tokens(x)
    assert grid == (12, 16)
    raw = vit.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D) before positions
    torch.testing.assert_close(tokens - raw, sincos_2d(64, 12, 16)[None])
    assert vit.forward_features(x).shape == (1, 12, 16, 64)
    assert vit.pos_embed_for(8, 12) is vit.pos_embed  # the built grid reuses its buffer


def test_sincos_2d_rows_and_columns():
    emb = sincos_2d(16, 3, 5)  # (15, 16): first 8 channels encode the row, last 8 the column
    assert emb.shape == (15, 16)
    assert torch.equal(emb[0, :8], emb[4, :8]) and not torch.equal(emb[0, 8:], emb[4, 8:])  # same row
    assert torch.equal(emb[0, 8:], emb[5, 8:]) and not torch.equal(emb[0, :8], emb[5, :8])  # same column
    assert len({tuple(r.tolist()) for r in emb}) == 15
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(18, 2, 2)


def test_size_not_divisible_by_patch_is_a_clear_error(vit):
    with pytest.raises(ValueError, match=r"65x96 is not a multiple of the patch size 8"):
        vit.embed(torch.randn(1, 3, 65, 96))
    with pytest.raises(ValueError, match="not a multiple"):
        ViT(ViTConfig(img_size=(60, 96), patch_size=8))


def test_layer_out_of_range_is_an_error(vit):
    with pytest.raises(IndexError, match="out of range for a 4-block"):
        vit.forward_features(torch.randn(1, 3, 64, 96), layers=[4])


# -- checkpoints --------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_save_load_roundtrip_by_id_and_path(vit, tmp_path):
    registry = Registry(tmp_path / "artifacts")
    card = save_encoder(vit, registry, parents={"data": "test"}, name="t")
    assert card.id.startswith("encoder-") and (card.path / "weights.safetensors").is_file()
    saved = json.loads((card.path / "card.json").read_text())
    assert saved["config"]["encoder"]["img_size"] == [64, 96] and saved["parents"] == {"data": "test"}
    x = torch.randn(2, 3, 64, 96)
    for ref, reg in ((card.id, registry), (card.path, None), (card.path / "card.json", None)):
        model, loaded = load_encoder(ref, reg)
        assert loaded.id == card.id and not model.training
        assert model.cfg == vit.cfg
        assert torch.equal(model.embed(x), vit.embed(x))
        assert torch.equal(model.forward_features(x, layers=[1])[0], vit.forward_features(x, layers=[1])[0])


def test_different_weights_or_config_give_a_different_id(vit, tmp_path):
    registry = Registry(tmp_path)
    first = save_encoder(vit, registry).id
    assert save_encoder(vit, registry).id == first  # same content: same id, no second copy
    assert len(registry.list("encoder")) == 1
    other = ViT(vit.cfg)
    other.load_state_dict(vit.state_dict())
    with torch.no_grad():
        other.norm.bias.add_(1e-3)
    assert save_encoder(other, registry).id != first
    cfg = build(MAEConfig, "tiny", ["encoder.pool=cls"]).encoder
    same_weights = ViT(cfg)
    same_weights.load_state_dict(vit.state_dict())
    assert save_encoder(same_weights, registry).id != first
    assert save_encoder(vit, registry, parents={"data": "other"}).id != first


def test_loading_a_non_encoder_or_unknown_id_is_a_clear_error(tmp_path):
    registry = Registry(tmp_path)
    head = registry.register("head", {"w": torch.zeros(2)}, {"head": {}})
    with pytest.raises(ArtifactError, match=r"is a 'head' artifact, not an encoder"):
        load_encoder(head.id, registry)
    with pytest.raises(ArtifactError, match="not found"):
        load_encoder("encoder-0123456789abcdef", registry)
    with pytest.raises(ArtifactError, match="no card.json there"):
        load_encoder(tmp_path / "nowhere", registry)
