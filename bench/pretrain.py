"""Benchmark: does pretraining pay off on CPU? The recipe sweep of issue 12, run through the real commands.

One sim workspace (collector.sim frames at the demo's 192x320 spread over `--days` sim days, capture times on the
sim clock, labels from `write_labels`) is built once; then for each setting `fth train` pretrains an encoder
(`configs/demo_mae.yaml` at width 64 (BASE), plus the setting's `--set` items, one CPU thread) and `fth eval`
scores it against its own random init (`fth model init --like`) and raw pixels on people_count at 30 labels and depth
at 100 labels (`--seeds` head seeds, the same held-out test frames for every column). `gain vs random` = 1 - trained
/ random for error metrics (MAE, AbsRel); the bar is 15% against both random init and pixels.

    .venv/bin/python bench/pretrain.py                                   # every setting
    .venv/bin/python bench/pretrain.py --settings demo,whole_frames --frames 400 --seeds 3
    .venv/bin/python bench/pretrain.py --workspace /tmp/sweep            # reuse a built workspace (and its encoders)

Settings (name: train overrides | eval flags) are the SETTINGS table below. Writes bench/results/pretrain.json, and
the table to stdout. Wall times are for this machine and whatever else ran on it; the metrics do not depend on it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import table, write_json  # noqa: E402

FTH = [sys.executable, "-m", "fth"]
# The sweep's starting point: configs/demo_mae.yaml at width 64, the demo recipe when the sweep began (the demo now
# trains the `wide128` setting). Added to every setting's items; not part of the encoder names, so workspaces built
# before the demo changed keep their encoders.
BASE = ["model.encoder.dim=64", "model.encoder.dim_head=16"]
W128 = ["model.encoder.dim=128", "model.encoder.dim_head=32"]  # the wide128 settings' width (the demo's now)
# name -> (fth train --set items, fth eval extra flags).
SETTINGS: dict[str, tuple[list[str], list[str]]] = {
    "demo": ([], []),
    "demo_pooled": ([], ["--features", "pooled"]),
    "demo_layers": ([], ["--layers=-3,-1"]),
    "whole_frames": (["data.crop_scale=[0.8,1.0]"], []),
    "whole_frames_layers": (["data.crop_scale=[0.8,1.0]"], ["--layers=-3,-1"]),
    "steps3000": (["max_steps=3000"], []),
    "mask50": (["model.mask_ratio=0.5"], []),
    "mask90": (["model.mask_ratio=0.9"], []),
    "wide128": ([*W128], []),
    "pix_loss": (["model.norm_pix_loss=false"], []),
    # the frames' own 192x320 at the same 8 px patches: a 24x40 token grid, 4x the tokens (bench/depth_ceiling.py:
    # a per-cell depth head can gain at most 18% over the scene prior at 12x20, 45% at 24x40)
    "fine_grid": (["model.encoder.img_size=[192,320]"], []),
    "wide128_steps3000": ([*W128, "max_steps=3000"], []),
    "wide128_seed1": ([*W128, "seed=1"], []),
    "wide128_steps2000": ([*W128, "max_steps=2000"], []),
    "wide128_steps2000_seed1": ([*W128, "max_steps=2000", "seed=1"], []),
    "wide128_steps2000_seed2": ([*W128, "max_steps=2000", "seed=2"], []),
    "wide128_steps3000_seed1": ([*W128, "max_steps=3000", "seed=1"], []),
    # every patch in the loss, not only the masked ones: a visible token must carry its own patch (a small person)
    "wide128_visloss": ([*W128, "model.visible_loss_weight=1.0"], []),
    "wide128_visloss_seed1": (
        [*W128, "model.visible_loss_weight=1.0", "seed=1"],
        [],
    ),
    "fine_grid_wide128": (
        ["model.encoder.img_size=[192,320]", *W128],
        [],
    ),
}
# the same encoders read as pooled vectors (the MLP head): no training, an eval each
SETTINGS |= {f"{k}_pooled": (t, ["--features", "pooled"]) for k, (t, e) in list(SETTINGS.items()) if not e}
TASKS = {"people_count": ("people.csv", "30"), "depth": ("depth", "100")}
DENSE_SEEDS = 2  # a depth fit is ~45 s on one thread: 2 head seeds per column


def build_workspace(root: Path, frames: int, days: int) -> None:
    """`frames` sim frames at 192x320, evenly over `days` sim days (each day's frames span its 24 hours, so the
    earliest 30 labels cover whole days, not one night), in a real catalog, with labels under labels/."""
    from PIL import Image

    from collector.config import SimConfig
    from collector.sim import frame, write_labels
    from store.backends import open_catalog
    from store.paths import Workspace

    cfg = SimConfig(height=192, width=320, start_hour=0.0)
    per_day = round(24 * 3600 / cfg.time_scale * cfg.fps)  # sim frame indices per sim day
    step = max(1, days * per_day // frames)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    with open_catalog(Workspace.at(root)) as cat:
        for k in range(frames):
            rgb, _ = frame(cfg, k * step)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
            when = base + timedelta(seconds=k * step / cfg.fps * cfg.time_scale)
            cat.add_frame(buf.getvalue(), "sim", when, cfg.width, cfg.height)
        write_labels(cat, "sim", cfg, root / "labels")


def keep_labels(root: Path, keep: int) -> None:
    """Labels for `keep` of the workspace's frames, evenly spread over capture time; the rest stay unlabelled (frames
    only the pretraining reads). Rewrites the CSVs under labels/ and removes the other frames' maps."""
    import csv

    from store.backends import open_catalog
    from store.paths import Workspace

    with open_catalog(Workspace.at(root)) as cat:
        order = [r.id for r in sorted(cat.frames(), key=lambda r: r.captured_at)]
    step = len(order) / keep
    kept = {order[int(i * step)] for i in range(keep)}
    labels = root / "labels"
    for name in ("labels.csv", "people.csv", "time_of_day.csv"):
        with open(labels / name, newline="") as f:
            rows = list(csv.reader(f))
        with open(labels / name, "w", newline="") as f:
            csv.writer(f).writerows([rows[0], *(r for r in rows[1:] if r[0] in kept)])
    for folder in ("depth", "segmentation"):
        for png in (labels / folder).glob("*.png"):
            if png.stem not in kept:
                png.unlink()


