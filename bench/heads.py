"""Benchmark: head fit time on CPU at the issue's sizes, on synthetic features of the real shapes.

- people_count and time_of_day on 10k frames' pooled embeddings (D = 1024, the seed width): the MLP head (default
  for pooled vectors) and the linear probe, with configs/heads.yaml. Bar: under 10 s.
- depth and segmentation on 1k token grids at the seed grid (12 x 20 x 1024) with configs/heads_dense.yaml; labels at
  144 x 240 (a quarter of 576 x 960 per side; full-size labels for 1k frames would take 2.2 GB as float32 depth).
  Bar: under 120 s.
Each case is timed with 1 and 2 torch threads, cases interleaved over `--repeats` rounds; medians are reported with
the spread ((max - min) / median), and the held-out metric next to the task's baseline (synthetic data: the metric
says the fit worked, not how good real heads are).

`--quality`: does pretraining help? Sim frames (collector.sim, exact truth) in a catalog, labels by write_labels, and
each task's held-out metric for heads fitted by `fth heads fit`'s pipeline on (a) the tiny MAE trained on those
frames for `--mae-steps` (or `--encoder ID`), (b) the same architecture at random init, (c) downsampled raw pixels
(12x20x3 grid of 8x8-pixel means as tokens; flattened as the pooled vector), next to the task's baseline. The frames
are 96x160 and both encoders run at that size (a 12x20 token grid: at the tiny preset's 64x96, 8x12, a person covers
under one token).

    .venv/bin/python bench/heads.py --quality --frames 300 --mae-steps 300

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

SIZE = (96, 160)  # --quality: sim frames and encoder input (H, W)
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


def quality(args) -> int:
    """The pretraining table: heads on trained / random-init encoder / raw pixels vs the baseline."""
    import io
    import tempfile
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import torch
    from PIL import Image

    from collector.config import SimConfig
    from collector.sim import frame, write_labels
    from encoder.checkpoint import save_encoder
    from encoder.config import MAEConfig
    from encoder.mae import MAE
    from encoder.vit import ViT
    from fth.config import build
    from heads.fit import FitConfig
    from heads.join import fit_from_labels
    from heads.pipeline import CatalogIndex, FitRequest, load_labels, resize_nearest, run_fit
    from heads.tasks import TaskConfig
    from store.artifacts import Registry
    from store.catalog import Catalog
    from store.paths import Workspace

    root = Path(tempfile.mkdtemp(prefix="bench-heads-"))
    ws, cfg = Workspace.at(root), SimConfig(height=96, width=160)
    base, step = datetime(2026, 3, 1, tzinfo=UTC), max(1, 6000 // args.frames)
    with Catalog(ws.root) as cat:
        for k in range(args.frames):
            rgb, _ = frame(cfg, k * step)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
            when = base + timedelta(seconds=cfg.start_hour * 3600 + k * step / cfg.fps * cfg.time_scale)
            cat.add_frame(buf.getvalue(), "sim", when, cfg.width, cfg.height)
        write_labels(cat, "sim", cfg, ws.root / "labels")
    cat_index = CatalogIndex(ws.root, ws.catalog)
    pixels = np.stack([cat_index.image(r.id, SIZE) for r in cat_index.rows]).astype(np.float32) / 255.0
    mae_cfg = build(MAEConfig, "tiny", [f"encoder.img_size=[{SIZE[0]},{SIZE[1]}]"])
    torch.manual_seed(0)
    random_card = save_encoder(ViT(mae_cfg.encoder).eval(), Registry(ws.artifacts), name="bench-random")
    encoders = {"random init": random_card.id}
    if args.encoder:
        encoders = {"trained (given)": args.encoder, **encoders}
    else:
        torch.manual_seed(0)
        mae = MAE(mae_cfg)
        opt = torch.optim.AdamW(mae.parameters(), lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.05)
        x_all = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # (B, 3, 96, 160)
        mean, std = torch.tensor(mae.encoder.cfg.pixel_mean), torch.tensor(mae.encoder.cfg.pixel_std)
        x_all = (x_all - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        for _ in range(args.mae_steps):
            idx = torch.randint(0, len(x_all), (32,))
            loss = mae(x_all[idx]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        print(f"tiny MAE: {args.mae_steps} steps, final loss {loss.item():.3f}", file=sys.stderr)
        card = save_encoder(mae.encoder.eval(), Registry(ws.artifacts), name="bench-mae")
        encoders = {f"trained ({args.mae_steps} MAE steps)": card.id, **encoders}
    lab = ws.root / "labels"
    tasks = {"people_count": str(lab / "people.csv"), "time_of_day": "catalog", "depth": str(lab / "depth"),
             "segmentation": str(lab / "segmentation")}  # fmt: skip
    over = ["threads=1"]
    rows = []
    for task, labels in tasks.items():
        row = {"task": task}
        for name, enc in encoders.items():
            rep = run_fit(FitRequest(task, labels, encoder=enc, workspace=str(ws.root), overrides=over,
                                     max_label_side=80, name=f"{task}-{enc}"), report=lambda _: None)  # fmt: skip
            row["metric"], row[name], row["baseline"] = rep.primary, rep.metrics[rep.primary], rep.baseline[rep.primary]
        req = FitRequest(task, labels, workspace=str(ws.root), max_label_side=80)
        ls, _ = load_labels(req, cat_index)
        ids = [r.id for r in cat_index.rows if r.id in set(ls.ids)]
        if task in ("depth", "segmentation"):
            hw = ls.values[0].shape
            from heads.pipeline import label_size

            hw = label_size(hw, 80)
            ls.values = [resize_nearest(np.asarray(v), hw) for v in ls.values]
        gh, gw = SIZE[0] // 8, SIZE[1] // 8
        grid = torch.from_numpy(pixels).reshape(-1, gh, 8, gw, 8, 3).mean(dim=(2, 4))  # (B, 12, 20, 3)
        pos = {r.id: i for i, r in enumerate(cat_index.rows)}
        x = grid[[pos[i] for i in ids]]
        x = x.reshape(len(ids), -1) if task == "time_of_day" else x
        dense = task in ("depth", "segmentation")
        fit_cfg = build(FitConfig, "heads_dense" if dense else "heads", over)
        tcfg = TaskConfig(task, classes=tuple(ls.classes or ()))  # type: ignore[arg-type]
        times = [cat_index.by_id[i].captured_at for i in ids]
        res = fit_from_labels(tcfg, ls, ids, x, times, fit_cfg)
        row["raw pixels 12x20x3"] = res.metrics[res.task.primary]
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    print(table(rows, list(rows[0].keys())))
    print(f"\nwrote {write_json('heads_quality', {'rows': rows, 'frames': args.frames, 'workspace': str(root)})}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="people_count,time_of_day,depth,segmentation")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quality", action="store_true", help="the pretraining table (trained / random / pixels)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--mae-steps", type=int, default=300)
    ap.add_argument("--encoder", default="", help="--quality: a trained encoder id instead of training the tiny MAE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quality:
        return quality(args)
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
