"""Embedding drift: how far a recent window's pooled embeddings moved from a reference window's, per source.

Two two-sample tests on pooled vectors (B, D), behind one function (`drift_score`):

- `auc`: a domain classifier (standardise -> PCA -> L2 logistic regression, scikit-learn) is trained to tell
  reference frames from recent ones; its held-out ROC AUC, averaged over repeated stratified k folds, is the score
  (0.5: indistinguishable, 1: separable). Rabanser et al., "Failing loudly", NeurIPS 2019 ("domain classifier").
  Few principal axes and a strong L2 penalty keep its chance-level AUC near 0.5 on windows of a few dozen frames
  (at 16 axes and C=1 it reached 0.7-0.8 on unchanged sim days: bench/drift.py).
- `mmd`: maximum mean discrepancy with an RBF kernel (bandwidth: the median pairwise distance) on standardised
  vectors, the unbiased MMD^2 as the score and a permutation p-value (Gretton et al., JMLR 2012).

A window is flagged when its AUC reaches `threshold` (`auc`), or its p-value is at or below it (`mmd`). Which method is
the default was chosen by measurement (bench/drift.py; README "fth drift").

`window_key` groups catalog rows per source into local days (`1d`), hours (`1h`) or minute blocks (`Nm`, N dividing
60: `10m` keys `YYYY-MM-DDTHH:M0`); `score_sources` scores each window after the reference against it. The reference
is local days, hours or minutes (`parse_days`), compared with window keys cut to its own length. Nothing here reads
images or runs an encoder: embeddings come from the store.
Shapes: n frames, D width, P permutations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)


class DriftError(ValueError):
    """Input a drift run cannot score (unknown source, empty window, no embeddings): a one-line message."""


@dataclass
class DriftConfig:
    """How windows are compared.

    Args:
        method: `auc` (domain classifier) or `mmd` (kernel two-sample test).
        threshold: `auc`: flag when the AUC is at least this; `mmd`: flag when the p-value is at most this.
            0 = the method's default (`DEFAULT_THRESHOLD`).
        pca_dim: principal axes the classifier reads.  folds, repeats: repeated stratified cross-validation.
        c: inverse L2 strength of the logistic regression.
        permutations: label permutations for the MMD p-value.
        max_frames: frames per side at most (an even subsample in capture order): bounds cost on long windows.
        min_frames: windows with fewer embedded frames are reported as too small, not scored.
        seed: folds, subsampling and permutations.
    """

    method: Literal["auc", "mmd"] = "auc"
    threshold: float = 0.0
    pca_dim: int = 8
    folds: int = 5
    repeats: int = 3
    c: float = 0.1
    permutations: int = 500
    max_frames: int = 500
    min_frames: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in DEFAULT_THRESHOLD:
            raise DriftError(f"drift method {self.method!r}: expected one of {', '.join(DEFAULT_THRESHOLD)}")

    @property
    def limit(self) -> float:
        return self.threshold or DEFAULT_THRESHOLD[self.method]

    def flags(self, score: float, p_value: float | None) -> bool:
        return score >= self.limit if self.method == "auc" else p_value <= self.limit


DEFAULT_THRESHOLD = {"auc": 0.75, "mmd": 0.01}


def _standardise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


def classifier_auc(ref: np.ndarray, cur: np.ndarray, cfg: DriftConfig) -> tuple[float, None]:
    """(held-out ROC AUC of a reference-vs-recent classifier, mean over folds; no p-value). ref: (n1, D), cur: (n2, D).

    The AUC is averaged per fold, not pooled over folds: pooled out-of-fold scores mix models with different offsets."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([ref, cur]).astype(np.float64)  # (n1 + n2, D)
    y = np.r_[np.zeros(len(ref), int), np.ones(len(cur), int)]
    k = max(2, min(cfg.folds, len(ref), len(cur)))
    dim = max(1, min(cfg.pca_dim, x.shape[1], len(x) - math.ceil(len(x) / k) - 1))
    model = make_pipeline(StandardScaler(), PCA(dim, random_state=cfg.seed),
                          LogisticRegression(C=cfg.c, max_iter=2000))  # fmt: skip
    folds = RepeatedStratifiedKFold(n_splits=k, n_repeats=cfg.repeats, random_state=cfg.seed)
    return float(cross_val_score(model, x, y, cv=folds, scoring="roc_auc").mean()), None


