"""Images -> normalised model input. One place decides how pixels reach the encoder, for training, `fth embed`
and the server alike: RGB, resized to the model's (H, W), scaled to [0, 1], normalised by the config's mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from encoder.config import ViTConfig


def to_array(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """PIL image -> (H, W, 3) uint8 RGB at `size` = (H, W), resized with antialiasing when it differs."""
    image = image.convert("RGB")
    h, w = size
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)


def normalize(batch: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """(B, H, W, 3) uint8 or (B, 3, H, W) float in [0, 1] -> (B, 3, H, W) float32 normalised."""
    if batch.dtype == torch.uint8:
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    mean = torch.tensor(cfg.pixel_mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.pixel_std, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


def prepare(images: Sequence[Image.Image], cfg: ViTConfig, size: tuple[int, int] | None = None) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) model input at `size` (default: the model's img_size)."""
    size = tuple(size or cfg.img_size)
    arrays = np.stack([to_array(im, size) for im in images])  # (B, H, W, 3)
    return normalize(torch.from_numpy(arrays), cfg)
