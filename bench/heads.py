"""Benchmark: head fit time on CPU at the issue's sizes (synthetic features of the real shapes), and the label join.

Fit cases (default configs: each task's `preset`; `--threads 1,2`):
- `people_count`, `time_of_day`: 10k frames' pooled embeddings (D = 1024, the seed width), the MLP head (default for
  pooled vectors) and the linear probe. Bar: under 10 s.
- `grid_count_1k`, `grid_count_10k`: the default scalar head (people_count; attention pooling on the grid) on 1k and
  10k frames of 12 x 20 x 1024 token grids held as float16, as the embedding store returns them (10k x 240 x 1024 is
  4.9 GB; the fit reduces them in chunks, never copying them whole to float32). Bars: under 30 s and under 300 s.
- `depth`, `segmentation`: 1k grids, labels at 144 x 240 (a quarter of 576 x 960 per side). Bar: under 120 s.
- `detection`: 1k grids with synthetic boxes whose centre cell, offset and size are written into the grid, so mAP
  says whether the fit worked; the head's mAP@0.5 beside the prior boxes and the linear probe (`linear_probe: true`
  in configs/heads_detect.yaml; `total s` includes the probe's fit). Bar: under 120 s for the head's fit.
Capture times are one frame a minute, so the presets' 600 s split gaps drop 10 frames each. Cases run one after
another (each case's data is built, fitted with every head kind and thread count in rotating order, then freed);
`peak GB` is the process's peak resident memory during the fit, data included. Synthetic data: the metric says the fit
worked, not how good real heads are. In-run ratios: `2T/1T` (2-thread over 1-thread fit time in the same run; near 1
on a busy machine) and `fit/bar`; `load` is the 1-minute load average after the case (other jobs on the cores).

`--join`: 1k labels (a CSV keyed by frame path) joined to a real SQLite catalog of 100k frame rows: the catalog's
`FrameIndex` built from SQLite, the labels read and resolved by the task's reader, then put in capture order and
aligned (`in_capture_order`, `LabelSet.align`). Bar: under 1 s for all three. The old quadratic join shape
(`set(labels.ids)` rebuilt per catalog row, `labels.as_dict()` per id) is timed in the same run as the baseline.

`--profile`: each selected case once under cProfile (1 thread), printing the top functions.

`--quality`: does pretraining help? Sim frames (collector.sim, exact truth) in a catalog, labels by write_labels, and
each task's TEST metric for heads fitted by `fth heads fit`'s pipeline on (a) the tiny MAE trained on those frames for
`--mae-steps` (or `--encoder ID`), (b) the same architecture at random init, (c) downsampled raw pixels (12x20x3 grid
of 8x8-pixel means as tokens; flattened as the pooled vector), next to the task's baseline (and, for detection, the
linear probe on the trained encoder's grid). Frames and encoders are 96x160 (a 12x20 token grid).

    .venv/bin/python bench/heads.py --repeats 1                  # all fit cases
    .venv/bin/python bench/heads.py --repeats 1 --cases grid_count_1k,detection --threads 1
    .venv/bin/python bench/heads.py --join --repeats 5
    .venv/bin/python bench/heads.py --profile --cases grid_count_1k
    .venv/bin/python bench/heads.py --quality --frames 300 --mae-steps 300
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, peak_rss_mib, reset_peak_rss, spread, table, time_interleaved, write_json  # noqa: E402

SIZE = (96, 160)  # --quality: sim frames and encoder input (H, W)
GRID, DIM = (12, 20), 1024  # the seed encoder's token grid and width
MINUTE = 60.0  # synthetic capture times: one frame a minute


def _times(n: int):
    import numpy as np

    return np.arange(n, dtype=np.float64) * MINUTE


# -- synthetic features ----------------------------------------------------------------------------------------------


def pooled_counts(n: int, dim: int = DIM, seed: int = 0):
    """Pooled (n, D) vectors of frames with k persons: the mean of 240 tokens, k of which carry a direction u."""
    import numpy as np

    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    k = rng.integers(0, 12, size=n)
    x = rng.normal(scale=0.5 / np.sqrt(240), size=(n, dim)) + (2.0 * k / 240)[:, None] * u
    return x.astype(np.float32), k.astype(np.float32), _times(n)


def grid_counts(n: int, grid=GRID, dim: int = DIM, chunk: int = 256, seed: int = 0):
    """Token grids (n, gh, gw, D) float16 where each of k in [0, 12) persons adds 4u to one token; counts (n,).

    Written chunk by chunk into a float16 array, so 10k grids never exist as float32."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(seed)
    gh, gw = grid
    u = torch.randn(dim, generator=g)
    u /= u.norm()
    x = np.empty((n, gh, gw, dim), np.float16)
    counts = torch.randint(0, 12, (n,), generator=g)
    for i in range(0, n, chunk):
        b = min(chunk, n - i)
        part = 0.5 * torch.randn(b, gh * gw, dim, generator=g)  # (b, N, D)
        for j in range(b):
            cells = torch.randperm(gh * gw, generator=g)[: int(counts[i + j])]
            part[j, cells] += 4.0 * u
        x[i : i + b] = part.reshape(b, gh, gw, dim).half().numpy()
    return x, counts.float().numpy(), _times(n)


