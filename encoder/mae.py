"""Masked autoencoder pretraining around a `ViT` (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

Stages, in the order `forward` runs them: `patchify` -> `random_masking` -> `forward_encoder` -> `forward_decoder`
-> `forward_loss`. The MAE wraps an encoder instance rather than copying it: after pretraining, `mae.encoder` is the
model that gets registered and served. Visible tokens stay in raster order after masking, because Nystrom
landmarks are segment means and its value residual is a conv over token order.
Shapes: B batch, N = gh * gw patches, K visible patches, D encoder width, E decoder width, P = p * p * C pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from encoder.config import MAEConfig
from encoder.pos_embed import sincos_2d
from encoder.vit import Block, ViT, init_weights


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in raster order, pixels (row, col, channel) inside a patch."""
    return rearrange(imgs, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=p, p2=p)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, gh*p, gw*p), the inverse of `patchify` for an explicit grid (gh, gw)."""
    gh, gw = grid
    return rearrange(x, "b (gh gw) (p1 p2 c) -> b c (gh p1) (gw p2)", gh=gh, gw=gw, p1=p, p2=p, c=channels)


class Masking(NamedTuple):
    visible: torch.Tensor  # (B, K, D) kept tokens in raster order
    mask: torch.Tensor  # (B, N) 1 where the patch is hidden from the encoder, 0 where visible
    ids_restore: torch.Tensor  # (B, N) position of each original patch in [visible, masked] order
    ids_keep: torch.Tensor  # (B, K) indices of the visible patches, ascending


def random_masking(
    x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
) -> Masking:
    """Keep exactly int(N * (1 - mask_ratio)) tokens per sample, chosen uniformly at random, in raster order.

    x: (B, N, D). `ids_restore` inverts the shuffle: gathering [visible, masked] tokens with it gives raster order.
    `noise` (B, N), when given, replaces the random draw (training derives it per sample, so the mask of a sample
    does not depend on which rank or micro-batch it lands in).
    """
    b, n, d = x.shape
    keep = int(n * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch out of {n}")
    if noise is None:
        noise = torch.rand(b, n, device=x.device, generator=generator)  # (B, N)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_keep = ids_shuffle[:, :keep].sort(dim=1).values  # (B, K) raster order
    ids_masked = ids_shuffle[:, keep:].sort(dim=1).values  # (B, N-K)
    ids_restore = torch.argsort(torch.cat([ids_keep, ids_masked], dim=1), dim=1)  # (B, N)
    visible = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, d))  # (B, K, D)
    mask = torch.ones(b, n, device=x.device, dtype=x.dtype)
    mask.scatter_(1, ids_keep, 0.0)
    return Masking(visible, mask, ids_restore, ids_keep)


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # () mean squared error over masked patches
    pred: torch.Tensor  # (B, N, P) predicted pixels (normalised per patch when norm_pix_loss)
    mask: torch.Tensor  # (B, N) 1 = masked


class MAE(nn.Module):
    """Encoder on visible patches + light decoder on all patches with a learned mask token.

    Args:
        cfg: encoder, decoder, mask ratio and loss settings.
    """

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ViT(cfg.encoder)
        enc, dec = cfg.encoder, cfg.decoder
        self.decoder_embed = nn.Linear(enc.dim, dec.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec.dim))
        self.decoder_blocks = nn.ModuleList(
            Block(dec.dim, dec.heads, dec.dim_head, dec.mlp_ratio, True, dec.attention) for _ in range(dec.depth)
        )
        self.decoder_norm = nn.LayerNorm(dec.dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dec.dim, enc.patch_size**2 * enc.in_chans)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(
        self,
        imgs: torch.Tensor,
        mask_ratio: float,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Masking, tuple[int, int]]:
        """imgs: (B, C, H, W) -> encoded (B, 1 + K, D) with cls first, the masking, and the grid."""
        tokens, grid = self.encoder.patch_tokens(imgs)  # (B, N, D)
        masking = random_masking(tokens, mask_ratio, generator, noise)
        latent, _ = self.encoder.run_blocks(self.encoder.with_cls(masking.visible))
        return latent, masking, grid

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """latent: (B, 1 + K, D) -> predicted pixels (B, N, P) for every patch, raster order."""
        x = self.decoder_embed(latent)  # (B, 1 + K, E)
        b, n = ids_restore.shape
        masked = self.mask_token.to(x.dtype).expand(b, n - (x.shape[1] - 1), -1)  # (B, N - K, E)
        x_ = torch.cat([x[:, 1:], masked], dim=1)  # (B, N, E) in [visible, masked] order
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # (B, N, E) raster order
        x_ = x_ + sincos_2d(x.shape[2], *grid)[None].to(x_)
        x = torch.cat([x[:, :1], x_], dim=1)  # (B, 1 + N, E)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # (B, N, P)

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, P) regression targets, per-patch normalised when `norm_pix_loss`."""
        target = patchify(imgs, self.cfg.encoder.patch_size)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Weighted mean of the per-patch MSE: masked patches weigh 1, visible ones `visible_loss_weight`."""
        per_patch = ((pred.float() - self.target(imgs).float()) ** 2).mean(dim=-1)  # (B, N)
        weight = mask.float() + self.cfg.visible_loss_weight * (1 - mask.float())
        return (per_patch * weight).sum() / weight.sum()

    def forward(
        self,
        imgs: torch.Tensor,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> MAEOutput:
        """imgs: (B, C, H, W); `noise` (B, N) optionally fixes the per-sample masking (see `random_masking`)."""
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        latent, masking, grid = self.forward_encoder(imgs, ratio, generator, noise)
        pred = self.forward_decoder(latent, masking.ids_restore, grid)
        return MAEOutput(self.forward_loss(imgs, pred, masking.mask), pred, masking.mask)
