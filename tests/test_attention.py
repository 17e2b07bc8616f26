"""Attention backends: exact against a hand-written reference, Nystrom against exact and against the package."""

from __future__ import annotations

import pytest
import torch

from encoder.attention import Attention
from encoder.config import AttentionConfig


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def make(dim=64, heads=4, dim_head=16, **cfg) -> Attention:
    torch.manual_seed(0)
    attn = Attention(dim, heads, dim_head, qkv_bias=True, cfg=AttentionConfig(**cfg)).eval()
    with torch.no_grad():  # non-zero biases, so a mishandled pad (to_qkv(0) = bias) would show
        attn.nystrom.to_qkv.bias.normal_(0, 0.5)
    return attn


@torch.no_grad()
def test_exact_matches_softmax_reference():
    attn = make(value_residual=False)
    x = torch.randn(2, 13, 64)
    w, b = attn.nystrom.to_qkv.weight, attn.nystrom.to_qkv.bias
    q, k, v = (x @ w.T + b).view(2, 13, 3, 4, 16).permute(2, 0, 3, 1, 4)  # each (B, H, N, dh)
    out = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v  # scale 16 ** -0.5
    ref = attn.nystrom.to_out(out.transpose(1, 2).reshape(2, 13, 64))
    torch.testing.assert_close(attn.forward_exact(x), ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("n", [20, 24, 37])  # padded, a multiple of the landmarks, padded again
def test_nystrom_is_the_packages_algorithm_for_one_sample(n):
    attn = make(num_landmarks=8, backend="nystrom")
    x = torch.randn(1, n, 64)
    package = attn.nystrom(x, mask=torch.ones(1, n, dtype=torch.bool))
    torch.testing.assert_close(attn(x), package, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_nystrom_output_does_not_depend_on_the_rest_of_the_batch():
    attn = make(num_landmarks=8, backend="nystrom")
    x = torch.randn(3, 40, 64)
    x[1] *= 8  # a very different neighbour: the package's batch-wide pinv scaling would leak it into sample 0
    torch.testing.assert_close(attn(x)[:1], attn(x[:1]), atol=1e-6, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("landmarks", [73, 128])  # exactly N (no padding) and > N (55 pads, masked out)
def test_nystrom_equals_exact_when_landmarks_cover_every_token(landmarks):
    # One token per landmark makes Nystrom exact up to the pseudo-inverse; 6 iterations leave ~1.5e-2 relative
    # error here, 20 iterations ~1e-5 (measured), so the bound is 1e-4.
    attn = make(dim=1024, heads=10, dim_head=64, num_landmarks=landmarks, pinv_iterations=20)
    x = torch.randn(2, 73, 1024)
    assert rel(attn.forward_nystrom(x), attn.forward_exact(x)) < 1e-4


@torch.no_grad()
def test_nystrom_error_on_a_longer_sequence_is_bounded():
    # 920 tokens, 256 landmarks (4 tokens each, 104 pads), default 6 iterations, random weights and N(0, 1)
    # inputs: measured 2.3e-2 relative error (2.0e-2 at 2160 tokens). Bound: 5e-2.
    attn = make(dim=1024, heads=10, dim_head=64, num_landmarks=256)
    x = torch.randn(1, 920, 1024)
    err = rel(attn.forward_nystrom(x), attn.forward_exact(x))
    assert 1e-4 < err < 5e-2  # an approximation, but a close one


@torch.no_grad()
def test_keep_mask_keeps_pads_out():
    attn = make(num_landmarks=32, pinv_iterations=20)
    x = torch.randn(2, 20, 64)  # padded with 12 zero tokens
    unmasked = attn.nystrom(x)  # the package without a keep-mask: pads take attention weight
    ours = attn.forward_nystrom(x)
    assert rel(unmasked, ours) > 1e-2
    assert rel(ours, attn.forward_exact(x)) < 1e-4  # with the mask, 32 landmarks over 20 tokens are exact


@torch.no_grad()
def test_caller_keep_mask_excludes_tokens():
    attn = make(num_landmarks=4, backend="nystrom", value_residual=False)
    x = torch.randn(1, 16, 64)
    keep = torch.ones(1, 16, dtype=torch.bool)
    keep[:, 12:] = False
    noisy = x.clone()
    noisy[:, 12:] = torch.randn(1, 4, 64) * 10
    a, b = attn.forward_nystrom(x, keep)[:, :12], attn.forward_nystrom(noisy, keep)[:, :12]
    torch.testing.assert_close(a, b)


@torch.no_grad()
def test_auto_switches_at_the_crossover():
    attn = make(num_landmarks=8, crossover=20, backend="auto")
    assert attn.backend_for(19) == "exact" and attn.backend_for(20) == "nystrom" and attn.backend_for(500) == "nystrom"
    short, long = torch.randn(2, 19, 64), torch.randn(2, 20, 64)
    assert torch.equal(attn(short), attn.forward_exact(short))
    assert torch.equal(attn(long), attn.forward_nystrom(long))
    assert not torch.allclose(attn.forward_exact(long), attn.forward_nystrom(long))
    assert make(backend="exact").backend_for(10**6) == "exact"
    assert make(backend="nystrom").backend_for(1) == "nystrom"


@torch.no_grad()
@pytest.mark.parametrize("backend", ["exact", "nystrom"])
def test_ten_heads_on_width_1024(backend):
    attn = make(dim=1024, heads=10, dim_head=64, num_landmarks=16, backend=backend)
    assert attn.nystrom.to_qkv.weight.shape == (3 * 640, 1024)
    x = torch.randn(2, 50, 1024)
    out = attn(x)
    assert out.shape == (2, 50, 1024) and torch.isfinite(out).all()


@torch.no_grad()
def test_nystrom_runs_in_bfloat16():
    attn = make(num_landmarks=8, backend="nystrom")
    x = torch.randn(2, 30, 64)
    ref = attn(x)
    out = attn.to(torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert rel(out.float(), ref) < 5e-2