def dense_grids(n: int, task: str, grid=GRID, dim: int = DIM, label=(144, 240), classes: int = 4, seed: int = 0):
    """Token grids (n, gh, gw, D) float16 carrying smooth score maps, and depth maps or masks at `label` size."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    ch = 1 if task == "depth" else classes
    scores = F.interpolate(torch.randn(n, ch, 3, 4, generator=g), size=grid, mode="bilinear", align_corners=False)
    x = torch.einsum("bkhw,kd->bhwd", scores, torch.randn(ch, dim, generator=g))
    x += 0.3 * torch.randn(n, *grid, dim, generator=g)  # (B, gh, gw, D)
    up = F.interpolate(scores, size=label, mode="bilinear", align_corners=False)
    y = (0.5 * up[:, 0] + 1.5).exp() if task == "depth" else up.argmax(1).to(torch.uint8)
    return x.half().numpy(), y.numpy(), _times(n)


def detection_grids(n: int, grid=GRID, dim: int = DIM, max_boxes: int = 5, seed: int = 0):
    """Token grids (n, gh, gw, D) float16 and per-frame (M, 5) relative boxes (x0, y0, x1, y1, class 0).

    Each box (1.5 to 5 cells a side, inside the image, one centre per cell) writes into its centre cell
    3 * (u_obj + (2 dx - 1) u_dx + (2 dy - 1) u_dy + s_w u_w + s_h u_h), with (dx, dy) the centre's offset in the cell
    and s_w, s_h its log width / height scaled to [-1, 1], and adds 1.5 u_in to every cell its box covers; noise 0.3
    per channel. The six directions are orthonormal."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    gh, gw = grid
    q, _ = np.linalg.qr(rng.normal(size=(dim, 6)))
    u_obj, u_dx, u_dy, u_w, u_h, u_in = (torch.from_numpy(q[:, j]).float() for j in range(6))
    lo, hi = np.log(1.5), np.log(5.0)  # box side in cells
    x = np.empty((n, gh, gw, dim), np.float16)
    boxes = []
    cy_cells, cx_cells = np.meshgrid(np.arange(gh) + 0.5, np.arange(gw) + 0.5, indexing="ij")
    for i in range(n):
        part = 0.3 * torch.randn(gh, gw, dim, generator=g)
        used, frame = set(), []
        for _ in range(int(rng.integers(0, max_boxes + 1))):
            for _ in range(20):  # a free centre cell
                lw, lh = rng.uniform(lo, hi, size=2)
                w, h = np.exp(lw) / gw, np.exp(lh) / gh
                cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
                col, row = min(int(cx * gw), gw - 1), min(int(cy * gh), gh - 1)
                if (row, col) not in used:
                    break
            else:
                continue
            used.add((row, col))
            dx, dy = cx * gw - col, cy * gh - row
            sw, sh = (2 * (lw - lo) / (hi - lo) - 1), (2 * (lh - lo) / (hi - lo) - 1)
            part[row, col] += 3.0 * (u_obj + (2 * dx - 1) * u_dx + (2 * dy - 1) * u_dy + sw * u_w + sh * u_h)
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            inside = (cx_cells / gw >= x0) & (cx_cells / gw <= x1) & (cy_cells / gh >= y0) & (cy_cells / gh <= y1)
            part[torch.from_numpy(inside)] += 1.5 * u_in
            frame.append([x0, y0, x1, y1, 0.0])
        x[i] = part.half().numpy()
        boxes.append(np.asarray(frame, np.float32).reshape(-1, 5))
    return x, boxes, _times(n)


