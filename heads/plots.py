"""Fit diagnostics as PNG drawn with PIL (no matplotlib): predicted-vs-true scatter for scalar tasks, and
image / label / prediction panels for dense tasks.

`scatter_png` draws the identity line, the points and a one-line title (e.g. the metrics next to the baseline); time
of day is plotted in hours with both axes 0-24. `panels_png` stacks one row per frame: the frame (when given), the
label and the prediction, with depth as a shared-range log grey ramp (invalid = black, near = dark, far = bright) and
classes as a fixed palette (ignored = black).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

PALETTE = np.random.default_rng(7).integers(40, 256, size=(256, 3), dtype=np.uint8)
PALETTE[255] = 0


def scatter_png(
    path: str | Path,
    true: Sequence[float] | np.ndarray,
    pred: Sequence[float] | np.ndarray,
    title: str = "",
    lo: float | None = None,
    hi: float | None = None,
    size: int = 480,
) -> Path:
    """Predicted (y) against true (x) with the identity line; axis range [lo, hi] (default: data range)."""
    t, p = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    lo = float(min(t.min(), p.min())) if lo is None else lo
    hi = float(max(t.max(), p.max())) if hi is None else hi
    hi = hi if hi > lo else lo + 1.0
    margin, top = 48, 28
    im = Image.new("RGB", (size, size + top), "white")
    draw = ImageDraw.Draw(im)
    span = size - 2 * margin

    def xy(a: float, b: float) -> tuple[float, float]:
        return margin + (a - lo) / (hi - lo) * span, top + size - margin - (b - lo) / (hi - lo) * span

    draw.rectangle([xy(lo, hi), xy(hi, lo)], outline="black")
    draw.line([xy(lo, lo), xy(hi, hi)], fill=(160, 160, 160), width=1)
    for a, b in zip(t, p, strict=True):
        x, y = xy(min(max(a, lo), hi), min(max(b, lo), hi))
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 90, 200))
    for v in np.linspace(lo, hi, 5):
        x, _ = xy(v, lo)
        _, y = xy(lo, v)
        draw.text((x - 10, top + size - margin + 6), f"{v:.3g}", fill="black")
        draw.text((4, y - 6), f"{v:.3g}", fill="black")
    draw.text((margin, top + size - 16), "true", fill="black")
    draw.text((4, top + 4), f"predicted   {title}", fill="black")
    im.save(path)
    return Path(path)


def _depth_rgb(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    valid = depth > 0
    x = np.zeros_like(depth, dtype=np.float64)
    x[valid] = (np.log(depth[valid]) - np.log(lo)) / max(np.log(hi) - np.log(lo), 1e-6)
    g = (np.clip(x, 0, 1) * 215 + 40) * valid
    return np.repeat(g[..., None], 3, axis=2).astype(np.uint8)


def _resize(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if rgb.shape[:2] == tuple(hw):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.NEAREST))


def panels_png(
    path: str | Path,
    labels: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    kind: str,
    images: Sequence[np.ndarray] | None = None,
    title: str = "",
) -> Path:
    """Rows of [image] | label | prediction; `kind` is `depth` (metres) or `segmentation` (class indices).

    Args:
        images: optional (H, W, 3) uint8 frames, resized to the label size.
    """
    labels = [np.asarray(a) for a in labels]
    preds = [np.asarray(a) for a in preds]
    hw = labels[0].shape[:2]
    if kind == "depth":
        valid = np.concatenate([a[a > 0].ravel() for a in labels] + [np.asarray(p).ravel() for p in preds])
        lo, hi = float(valid.min()), float(valid.max())
        colour = lambda a: _depth_rgb(a.astype(np.float64), lo, hi)
    else:
        colour = lambda a: PALETTE[np.clip(a.astype(np.int64), 0, 255)]
    rows = []
    for i, (lab, pred) in enumerate(zip(labels, preds, strict=True)):
        cells = [_resize(np.asarray(images[i], dtype=np.uint8), hw)] if images is not None else []
        cells += [colour(lab), _resize(colour(pred), hw)]
        gap = np.full((hw[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([c for cell in cells for c in (cell, gap)][:-1], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows[:-1], axis=0)
    scale = max(1, -(-320 // grid.shape[1]))  # small label maps are enlarged (nearest) to stay readable
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    top = 18
    im = Image.new("RGB", (grid.shape[1], grid.shape[0] + top), "white")
    im.paste(Image.fromarray(grid), (0, top))
    heads = ("image | " if images is not None else "") + "label | prediction"
    ImageDraw.Draw(im).text((2, 2), f"{heads}   {title}", fill="black")
    im.save(path)
    return Path(path)


def plot_fit(
    result: Any, features: Any, labels: Any, out_dir: str | Path, images: Sequence[np.ndarray] | None = None, n: int = 4
) -> Path:
    """The validation plot of a `heads.fit.FitResult`: `<task>.png` in `out_dir` (features/labels as given to the fit;
    `images` aligned with them, optional)."""
    import torch

    from heads.fit import predict_outputs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task, idx = result.task, result.val_idx
    path = out_dir / f"{task.name}.png"
    m, b = result.metrics[task.primary], result.baseline[task.primary]
    title = f"{task.primary} {m:.3g} (baseline {b:.3g}), n={len(idx)}"
    if not task.dense:
        x = torch.as_tensor(np.asarray(features)[idx])
        out = predict_outputs(result.head, x)
        true = task.targets([labels[i] for i in idx])
        if task.name == "time_of_day":
            return scatter_png(path, true / 3600, task.seconds(out) / 3600, title, 0, 24)
        return scatter_png(path, true, task.count(out), title)
    pick = idx[:n]
    x = torch.as_tensor(np.asarray(features)[pick])
    target = task.targets([labels[i] for i in pick])
    out = predict_outputs(result.head, x)
    size = tuple(target.shape[-2:])
    pred = task.depth(out, size) if task.name == "depth" else torch.nn.functional.interpolate(
        out, size=size, mode="bilinear", align_corners=False).argmax(1)  # fmt: skip
    imgs = [images[i] for i in pick] if images is not None else None
    return panels_png(path, list(target.numpy()), list(pred.numpy()), task.name, imgs, title)
