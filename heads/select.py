"""Choosing frames to label, and exporting them as Label Studio tasks: `choose_indices` is the one place a method name
becomes chosen frames.

Methods (`METHODS`):
- `random`: uniformly among the unlabelled frames.
- `kcenter`: k-center greedy (Gonzalez 1985; used for active learning as the "core-set" approach of Sener & Savarese
  2018): start from a seed point (or the frames already labelled) and repeatedly add the frame farthest from every
  chosen one. It is a 2-approximation of the minimax cover, so labelling in this order spends the first labels on the
  most diverse frames. `coverage` is the quantity it minimises: the largest distance from any frame to its nearest
  chosen frame.
- `uncertainty`: the frames an ensemble of the task's heads disagrees on most (`heads.active`; the scores come in
  through a callable, so nothing is fitted unless the method needs it).
- `hybrid`: TypiClust (Hacohen et al. 2022, "Active learning on a budget: opposite strategies suit high and low
  budgets") while labels are few, uncertainty after. TypiClust clusters the frames with k-means into (labelled + k)
  clusters and takes, from each of the k largest clusters that hold no labelled frame, its most typical frame (highest
  density: the inverse mean distance to its nearest neighbours in the cluster). The switch is a label count: TypiClust
  while fewer than `switch_at` frames (default `SWITCH_AT`) are labelled, uncertainty from then on (see README,
  "Choosing frames to label", for the measurement behind the default).

Export format: Label Studio's task import JSON (labelstud.io/guide/tasks#Basic-Label-Studio-JSON-format), a list of
`{"data": {"image": url, "frame_id": ..., "path": ..., "rank": ...}}`; our frame id and the original path travel in
`data`, so an export of the annotations joins back on our id (`heads.labels.read_label_studio`).
Shapes: N frames, D embedding width, k chosen. torch is imported inside the functions, so the command line can read
`METHODS` without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("kcenter", "random", "uncertainty", "hybrid")
SWITCH_AT = 100  # hybrid: labelled frames from which on it picks uncertain frames (bench/active.py; README)


def select_random(n: int, k: int, seed: int = 0) -> list[int]:
    """k distinct indices of n, uniformly at random."""
    return np.random.default_rng(seed).permutation(n)[: min(k, n)].tolist()


def _dist_to(x, point, chunk: int = 65536):
    """Euclidean distance of every row of x (N, D) to one point (D,) -> (N,) (torch tensors)."""
    import torch

    return torch.cat([(x[i : i + chunk] - point).norm(dim=1) for i in range(0, x.shape[0], chunk)])


def kcenter_greedy(embeddings: Any, k: int, seed: int = 0, already: Sequence[int] = ()) -> list[int]:
    """Indices of k frames chosen by k-center greedy over embeddings (N, D), given frames `already` labelled.

    Args:
        already: indices already labelled; they count as chosen and are not returned again.
        seed: picks the first frame when nothing is labelled yet.
    """
    import torch

    from heads.models import as_float

    x = as_float(embeddings)
    n = x.shape[0]
    k = min(k, n - len(set(already)))
    mind = torch.full((n,), float("inf"))
    for i in already:
        mind = torch.minimum(mind, _dist_to(x, x[i]))
    chosen: list[int] = []
    if not already and k > 0:
        first = int(np.random.default_rng(seed).integers(n))
        chosen.append(first)
        mind = torch.minimum(mind, _dist_to(x, x[first]))
    while len(chosen) < k:
        nxt = int(mind.argmax())
        chosen.append(nxt)
        mind = torch.minimum(mind, _dist_to(x, x[nxt]))
    return chosen


def coverage(embeddings: Any, chosen: Sequence[int], chunk: int = 8192) -> float:
    """max over frames of the distance to the nearest chosen frame (lower = the chosen set covers better)."""
    import torch

    from heads.models import as_float

    x = as_float(embeddings)
    centers = x[torch.as_tensor(list(chosen), dtype=torch.long)]
    return float(max(torch.cdist(x[i : i + chunk], centers).min(dim=1).values.max() for i in range(0, len(x), chunk)))


def label_studio_tasks(
    frame_ids: Sequence[str],
    paths: Sequence[str],
    image_url: Callable[[str, str], str] | None = None,
    extra: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Frames -> Label Studio tasks, in the given order (`rank` 0 = label first).

    Args:
        image_url: (frame id, path) -> URL Label Studio can load; default: Label Studio local-files URL of the path.
        extra: per-frame additional `data` fields (e.g. capture time, source, the uncertainty that chose it).
    """
    image_url = image_url or (lambda fid, path: f"/data/local-files/?d={path}")
    tasks = []
    for rank, (fid, path) in enumerate(zip(frame_ids, paths, strict=True)):
        data = {"image": image_url(fid, path), "frame_id": fid, "path": path, "rank": rank}
        if extra is not None:
            data.update(extra[rank])
        tasks.append({"data": data})
    return tasks