# -- fit cases -------------------------------------------------------------------------------------------------------

# case -> (task, features, head kinds, bar s, data builder)
G1K = "1k x 12x20x1024 f16"
CASES = {
    "people_count": ("people_count", "10k x 1024 pooled", ("mlp", "linear"), 10.0, lambda: pooled_counts(10_000)),
    "time_of_day": ("time_of_day", "10k x 1024 pooled", ("mlp", "linear"), 10.0, None),
    "grid_count_1k": ("people_count", G1K, ("auto",), 30.0, lambda: grid_counts(1_000)),
    "grid_count_10k": ("people_count", "10k x 12x20x1024 f16", ("auto",), 300.0, lambda: grid_counts(10_000)),
    "depth": ("depth", G1K, ("dense",), 120.0, lambda: dense_grids(1000, "depth")),
    "segmentation": ("segmentation", G1K, ("dense",), 120.0, lambda: dense_grids(1000, "segmentation")),
    "detection": ("detection", G1K, ("auto",), 120.0, lambda: detection_grids(1000)),
}


def build_data(case: str):
    if case == "time_of_day":
        from tests import synthetic_features

        x, y, _ = synthetic_features.clock_features(10_000, dim=DIM, noise=1.0)
        return x, y, _times(len(y))
    return CASES[case][4]()


def make_fit(case: str, kind: str, threads: int):
    """(task, FitConfig) for one run: the task's own preset, `kind` unless `auto`, `threads` torch threads."""
    from fth.config import build
    from heads.fit import FitConfig
    from heads.tasks import TaskConfig, make_task

    name = CASES[case][0]
    classes = {"segmentation": ("a", "b", "c", "d"), "detection": ("person",)}.get(name, ())
    task = make_task(TaskConfig(name, classes=classes))
    cfg = build(FitConfig, task.preset)
    cfg.threads = threads
    if kind != "auto":
        cfg.head.kind = kind
    return task, cfg


def run_case(case: str, kind: str, threads: int, data) -> dict:
    from heads.fit import fit_from_arrays
    from heads.models import resolve_kind

    task, cfg = make_fit(case, kind, threads)
    x, y, t = data
    gc.collect()
    rss0 = reset_peak_rss()
    start = time.perf_counter()
    res = fit_from_arrays(task, x, y, t, cfg)
    total = time.perf_counter() - start
    p = task.primary
    row = {"seconds": res.seconds, "total": total, "metric": p, "value": res.metrics[p], "baseline": res.baseline[p],
           "best_step": res.best_step, "steps": res.history[-1]["step"], "params": res.params,
           "head": resolve_kind(res.head_cfg), "split": res.split.describe(), "rss_before_mib": rss0,
           "peak_mib": peak_rss_mib()}  # fmt: skip
    if res.probe is not None:
        row["probe"] = res.probe[p]
    if name_extra := {"detection": ("count_mae",), "people_count": ("rmse",)}.get(task.name):
        row["extra"] = {k: res.metrics[k] for k in name_extra} | {f"baseline_{k}": res.baseline[k] for k in name_extra}
    return row


