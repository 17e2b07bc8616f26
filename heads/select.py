"""Choosing frames to label, and exporting them as Label Studio tasks.

k-center greedy (Gonzalez 1985; used for active learning as the "core-set" approach of Sener & Savarese 2018): start
from a seed point (or the frames already labelled) and repeatedly add the frame farthest from every chosen one. It is a
2-approximation of the minimax cover, so labelling in this order spends the first labels on the most diverse frames.
`coverage` is the quantity it minimises: the largest distance from any frame to its nearest chosen frame.

Export format: Label Studio's task import JSON (labelstud.io/guide/tasks#Basic-Label-Studio-JSON-format), a list of
`{"data": {"image": url, "frame_id": ..., "path": ..., "rank": ...}}`; our frame id and the original path travel in
`data`, so an export of the annotations joins back on our id (`heads.labels.read_label_studio`).
Shapes: N frames, D embedding width, k chosen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heads.models import as_float


def select_random(n: int, k: int, seed: int = 0) -> list[int]:
    """k distinct indices of n, uniformly at random."""
    return np.random.default_rng(seed).permutation(n)[: min(k, n)].tolist()


def _dist_to(x: torch.Tensor, point: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Euclidean distance of every row of x (N, D) to one point (D,) -> (N,)."""
    return torch.cat([(x[i : i + chunk] - point).norm(dim=1) for i in range(0, x.shape[0], chunk)])


def kcenter_greedy(embeddings: Any, k: int, seed: int = 0, already: Sequence[int] = ()) -> list[int]:
    """Indices of k frames chosen by k-center greedy over embeddings (N, D), given frames `already` labelled.

    Args:
        already: indices already labelled; they count as chosen and are not returned again.
        seed: picks the first frame when nothing is labelled yet.
    """
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
        extra: per-frame additional `data` fields (e.g. capture time, source).
    """
    image_url = image_url or (lambda fid, path: f"/data/local-files/?d={path}")
    tasks = []
    for rank, (fid, path) in enumerate(zip(frame_ids, paths, strict=True)):
        data = {"image": image_url(fid, path), "frame_id": fid, "path": path, "rank": rank}
        if extra is not None:
            data.update(extra[rank])
        tasks.append({"data": data})
    return tasks


def export_batch(
    out: str | Path,
    frame_ids: Sequence[str],
    paths: Sequence[str],
    k: int,
    method: str = "kcenter",
    embeddings: Any | None = None,
    already_labelled: Sequence[str] = (),
    seed: int = 0,
    image_url: Callable[[str, str], str] | None = None,
) -> list[str]:
    """Choose k frames (random or k-center over `embeddings` rows aligned with `frame_ids`) and write them as Label
    Studio tasks to `out`; returns the chosen frame ids in labelling order."""
    if method == "kcenter":
        if embeddings is None:
            raise ValueError("k-center selection needs the frames' embeddings")
        if len(embeddings) != len(frame_ids):
            raise ValueError(f"{len(embeddings)} embeddings for {len(frame_ids)} frames")
        row = {f: i for i, f in enumerate(frame_ids)}
        idx = kcenter_greedy(embeddings, k, seed, [row[f] for f in already_labelled if f in row])
    elif method == "random":
        done = set(already_labelled)
        pool = [i for i, f in enumerate(frame_ids) if f not in done]
        idx = [pool[j] for j in select_random(len(pool), k, seed)]
    else:
        raise ValueError(f"selection method {method!r}: expected 'kcenter' or 'random'")
    ids = [frame_ids[i] for i in idx]
    tasks = label_studio_tasks(ids, [paths[i] for i in idx], image_url)
    Path(out).write_text(json.dumps(tasks, indent=1))
    return ids