def typicality(x: np.ndarray, knn: int = 20) -> np.ndarray:
    """(n, D) -> (n,) inverse mean Euclidean distance to each point's min(knn, n - 1) nearest neighbours."""
    import torch

    if len(x) < 2:
        return np.ones(len(x))
    d = torch.cdist(torch.from_numpy(x), torch.from_numpy(x))  # (n, n)
    m = min(knn, len(x) - 1)
    near = d.topk(m + 1, largest=False).values[:, 1:]  # drop the point itself
    return (1.0 / near.mean(1).clamp_min(1e-12)).double().numpy()


def typiclust(
    embeddings: Any, k: int, already: Sequence[int] = (), seed: int = 0, knn: int = 20, min_size: int = 5
) -> list[int]:
    """Indices of k frames by TypiClust (see the module docstring) over embeddings (N, D), given frames `already`
    labelled. Clusters smaller than `min_size` are passed over while bigger uncovered ones remain (the paper's
    guard against outliers); when uncovered clusters run out, the rest of the batch is k-center greedy."""
    from sklearn.cluster import KMeans

    from heads.models import as_float

    x = as_float(embeddings).numpy()
    n, done = len(x), sorted(set(already))
    k = min(k, n - len(done))
    if k <= 0:
        return []
    clusters = min(len(done) + k, n)
    assign = KMeans(clusters, n_init=1, random_state=seed).fit_predict(x)  # (N,)
    sizes = np.bincount(assign, minlength=clusters)
    covered = set(assign[done].tolist())
    order = sorted((c for c in range(clusters) if c not in covered), key=lambda c: (sizes[c] < min_size, -sizes[c]))
    chosen: list[int] = []
    for c in order[:k]:
        members = np.flatnonzero(assign == c)
        chosen.append(int(members[typicality(x[members], knn).argmax()]))
    if len(chosen) < k:
        chosen += kcenter_greedy(x, k - len(chosen), seed, done + chosen)
    return chosen


@dataclass
class Choice:
    """Chosen frame indices in labelling order, and how: `scores` are the chosen frames' uncertainties when the
    method scored frames (else empty); `how` names the rule that chose (hybrid: `typiclust` or `uncertainty`)."""

    idx: list[int]
    scores: list[float]
    how: str


def choose_indices(
    method: str,
    k: int,
    n: int,
    *,
    embeddings: Any | None = None,
    labelled: Sequence[int] = (),
    seed: int = 0,
    uncertainty: Callable[[], np.ndarray] | None = None,
    switch_at: int = SWITCH_AT,
) -> Choice:
    """Choose k of n frames by `method`, never one of `labelled` (indices).

    Args:
        embeddings: (n, D) pooled embeddings, for kcenter and hybrid's TypiClust phase.
        uncertainty: () -> (n,) scores (higher = label sooner), for uncertainty and hybrid's later phase; called only
            when the method needs it.
        switch_at: hybrid picks by uncertainty once at least this many frames are labelled.
    """
    if method not in METHODS:
        raise ValueError(f"selection method {method!r}: expected one of {', '.join(METHODS)}")
    done = sorted(set(labelled))
    how = method
    if method == "hybrid":
        how = "uncertainty" if len(done) >= switch_at else "typiclust"
    if how in ("kcenter", "typiclust"):
        if embeddings is None:
            raise ValueError(f"{method} selection needs the frames' embeddings")
        if len(embeddings) != n:
            raise ValueError(f"{len(embeddings)} embeddings for {n} frames")
        pick = kcenter_greedy if how == "kcenter" else typiclust
        return Choice(pick(embeddings, k, seed=seed, already=done), [], how)
    pool = np.setdiff1d(np.arange(n), np.asarray(done, dtype=np.int64))
    if how == "random":
        return Choice([int(pool[j]) for j in select_random(len(pool), k, seed)], [], how)
    if uncertainty is None:
        raise ValueError(f"{method} selection needs an ensemble's uncertainty (a task and its labels)")
    scores = np.asarray(uncertainty(), dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"{scores.shape} uncertainty scores for {n} frames")
    top = pool[np.argsort(-scores[pool], kind="stable")[:k]]  # most uncertain first
    return Choice(top.tolist(), scores[top].tolist(), how)
