"""The feature recipe: which encoder output a head reads, and checks that keep a head on the features it was fitted on.

A head reads either the pooled vector (B, D) or the patch-token grid (B, gh, gw, D), where several encoder layers may be
concatenated on D (`layers=(-4, -1)` -> D = 2 x width). The recipe is recorded on the head's card next to the exact
encoder id; `check` refuses features of another form, grid or width with a message that names both.
Shapes: B batch, gh/gw grid, D width (after layer concatenation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch


class FeatureError(ValueError):
    """Features that do not match what a head was fitted on (form, grid, width)."""


@dataclass
class FeatureRecipe:
    """What a head reads from the encoder.

    Args:
        form: `pooled` (B, D) vectors, or `grid` (B, gh, gw, D) patch tokens.
        layers: encoder block indices read (negative from the end); their grids are concatenated on D in this order.
        pool: how the pooled vector was made (`mean` of patch tokens or `cls`); informational for `grid`.
        grid: (gh, gw) for `grid` features; (0, 0) for pooled ones.
        dim: D after concatenation.
    """

    form: Literal["pooled", "grid"] = "pooled"
    layers: tuple[int, ...] = (-1,)
    pool: Literal["mean", "cls"] = "mean"
    grid: tuple[int, int] = (0, 0)
    dim: int = 0

    @classmethod
    def infer(cls, features: Any, layers: Sequence[int] = (-1,), pool: str = "mean") -> FeatureRecipe:
        """A recipe describing `features` of shape (B, D) or (B, gh, gw, D)."""
        shape = tuple(features.shape)
        if len(shape) == 2:
            return cls("pooled", tuple(layers), pool, (0, 0), shape[1])
        if len(shape) == 4:
            return cls("grid", tuple(layers), pool, (shape[1], shape[2]), shape[3])
        raise FeatureError(f"features must be (B, D) pooled vectors or (B, gh, gw, D) token grids, got shape {shape}")

    def describe(self) -> str:
        layers = ",".join(str(i) for i in self.layers)
        if self.form == "pooled":
            return f"pooled ({self.pool}) D={self.dim} layers [{layers}]"
        return f"grid {self.grid[0]}x{self.grid[1]} D={self.dim} layers [{layers}]"

    def check(self, features: Any) -> None:
        """Raise FeatureError unless `features` has this recipe's form, grid and width."""
        got = FeatureRecipe.infer(features, self.layers, self.pool)
        if got.form != self.form or got.dim != self.dim or (self.form == "grid" and got.grid != self.grid):
            raise FeatureError(
                f"features are {got.describe()} (shape {tuple(features.shape)}), but the head was fitted on "
                f"{self.describe()}"
            )


def as_float_tensor(features: Any) -> torch.Tensor:
    """numpy / memory-mapped float16 / tensor -> contiguous float32 CPU tensor (one copy, done once before fitting)."""
    if isinstance(features, torch.Tensor):
        return features.detach().to("cpu", torch.float32).contiguous()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(features), dtype=np.float32))


def concat_layers(grids: Sequence[Any]) -> torch.Tensor:
    """Several layers' grids [(B, gh, gw, D_i)] -> (B, gh, gw, sum D_i)."""
    tensors = [as_float_tensor(g) for g in grids]
    shapes = {tuple(t.shape[:-1]) for t in tensors}
    if len(shapes) != 1:
        raise FeatureError(f"layer grids disagree on (B, gh, gw): {sorted(shapes)}")
    return torch.cat(tensors, dim=-1)


def pool_grid(features: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw, D) -> (B, D) mean over the grid; (B, D) passes through."""
    return features.mean(dim=(1, 2)) if features.dim() == 4 else features
