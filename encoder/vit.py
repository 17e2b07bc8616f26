"""Vision Transformer encoder for non-square frames (Dosovitskiy et al. 2020), pre-norm, fixed sin-cos positions.

Read top to bottom: `Mlp -> Block -> ViT`. The stable seams other packages use are `forward_features` (token grids,
optionally from several layers) and `embed` (one pooled vector per image). Shapes: B batch, N patch tokens, D width,
(gh, gw) patch grid with N = gh * gw, p patch side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from encoder.attention import Attention
from encoder.config import AttentionConfig, ViTConfig
from encoder.pos_embed import sincos_2d
from store.recipe import table_layer


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_ratio: float, qkv_bias: bool, attn: AttentionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, dim_head, qkv_bias, attn)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform linears with zero bias, unit LayerNorms (the usual ViT/MAE initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViT(nn.Module):
    """The frame encoder.

    Args:
        cfg: architecture; `cfg.img_size` fixes the default grid, but any (H, W) divisible by the patch side runs.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch_size, cfg.dim
        self.patch_embed = nn.Conv2d(cfg.in_chans, d, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.heads, cfg.dim_head, cfg.mlp_ratio, cfg.qkv_bias, cfg.attention) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.base_grid = self.grid(*cfg.img_size)
        self.register_buffer("pos_embed", sincos_2d(d, *self.base_grid)[None], persistent=False)  # (1, N, D)
        self.apply(init_weights)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(d, -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """Image (H, W) -> patch grid (gh, gw); both sides must be multiples of the patch side."""
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        return h // p, w // p

    def pos_embed_for(self, gh: int, gw: int) -> torch.Tensor:
        """(1, gh*gw, D) position table for a grid, regenerated when it differs from the built one."""
        if (gh, gw) == self.base_grid:
            return self.pos_embed
        return sincos_2d(self.cfg.dim, gh, gw)[None].to(self.pos_embed.device)

    # -- stages -------------------------------------------------------------------------------------------------

    def patch_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """x: (B, C, H, W) normalised pixels -> tokens (B, N, D) with positions added, and the grid (gh, gw)."""
        gh, gw = self.grid(x.shape[-2], x.shape[-1])
        tokens = rearrange(self.patch_embed(x), "b d gh gw -> b (gh gw) d")  # (B, N, D)
        return tokens + self.pos_embed_for(gh, gw).to(tokens.dtype), (gh, gw)

    def with_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, 1 + N, D) with the cls token first (it carries no position)."""
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)

    def run_blocks(self, x: torch.Tensor, layers: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, T, D) -> final normed tokens (B, T, D) and the normed outputs of the blocks in `layers`."""
        depth = len(self.blocks)
        bad = [i for i in layers if not -depth <= i < depth]
        if bad:
            raise IndexError(f"layers {bad} out of range for a {depth}-block encoder (use 0..{depth - 1} or negatives)")
        wanted = {i % depth for i in layers}
        taps = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                taps[i] = self.norm(x)
        return self.norm(x), [taps[i % depth] for i in layers]

    # -- public seams -------------------------------------------------------------------------------------------

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """x: (B, C, H, W) -> (B, 1 + N, D) final tokens, cls first, and the grid."""
        tokens, grid = self.patch_tokens(x)
        out, _ = self.run_blocks(self.with_cls(tokens))
        return out, grid

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[int] | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Patch-token grids.

        Args:
            x: (B, C, H, W) normalised pixels.
            layers: block indices (negative counts from the end) to read; None reads the final output.
        Returns:
            (B, gh, gw, D), or a list of those, one per entry of `layers`, each passed through the final norm.
        """
        tokens, (gh, gw) = self.patch_tokens(x)
        final, taps = self.run_blocks(self.with_cls(tokens), layers or ())

        def grid(t: torch.Tensor) -> torch.Tensor:
            return rearrange(t[:, 1:], "b (gh gw) d -> b gh gw d", gh=gh, gw=gw)

        return grid(final) if layers is None else [grid(t) for t in taps]

    def tables(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """x: (B, C, H, W) -> the named feature tables (`store.recipe` naming) from ONE encoder pass.

        `pooled` is (B, D) (mean of patch tokens, or the cls token per `cfg.pool`); `tokens` / `tokens.<i>` are the
        final / block i grids (B, gh, gw, D), each through the final norm. The embed job and the server both call this,
        so a head reads the same numbers offline and online.
        """
        layers = sorted({table_layer(n) for n in names} - {None, -1})
        tokens, (gh, gw) = self.patch_tokens(x)
        final, taps = self.run_blocks(self.with_cls(tokens), layers)  # (B, 1 + N, D)
        by_layer = {-1: final, **dict(zip(layers, taps, strict=True))}
        out = {}
        for name in names:
            layer = table_layer(name)
            if layer is None:
                out[name] = final[:, 0] if self.cfg.pool == "cls" else final[:, 1:].mean(dim=1)  # (B, D)
            else:
                out[name] = rearrange(by_layer[layer][:, 1:], "b (gh gw) d -> b gh gw d", gh=gh, gw=gw)
        return out

    def embed(self, x: torch.Tensor, pool: str | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, D): the mean of the patch tokens (or the cls token, per `pool`/`cfg.pool`)."""
        out, _ = self.forward_tokens(x)
        if (pool or self.cfg.pool) == "cls":
            return out[:, 0]
        return out[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)
