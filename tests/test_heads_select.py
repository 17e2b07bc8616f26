"""Choosing frames to label: k-center greedy covers the embedding space better than random, and the Label Studio
export carries our frame id and original path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from heads.select import coverage, export_batch, kcenter_greedy, select_random


def clustered(n=3000, clusters=40, dim=16, seed=0):
    """Many frames of a few scenes (a fixed camera), plus rare far-away ones: the case where random picks miss."""
    rng = np.random.default_rng(seed)
    sizes = rng.zipf(1.6, size=clusters).clip(1, 400)
    centres = rng.normal(scale=10.0, size=(clusters, dim))
    idx = rng.choice(clusters, size=n, p=sizes / sizes.sum())
    return (centres[idx] + rng.normal(scale=0.5, size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcenter_covers_better_than_random(seed):
    x = clustered(seed=seed)
    k = 60
    kc = kcenter_greedy(x, k, seed=seed)
    assert len(set(kc)) == k
    random_cov = np.median([coverage(x, select_random(len(x), k, seed=s)) for s in range(5)])
    # stated margin: k-center's worst-covered frame is at most half as far as random's (median of 5 draws)
    assert coverage(x, kc) < 0.5 * random_cov, (coverage(x, kc), random_cov)


def test_kcenter_continues_from_labelled_frames():
    x = clustered(n=500, seed=3)
    first = kcenter_greedy(x, 10, seed=0)
    more = kcenter_greedy(x, 10, already=first)
    assert not set(first) & set(more)
    assert more == kcenter_greedy(x, 20, seed=0)[10:]  # same as choosing 20 at once
    assert coverage(x, first + more) <= coverage(x, first)


def test_export_batch_writes_label_studio_tasks(tmp_path):
    ids = [f"{i:064x}" for i in range(200)]
    paths = [f"cam/{i:05d}.jpg" for i in range(200)]
    x = clustered(n=200, seed=4)
    chosen = export_batch(tmp_path / "tasks.json", ids, paths, 12, "kcenter", x, already_labelled=ids[:3])
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert [t["data"]["frame_id"] for t in tasks] == chosen and len(chosen) == 12
    assert not set(chosen) & set(ids[:3])
    for rank, t in enumerate(tasks):
        assert t["data"]["path"] == paths[ids.index(t["data"]["frame_id"])] and t["data"]["rank"] == rank
        assert t["data"]["image"].endswith(t["data"]["path"])
    rnd = export_batch(tmp_path / "r.json", ids, paths, 12, "random", already_labelled=ids[:100], seed=1)
    assert len(set(rnd)) == 12 and not set(rnd) & set(ids[:100])
    with pytest.raises(ValueError, match="needs the frames' embeddings"):
        export_batch(tmp_path / "x.json", ids, paths, 5, "kcenter")
    with pytest.raises(ValueError, match="selection method"):
        export_batch(tmp_path / "x.json", ids, paths, 5, "best")
