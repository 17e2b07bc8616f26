"""Head modules: shapes, default sizes at the reference grid, rebuild from config, and kind resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fth.config import build, from_dict, to_dict
from heads.fit import FitConfig
from heads.models import AttentionPool, HeadConfig, build_head, num_params, resolve_kind

SEED_GRID, SEED_DIM = (12, 20), 1024  # configs/seed.yaml: 576x960 frames, 48 px patches, width 1024


@pytest.mark.parametrize("layers", [1, 2])
def test_default_heads_stay_small_at_the_reference_grid(layers):
    d = SEED_DIM * layers
    for kind, dense, out in [("attnpool", False, 2), ("mlp", False, 1), ("dense", True, 20), ("linear", True, 20)]:
        cfg = HeadConfig(kind=kind, in_dim=d, out_dim=out, grid=SEED_GRID if kind != "mlp" else (0, 0), dense=dense)
        assert num_params(build_head(cfg)) <= 2_000_000, kind


def test_output_shapes():
    x = torch.randn(3, 6, 10, 16)  # (B, gh, gw, D)
    grid = dict(in_dim=16, grid=(6, 10))
    assert build_head(HeadConfig(kind="attnpool", out_dim=2, hidden=32, **grid))(x).shape == (3, 2)
    assert build_head(HeadConfig(kind="mlp", out_dim=1, **grid))(x).shape == (3, 1)  # grids are mean-pooled
    assert build_head(HeadConfig(kind="linear", out_dim=1, **grid))(x).shape == (3, 1)
    assert build_head(HeadConfig(kind="linear", out_dim=1, in_dim=16))(x.mean((1, 2))).shape == (3, 1)
    assert build_head(HeadConfig(kind="dense", out_dim=5, dense=True, **grid))(x).shape == (3, 5, 12, 20)
    up2 = HeadConfig(kind="dense", out_dim=1, dense=True, upsample=2, channels=16, **grid)
    assert build_head(up2)(x).shape == (3, 1, 24, 40)
    assert build_head(HeadConfig(kind="linear", out_dim=5, dense=True, **grid))(x).shape == (3, 5, 6, 10)


def test_kind_resolution_and_refusals():
    assert resolve_kind(HeadConfig(grid=(6, 10))) == "attnpool"
    assert resolve_kind(HeadConfig()) == "mlp"
    assert resolve_kind(HeadConfig(dense=True, grid=(6, 10))) == "dense"
    with pytest.raises(ValueError, match="dense task"):
        build_head(HeadConfig(kind="attnpool", in_dim=8, grid=(2, 2), dense=True))
    with pytest.raises(ValueError, match="scalar task"):
        build_head(HeadConfig(kind="dense", in_dim=8, grid=(2, 2)))
    with pytest.raises(ValueError, match="token-grid"):
        build_head(HeadConfig(kind="linear", in_dim=8, dense=True))
    with pytest.raises(ValueError, match="in_dim is unset"):
        build_head(HeadConfig(kind="mlp"))
    with pytest.raises(ValueError, match="token grids"):
        build_head(HeadConfig(kind="attnpool", in_dim=8))


def test_rebuilt_from_config_gives_the_same_function():
    cfg = HeadConfig(kind="attnpool", in_dim=16, out_dim=1, grid=(6, 10), hidden=32)
    a = build_head(cfg)
    b = build_head(from_dict(HeadConfig, to_dict(cfg)))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6, 10, 16)
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_attention_pool_is_plain_attention_over_projected_tokens():
    torch.manual_seed(0)
    pool = AttentionPool(32, queries=4, heads=4)
    torch.nn.init.normal_(pool.to_kv.bias)  # nonzero key and value biases: the folded form must handle both
    torch.nn.init.normal_(pool.query)
    x = torch.randn(3, 60, 32)
    k, v = pool.to_kv(x).chunk(2, dim=-1)  # (B, N, d)
    q = pool.query.expand(3, -1, -1)  # (B, Q, d)
    q, k, v = (t.reshape(3, -1, 4, 8).transpose(1, 2) for t in (q, k, v))  # (B, H, n, e)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 4, 32)
    torch.testing.assert_close(pool(x), pool.to_out(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["heads", "heads_dense"])
def test_config_presets_load(preset):
    cfg = build(FitConfig, preset)
    assert cfg.head.in_dim == 0 and cfg.max_steps > 0


def test_a_feature_constant_in_training_cannot_blow_up_a_head():
    """A burned-in clock (the sim's frame-index stamp) gives features that hardly move over the training frames and
    jump later. Standardised by their training spread they became hundreds of sigmas: people count heads fitted on
    24 frames answered 147 and 8e7 people. Clamped to the training range (plus a margin), the answers stay near
    the ones before the flip, and a feature inside the margin is not clamped."""
    from heads.fit import FitConfig, fit_from_arrays
    from heads.models import RANGE_MARGIN
    from heads.tasks import make_task

    rng = np.random.default_rng(0)
    n, d = 60, 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    counts = np.clip(np.round(2 + 1.5 * x[:, 0]), 0, None)
    overlay = np.full((n, 1), 0.02, np.float32) + rng.normal(0, 1e-3, (n, 1)).astype(np.float32)  # the date digit
    feats = np.concatenate([x, overlay], axis=1)
    cfg = FitConfig(max_steps=60, threads=1)
    result = fit_from_arrays("people_count", feats, counts.tolist(), None, cfg)
    head, task = result.head.eval(), make_task("people_count")
    changed = feats.copy()
    changed[:, -1] = 0.9  # the digit rolls over after the labelled days
    with torch.no_grad():
        same = [a["count"] for a in task.decode(head(torch.as_tensor(feats)))]
        moved = [a["count"] for a in task.decode(head(torch.as_tensor(changed)))]
    # the head read the overlay's noise in training; clamped, the flip moves answers no more than that noise's own
    # extremes do. Without the clamp every answer was 0 (and 8e7 in fth eval's pixel column)
    ratio = np.asarray(moved) / np.asarray(same)
    assert ratio.min() > 0.5 and ratio.max() < 2 and max(moved) < 20, (same[:5], moved[:5])

    reduce = head.reduce
    span = (reduce.high[0] - reduce.low[0]) / (1 + 2 * RANGE_MARGIN)  # the training frames' range of feature 0
    top = reduce.high[0] - RANGE_MARGIN * span  # their largest value
    probe = torch.as_tensor(feats[:2].copy())
    probe[0, 0], probe[1, 0] = top + 0.5 * RANGE_MARGIN * span, top + 5 * span  # inside the margin; far beyond it
    z = reduce(probe)[:, 0]
    assert torch.isclose(z[0], (probe[0, 0] - reduce.mean[0]) / reduce.std[0])  # not clamped
    assert torch.isclose(z[1], (reduce.high[0] - reduce.mean[0]) / reduce.std[0])  # clamped at the margin


def test_heads_saved_before_the_clamp_still_load():
    from heads.models import Reduce

    old = {"mean": torch.zeros(3), "std": torch.ones(3)}  # a Reduce state dict without `low` / `high`
    reduce = Reduce(3, 3)
    reduce.load_state_dict(old, strict=True)
    assert torch.isinf(reduce.low).all() and torch.isinf(reduce.high).all()


def _off_span_probe(
    reduce, x_train, weights: torch.Tensor | None = None, share: float = 0.5, seed: int = 0
) -> torch.Tensor:
    """Three feature rows: `reduce`'s training mean, and it moved either way by at most `share` of a training std per
    feature along a direction the (standardised, centred) training frames do not span: a random one, or where
    `weights` (H, D) reach furthest off the span."""
    z = (torch.as_tensor(x_train) - reduce.mean) / reduce.std
    q, _ = torch.linalg.qr((z - z.mean(0)).T)  # (D, n) orthonormal: the frames' span
    if weights is None:
        r = torch.randn(z.shape[1], generator=torch.Generator().manual_seed(seed))
        r = r - q @ (q.T @ r)
    else:
        r = torch.linalg.svd(weights - (weights @ q) @ q.T, full_matrices=False).Vh[0]
    step = share * reduce.std * r / r.abs().max()
    return torch.stack([reduce.mean, reduce.mean + step, reduce.mean - step])


def test_a_pooled_head_wider_than_its_training_frames_reads_only_their_span():
    """Pooled vectors far wider than the training frames (fth eval's 2880-wide pixel vectors, 24 frames): Adam moves
    each first-layer weight by about lr per step, also off the frames' span where no loss holds it, and people count
    heads answered e^20 people on later frames in 5 of 10 seeds. Projected onto the n - 1 axes the frames span, a
    head's answer cannot move along any other direction; without the projection (head.reduce=0) a half-std move
    along its own off-span weights moves it by over a quarter."""
    from heads.fit import FitConfig, fit_from_arrays
    from heads.tasks import make_task

    rng = np.random.default_rng(0)
    n, d = 40, 600
    latent = rng.normal(size=(n, 3))
    x = (latent @ rng.normal(size=(3, d)) + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    counts = np.clip(np.round(3 + 1.5 * latent[:, 0]), 0, None).tolist()
    task = make_task("people_count")

    def fit(reduce: int):
        result = fit_from_arrays("people_count", x, counts, None, FitConfig(max_steps=100, threads=1,
                                 head=HeadConfig(reduce=reduce)))  # fmt: skip
        return result, result.head.eval(), x[result.split.train]

    def answers(head, probe):
        with torch.no_grad():
            return [a["count"] for a in task.decode(head(probe))]

    result, head, x_train = fit(64)
    assert result.head_cfg.pooled_axes == len(x_train) - 1 == head.reduce.basis.shape[1]
    assert any("axes those frames span" in note for note in result.notes())  # `fth heads fit` prints it
    gram = head.reduce.basis.T @ head.reduce.basis  # not whitened: orthogonal axes, one common scale
    torch.testing.assert_close(gram, gram[0, 0] * torch.eye(gram.shape[0]), atol=1e-5 * gram[0, 0].item(), rtol=0)
    same, *moved = answers(head, _off_span_probe(head.reduce, x_train))
    assert moved == pytest.approx([same, same], rel=1e-5)
    assert result.metrics["mae"] < 0.6 * result.baseline["mae"]  # and it still learned the count

    result, head, x_train = fit(0)  # the head as before: standardised only
    assert result.head_cfg.pooled_axes == 0 and head.reduce.basis is None and not result.notes()
    first = next(m for m in head.body.modules() if isinstance(m, torch.nn.Linear)).weight.detach()  # (H, D)
    same, *moved = answers(head, _off_span_probe(head.reduce, x_train, first))
    assert max(abs(m / same - 1) for m in moved) > 0.25, (same, moved)


def test_principal_axes_from_few_rows_match_the_covariance_route():
    """Fewer rows than features (a pooled head's frames) take the Gram-matrix route: the same eigenvalues and axes."""
    from heads.models import principal_axes

    g = torch.Generator().manual_seed(0)
    z = torch.randn(30, 8, generator=g) @ torch.randn(8, 200, generator=g) + 0.1 * torch.randn(30, 200, generator=g)
    vals, axes = principal_axes(z, 12)
    ref_vals, ref_vecs = torch.linalg.eigh((z.T @ z).double() / 29)
    torch.testing.assert_close(vals, ref_vals[-12:].flip(0), rtol=1e-4, atol=0)  # float32 products either way
    same = (axes.T @ ref_vecs[:, -12:].flip(1)).abs().diagonal()  # |cos| of each axis with its reference
    torch.testing.assert_close(same, torch.ones(12, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(axes.T @ axes, torch.eye(12, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("whiten", [False, True])
def test_axes_that_repeated_rows_do_not_span_are_zeroed(whiten):
    """An ensemble member's bootstrap resample repeats frames: 30 rows of 10 distinct frames span 9 axes, not 29. The
    other axes are numerical noise; zeroed, a direction off the frames' span still reaches nothing."""
    from heads.models import Reduce

    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 200, generator=g).repeat(3, 1)
    reduce = Reduce(200, 29, whiten=whiten)
    reduce.fit(x)
    assert int((reduce.basis.abs().sum(0) > 0).sum()) == 9
    off = reduce(_off_span_probe(reduce, x, share=0.1)[1:])
    assert off.abs().max() < 1e-4 * reduce(x).abs().max()
