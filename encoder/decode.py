"""Batched JPEG decode, random resized crop, flip on the training device: the `decode="device"` half of the input.

The loader workers (`encoder.data.make_sample(decode="device")`) have already drawn every random choice from
(seed, epoch, index) and ship only the encoded frame with its crop box and flip, so the work left here is
deterministic: decode the batch with `torchvision.io.decode_jpeg(list, device=...)` (nvJPEG, batched, on CUDA;
libjpeg-turbo on CPU), crop each frame to its box, resize it to (H, W) with antialiased bilinear interpolation (the
filter PIL's `resize(BILINEAR)` uses, so the `pil` path and this one agree within JPEG decoder tolerance), flip,
round to uint8. The output is the `image` (B, H, W, 3) uint8 the `pil` path collates, on the device.

A frame whose header parsed in the worker but whose data does not decode here is replaced by the first frame of
the batch that did decode (its box and flip too), and counted as skipped, so batch shapes never change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def decode_frames(frames: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Encoded JPEGs (1-D uint8) or decoded pixels (3, h, w) uint8 -> (3, h, w) uint8 on `device`; None where a
    JPEG does not decode. JPEGs are decoded in one batched call (one per failing frame after a failure)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | None] = [f.to(device, non_blocking=True) if f.dim() == 3 else None for f in frames]
    jpegs = [i for i, f in enumerate(frames) if f.dim() == 1]
    if not jpegs:
        return out
    try:
        decoded = decode_jpeg([frames[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
    except RuntimeError as e:  # one bad frame fails the batch: decode one by one to find it
        log.warning("batched JPEG decode failed (%s); decoding the batch frame by frame", e)
        decoded = []
        for i in jpegs:
            try:
                decoded.append(decode_jpeg(frames[i], mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    for i, image in zip(jpegs, decoded, strict=True):
        out[i] = image
    return out


def crop_resize_flip(image: torch.Tensor, box: Sequence[int], flip: bool, size: tuple[int, int]) -> torch.Tensor:
    """image (3, h, w) uint8 -> (3, H, W) float32 in [0, 255]: crop to `box` (left, top, right, bottom), resize to
    `size` = (H, W) (antialiased bilinear, half-pixel centres), flip horizontally if `flip`."""
    left, top, right, bottom = (int(v) for v in box)
    crop = image[:, top:bottom, left:right].float()[None]  # (1, 3, ch, cw)
    out = F.interpolate(crop, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]  # (3, H, W)
    return out.flip(-1) if flip else out


def device_images(batch: dict[str, Any], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """A collated `decode="device"` batch -> images (B, H, W, 3) uint8 on `device`.

    Adds frames that failed to decode here to `batch["skipped"]` and their ids to `batch["bad"]`.
    """
    frames = decode_frames(batch["frames"], device)
    boxes, flips = batch["box"].tolist(), batch["flip"].tolist()
    good = next((i for i, f in enumerate(frames) if f is not None), None)
    if good is None:
        raise RuntimeError(f"no frame of a batch of {len(frames)} decodes on {device}")
    out = []
    for i, image in enumerate(frames):
        if image is None:
            batch["skipped"] += 1
            batch["bad"].append(batch["ids"][i])
            log.warning("frame %s does not decode on %s; replaced in its batch", batch["ids"][i][:16], device)
            image, boxes[i], flips[i] = frames[good], boxes[good], flips[good]
        out.append(crop_resize_flip(image, boxes[i], flips[i], size))
    images = torch.stack(out).round_().clamp_(0, 255).to(torch.uint8)  # (B, 3, H, W)
    return images.permute(0, 2, 3, 1)  # (B, H, W, 3), as the pil path collates