def run(cmd: list[str], log: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(p.stdout)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd[2:5])} failed (exit {p.returncode}); see {log}")
    return p.stdout


def encoder_named(root: Path, name: str) -> str | None:
    from store.artifacts import Registry
    from store.paths import Workspace

    cards = [c for c in Registry(Workspace.at(root).artifacts).list("encoder") if c.name == name]
    return cards[-1].id if cards else None


def gain(a: float, b: float) -> float:
    """Relative improvement of error `a` over error `b` (positive: a is better)."""
    return 1.0 - a / b if b else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names from SETTINGS")
    ap.add_argument("--frames", type=int, default=400, help="labelled frames (default 400)")
    ap.add_argument(
        "--pretrain-frames",
        type=int,
        default=0,
        help="frames in the workspace, when more than --frames: the others are unlabelled, seen only by "
        "pretraining (the same days, so the labelled frames are spread as without them)",
    )
    ap.add_argument("--days", type=int, default=20, help="sim days the frames spread over (default 20)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workspace", help="reuse this workspace (built there when it has no catalog)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks from TASKS (default: both)")
    ap.add_argument("--eval-set", action="append", default=["threads=1"], help="--set items for fth eval's fits")
    args = ap.parse_args()
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; known: {list(SETTINGS)}")
    root = Path(args.workspace or tempfile.mkdtemp(prefix="bench-pretrain-"))
    root.mkdir(parents=True, exist_ok=True)
    log = root / "sweep.log"
    if not (root / "catalog.sqlite").exists():
        t = time.perf_counter()
        total = max(args.frames, args.pretrain_frames)
        build_workspace(root, total, args.days)
        if total > args.frames:
            keep_labels(root, args.frames)
        print(
            f"built {total} sim frames ({args.frames} labelled) in {root} ({time.perf_counter() - t:.0f} s)",
            file=sys.stderr,
        )
    results = []
    done = root / "sweep.jsonl"
    prior = {}
    if done.exists():
        prior = {r["setting"]: r for r in map(json.loads, done.read_text().splitlines())}
    for name in names:
        if name in prior:
            results.append(prior[name])
            continue
        train_set, eval_flags = SETTINGS[name]
        enc_name = "sweep-" + (re.sub(r"[^A-Za-z0-9.]+", "_", "-".join(train_set)).strip("_") or "demo")
        t0 = time.perf_counter()
        enc = encoder_named(root, enc_name)
        train_s = 0.0
        if enc is None:
            items = [*BASE, *train_set, f"name={enc_name}", "progress=false", "panel_every=0"]
            sets = [x for s in items for x in ("--set", s)]
            run([*FTH, "train", "--config", "demo_mae", "--workspace", str(root), *sets], log)
            enc = encoder_named(root, enc_name)
            train_s = time.perf_counter() - t0
        row = {"setting": name, "train": " ".join(train_set) or "(demo_mae)", "eval": " ".join(eval_flags) or "-",
               "encoder": enc, "train_s": round(train_s)}  # fmt: skip
        for task, (labels, size) in TASKS.items():
            if task not in args.tasks.split(","):
                continue
            out = root / "eval" / name / task
            sets = [x for s in args.eval_set for x in ("--set", s)]
            seeds = args.seeds if task != "depth" else min(args.seeds, DENSE_SEEDS)
            run([*FTH, "eval", "--workspace", str(root), "--encoder", enc, "--task", task, "--labels",
                 str(root / "labels" / labels), "--sizes", size, "--seeds", str(seeds), "--out", str(out),
                 "--max-label-side", "80", *eval_flags, *sets], log)  # fmt: skip
            t = json.loads((out / "eval.json").read_text())["tasks"][0]
            res = t["rows"][0]["results"]  # column -> per-seed metrics
            mean = {c: sum(v) / len(v) for c, v in res.items()}
            trained = mean[enc_name]
            rand = next(v for c, v in mean.items() if c.startswith("random init"))
            pix = next(v for c, v in mean.items() if c.startswith("pixels"))
            row[f"{task} n_train"] = t["rows"][0]["n_train"]
            row[f"{task} trained"], row[f"{task} random"], row[f"{task} pixels"] = trained, rand, pix
            row[f"{task} vs random"] = gain(trained, rand)
            row[f"{task} vs pixels"] = gain(trained, pix)
        row["wall_s"] = round(time.perf_counter() - t0)
        results.append(row)
        with open(done, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), file=sys.stderr, flush=True)
    cols = ["setting", "train", "eval"]
    for task in TASKS:
        cols += [f"{task} trained", f"{task} random", f"{task} pixels", f"{task} vs random", f"{task} vs pixels"]
    cols += ["train_s", "wall_s"]
    print(table(results, cols))
    payload = {"rows": results, "frames": args.frames, "pretrain_frames": args.pretrain_frames, "days": args.days,
               "seeds": args.seeds, "workspace": str(root), "sizes": {t: s for t, (_, s) in TASKS.items()},
               "bar": 0.15}  # fmt: skip
    print(f"\nwrote {write_json('pretrain', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
