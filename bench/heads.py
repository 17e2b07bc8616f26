"""Benchmark: head fit time on CPU at the issue's sizes, on synthetic features of the real shapes.

- people_count and time_of_day on 10k frames' pooled embeddings (D = 1024, the seed width): the MLP head (default
  for pooled vectors) and the linear probe, with configs/heads.yaml. Bar: under 10 s.
- depth and segmentation on 1k token grids at the seed grid (12 x 20 x 1024) with configs/heads_dense.yaml; labels at
  144 x 240 (a quarter of 576 x 960 per side; full-size labels for 1k frames would take 2.2 GB as float32 depth).
  Bar: under 120 s.
Each case is timed with 1 and 2 torch threads, cases interleaved over `--repeats` rounds; medians are reported with
the spread ((max - min) / median), and the held-out metric next to the task's baseline (synthetic data: the metric
says the fit worked, not how good real heads are).

Not here yet: the comparison of heads on a trained encoder vs the same architecture at random init vs downsampled
raw pixels on the simulated camera's frames (needs trained MAE weights and the sim's labelled frames end to end).

    .venv/bin/python bench/heads.py                 # all cases, 3 rounds
    .venv/bin/python bench/heads.py --repeats 1 --cases time_of_day,segmentation
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, spread, table, write_json  # noqa: E402

BARS = {"people_count": 10.0, "time_of_day": 10.0, "depth": 120.0, "segmentation": 120.0}


def pooled_counts(n: int, dim: int, seed: int = 0):
    """Pooled (n, D) vectors of frames with k persons: the mean of 240 tokens, k of which carry a direction u."""
    import numpy as np

    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    k = rng.integers(0, 12, size=n)
    x = rng.normal(scale=0.5 / np.sqrt(240), size=(n, dim)) + (2.0 * k / 240)[:, None] * u
    return x.astype(np.float32), k.astype(np.float32), np.arange(n, dtype=np.float64)


def dense_grids(n: int, task: str, grid=(12, 20), dim: int = 1024, label=(144, 240), classes: int = 4, seed: int = 0):
    """Token grids (n, gh, gw, D) carrying smooth score maps, and depth maps or masks at `label` size."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    ch = 1 if task == "depth" else classes
    scores = F.interpolate(torch.randn(n, ch, 3, 4, generator=g), size=grid, mode="bilinear", align_corners=False)
    x = torch.einsum("bkhw,kd->bhwd", scores, torch.randn(ch, dim, generator=g))
    x += 0.3 * torch.randn(n, *grid, dim, generator=g)  # (B, gh, gw, D)
    up = F.interpolate(scores, size=label, mode="bilinear", align_corners=False)
    y = (0.5 * up[:, 0] + 1.5).exp() if task == "depth" else up.argmax(1).to(torch.uint8)
    return x, y.numpy(), np.arange(n, dtype=np.float64)


def run_case(case: str, kind: str, threads: int, data) -> dict:
    from fth.config import build
    from heads.fit import FitConfig, fit_from_arrays
    from heads.tasks import TaskConfig

    dense = case in ("depth", "segmentation")
    cfg = build(FitConfig, "heads_dense" if dense else "heads")
    cfg.threads, cfg.head.kind = threads, kind
    task = TaskConfig(case, classes=("a", "b", "c", "d")) if case == "segmentation" else TaskConfig(case)
    x, y, t = data
    res = fit_from_arrays(task, x, y, t, cfg)
    p = res.task.primary
    return {"seconds": res.seconds, "metric": p, "value": res.metrics[p], "baseline": res.baseline[p],
            "steps": res.history[-1]["step"], "params": res.params}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="people_count,time_of_day,depth,segmentation")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from heads import synthetic

    cases = args.cases.split(",")
    data = {}
    if "people_count" in cases:
        data["people_count"] = pooled_counts(10_000, 1024)
    if "time_of_day" in cases:
        data["time_of_day"] = synthetic.clock_features(10_000, dim=1024, noise=1.0)
    for c in ("depth", "segmentation"):
        if c in cases:
            data[c] = dense_grids(1000, c)
    kinds = {"depth": ("dense",), "segmentation": ("dense",)}
    runs = [(c, k, int(th)) for c in cases for k in kinds.get(c, ("mlp", "linear")) for th in args.threads.split(",")]
    results: dict[tuple, list[dict]] = {r: [] for r in runs}
    for rnd in range(args.repeats):
        for r in runs[rnd % len(runs) :] + runs[: rnd % len(runs)]:  # rotate the order each round
            results[r].append(run_case(*r, data[r[0]]))
            print(f"round {rnd} {r}: {results[r][-1]['seconds']:.1f}s", file=sys.stderr, flush=True)
    rows = []
    for (case, kind, th), rs in results.items():
        secs = [r["seconds"] for r in rs]
        n = "10k x 1024 pooled" if case in ("people_count", "time_of_day") else "1k x 12x20x1024 grids"
        rows.append({"task": case, "head": kind, "features": n, "threads": th, "fit s (median)": median(secs),
                     "spread": spread(secs) if len(secs) > 1 else 0.0, "bar s": BARS[case],
                     "metric": rs[0]["metric"], "head value": rs[0]["value"], "baseline": rs[0]["baseline"],
                     "steps": rs[0]["steps"], "params": rs[0]["params"]})  # fmt: skip
    print(table(rows, list(rows[0].keys())))
    print(f"\nwrote {write_json('heads', {'rows': rows, 'repeats': args.repeats})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
