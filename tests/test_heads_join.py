"""The thin layer `fth heads fit` stands on: labels joined on frame id to features read from the real embedding
store, then fitted; missing embeddings are a counted error."""

from __future__ import annotations

import numpy as np
import pytest

from heads.fit import FitConfig
from heads.join import fit_from_labels, read_features
from heads.labels import LabelError, LabelSet
from store.embeddings import EmbeddingStore
from store.recipe import FeatureRecipe
from tests import synthetic_features as synthetic


def test_fit_from_store_and_labels(tmp_path):
    x, y, t = synthetic.spatial_counts(300, grid=(6, 10), dim=16, seed=7)
    ids = [f"{i:064x}" for i in range(300)]
    store = EmbeddingStore(tmp_path / "emb", "encoder-0000000000000000")
    w = store.writer("tokens", (6, 10, 16))
    w.append(ids, x.astype(np.float16))
    w.close()
    w = store.writer("tokens.1", (6, 10, 16))
    w.append(ids, x.astype(np.float16))
    w.close()
    labelled = ids[::2]  # half the frames carry labels, in another order
    labels = LabelSet(labelled[::-1], [float(y[ids.index(i)]) for i in labelled[::-1]])
    feats, recipe = read_features(store, ids, FeatureRecipe("grid", (1, -1)))
    assert feats.shape == (300, 6, 10, 32) and recipe.layers == (1, -1) and recipe.dim == 32
    res = fit_from_labels("people_count", labels, ids, feats, t, FitConfig(max_steps=20, threads=1), recipe)
    assert len(res.split.train) + len(res.split.val) + len(res.split.test) == 150 and res.recipe.layers == (1, -1)
    extra = LabelSet(labels.ids + ["f" * 64, "e" * 64], labels.values + [1.0, 2.0])
    with pytest.raises(LabelError, match="2 of 152 labelled frames have no features: f{64}"):
        fit_from_labels("people_count", extra, ids, feats, t)


def test_segmentation_takes_the_label_class_list():
    x, y, t = synthetic.segment_grids(40, classes=3, seed=8)
    ids = [str(i) for i in range(40)]
    labels = LabelSet(ids, list(y), classes=("bg", "person", "car"))
    res = fit_from_labels("segmentation", labels, ids, x, t, FitConfig(max_steps=5, threads=1))
    assert res.task.cfg.classes == ("bg", "person", "car") and set(res.metrics["iou"]) == {"bg", "person", "car"}
