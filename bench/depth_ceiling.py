"""Benchmark: how much can any head reading a token grid gain over the scene prior for depth on sim frames?

Issue 12's bar asks heads on the trained encoder to beat its random init by 15% at 100 depth labels (AbsRel). In the
sweep (`bench/pretrain.py`) every column tied the per-pixel scene prior exactly. This script measures why, on the same
workspace, with no head training at all:

- `prior`: the depth task's own baseline (per pixel, the 1/depth-weighted median of the training depths, the
  AbsRel-optimal constant there), scored on the held-out frames.
- `oracle per token`: the prior times the best single factor per token cell, chosen from the held-out truth itself
  (per cell, the AbsRel-optimal factor: a weighted median). No head whose output is constant over a token's pixels
  can beat it; a head with sub-token detail could, only as far as the features locate a person inside a cell. Also
  for the grids of 32, 16, 8 and 4 px patches: what a finer token grid would allow.
- `ridge` per encoder: a linear map from each token's features to its cell's log AbsRel-optimal factor (the
  oracle's target, from the training truth; ridge on standardised features, alpha picked on the last fifth of the
  training frames), applied to the prior: what the features carry linearly about the people in a cell, for the
  trained encoder and its random init.

The labelled frames are ordered by capture time: the earliest `--labels` train (and pick alpha), the latest
`--test` are scored, as `fth eval` splits them.

    .venv/bin/python bench/depth_ceiling.py --workspace /tmp/sweep2          # a bench/pretrain.py workspace
    .venv/bin/python bench/depth_ceiling.py --workspace /tmp/dc --frames 400  # builds one (no encoders: prior + oracle)

Writes bench/results/depth_ceiling.json and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import table, write_json  # noqa: E402

ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, float("inf"))  # inf: no map at all, the prior itself


def absrel(pred: torch.Tensor, y: torch.Tensor) -> float:
    valid = y > 0
    return float(((pred[valid] - y[valid]).abs() / y[valid]).mean())


def cells(a: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) -> (pixels per cell, N * gh * gw), each column one token cell's pixels (H, W multiples of the grid)."""
    (gh, gw), (n, h, w) = grid, a.shape
    ph, pw = h // gh, w // gw
    return a.reshape(n, gh, ph, gw, pw).permute(2, 4, 0, 1, 3).reshape(ph * pw, -1)


