"""Fixed 2-D sine-cosine position embeddings for an explicit (gh, gw) patch grid.

Half the channels encode the row, half the column, each as sin/cos of the coordinate at geometrically spaced
frequencies (the 1-D transformer encoding of Vaswani et al., applied per axis as in MAE). Built for any grid, so a
model trained at 576x960 runs at 1080x1920 by regenerating the table, not interpolating learned weights.
"""

from __future__ import annotations

import torch


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos: (M,) -> (M, dim) with dim/2 sines then dim/2 cosines."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = pos.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    """-> (gh * gw, dim) float32 in raster order (row by row), rows in the first dim/2 channels."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")  # (gh, gw) each
    emb = torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, cols.flatten())], dim=1)
    return emb.float()  # (gh*gw, dim)
