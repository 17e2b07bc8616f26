"""The join between labels, frames and stored embeddings: the thin layer `fth heads fit` needs around the engine.

    labels (LabelSet keyed by our frame id)
      x frames (ids + capture times, from the catalog)
      x features (rows read from the embedding store for the recipe: `pooled`, or `tokens[.<layer>]` concatenated on D)
      -> heads.fit.fit_from_arrays

The store is used through one method, `get(ids, table) -> (n, *row_shape) array` (store.embeddings.EmbeddingStore),
and the table names follow `store.embeddings.table_name`: `pooled`, `tokens` (final layer), `tokens.<layer>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from heads.features import FeatureRecipe, as_float_tensor, concat_layers
from heads.fit import FitConfig, FitResult, fit_from_arrays
from heads.labels import LabelError, LabelSet, _first
from heads.tasks import Task, TaskConfig, make_task


class FeatureSource(Protocol):
    def get(self, ids: Sequence[str], table: str = "pooled") -> np.ndarray: ...


def tables_for(form: str, layers: Sequence[int]) -> list[str]:
    """The embedding-store tables a recipe reads, in concatenation order."""
    if form == "pooled":
        return ["pooled"]
    return ["tokens" if layer == -1 else f"tokens.{layer}" for layer in layers]


def read_features(store: FeatureSource, ids: Sequence[str], form: str = "pooled", layers: Sequence[int] = (-1,)):
    """(features as one float32 tensor, recipe) for `ids` in order: (n, D) pooled or (n, gh, gw, sum D) grids."""
    parts = [store.get(list(ids), table) for table in tables_for(form, layers)]
    x = as_float_tensor(parts[0]) if len(parts) == 1 else concat_layers(parts)
    return x, FeatureRecipe.infer(x, layers=tuple(layers))


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

    Raises LabelError naming how many labelled frames have no row here (embed them first). For segmentation a task
    without classes takes the label set's class list.
    """
    if isinstance(task, str):
        task = TaskConfig(name=task)  # type: ignore[arg-type]
    if isinstance(task, TaskConfig) and task.name == "segmentation" and not task.classes and labels.classes:
        task = dataclasses.replace(task, classes=tuple(labels.classes))
    task = task if isinstance(task, Task) else make_task(task)
    rows, values = labels.align(list(frame_ids))
    if len(rows) < len(labels):
        have = set(frame_ids)
        missing = [i for i in labels.ids if i not in have]
        raise LabelError(f"{len(missing)} of {len(labels)} labelled frames have no features: {_first(missing)}")
    idx = np.asarray(rows, dtype=np.int64)
    x = features[torch.from_numpy(idx)] if isinstance(features, torch.Tensor) else np.asarray(features)[idx]
    y = np.stack([np.asarray(v) for v in values]) if task.dense else values
    return fit_from_arrays(task, x, y, [times[i] for i in rows], cfg, recipe)
