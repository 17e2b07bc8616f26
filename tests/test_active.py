"""Choosing frames by ensemble uncertainty (heads.active, Task.uncertainty) and hybrid selection (heads.select), and
`fth label select` / `fth heads export` with `--method uncertainty|hybrid` end to end on sim frames.

Constructed outputs check each task's score: zero where the K members agree, higher where they disagree. A pooled
ensemble on synthetic features is more uncertain on frames far from its training set. Hybrid picks one typical frame
per uncovered k-means cluster while few frames are labelled (never calling for uncertainty), and the most uncertain
frames once `switch_at` frames are labelled.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from fth_cli import run
from serving import tiny_encoder
from sim_workspace import sim_config, sim_workspace

from collector.sim import write_labels
from heads.active import bootstrap, fit_ensemble
from heads.fit import FitConfig
from heads.select import choose_indices, typicality
from heads.tasks import TaskConfig, make_task

K, B = 5, 2  # members; frames: 0 = members agree, 1 = members disagree


def _pair(agree: torch.Tensor, disagree: torch.Tensor) -> torch.Tensor:
    """(K, ...) outputs of one agreeing and one disagreeing frame -> (K, 2, ...)."""
    return torch.stack([agree, disagree], dim=1)


def _uncertainty_cases():
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    counts = torch.tensor([1.0, 2.0, 3.0, 5.0, 8.0]).log()[:, None]  # (K, 1) log-rates
    angles = torch.tensor([0.0, 1.5, 3.0, 4.5, 6.0])  # radians spread round the clock
    seg_agree = (rand(1, 3, 4, 6) * 2).expand(K, -1, -1, -1)  # uncertain per pixel, but the same in every member
    onehot = torch.nn.functional.one_hot(torch.arange(K) % 3, 3).float()  # (K, 3): members 0-2 each sure of a class
    seg_disagree = 8 * onehot[:, :, None, None].expand(-1, -1, 4, 6)
    heat = torch.full((K, 5, 4, 6), -8.0)  # detection: 1 class + 4 box channels on a 4x6 grid
    heat[:, 1:] = 0.0
    heat_agree = heat.clone()
    heat_agree[:, 0, 1, 2] = 6.0  # every member: one box centred in cell (1, 2)
    heat_disagree = heat.clone()
    for m in range(K):
        heat_disagree[m, 0, m % 4, (2 * m) % 6] = 6.0  # each member: its own cell
    return {
        "people_count": (TaskConfig("people_count"), _pair(counts.new_full((K, 1), math.log(3.0)), counts)),
        "time_of_day": (TaskConfig("time_of_day"), _pair(torch.tensor([[0.6, 0.8]]).expand(K, 2),
                                                        torch.stack([angles.sin(), angles.cos()], 1))),
        "depth": (TaskConfig("depth"), _pair(rand(1, 1, 4, 6).expand(K, -1, -1, -1), rand(K, 1, 4, 6))),
        "segmentation": (TaskConfig("segmentation", classes=("a", "b", "c")), _pair(seg_agree, seg_disagree)),
        "detection": (TaskConfig("detection"), _pair(heat_agree, heat_disagree)),
    }  # fmt: skip


@pytest.mark.parametrize("name", ["people_count", "time_of_day", "depth", "segmentation", "detection"])
def test_uncertainty_zero_where_members_agree_higher_where_they_differ(name):
    cfg, outs = _uncertainty_cases()[name]
    task = make_task(cfg)
    u = task.uncertainty(outs)
    assert u.shape == (B,)
    assert abs(float(u[0])) < 1e-5, u
    assert float(u[1]) > 0.1, u  # every case is built to disagree clearly (smallest: depth's variance ~2)


def test_segmentation_uncertainty_is_mutual_information_not_entropy():
    """Members that agree on a flat softmax are uncertain about the pixel, not about the model: BALD scores it 0,
    below members that are each confident but disagree (what more labels can fix)."""
    task = make_task(TaskConfig("segmentation", classes=("a", "b")))
    flat = torch.zeros(K, 1, 2, 3, 3)  # p = 0.5 everywhere, in every member
    confident = (
        10
        * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])[:, None, None, None, None]
        * torch.tensor([1.0, -1.0]).view(1, 1, 2, 1, 1).expand(K, 1, 2, 3, 3)
    )
    assert float(task.uncertainty(flat)[0]) < 1e-6
    assert float(task.uncertainty(confident)[0]) > 0.5  # ~log 2 * (1 - ...) nats: 3 vs 2 members disagree


def test_ensemble_is_more_uncertain_out_of_distribution():
    rng = np.random.default_rng(0)
    w = rng.normal(size=8)
    x_in = rng.normal(size=(120, 8)).astype(np.float32)
    counts = np.clip(np.round(2 + x_in @ w * 0.5), 0, None)
    cfg = FitConfig(max_steps=150, threads=1, val_fraction=0.2)
    ens = fit_ensemble(make_task("people_count"), x_in, counts.tolist(), None, cfg, k=5, seed=0)
    assert len(ens.members) == 5
    like = rng.normal(size=(200, 8)).astype(np.float32)  # frames like the training set
    far = like + 6.0  # the same frames moved far away from anything labelled
    u_like, u_far = ens.uncertainty(like), ens.uncertainty(far)
    # stated margin: the median out-of-distribution frame is at least 5x as uncertain as the median familiar one
    assert np.median(u_far) > 5 * np.median(u_like), (np.median(u_far), np.median(u_like))


def test_bootstrap_resamples_differ_and_are_seeded():
    a, b = bootstrap(50, 3, seed=1), bootstrap(50, 3, seed=1)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not (a[0] == a[1]).all() and all(len(r) == 50 and len(set(r.tolist())) < 50 for r in a)


def _clusters(seed=0, n_clusters=6, per=40, outliers=6, dim=4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(n_clusters, dim))
    x = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres])
    far = centres[rng.integers(0, n_clusters, outliers)] + rng.normal(scale=6.0, size=(outliers, dim))
    return np.concatenate([x, far]).astype(np.float32), np.repeat(np.arange(n_clusters), per), centres


def test_hybrid_is_typical_and_diverse_while_labels_are_few_then_uncertain():
    x, cluster, centres = _clusters()
    n, outliers = len(x), np.arange(len(cluster), len(x))
    scores = np.zeros(n)
    scores[outliers] = np.arange(1, len(outliers) + 1)  # the ensemble is most unsure of the odd frames
    calls = []

    def uncertainty():
        calls.append(1)
        return scores

    few = choose_indices("hybrid", 5, n, embeddings=x, labelled=[0], uncertainty=uncertainty, switch_at=20)
    assert few.how == "typiclust" and not calls and len(few.idx) == 5
    assert not set(few.idx) & set(outliers.tolist())
    assert len({int(cluster[i]) for i in few.idx} | {0}) == 6  # one frame from each cluster not yet covered
    for i in few.idx:  # each is among the most typical of its cluster (top quarter by density)
        members = np.flatnonzero(cluster == cluster[i])
        dens = typicality(x[members])
        assert dens[list(members).index(i)] >= np.quantile(dens, 0.75)
    many = list(range(0, 240, 10))  # 24 labelled >= switch_at
    late = choose_indices("hybrid", 3, n, embeddings=x, labelled=many, uncertainty=uncertainty, switch_at=20)
    assert late.how == "uncertainty" and calls
    assert late.idx == outliers[::-1][:3].tolist() and late.scores == [6.0, 5.0, 4.0]
    same = choose_indices("uncertainty", 3, n, labelled=many, uncertainty=uncertainty)
    assert same.idx == late.idx


def test_choose_indices_refuses_what_a_method_cannot_use():
    x, _, _ = _clusters()
    with pytest.raises(ValueError, match="selection method"):
        choose_indices("best", 3, len(x))
    with pytest.raises(ValueError, match="needs an ensemble's uncertainty"):
        choose_indices("uncertainty", 3, len(x))
    with pytest.raises(ValueError, match="needs the frames' embeddings"):
        choose_indices("hybrid", 3, len(x), uncertainty=lambda: np.zeros(len(x)))


# -- the command, end to end on a small sim workspace ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("active_sim")
    cfg = sim_config(0, height=64, width=96)
    ws, cfg = sim_workspace(root, 4, 16, cfg=cfg)
    from store.catalog import Catalog

    with Catalog(ws.root) as cat:
        write_labels(cat, "sim", cfg, ws.root / "labels", dense=False)
    tiny_encoder(ws)
    with open(ws.root / "labels" / "people.csv") as f:
        rows = list(csv.DictReader(f))
    some = ws.root / "some.csv"  # the labels collected so far: every other frame of the first 48
    with open(some, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame_id", "value"])
        for r in rows[:48:2]:
            w.writerow([r["frame_id"], r["value"]])
    return ws, some, [r["frame_id"] for r in rows[:48:2]]


FAST = ["--ensemble", "3", "--set", "max_steps=40", "--set", "threads=1", "--set", "split_gap_s=0"]


def test_label_select_uncertainty_and_hybrid_end_to_end(sim, tmp_path):
    ws, some, done = sim
    W = ["--workspace", str(ws.root)]
    out = tmp_path / "u.json"
    rc, o, e = run("label", "select", "--count", "6", "--method", "uncertainty", "--task", "people_count",
                   "--labels", str(some), "--out", str(out), *FAST, *W)  # fmt: skip
    assert rc == 0, e
    assert "6 of 40 frames (uncertainty" in o and "3 people_count heads on 24 labels" in o
    tasks = json.loads(out.read_text())
    ids = [t["data"]["frame_id"] for t in tasks]
    scores = [t["data"]["uncertainty"] for t in tasks]
    assert len(set(ids)) == 6 and not set(ids) & set(done)
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    # hybrid below its switch: typical frames, no scores; above it (fth heads export, the same path): uncertain ones
    rc, o, e = run("label", "select", "--count", "4", "--method", "hybrid", "--task", "people_count", "--labels",
                   str(some), "--out", str(tmp_path / "h.json"), *FAST, *W)  # fmt: skip
    assert rc == 0 and "hybrid: typiclust" in o, (o, e)
    assert "uncertainty" not in json.loads((tmp_path / "h.json").read_text())[0]["data"]
    rc, o, e = run("heads", "export", "--count", "4", "--method", "hybrid", "--switch-at", "20", "--task",
                   "people_count", "--labels", str(some), "--out", str(tmp_path / "h2.json"), *FAST, *W)  # fmt: skip
    assert rc == 0 and "hybrid: uncertainty" in o, (o, e)
    h2 = json.loads((tmp_path / "h2.json").read_text())
    assert [t["data"]["frame_id"] for t in h2] == ids[:4]  # the same ensemble (same seed), the same ranking


def test_label_select_bad_input_is_one_line_exit_2(sim, tmp_path):
    ws, some, _ = sim
    W = ["--workspace", str(ws.root), "--out", str(tmp_path / "x.json"), "--count", "3"]
    bad = tmp_path / "bad.csv"
    bad.write_text("frame_id,value\n" + "f" * 64 + ",2\n")
    cases = [
        (["--method", "uncertainty", "--task", "people_count"], "needs --task and --labels"),
        (["--method", "hybrid", "--labels", str(some)], "needs --task and --labels"),
        (["--method", "uncertainty", "--task", "crowds", "--labels", str(some)], "unknown task 'crowds'"),
        (["--method", "uncertainty", "--task", "people_count", "--labels", str(bad)], "name unknown frames"),
    ]
    for argv, message in cases:
        rc, o, e = run("label", "select", *argv, *W)
        assert rc == 2, (argv, o, e)
        assert e.startswith("fth label select: error: ") and message in e and e.count("\n") == 1, e
    assert not (tmp_path / "x.json").exists()
    rc, _, e = run("heads", "export", "--method", "uncertainty", *W)
    assert rc == 2 and e.startswith("fth heads export: error: ") and "needs --task" in e
