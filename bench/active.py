"""Benchmark: how many labels does each selection method need? Label efficiency on sim frames, truth as the oracle.

One sim workspace (collector.sim frames at 96x160 over `--days` sim days, capture time = the sim clock, labels from
`write_labels`), a random-init tiny ViT at 96x160 (a 12x20 token grid) registered and every frame embedded once
(pooled vectors and the last block's grid). Every 4th frame (in capture order) is held out: never selectable, the
frames each round's metric is on. For each task (people_count, segmentation), method (`heads.select.METHODS`) and
seed: start from the same `--start` random labels per seed, then rounds of `--step` more up to `--budget`; at each
budget a head is fitted on the labels so far through `heads.fit.fit_from_arrays` (the task's preset, one thread) and
scored on the held-out frames, then the method picks the next frames through `heads.select.choose_indices`, exactly
as `fth label select` does (uncertainty: a `--ensemble`-head `heads.active` ensemble fitted on the labels so far).

    OMP_NUM_THREADS=1 .venv/bin/python bench/active.py                # the full run (README table)
    OMP_NUM_THREADS=1 .venv/bin/python bench/active.py --quick        # a smoke run (~1 minute)

Reports, per task and method, the mean held-out error per budget (mIoU for segmentation: higher is better) and the
labels each method needs to reach random's error at the largest budget (its mean over seeds; "-" when it never does).
Writes bench/results/active.json and bench/results/active.png (metric vs labels, one panel per task, seed spread
shaded), and the table to stdout. Wall times are for this machine and whatever else ran on it.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, table, write_json  # noqa: E402

SIZE = (96, 160)
TASKS = {"people_count": "people.csv", "segmentation": "segmentation"}
# what each task's heads read and the `--set` items its fits take here, so the whole run fits 2 shared CPU cores:
# people_count on pooled vectors (the MLP head, ~0.2 s a fit; `fth heads fit --features pooled`), segmentation on the
# grid with its dense decoder and scene prior, 100 steps of 8 frames at lr 3e-3 (~2-5 s a fit; the preset's 400 steps
# of 32 took 17-48 s a fit on this machine)
BENCH = {
    "people_count": ("pooled", []),
    "segmentation": ("grid", ["batch_size=8", "max_steps=100", "lr=3e-3", "patience=3"]),
}
ALL_TASKS = {"people_count": "people.csv", "time_of_day": "catalog", "depth": "depth", "segmentation": "segmentation",
             "detection": "boxes.json"}  # fmt: skip


def build_workspace(root: Path, frames: int, days: int) -> str:
    """Sim frames + labels + a registered random-init tiny encoder with every frame embedded; returns its id."""
    import torch
    from PIL import Image

    from collector.config import SimConfig
    from collector.sim import frame, write_labels
    from encoder.checkpoint import save_encoder
    from encoder.config import MAEConfig
    from encoder.vit import ViT
    from fth.config import build
    from fth.heads_cli import embed_step
    from heads.pipeline import stored_features
    from store.artifacts import Registry
    from store.backends import open_catalog
    from store.frame_index import FrameIndex
    from store.paths import Workspace
    from store.recipe import FeatureRecipe

    ws = Workspace.at(root)
    registry = Registry(ws.artifacts)
    if list(registry.list("encoder")):
        return registry.list("encoder")[0].id
    cfg = SimConfig(height=SIZE[0], width=SIZE[1], start_hour=0.0)
    per_day = round(24 * 3600 / cfg.time_scale * cfg.fps)
    step = max(1, days * per_day // frames)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    with open_catalog(ws) as cat:
        for k in range(frames):
            rgb, _ = frame(cfg, k * step)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
            cat.add_frame(buf.getvalue(), "sim", base + timedelta(seconds=k * step / cfg.fps * cfg.time_scale),
                          cfg.width, cfg.height)  # fmt: skip
        write_labels(cat, "sim", cfg, root / "labels")
    torch.manual_seed(0)
    model = ViT(build(MAEConfig, "tiny", [f"encoder.img_size=[{SIZE[0]},{SIZE[1]}]"]).encoder).eval()
    enc = save_encoder(model, registry, name="bench-active-random").id
    index = FrameIndex(ws.root, ws.catalog)
    ids = [r.id for r in index.rows]
    for recipe in (FeatureRecipe("pooled"), FeatureRecipe("grid")):
        stored_features(ws, index, enc, ids, recipe, embed_step(str(root), enc), lambda _: None)
    return enc


def load(root: Path, enc: str, task_name: str, label_side: int, form: str = "grid"):
    """(task, frame ids in capture order, the head's features (`form`), pooled features, label values, capture times,
    the recipe)."""
    import numpy as np

    from heads.pipeline import FitRequest, labelled, stored_features
    from store.frame_index import FrameIndex
    from store.paths import Workspace
    from store.recipe import FeatureRecipe

    ws = Workspace.at(root)
    index = FrameIndex(ws.root, ws.catalog)
    where = ALL_TASKS[task_name]
    req = FitRequest(task_name, where if where == "catalog" else str(root / "labels" / where), workspace=str(root),
                     max_label_side=label_side)  # fmt: skip
    task, labels, _, _ = labelled(req, index, lambda _: None)
    ids = index.in_capture_order(labels.ids)
    grid, recipe, _ = stored_features(ws, index, enc, ids, FeatureRecipe(form), None)
    pooled, _, _ = stored_features(ws, index, enc, ids, FeatureRecipe("pooled"), None)
    values = labels.as_dict()
    times = [index.by_id[i].captured_at for i in ids]
    x = np.asarray(grid, dtype=np.float32 if form == "pooled" else None)
    return task, ids, x, np.asarray(pooled, dtype=np.float32), [values[i] for i in ids], times, recipe


def run_curve(task, grid, pooled, values, times, recipe, cfg, method, seed, args, held, pool) -> dict:
    """One learning curve: held-out primary metric at each budget, the phases hybrid used, seconds spent.
    `method` may be `hybrid@N`: hybrid switching at N labels."""
    import numpy as np
    import torch

    from heads.active import fit_ensemble
    from heads.fit import fit_from_arrays, predict_outputs
    from heads.select import choose_indices

    y_held = task.targets([values[i] for i in held])
    rng = np.random.default_rng(1000 + seed)
    labelled = sorted(rng.choice(len(pool), args.start, replace=False).tolist())  # positions in `pool`
    budgets, metrics, phases, ens_s, fit_s = [], [], [], [], []
    x_pool, p_pool = grid[pool], pooled[pool]
    method, _, switch = method.partition("@")
    switch_at = int(switch) if switch else args.switch_at
    while True:
        rows = pool[labelled]
        order = np.argsort([times[i] for i in rows], kind="stable")
        rows = rows[order]
        t0 = time.perf_counter()
        res = fit_from_arrays(task, grid[rows], [values[i] for i in rows], [times[i] for i in rows],
                              replace(cfg, seed=seed), recipe)  # fmt: skip
        fit_s.append(time.perf_counter() - t0)
        out = predict_outputs(res.head, grid[held])
        metrics.append(task.evaluate([(out, y_held)])[task.primary])
        budgets.append(len(labelled))
        if len(labelled) >= args.budget:
            break
        k = min(args.step, args.budget - len(labelled))

        def uncertainty(rows=rows):
            t1 = time.perf_counter()
            ens = fit_ensemble(task, grid[rows], [values[i] for i in rows], [times[i] for i in rows], cfg, recipe,
                               args.ensemble, seed)  # fmt: skip
            scores = ens.uncertainty(torch.from_numpy(np.asarray(x_pool, dtype=np.float32)))
            ens_s.append(time.perf_counter() - t1)
            return scores

        choice = choose_indices(method, k, len(pool), embeddings=p_pool, labelled=labelled, seed=seed,
                                uncertainty=uncertainty, switch_at=switch_at)  # fmt: skip
        phases.append(choice.how)
        labelled = sorted(set(labelled) | set(choice.idx))
    return {"budgets": budgets, "metric": metrics, "phases": phases, "ensemble_s": ens_s, "fit_s": fit_s}


def time_ensembles(root: Path, enc: str, args) -> int:
    """Wall time of one `heads.active` ensemble per task on the first L labelled frames, each task's default preset
    and feature form (as `fth label select` fits it), one thread."""
    import numpy as np

    from fth.config import build
    from heads.active import fit_ensemble
    from heads.fit import FitConfig

    rows = []
    for task_name in ALL_TASKS:
        task, ids, x, _, values, times, recipe = load(root, enc, task_name, args.label_side, "grid")
        if task.default_form == "pooled":
            task, ids, x, _, values, times, recipe = load(root, enc, task_name, args.label_side, "pooled")
        idx = np.linspace(0, len(ids) - 1, args.time_ensembles).round().astype(int)
        cfg = build(FitConfig, task.preset, ["threads=1"])
        ens = fit_ensemble(task, x[idx], [values[i] for i in idx], [times[i] for i in idx], cfg, recipe, args.ensemble)
        t0 = time.perf_counter()
        u = ens.uncertainty(x)
        rows.append({"task": task_name, "features": task.default_form, "labels": len(idx), "K": args.ensemble,
                     "fit s": ens.seconds, f"score s ({len(ids)} frames)": time.perf_counter() - t0,
                     "median uncertainty": float(np.median(u))})  # fmt: skip
        print(rows[-1], file=sys.stderr, flush=True)
    cols = list(rows[0])
    print(table(rows, cols))
    print(f"\nwrote {write_json(args.out, {'args': vars(args), 'rows': rows})}")
    return 0


def labels_to_reach(budgets, curve, target, higher) -> int | None:
    for b, v in zip(budgets, curve, strict=True):
        if (v >= target) if higher else (v <= target):
            return b
    return None


def plot(path: Path, results: dict, tasks: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (task_name, by_method) in zip(axes[0], results.items(), strict=True):
        for method, curves in by_method.items():
            b = curves[0]["budgets"]
            m = np.array([c["metric"] for c in curves])
            ax.plot(b, m.mean(0), marker="o", ms=3, label=method)
            ax.fill_between(b, m.min(0), m.max(0), alpha=0.15)
        ax.set_xlabel("labelled frames")
        ax.set_ylabel(f"held-out {tasks[task_name]}")
        ax.set_title(task_name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", help="build the sim workspace here (reused when it holds an encoder)")
    ap.add_argument("--frames", type=int, default=800)
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default="random,kcenter,uncertainty,hybrid")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--start", type=int, default=10)
    ap.add_argument("--step", type=int, default=20)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--switch-at", type=int, default=None, help="hybrid's switch (default heads.select.SWITCH_AT)")
    ap.add_argument("--label-side", type=int, default=40, help="segmentation labels downsampled to this side")
    ap.add_argument("--max-steps", type=int, default=0, help="cap every fit's steps (0: the preset's)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 240 frames, 1 seed, budget 50, 3 heads")
    ap.add_argument("--time-ensembles", type=int, default=0, metavar="L",
                    help="instead: time an ensemble of every task on L labels (the presets' fits)")  # fmt: skip
    ap.add_argument("--out", default="active", help="name of the JSON and PNG under bench/results/")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import numpy as np
    import torch

    from fth.config import build
    from heads.fit import FitConfig
    from heads.select import SWITCH_AT

    torch.set_num_threads(1)
    if args.quick:
        args.frames, args.days, args.seeds, args.budget, args.ensemble = 240, 4, 1, 50, 3
    args.switch_at = SWITCH_AT if args.switch_at is None else args.switch_at
    root = Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="bench-active-"))
    start = time.perf_counter()
    enc = build_workspace(root, args.frames, args.days)
    print(f"workspace {root} ({args.frames} frames, encoder {enc}) ready in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)  # fmt: skip
    if args.time_ensembles:
        return time_ensembles(root, enc, args)
    methods = args.methods.split(",")
    results: dict = {}
    rows, primaries, reach_rows = [], {}, []
    for task_name in args.tasks.split(","):
        form, extra = BENCH[task_name]
        task, ids, grid, pooled, values, times, recipe = load(root, enc, task_name, args.label_side, form)
        over = ["threads=1", "split_gap_s=0", *extra] + ([f"max_steps={args.max_steps}"] if args.max_steps else [])
        cfg = build(FitConfig, task.preset, over)
        n = len(ids)
        held = np.arange(3, n, 4)  # every 4th frame in capture order: spread over every day and hour
        pool = np.setdiff1d(np.arange(n), held)
        primaries[task_name] = task.primary
        results[task_name] = {}
        for method in methods:
            curves = []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                c = run_curve(task, grid, pooled, values, times, recipe, cfg, method, seed, args, held, pool)
                c["seconds"] = time.perf_counter() - t0
                curves.append(c)
                print(f"{task_name} {method} seed {seed}: {c['metric'][-1]:.4g} at {c['budgets'][-1]} labels, "
                      f"{c['seconds']:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
            results[task_name][method] = curves
        budgets = results[task_name][methods[0]][0]["budgets"]
        mean = {m: np.mean([c["metric"] for c in cs], axis=0) for m, cs in results[task_name].items()}
        for j, b in enumerate(budgets):
            rows.append({"task": task_name, "labels": b, **{m: float(mean[m][j]) for m in methods}})
        if "random" in mean:
            target = float(mean["random"][-1])
            row = {"task": task_name, "metric": task.primary, "random's error at max": target}
            for m in methods:
                row[m] = labels_to_reach(budgets, mean[m], target, task.higher_is_better)
                ens = [s for c in results[task_name][m] for s in c["ensemble_s"]]
                if ens:
                    row[f"{m} ensemble s"] = float(np.median(ens))
            reach_rows.append(row)
    seconds = time.perf_counter() - start
    print(table(rows, ["task", "labels", *methods]))
    print()
    cols = ["task", "metric", "random's error at max", *methods]
    cols += [f"{m} ensemble s" for m in methods if any(f"{m} ensemble s" in r for r in reach_rows)]
    print(table(reach_rows, cols))
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = plot(RESULTS / f"{args.out}.png", results, primaries)
    payload = {"args": vars(args), "workspace": str(root), "encoder": enc, "rows": rows, "labels_to_reach": reach_rows,
               "curves": results, "seconds": seconds}  # fmt: skip
    print(f"\nwrote {write_json(args.out, payload)} and {png}; {seconds:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
