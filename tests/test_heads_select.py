"""Choosing frames to label: k-center greedy covers the embedding space better than random, `choose_indices` (the one
method dispatch) never returns a labelled frame, and the Label Studio export carries our frame id and original path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from heads.select import choose_indices, coverage, kcenter_greedy, label_studio_tasks, select_random


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


def test_choose_indices_and_label_studio_tasks(tmp_path):
    ids = [f"{i:064x}" for i in range(200)]
    paths = [f"cam/{i:05d}.jpg" for i in range(200)]
    x = clustered(n=200, seed=4)
    kc = choose_indices("kcenter", 12, 200, embeddings=x, labelled=[0, 1, 2])
    assert kc.how == "kcenter" and kc.idx == kcenter_greedy(x, 12, already=[0, 1, 2]) and not kc.scores
    assert len(set(kc.idx)) == 12 and not set(kc.idx) & {0, 1, 2}
    chosen = [ids[i] for i in kc.idx]
    scores = [{"uncertainty": float(s)} for s in range(12)]
    tasks = label_studio_tasks(chosen, [paths[i] for i in kc.idx], extra=scores)
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert [t["data"]["frame_id"] for t in tasks] == chosen
    for rank, t in enumerate(tasks):
        assert t["data"]["path"] == paths[ids.index(t["data"]["frame_id"])] and t["data"]["rank"] == rank
        assert t["data"]["image"].endswith(t["data"]["path"]) and t["data"]["uncertainty"] == rank
    rnd = choose_indices("random", 12, 200, labelled=range(100), seed=1)
    assert len(set(rnd.idx)) == 12 and not set(rnd.idx) & set(range(100))
    assert choose_indices("random", 12, 200, labelled=range(100), seed=1).idx == rnd.idx  # seeded
    assert len(choose_indices("kcenter", 50, 20, embeddings=x[:20], labelled=range(15)).idx) == 5  # what is left
    with pytest.raises(ValueError, match="needs the frames' embeddings"):
        choose_indices("kcenter", 5, 200)
    with pytest.raises(ValueError, match="200 frames"):
        choose_indices("kcenter", 5, 200, embeddings=x[:10])
    with pytest.raises(ValueError, match="selection method"):
        choose_indices("best", 5, 200)