def per_cell(values: torch.Tensor, n: int, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(N * gh * gw,) one value per cell -> (N, H, W), constant over each cell."""
    (gh, gw), (h, w) = grid, size
    return values.reshape(n, gh, gw).repeat_interleave(h // gh, 1).repeat_interleave(w // gw, 2)


def cell_factors(prior: torch.Tensor, y: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N * gh * gw,) per token cell, the factor on the prior that minimises AbsRel against `y` there (a weighted
    median of y / prior; 1 for a cell without valid pixels)."""
    from heads.tasks.depth import _weighted_median

    ratio = torch.where(y > 0, y / prior, torch.zeros_like(y))
    weights = torch.where(y > 0, prior / y.clamp_min(1e-6), torch.zeros_like(y))  # |p f - y| / y = (p / y)|f - y / p|
    factor = _weighted_median(cells(ratio, grid), cells(weights, grid))
    return torch.where(factor > 0, factor, torch.ones_like(factor))


def oracle(prior: torch.Tensor, y: torch.Tensor, grid: tuple[int, int]) -> float:
    """AbsRel of the prior times the AbsRel-optimal factor per cell, chosen from the truth `y` itself."""
    return absrel(prior * per_cell(cell_factors(prior, y, grid), len(y), grid, tuple(y.shape[-2:])), y)


def ridge(x_tr: np.ndarray, r_tr: np.ndarray, x_te: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge regression on standardised features (rows = token cells): predictions for x_te. No intercept: the
    residual is against the AbsRel-optimal prior, so a large alpha gives the prior back (a constant shift of log
    depth only costs AbsRel)."""
    if np.isinf(alpha):
        return np.zeros(len(x_te))
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    xs = (x_tr - mu) / sd
    w = np.linalg.solve(xs.T @ xs + alpha * np.eye(xs.shape[1]), xs.T @ r_tr)
    return ((x_te - mu) / sd) @ w


def probe(tokens_tr, tokens_te, prior, y_tr, y_te) -> tuple[float, float]:
    """(AbsRel on the test frames, alpha) of prior x exp(ridge prediction per cell), the ridge fitted to each training
    cell's log AbsRel-optimal factor (the oracle's target: a cell's mean residual would be the wrong one, since a
    person covering part of a cell moves the mean while the best factor for the cell's pixels stays 1)."""
    n, gh, gw, d = tokens_tr.shape
    r = cell_factors(prior, y_tr, (gh, gw)).log().numpy()
    x = tokens_tr.reshape(-1, d)
    cut = int(n * 0.8) * gh * gw  # alpha from the last fifth of the training frames
    size = tuple(y_te.shape[-2:])

    def score(xa, ra, xb, yb, alpha):
        pred = torch.as_tensor(ridge(xa, ra, xb.reshape(-1, d), alpha), dtype=torch.float32)
        return absrel(prior * per_cell(pred.exp(), len(yb), (gh, gw), size), yb)

    best = min(ALPHAS, key=lambda a: score(x[:cut], r[:cut], x[cut:], y_tr[int(n * 0.8) :], a))
    return score(x, r, tokens_te, y_te, best), best


def main() -> int:
    from bench.pretrain import build_workspace
    from heads.label_maps import read_depth
    from heads.tasks import make_task
    from store.artifacts import Registry
    from store.backends import open_catalog
    from store.embeddings import EmbeddingStore
    from store.paths import Workspace

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", required=True, help="a bench/pretrain.py workspace (built here when it has none)")
    ap.add_argument("--frames", type=int, default=400, help="frames when building a workspace")
    ap.add_argument("--labels", type=int, default=100, help="the earliest labelled frames to train on (default 100)")
    ap.add_argument("--test", type=int, default=80, help="the latest labelled frames to score (default 80)")
    ap.add_argument("--encoders", default="", help="comma-separated encoder ids (default: every one with embeddings)")
    args = ap.parse_args()

    ws = Workspace.at(args.workspace)
    if not (ws.root / "labels" / "depth").is_dir():
        build_workspace(ws.root, args.frames, 20)
    labels = read_depth(ws.root / "labels" / "depth", scale=100.0)  # write_labels' depth.json: centimetres
    with open_catalog(ws) as cat:
        captured = {r.id: r.captured_at for r in cat.frames()}
    order = sorted((i for i in labels.ids if i in captured), key=captured.get)
    value = dict(zip(labels.ids, labels.values, strict=True))
    train, test = order[: args.labels], order[-args.test :]
    if set(train) & set(test):
        raise SystemExit(f"{len(order)} labelled frames: too few for {args.labels} to train and {args.test} to test")
    y_tr = torch.as_tensor(np.stack([value[i] for i in train]))
    y_te = torch.as_tensor(np.stack([value[i] for i in test]))
    prior = make_task("depth").baseline(y_tr)[0, 0].exp()  # (H, W) metres
    base = absrel(prior.expand_as(y_te), y_te)
    changed = float(((prior - y_te).abs() > 0.1 * y_te)[y_te > 0].float().mean())

    registry = Registry(ws.artifacts)
    wanted = [e for e in args.encoders.split(",") if e] or [
        c.id for c in registry.list("encoder") if (ws.embeddings / c.id / "tokens").exists()
    ]
    rows = [{"model": "prior (the depth baseline)", "absrel": base, "gain vs prior": 0.0}]
    grids = set()
    for enc in wanted:
        card = registry.card(enc, "encoder", "--encoders")
        store = EmbeddingStore(ws.embeddings, card.id)
        t_tr, t_te = store.get(train, "tokens").astype(np.float32), store.get(test, "tokens").astype(np.float32)
        grids.add(t_tr.shape[1:3])
        err, alpha = probe(t_tr, t_te, prior, y_tr, y_te)
        kind = f"random init of {card.parents['like']}" if card.parents.get("init") == "random" else card.name or ""
        rows.append({"model": f"ridge on {card.id} ({kind})", "absrel": err, "gain vs prior": 1 - err / base,
                     "alpha": alpha})  # fmt: skip
    h, w = y_te.shape[-2:]
    finer = {(h // p, w // p) for p in (32, 16, 8, 4) if h % p == 0 and w % p == 0}  # what smaller patches would allow
    for grid in sorted(grids | finer, reverse=True):
        err = oracle(prior, y_te, grid)
        rows.insert(1, {"model": f"oracle, one factor per {grid[0]}x{grid[1]} cell", "absrel": err,
                        "gain vs prior": 1 - err / base})  # fmt: skip
    print(f"depth at {tuple(y_te.shape[-2:])}: {len(train)} training frames, {len(test)} test frames; "
          f"{changed:.2%} of valid test pixels differ from the prior by more than 10%")  # fmt: skip
    print(table(rows, ["model", "absrel", "gain vs prior", "alpha"]))
    path = write_json("depth_ceiling", {"workspace": str(ws.root), "train": len(train), "test": len(test),
                                        "changed_share": changed, "rows": rows})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
