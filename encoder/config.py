"""Model configs: the ViT encoder, the MAE decoder, and the MAE that joins them.

Presets live in `configs/` (`tiny.yaml`, `seed.yaml`) and override these defaults; the resolved config is saved in
every checkpoint card and is all that is needed to rebuild the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Backend = Literal["exact", "nystrom", "auto"]


@dataclass
class AttentionConfig:
    """How a block mixes tokens.

    Args:
        backend: `exact` (torch SDPA), `nystrom` (nystrom-attention with a keep-mask), or `auto`: exact below
            the crossover, Nystrom at or above it.
        num_landmarks: Nystrom landmarks m; the sequence is padded to a multiple of m.
        pinv_iterations: iterations of Nystromformer's Moore-Penrose pseudo-inverse.
        value_residual: add Nystromformer's depthwise conv over the values along token order (both backends apply
            it, so `auto` computes the same function on either side of the crossover).
        residual_kernel: length of that conv.
        crossover: token count (cls included) where `auto` switches from exact to Nystrom; 0: per device, from
            `encoder/crossovers.json` (measured by `bench/attention.py` on CPU, `bench/gpu.py` on a GPU).
    """

    backend: Backend = "auto"
    num_landmarks: int = 256
    pinv_iterations: int = 6
    value_residual: bool = True
    residual_kernel: int = 33
    crossover: int = 0


@dataclass
class ViTConfig:
    """The encoder: a pre-norm ViT over a non-square patch grid.

    Args:
        img_size: (H, W) the model is built for; other sizes divisible by `patch_size` also run.
        patch_size: square patch side p; the grid is (H/p, W/p) = (gh, gw).
        dim: token width D.  depth: number of blocks.  heads: attention heads H.
        dim_head: width of one head; H x dim_head need not equal D.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: bias on the q, k, v projection.
        pool: what `embed` returns: mean of patch tokens, or the cls token.
        pixel_mean, pixel_std: per-channel normalisation applied by `encoder.preprocess` to images in [0, 1].
    """

    img_size: tuple[int, int] = (64, 96)
    patch_size: int = 8
    in_chans: int = 3
    dim: int = 64
    depth: int = 4
    heads: int = 4
    dim_head: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pool: Literal["mean", "cls"] = "mean"
    attention: AttentionConfig = field(default_factory=lambda: AttentionConfig(num_landmarks=32))
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class DecoderConfig:
    """The MAE decoder: lighter blocks over the full grid, predicting pixels of every patch."""

    dim: int = 32
    depth: int = 2
    heads: int = 4
    dim_head: int = 8
    mlp_ratio: float = 4.0
    attention: AttentionConfig = field(default_factory=lambda: AttentionConfig(backend="exact", value_residual=False))


@dataclass
class MAEConfig:
    """Masked autoencoder (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

    Args:
        mask_ratio: fraction of patches hidden from the encoder; exactly int(N * (1 - mask_ratio)) stay visible.
        norm_pix_loss: regress per-patch normalised pixels (mean 0, variance 1 per patch).
        visible_loss_weight: weight of the visible patches' reconstruction in the loss, relative to a masked patch's
            (0: masked patches only, as in the MAE paper; 1: every patch counts alike, so each visible token must carry
            its own patch, e.g. a small person the masked patches around it do not predict).
    """

    encoder: ViTConfig = field(default_factory=ViTConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    visible_loss_weight: float = 0.0
