"""Synthetic features with known structure, for tests and for checking a head before real labels exist.

Each generator returns (features, labels, times) with a documented link between them, so a head's ability to recover
the link can be measured against the task's naive baseline:

- `spatial_counts`: token grids where each "person" adds a direction u to one token; the count is the number of
  persons in the LEFT half of the grid (persons on the right are distractors). A mean-pooled vector sees only the
  total, so a linear probe cannot separate left from right; an attention-pooling head with positions can.
- `clock_features`: pooled vectors carrying (cos, sin) of the time-of-day angle (and its 2nd harmonic) mixed into
  noise by a random matrix.
- `depth_grids`: token grids carrying a smooth per-frame log-depth field along a direction; the label is that field
  upsampled to pixels (exp), with a fraction of invalid (0) pixels.
- `segment_grids`: token grids carrying K class-score maps; the label is the per-pixel argmax of the upsampled scores,
  with some pixels set to the ignore index.
Shapes: B frames, gh/gw grid, D width, (H, W) = (gh * cell, gw * cell) label size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _times(n: int, rng: np.random.Generator) -> np.ndarray:
    """Capture times: one frame a minute from an arbitrary epoch, shuffled rows (the fit must sort them)."""
    return 1.7e9 + rng.permutation(n).astype(np.float64) * 60.0


def spatial_counts(n: int, grid=(6, 10), dim: int = 32, max_persons: int = 8, noise: float = 0.5, seed: int = 0):
    """Token grids (n, gh, gw, D) and left-half person counts (n,)."""
    rng = np.random.default_rng(seed)
    gh, gw = grid
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    x = rng.normal(scale=noise, size=(n, gh * gw, dim)).astype(np.float32)  # (B, N, D)
    left = (np.arange(gh * gw) % gw) < gw // 2
    counts = np.zeros(n, dtype=np.float32)
    for i in range(n):
        k = rng.integers(0, max_persons + 1)
        cells = rng.choice(gh * gw, size=k, replace=False)
        x[i, cells] += 2.0 * u
        counts[i] = left[cells].sum()
    return x.reshape(n, gh, gw, dim), counts, _times(n, rng)


def clock_features(n: int, dim: int = 64, noise: float = 0.3, seed: int = 0):
    """Pooled vectors (n, D) and local times of day in hours [0, 24) (n,), the catalog's unit."""
    rng = np.random.default_rng(seed)
    hours = rng.uniform(0, 24, size=n)
    a = hours / 24 * 2 * np.pi
    basis = np.stack([np.cos(a), np.sin(a), np.cos(2 * a), np.sin(2 * a)], 1)  # (B, 4)
    mix = rng.normal(size=(4, dim))
    x = basis @ mix + rng.normal(scale=noise, size=(n, dim))
    return x.astype(np.float32), hours.astype(np.float32), _times(n, rng)


def _smooth_field(n: int, grid, rng: np.random.Generator, channels: int = 1) -> torch.Tensor:
    """(n, C, gh, gw) smooth random fields: coarse noise upsampled to the grid."""
    coarse = torch.from_numpy(rng.normal(size=(n, channels, 3, 4)).astype(np.float32))
    return F.interpolate(coarse, size=grid, mode="bilinear", align_corners=False)


def depth_grids(n: int, grid=(6, 10), dim: int = 32, cell: int = 8, invalid: float = 0.1, seed: int = 0):
    """Token grids (n, gh, gw, D) and depth maps (n, H, W) in metres, 0 = invalid."""
    rng = np.random.default_rng(seed)
    gh, gw = grid
    z = 0.6 * _smooth_field(n, grid, rng) + torch.from_numpy(rng.normal(0.0, 0.4, size=(n, 1, 1, 1))).float()
    z = z + 1.5 + torch.linspace(-0.5, 0.5, gh)[None, None, :, None]  # farther towards the top: a scene layout
    v = torch.from_numpy(rng.normal(size=dim).astype(np.float32))
    x = z[:, 0, :, :, None] * v + 0.3 * torch.from_numpy(rng.normal(size=(n, gh, gw, dim)).astype(np.float32))
    log_depth = F.interpolate(z, size=(gh * cell, gw * cell), mode="bilinear", align_corners=False)[:, 0]
    depth = log_depth.exp().numpy()
    depth[rng.random(depth.shape) < invalid] = 0.0
    return x.numpy(), depth.astype(np.float32), _times(n, rng)


def segment_grids(
    n: int, grid=(6, 10), dim: int = 32, classes: int = 4, cell: int = 8, ignore: float = 0.05, seed: int = 0
):
    """Token grids (n, gh, gw, D) and index masks (n, H, W) uint8 with 255 = ignore."""
    rng = np.random.default_rng(seed)
    gh, gw = grid
    scores = 1.5 * _smooth_field(n, grid, rng, channels=classes)  # (B, K, gh, gw)
    emb = torch.from_numpy(rng.normal(size=(classes, dim)).astype(np.float32))
    x = torch.einsum("bkhw,kd->bhwd", scores, emb) + 0.3 * torch.from_numpy(
        rng.normal(size=(n, gh, gw, dim)).astype(np.float32)
    )
    up = F.interpolate(scores, size=(gh * cell, gw * cell), mode="bilinear", align_corners=False)
    masks = up.argmax(1).numpy().astype(np.uint8)
    masks[rng.random(masks.shape) < ignore] = 255
    return x.numpy(), masks, _times(n, rng)
