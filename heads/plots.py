"""Fit diagnostics drawn with matplotlib (Agg backend, PNG): what a user looks at first after `fth heads fit`.

- `scatter`: predicted against true on the held-out frames, with the identity line, labelled axes and units; counts
  get a little jitter so stacked integers stay visible.
- `map_panels`: one row per held-out frame: the frame, the label and the prediction (depth on a shared log colour
  scale with a colour bar, classes with a legend).
- `box_panels`: held-out frames with true boxes (green) and predicted boxes (orange, with scores).
- `loss_curve`: training loss and the validation metric against the step, the chosen step marked.
Each task's `plot` calls one of these; nothing here knows a task by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def scatter(
    path: str | Path,
    true: np.ndarray,
    pred: np.ndarray,
    title: str,
    xlabel: str,
    ylabel: str,
    lo: float | None = None,
    hi: float | None = None,
    integer: bool = False,
) -> Path:
    """Predicted (y) against true (x) with the identity line; axis range [lo, hi] (default: the data's)."""
    plt = _plt()
    t, p = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    lo = float(min(t.min(), p.min(), 0 if integer else np.inf)) if lo is None else lo
    hi = float(max(t.max(), p.max())) if hi is None else hi
    hi = hi if hi > lo else lo + 1.0
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, t.shape) if integer else 0.0
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, label="perfect")
    ax.scatter(t + jitter, p, s=14, alpha=0.6, color="tab:blue", label=f"held-out frames (n={len(t)})")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=xlabel, ylabel=ylabel, aspect="equal")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def map_panels(
    path: str | Path,
    labels: np.ndarray,
    preds: np.ndarray,
    images: Sequence[np.ndarray] | None,
    title: str,
    kind: str,
    classes: Sequence[str] = (),
    ignore: int = 255,
) -> Path:
    """Rows of [frame] | label | prediction for `kind` `depth` (metres) or `segmentation` (class indices)."""
    plt = _plt()
    from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm
    from matplotlib.patches import Patch

    n = len(labels)
    cols = 3 if images is not None else 2
    fig, axes = plt.subplots(n, cols, figsize=(3.2 * cols, 2.1 * n + 0.6), squeeze=False)
    if kind == "depth":
        valid = np.concatenate([labels[labels > 0].ravel(), preds[preds > 0].ravel()])
        norm = LogNorm(vmin=float(valid.min()), vmax=float(valid.max()))
        cmap, show = plt.get_cmap("viridis_r").with_extremes(bad="black"), lambda a: np.ma.masked_where(a <= 0, a)
    else:
        k = max(len(classes), int(np.max(np.where(labels == ignore, 0, labels))) + 1, int(preds.max()) + 1)
        cmap = ListedColormap(plt.get_cmap("tab10" if k <= 10 else "tab20").colors[:k]).with_extremes(bad="black")
        norm = BoundaryNorm(np.arange(k + 1) - 0.5, k)
        show = lambda a: np.ma.masked_where(a == ignore, a)
    im = None
    for r in range(n):
        cells = ([("frame", images[r])] if images is not None else []) + [
            ("label", labels[r]),
            ("prediction", preds[r]),
        ]
        for c, (name, arr) in enumerate(cells):
            ax = axes[r, c]
            if name == "frame":
                ax.imshow(arr)
            else:
                im = ax.imshow(show(arr), cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
    if kind == "depth" and im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="depth (m, log scale; black = no depth)")
    elif classes:
        handles = [Patch(color=cmap(i), label=c) for i, c in enumerate(classes)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 6), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def box_panels(
    path: str | Path,
    images: Sequence[np.ndarray],
    true: Sequence[np.ndarray],
    pred: Sequence[dict[str, Any]],
    title: str,
    classes: Sequence[str] = (),
) -> Path:
    """Frames with true boxes (green, (M, 4) x0 y0 x1 y1 in pixels) and predicted ones (orange, with scores)."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    n = len(images)
    cols = min(2, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.0 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(images[i])
        for x0, y0, x1, y1 in np.asarray(true[i]).reshape(-1, 4):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.5))
        for box in pred[i]["boxes"]:
            x0, y0, x1, y1 = box["box"]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="orange", lw=1.2, ls="--"))
            ax.text(x0, y0 - 1, f"{box['score']:.2f}", color="orange", fontsize=6, va="bottom")
        ax.set_title(f"true {len(np.asarray(true[i]).reshape(-1, 4))}, predicted {len(pred[i]['boxes'])}", fontsize=8)
    fig.suptitle(f"{title}\ngreen: true boxes, orange dashed: predicted", fontsize=9)
    return _save(fig, path)


def loss_curve(path: str | Path, history: list[dict[str, float]], primary: str, best_step: int) -> Path:
    """Training loss (left axis) and the validation metric (right axis) against the step, the chosen step marked."""
    plt = _plt()
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(steps, [h["loss"] for h in history], color="tab:blue", marker=".", label="training loss")
    ax.set(xlabel="step", ylabel="training loss")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [h[primary] for h in history], color="tab:orange", marker=".", label=f"validation {primary}")
    ax2.set_ylabel(f"validation {primary}")
    ax.axvline(best_step, color="0.4", ls="--", lw=1, label=f"chosen step {best_step}")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper right")
    return _save(fig, path)
