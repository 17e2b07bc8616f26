"""The feature recipe: what a head reads from the encoder, under one naming scheme for the store, the server and fits.

A head reads either the pooled vector (B, D) or the patch-token grid (B, gh, gw, D), where several encoder blocks may be
concatenated on D (`layers=(-3, -1)` -> D = 2 x width). The recipe names the embedding-store tables those features
live in (`tables()`: `pooled`, `tokens` for the final block, `tokens.<i>` for block i) and the same names key the
feature dict the embed job and the server compute in one encoder pass (`encoder.embed.extract`), so one function,
`assemble`, turns either into a head's input. The recipe is recorded on the head's card next to the exact encoder id;
`check` refuses features of another form, grid or width with a message naming both.

It lives in `store/` because all three packages that meet here (encoder writes the tables, heads read them, the server
computes them live) already depend on `store/`, and none may depend on another.
Shapes: B batch, gh/gw grid, D width (after layer concatenation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

POOLED = "pooled"


class FeatureError(ValueError):
    """Features that do not match what a head was fitted on (form, grid, width)."""


def table_name(form: str, layer: int = -1) -> str:
    """`pooled`, `tokens` (final block's grid) or `tokens.<layer>` (an earlier block's grid)."""
    if form == POOLED:
        return POOLED
    return "tokens" if layer == -1 else f"tokens.{layer}"


def table_layer(table: str) -> int | None:
    """The block index a grid table holds (-1 for `tokens`), None for `pooled`."""
    if table == POOLED:
        return None
    if table == "tokens":
        return -1
    prefix, _, layer = table.partition(".")
    if prefix != "tokens" or not layer.lstrip("-").isdigit():
        raise FeatureError(f"unknown feature table {table!r}: expected pooled, tokens or tokens.<block>")
    return int(layer)


def parse_layers(text: str) -> tuple[int, ...]:
    """`-3,-1` -> (-3, -1) with a one-line error for anything else."""
    try:
        layers = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise FeatureError(f"layers {text!r}: expected comma-separated block indices, e.g. -3,-1") from None
    if not layers:
        raise FeatureError(f"layers {text!r}: name at least one block, e.g. -1")
    return layers


@dataclass
class FeatureRecipe:
    """What a head reads from the encoder.

    Args:
        form: `pooled` (B, D) vectors, or `grid` (B, gh, gw, D) patch tokens.
        layers: encoder block indices read (negative from the end); grids are concatenated on D in this order.
            Pooled recipes read the final block only.
        pool: how the encoder pools its vector (`mean` of patch tokens or `cls`); recorded, informational for grids.
        grid: (gh, gw) for `grid` features; (0, 0) for pooled ones.  dim: D after concatenation (0 = not yet known).
    """

    form: Literal["pooled", "grid"] = "pooled"
    layers: tuple[int, ...] = (-1,)
    pool: Literal["mean", "cls"] = "mean"
    grid: tuple[int, int] = (0, 0)
    dim: int = 0

    def __post_init__(self) -> None:
        if self.form not in (POOLED, "grid"):
            raise FeatureError(f"feature form {self.form!r}: expected pooled or grid")
        self.layers = tuple(int(v) for v in self.layers)
        if self.form == POOLED and self.layers != (-1,):
            raise FeatureError(f"pooled features come from the final block only, not layers {list(self.layers)}")

    @classmethod
    def for_encoder(cls, encoder_config: Mapping[str, Any], form: str, layers: Sequence[int] = (-1,)) -> FeatureRecipe:
        """The recipe of `form` read from an encoder (its card's config, whose `encoder` section names the pool):
        grids read `layers`, pooled vectors the final block."""
        pool = encoder_config.get("encoder", {}).get("pool", "mean")
        return cls(form, tuple(layers) if form == "grid" else (-1,), pool)  # type: ignore[arg-type]

    def tables(self) -> list[str]:
        """The store tables / feature keys this recipe reads, in concatenation order."""
        if self.form == POOLED:
            return [POOLED]
        return [table_name("grid", layer) for layer in self.layers]

    def assemble(self, feats: Mapping[str, Any]) -> Any:
        """Feature dict keyed by table name (numpy or torch, same batch) -> the head's input, layers concatenated."""
        parts = [feats[t] for t in self.tables()]
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts, axis=-1)
        import torch

        return torch.cat(parts, dim=-1)

    def describe(self) -> str:
        layers = ",".join(str(i) for i in self.layers)
        if self.form == POOLED:
            return f"pooled ({self.pool}) D={self.dim}"
        return f"grid {self.grid[0]}x{self.grid[1]} D={self.dim} layers [{layers}]"

    def completed(self, features: Any) -> FeatureRecipe:
        """This recipe with grid and width read off `features` (B, D) or (B, gh, gw, D)."""
        shape = tuple(features.shape)
        if self.form == POOLED and len(shape) == 2:
            return FeatureRecipe(self.form, self.layers, self.pool, (0, 0), shape[1])
        if self.form == "grid" and len(shape) == 4:
            return FeatureRecipe(self.form, self.layers, self.pool, (shape[1], shape[2]), shape[3])
        raise FeatureError(f"{self.form} features must be {'(B, D)' if self.form == POOLED else '(B, gh, gw, D)'}, "
                           f"got shape {shape}")  # fmt: skip

    def check(self, features: Any) -> None:
        """Raise FeatureError unless `features` has this recipe's form, grid and width."""
        shape = tuple(features.shape)
        want = (self.dim,) if self.form == POOLED else (*self.grid, self.dim)
        if shape[1:] != want:
            got = "pooled" if len(shape) == 2 else "grid" if len(shape) == 4 else "unknown"
            raise FeatureError(
                f"features are {got} of shape {shape}, but the head was fitted on {self.describe()} "
                f"(rows of shape {want})"
            )

    @classmethod
    def infer(cls, features: Any, layers: Sequence[int] = (-1,), pool: str = "mean") -> FeatureRecipe:
        """A recipe describing `features` of shape (B, D) or (B, gh, gw, D)."""
        shape = tuple(features.shape)
        if len(shape) == 2:
            return cls("pooled", (-1,), pool, (0, 0), shape[1])  # type: ignore[arg-type]
        if len(shape) == 4:
            return cls("grid", tuple(layers), pool, (shape[1], shape[2]), shape[3])  # type: ignore[arg-type]
        raise FeatureError(f"features must be (B, D) pooled vectors or (B, gh, gw, D) token grids, got shape {shape}")