def mmd_test(ref: np.ndarray, cur: np.ndarray, cfg: DriftConfig) -> tuple[float, float]:
    """(unbiased MMD^2 with an RBF kernel, its permutation p-value). ref: (n1, D), cur: (n2, D)."""
    from scipy.spatial.distance import cdist

    x = _standardise(np.concatenate([ref, cur]))  # (n, D)
    d2 = cdist(x, x, "sqeuclidean")  # (n, n)
    bandwidth = float(np.median(d2[np.triu_indices_from(d2, 1)])) or 1.0
    kernel = np.exp(-d2 / bandwidth)
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimate leaves out i == j
    n1, n = len(ref), len(x)
    n2 = n - n1
    rng = np.random.default_rng(cfg.seed)
    labels = np.zeros((cfg.permutations + 1, n), bool)  # row 0: the observed split, then P permutations
    labels[:, n1:] = True
    for row in labels[1:]:
        rng.shuffle(row)
    b = labels.astype(np.float64)  # (P + 1, n): 1 = recent
    a = 1.0 - b
    kb = b @ kernel  # (P + 1, n)
    ka = a @ kernel
    within_a = (ka * a).sum(1) / (n1 * (n1 - 1))
    within_b = (kb * b).sum(1) / (n2 * (n2 - 1))
    across = (ka * b).sum(1) / (n1 * n2)
    stats = within_a + within_b - 2 * across  # (P + 1,)
    p = float((1 + (stats[1:] >= stats[0]).sum()) / (1 + cfg.permutations))
    return float(stats[0]), p


def _subsample(x: np.ndarray, most: int) -> np.ndarray:
    if len(x) <= most:
        return x
    return x[np.linspace(0, len(x) - 1, most).round().astype(int)]


def drift_score(ref: np.ndarray, cur: np.ndarray, cfg: DriftConfig) -> tuple[float, float | None]:
    """(score, p-value or None) of `cfg.method` between pooled embeddings ref (n1, D) and cur (n2, D)."""
    ref, cur = _subsample(ref, cfg.max_frames), _subsample(cur, cfg.max_frames)
    return (classifier_auc if cfg.method == "auc" else mmd_test)(ref, cur, cfg)


def window_key(local_day: str, local_tod: float, window: str) -> str:
    """A frame's window: its local day `YYYY-MM-DD` (`1d`), hour `YYYY-MM-DDTHH` (`1h`) or N-minute block
    `YYYY-MM-DDTHH:MM` (`Nm`, the block's first minute)."""
    if window == "1d":
        return local_day
    if window == "1h":
        return f"{local_day}T{int(local_tod):02d}"
    n = int(window[:-1]) if window.endswith("m") and window[:-1].isdigit() else 0
    if n <= 0 or 60 % n:
        raise DriftError(f"--window {window!r}: expected 1d, 1h or Nm with N dividing 60 (e.g. 10m)")
    minute = min(int(local_tod * 60), 24 * 60 - 1)
    return f"{local_day}T{minute // 60:02d}:{minute % 60 // n * n:02d}"


TIME_FORMS = {10: "%Y-%m-%d", 13: "%Y-%m-%dT%H", 16: "%Y-%m-%dT%H:%M"}


def parse_days(text: str) -> tuple[str, str]:
    """`2026-05-01..2026-05-07` (or one day) -> (first, last) local days, inclusive; hours (`2026-05-01T08`) and
    minutes (`2026-05-01T08:10`) the same way, both ends of one form."""
    from datetime import datetime

    first, _, last = text.partition("..")
    first, last = first.strip(), (last or first).strip()
    form = TIME_FORMS.get(len(first))
    try:
        if form is None or len(last) != len(first):
            raise ValueError
        a, b = datetime.strptime(first, form), datetime.strptime(last, form)
    except ValueError:
        raise DriftError(f"--reference {text!r}: expected YYYY-MM-DD..YYYY-MM-DD local days (or both ends as "
                         "YYYY-MM-DDTHH or YYYY-MM-DDTHH:MM)") from None  # fmt: skip
    if b < a:
        raise DriftError(f"--reference {text!r}: the last day is before the first")
    return first, last


