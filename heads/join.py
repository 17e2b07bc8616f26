"""The join between labels, frames and stored embeddings: the thin layer `fth heads fit` needs around the engine.

    labels (LabelSet keyed by our frame id)
      x frames (ids + capture times, from the catalog's FrameIndex)
      x features (the recipe's tables read from the embedding store, layers concatenated on D)
      -> heads.fit.fit_from_arrays

The store is used through one method, `get(ids, table) -> (n, *row_shape) array` (store.embeddings.EmbeddingStore),
with the tables `store.recipe.FeatureRecipe.tables()` names. Every step is a dict lookup per label: O(N + L).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from heads.fit import FitConfig, FitResult, fit_from_arrays
from heads.labels import LabelError, LabelSet, _first
from heads.tasks import Task, TaskConfig, make_task
from store.recipe import FeatureRecipe


class FeatureSource(Protocol):
    def get(self, ids: Sequence[str], table: str = "pooled") -> np.ndarray: ...


def read_features(store: FeatureSource, ids: Sequence[str], recipe: FeatureRecipe) -> tuple[np.ndarray, FeatureRecipe]:
    """(features for `ids` in order, float16 as stored: (n, D) pooled or (n, gh, gw, sum D) grids, the recipe with
    its grid and width filled in)."""
    x = recipe.assemble({t: store.get(list(ids), t) for t in recipe.tables()})
    return x, recipe.completed(x)


def fit_from_labels(
    task: Task | TaskConfig | str,
    labels: LabelSet,
    frame_ids: Sequence[str],
    features: Any,
    times: Sequence[Any],
    cfg: FitConfig | None = None,
    recipe: FeatureRecipe | None = None,
) -> FitResult:
    """Fit on the labelled subset of frames: `features` and `times` are aligned with `frame_ids`.

    Raises LabelError naming how many labelled frames have no row here (embed them first). A task without classes
    takes the label set's class list.
    """
    if isinstance(task, str):
        task = TaskConfig(name=task)
    if isinstance(task, TaskConfig) and not task.classes and labels.classes:
        task = dataclasses.replace(task, classes=tuple(labels.classes))
    task = task if isinstance(task, Task) else make_task(task)
    return fit_from_arrays(task, *labelled_rows(labels, frame_ids, features, times), cfg, recipe)


def labelled_rows(labels: LabelSet, frame_ids: Sequence[str], features: Any, times: Sequence[Any]):
    """(features, label values, times) of the labelled frames, joined on our frame id; LabelError naming how many
    labelled frames have no row here (embed them first)."""
    rows, values = labels.align(list(frame_ids))
    if len(rows) < len(labels):
        have = set(frame_ids)
        missing = [i for i in labels.ids if i not in have]
        raise LabelError(f"{len(missing)} of {len(labels)} labelled frames have no features: {_first(missing)}")
    idx = np.asarray(rows, dtype=np.int64)
    x = features if len(idx) == features.shape[0] and (idx == np.arange(len(idx))).all() else features[idx]
    return x, values, [times[i] for i in rows]