def fit_cases(args) -> int:
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    threads = [int(t) for t in args.threads.split(",")]
    import torch

    start = time.perf_counter()  # the first optimizer imports torch._dynamo: charge it to no case
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    print(f"first AdamW (torch._dynamo import): {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    rows = []
    for case in cases:
        start = time.perf_counter()
        data = build_data(case)
        print(f"{case}: data built in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        runs = [(k, th) for k in CASES[case][2] for th in threads]
        results: dict[tuple, list[dict]] = {r: [] for r in runs}
        for rnd in range(args.repeats):
            for r in runs[rnd % len(runs) :] + runs[: rnd % len(runs)]:  # rotate the order each round
                results[r].append(run_case(case, *r, data))
                print(f"round {rnd} {case} {r}: {results[r][-1]['seconds']:.1f}s, {results[r][-1]['value']:.4g} "
                      f"({results[r][-1]['split']})", file=sys.stderr, flush=True)  # fmt: skip
        load = os.getloadavg()[0]
        del data
        gc.collect()
        for (kind, th), rs in results.items():
            secs = [r["seconds"] for r in rs]
            one = results.get((kind, 1))
            ratio = median(secs) / median([r["seconds"] for r in one]) if one and th != 1 else None
            rows.append({"case": case, "task": CASES[case][0], "head": rs[0]["head"], "features": CASES[case][1],
                         "threads": th, "fit s": median(secs), "total s": median([r["total"] for r in rs]),
                         "spread": spread(secs) if len(secs) > 1 else 0.0, "bar s": CASES[case][3],
                         "fit/bar": median(secs) / CASES[case][3], "2T/1T": ratio,
                         "peak GB": max(r["peak_mib"] for r in rs) / 1024, "metric": rs[0]["metric"],
                         "value": rs[0]["value"], "baseline": rs[0]["baseline"], "probe": rs[0].get("probe"),
                         "best/steps": f"{rs[0]['best_step']}/{rs[0]['steps']}", "params": rs[0]["params"],
                         "load": load, "runs": rs})  # fmt: skip
    cols = ["task", "head", "features", "threads", "fit s", "total s", "bar s", "fit/bar", "2T/1T", "peak GB",
            "metric", "value", "baseline", "probe", "best/steps", "params", "load"]  # fmt: skip
    print(table(rows, cols))
    print(f"\nwrote {write_json('heads', {'rows': rows, 'repeats': args.repeats, 'cpus': os.cpu_count()})}")
    return 0


def profile(args) -> int:
    """Each case once under cProfile with 1 thread: where the fit's time goes."""
    import cProfile
    import pstats

    from heads.fit import fit_from_arrays

    for case in args.cases.split(","):
        data = build_data(case)
        task, cfg = make_fit(case, CASES[case][2][0], 1)
        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.runcall(fit_from_arrays, task, *data, cfg)
        print(f"\n== {case}: {time.perf_counter() - start:.1f}s under cProfile", flush=True)
        stats = pstats.Stats(prof).strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        del data
        gc.collect()
    return 0


# -- the label join --------------------------------------------------------------------------------------------------


def join(args) -> int:
    """1k labels keyed by frame path joined to a 100k-row SQLite catalog: FrameIndex + reader + capture order."""
    import csv
    import hashlib
    import sqlite3
    import tempfile
    from datetime import UTC, datetime, timedelta

    import numpy as np

    from heads.pipeline import FitRequest, read_labels
    from store.catalog import COLUMNS, Catalog, local_time, utc_text
    from store.frame_index import FrameIndex
    from store.paths import Workspace

    n_rows, n_labels = args.catalog_rows, args.labels
    ws = Workspace.at(tempfile.mkdtemp(prefix="bench-join-"))
    Catalog(ws.root, db_path=ws.catalog).close()  # the catalog's own schema and indexes
    # Catalog.add_frame commits each frame with synchronous=FULL and fsyncs its file and folder: 100k of them would
    # take minutes and measure the disk. The join only reads rows, so the setup writes them into the catalog's own
    # schema in one transaction (state 'ok', as add_frame leaves them); the frame files are never opened.
    start = datetime(2026, 3, 1, tzinfo=UTC)
    rows = []
    for i in range(n_rows):
        fid = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        when = start + timedelta(seconds=5 * (i // 4))  # four sources sampled every 5 s
        text = utc_text(when)
        day, tod = local_time(when, "UTC")
        source = f"cam{i % 4}"
        rel = f"frames/{source}/{text[:10]}/{text[11:19].replace(':', '')}_{fid[:16]}.jpg"
        rows.append((fid, rel, source, text, day, tod, "UTC", 960, 576, 50_000, None, 0))
    db = sqlite3.connect(ws.catalog)
    with db:
        db.executemany(f"INSERT INTO frames ({COLUMNS}, state) VALUES ({', '.join('?' * 12)}, 'ok')", rows)
    db.close()
    rng = np.random.default_rng(0)
    picked = rng.choice(n_rows, size=n_labels, replace=False)  # in random order, as a labelling tool exports them
    labels_csv = ws.root / "people.csv"
    with open(labels_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "value"])
        w.writerows([rows[j][1], int(rng.integers(0, 12))] for j in picked)
    req = FitRequest("people_count", str(labels_csv), workspace=str(ws.root))
    state: dict = {}

    def build_index():
        state["index"] = FrameIndex(ws.root, ws.catalog)

    def read():
        state["labels"] = read_labels(req, state["index"])[1]

    def new_join():
        ids = state["index"].in_capture_order(state["labels"].ids)
        state["new"] = (ids, state["labels"].align(ids)[1])

    def old_join():  # the shape run_fit had before issue 11: a set per catalog row, a dict per labelled frame
        labels = state["labels"]
        ids = [r.id for r in state["index"].rows if r.id in set(labels.ids)]
        state["old"] = (ids, [labels.as_dict()[i] for i in ids])

    build_index()
    read()
    cases = {"FrameIndex from SQLite": build_index, "labels read + resolved": read, "capture order + align": new_join,
             "old quadratic join": old_join}  # fmt: skip
    times = time_interleaved(cases, args.repeats)
    assert state["new"][0] == state["old"][0] and len(state["new"][0]) == n_labels, "joins disagree"
    assert [float(v) for v in state["new"][1]] == [float(v) for v in state["old"][1]]
    med = {k: median(v) for k, v in times.items()}
    total = med["FrameIndex from SQLite"] + med["labels read + resolved"] + med["capture order + align"]
    out = [{"step": k, "ms (median)": 1000 * v, "spread": spread(times[k]) if len(times[k]) > 1 else 0.0}
           for k, v in med.items()]  # fmt: skip
    out.append({"step": "join total (index + labels + order)", "ms (median)": 1000 * total})
    print(table(out, ["step", "ms (median)", "spread"]))
    ratio = med["old quadratic join"] / med["capture order + align"]
    print(f"\n{n_labels} labels x {n_rows} catalog rows: join {total:.3f} s (bar 1 s); old join / new join step = "
          f"{ratio:.0f}x; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    payload = {"rows": out, "total_s": total, "bar_s": 1.0, "old_over_new": ratio, "catalog_rows": n_rows,
               "labels": n_labels, "repeats": args.repeats, "times": times, "load": os.getloadavg()[0]}  # fmt: skip
    print(f"wrote {write_json('heads_join', payload)}")
    return 0


# -- does pretraining help? ------------------------------------------------------------------------------------------


def quality(args) -> int:
    """The pretraining table: heads on trained / random-init encoder / raw pixels vs the baseline (test metrics)."""
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
    from fth.heads_cli import embed_step
    from heads.fit import FitConfig
    from heads.join import fit_from_labels
    from heads.pipeline import FitRequest, label_size, read_labels, resize_nearest, run_fit
    from store.artifacts import Registry
    from store.backends import open_catalog
    from store.frame_index import FrameIndex
    from store.paths import Workspace

    root = Path(tempfile.mkdtemp(prefix="bench-heads-"))
    ws, cfg = Workspace.at(root), SimConfig(height=96, width=160)
    base, step = datetime(2026, 3, 1, tzinfo=UTC), max(1, 6000 // args.frames)
    with open_catalog(ws) as cat:
        for k in range(args.frames):
            rgb, _ = frame(cfg, k * step)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
            when = base + timedelta(seconds=cfg.start_hour * 3600 + k * step / cfg.fps * cfg.time_scale)
            cat.add_frame(buf.getvalue(), "sim", when, cfg.width, cfg.height)
        write_labels(cat, "sim", cfg, ws.root / "labels")
    index = FrameIndex(ws.root, ws.catalog)
    pixels = np.stack([index.image(r.id, SIZE) for r in index.rows]).astype(np.float32) / 255.0
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
             "segmentation": str(lab / "segmentation"), "detection": str(lab / "boxes.json")}  # fmt: skip
    over = ["threads=1"]
    gh, gw = SIZE[0] // 8, SIZE[1] // 8
    grid = torch.from_numpy(pixels).reshape(-1, gh, 8, gw, 8, 3).mean(dim=(2, 4))  # (B, 12, 20, 3)
    pos = {r.id: i for i, r in enumerate(index.rows)}
    rows = []
    for task_name, labels in tasks.items():
        row: dict = {"task": task_name}
        for name, enc in encoders.items():
            req = FitRequest(task_name, labels, encoder=enc, workspace=str(ws.root), overrides=over,
                             max_label_side=80, name=f"{task_name}-{enc}")  # fmt: skip
            rep = run_fit(req, embed=embed_step(str(ws.root), enc), report=lambda _: None)
            p = rep.task.primary
            row["metric"], row[name], row["baseline"] = p, rep.metrics[p], rep.baseline[p]
            row["split"] = rep.summary["split"]
            if rep.summary.get("probe") and name.startswith("trained"):
                row["linear probe (trained)"] = rep.summary["probe"][p]
        req = FitRequest(task_name, labels, workspace=str(ws.root), max_label_side=80)
        task, ls, _ = read_labels(req, index)
        if task.map_labels:
            hw = label_size(np.asarray(ls.values[0]).shape[:2], 80)
            ls.values = [resize_nearest(np.asarray(v), hw) for v in ls.values]
        ids = index.in_capture_order(ls.ids)
        x = grid[[pos[i] for i in ids]]
        x = x.reshape(len(ids), -1) if task.default_form == "pooled" else x
        fit_cfg = build(FitConfig, task.preset, over)
        times = [index.by_id[i].captured_at for i in ids]
        res = fit_from_labels(task, ls, ids, x, times, fit_cfg)
        row["raw pixels 12x20x3"] = res.metrics[task.primary]
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    cols = ["task", "metric", *encoders, "raw pixels 12x20x3", "baseline", "linear probe (trained)", "split"]
    print(table(rows, cols))
    payload = {"rows": rows, "frames": args.frames, "mae_steps": args.mae_steps, "workspace": str(root),
               "reported_on": "test"}  # fmt: skip
    print(f"\nwrote {write_json('heads_quality', payload)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--join", action="store_true", help="the label-join benchmark instead of the fit cases")
    ap.add_argument("--catalog-rows", type=int, default=100_000, help="--join: catalog rows")
    ap.add_argument("--labels", type=int, default=1000, help="--join: labelled frames")
    ap.add_argument("--profile", action="store_true", help="each case once under cProfile (1 thread)")
    ap.add_argument("--top", type=int, default=25, help="--profile: functions listed")
    ap.add_argument("--quality", action="store_true", help="the pretraining table (trained / random / pixels)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--mae-steps", type=int, default=300)
    ap.add_argument("--encoder", default="", help="--quality: a trained encoder id instead of training the tiny MAE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quality:
        return quality(args)
    if args.join:
        return join(args)
    if args.profile:
        return profile(args)
    return fit_cases(args)


if __name__ == "__main__":
    sys.exit(main())