@dataclass
class WindowScore:
    """One recent window of one source against that source's reference window."""

    source: str
    window: str
    frames: int
    reference_frames: int
    score: float | None  # None: fewer than `min_frames` embedded frames
    p_value: float | None  # mmd only
    flagged: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FrameRef:
    """What drift needs of a catalog row."""

    id: str
    source: str
    local_day: str
    local_tod: float


def score_sources(
    frames: Iterable[FrameRef],
    embeddings: Callable[[Sequence[str]], dict[str, np.ndarray]],
    reference: tuple[str, str],
    cfg: DriftConfig,
    window: str = "1d",
    since: str | None = None,
    until: str | None = None,
) -> list[WindowScore]:
    """Score each window of each source after `reference` (or from `since`, up to `until` exclusive) against it.

    Args:
        frames: catalog rows (any order, several sources).
        embeddings: frame ids -> {id: (D,) pooled vector} for those the store holds (missing ids left out).
        reference: (first, last) local days, inclusive (or hours / minutes, as `parse_days` returns them).
    """
    by_source: dict[str, dict[str, list[str]]] = {}
    for f in frames:
        key = window_key(f.local_day, f.local_tod, window)
        by_source.setdefault(f.source, {}).setdefault(key, []).append(f.id)
    out = []
    for source, wins in sorted(by_source.items()):
        cut = len(reference[0])  # a day reference takes every window of its days, a minute one its minutes
        if cut > len(next(iter(wins))):
            raise DriftError(f"--reference {reference[0]}..{reference[1]} is finer than --window {window} windows")
        ref_ids = [i for key, ids in wins.items() if reference[0] <= key[:cut] <= reference[1] for i in ids]
        if not ref_ids:
            raise DriftError(f"source {source}: no frames in the reference window {reference[0]}..{reference[1]}")
        have = embeddings(ref_ids)
        ref = np.stack([have[i] for i in ref_ids if i in have]) if have else np.zeros((0, 0))
        if len(ref) < cfg.min_frames:
            raise DriftError(f"source {source}: {len(ref)} of {len(ref_ids)} reference frames have embeddings "
                             f"(need {cfg.min_frames}; embed them first: fth embed, or --embed)")  # fmt: skip
        start = since or f"{reference[1]}~"  # "~" sorts after any hour/minute suffix: the first window after it
        for key in sorted(k for k in wins if k >= start and (until is None or k < until)):
            have = embeddings(wins[key])
            cur = [have[i] for i in wins[key] if i in have]
            if len(cur) < cfg.min_frames:
                log.warning("source %s window %s: %d embedded frames (< %d), not scored", source, key, len(cur),
                            cfg.min_frames)  # fmt: skip
                out.append(WindowScore(source, key, len(cur), len(ref), None, None, False))
                continue
            score, p = drift_score(ref, np.stack(cur), cfg)
            out.append(WindowScore(source, key, len(cur), len(ref), score, p, cfg.flags(score, p)))
    return out


def plot_scores(path: str | Path, scores: Sequence[WindowScore], cfg: DriftConfig) -> Path:
    """Score over time, one line per source, the threshold dashed and flagged windows ringed (matplotlib Agg)."""
    from heads.plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    keys = sorted({s.window for s in scores})
    pos = {k: i for i, k in enumerate(keys)}
    for source in sorted({s.source for s in scores}):
        mine = [s for s in scores if s.source == source and s.score is not None]
        value = [s.score if cfg.method == "auc" else -math.log10(max(s.p_value, 1e-12)) for s in mine]
        ax.plot([pos[s.window] for s in mine], value, marker="o", ms=4, label=source)
        hit = [(pos[s.window], v) for s, v in zip(mine, value, strict=True) if s.flagged]
        if hit:
            ax.scatter(*zip(*hit, strict=True), s=90, facecolors="none", edgecolors="red", zorder=3)
    limit = cfg.limit if cfg.method == "auc" else -math.log10(cfg.limit)
    ax.axhline(limit, color="red", ls="--", lw=1, label="threshold")
    ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("domain-classifier AUC" if cfg.method == "auc" else "MMD -log10(p)")
    ax.set_title(f"embedding drift per source ({cfg.method}; red rings: flagged)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
