"""`fth eval`: is this encoder any good for my tasks? Label-efficiency curves against random init and raw pixels.

fth eval --encoder A [--encoder B ...] --task T --labels L [--sizes 30,100,300,all] [--seeds 3] [--layers -1]
         [--features auto|pooled|grid] [--config C] [--set k=v] [--out DIR] [--workspace W] [--shuffle-labels]
fth eval --encoder A --tasks tasks.yaml ...   (several tasks: `tasks:` a list of {task, labels, format, column, classes,
                                               config, set: [k=v, ...]})

For each task, each encoder, the same architecture at random init (`fth model init --like`, registered here) and a
raw-pixel grid at the encoder's token grid are fitted at each label budget (the earliest labelled frames) with
`--seeds` head seeds, every fit scored on the same held-out frames (the latest by capture time, after the split gap):
`heads.label_curve` over `heads.fit.fit_from_arrays`, with the labels, features and FitConfig preset read exactly as
`fth heads fit` reads them (`heads.pipeline.read_labels`, `heads.join.read_features`). Frames the store lacks are
embedded first (`fth.heads_cli.embed_step`). Prints a table per task (rows: label budget; columns: encoders, random
init, pixels, baseline: mean over seeds, ± half the min-max spread) and writes eval.json and <task>.png (metric vs
labels, log x, the seed spread shaded). `--shuffle-labels` permutes the labels among frames (a control: it should
not beat the baseline). Wrong input is one line on stderr and exit code 2.

Raw pixels: the frame at the encoder's input size, normalised as the encoder normalises it, cut into its patches;
a grid recipe reads each patch downsampled to 2x2 (gh, gw, 12), a pooled recipe the patch means flattened (gh*gw*3).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from fth.cli import add_config_args

WS_HELP = "workspace folder (default: $FTH_WORKSPACE or ./workspace)"
PIXEL_SUB = 2  # a pixel token is its patch downsampled to PIXEL_SUB x PIXEL_SUB


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="label-efficiency curves: encoders vs random init vs raw pixels")
    p.add_argument("--encoder", action="append", default=[], help="encoder id (repeatable; default: the newest)")
    p.add_argument("--task", help="a registered task (or --tasks YAML)")
    p.add_argument("--labels", help="labels file or folder (or `catalog` for time_of_day)")
    p.add_argument("--format", default="auto", help="label format (default: detected)")
    p.add_argument("--column", help="CSV value column")
    p.add_argument("--tasks", help="YAML file: `tasks:` a list of {task, labels, format, column, classes, config, set}")
    p.add_argument("--sizes", default="30,100,300,all", help="label budgets (default 30,100,300,all)")
    p.add_argument("--seeds", type=int, default=3, help="head seeds per fit (default 3)")
    p.add_argument("--features", default="auto", choices=["auto", "pooled", "grid"])
    p.add_argument("--layers", default="-1", help="encoder blocks read for grids, comma-separated")
    p.add_argument("--max-label-side", type=int, default=320, help="dense labels downsampled to this (nearest)")
    p.add_argument("--source", help="only frames of this catalog source")
    p.add_argument("--shuffle-labels", action="store_true", help="permute labels among frames (a control run)")
    p.add_argument("--out", help="folder for eval.json and plots (default: <workspace>/eval)")
    p.add_argument("--workspace", default=None, help=WS_HELP)
    add_config_args(p, shown="each task's preset (as fth heads fit)")
    p.set_defaults(func=cmd_eval)


def _task_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    from fth.config import read_yaml

    if args.tasks:
        specs = read_yaml(args.tasks).get("tasks")
        if not isinstance(specs, list) or not all(isinstance(s, dict) and "task" in s and "labels" in s for s in specs):
            raise ValueError(f"--tasks {args.tasks}: expected `tasks:`, a list of {{task, labels, ...}} entries")
        return specs
    if not args.task or not args.labels:
        raise ValueError("name a task: --task T --labels L, or --tasks tasks.yaml")
    return [{"task": args.task, "labels": args.labels, "format": args.format, "column": args.column}]


def pixel_features(index, ids: list[str], vit_cfg: dict[str, Any], form: str):
    """Raw-pixel features at an encoder's token grid: (B, gh, gw, 3*s*s) grids or (B, gh*gw*3) pooled vectors."""
    import numpy as np

    h, w = vit_cfg["img_size"]
    p = vit_cfg["patch_size"]
    gh, gw = h // p, w // p
    mean, std = np.asarray(vit_cfg["pixel_mean"], np.float32), np.asarray(vit_cfg["pixel_std"], np.float32)
    out = []
    for frame_id in ids:
        img = (index.image(frame_id, (h, w)).astype(np.float32) / 255.0 - mean) / std  # (H, W, 3)
        if form == "pooled":
            out.append(img[: gh * p, : gw * p].reshape(gh, p, gw, p, 3).mean(axis=(1, 3)).reshape(-1))
        else:
            s = PIXEL_SUB if p % PIXEL_SUB == 0 else 1
            cells = img[: gh * p, : gw * p].reshape(gh, p, gw, s, p // s, 3).mean(axis=4)  # (gh, p, gw, s, 3)
            cells = cells.reshape(gh, s, p // s, gw, s, 3).mean(axis=2)  # (gh, s, gw, s, 3)
            out.append(cells.transpose(0, 2, 1, 3, 4).reshape(gh, gw, s * s * 3))
    return np.stack(out).astype(np.float16)


def evaluate_task(spec: dict[str, Any], args: argparse.Namespace, encoders: list[str], registry, ws, report) -> dict:
    """One task's curves: {columns, rows, ...} (JSON-able)."""
    import numpy as np

    from fth.config import build
    from fth.heads_cli import embed_step
    from fth.model_init import random_init_like
    from heads.fit import FitConfig
    from heads.label_curve import fit_budget, held_out, parse_sizes
    from heads.labels import LabelError
    from heads.pipeline import FitRequest, label_size, read_labels, resize_nearest, stored_features
    from store.frame_index import FrameIndex
    from store.recipe import FeatureRecipe, parse_layers

    req = FitRequest(task=spec["task"], labels=str(spec["labels"]), format=spec.get("format") or "auto",
                     classes=spec.get("classes"), column=spec.get("column"), workspace=args.workspace,
                     max_label_side=args.max_label_side, source=args.source)  # fmt: skip
    index = FrameIndex(ws.root, ws.catalog, args.source)
    task, labels, _ = read_labels(req, index)
    if not len(labels):
        raise LabelError(f"labels {req.labels}: no labelled frames")
    ids = index.in_capture_order(labels.ids)
    values = [labels.as_dict()[i] for i in ids]
    if task.map_labels:
        hw = label_size(np.asarray(values[0]).shape[:2], req.max_label_side)
        values = [resize_nearest(np.asarray(v), hw) for v in values]
    if args.shuffle_labels:
        values = [values[i] for i in np.random.default_rng(0).permutation(len(values))]
    times = [index.by_id[i].captured_at for i in ids]
    cfg = build(FitConfig, spec.get("config") or args.config or task.preset, [*args.overrides, *spec.get("set", [])])
    split = held_out(times, cfg.test_fraction, cfg.split_gap_s)
    budgets = sorted({min(k, len(split.pool)) if k else len(split.pool) for k in parse_sizes(args.sizes)})
    budgets = [k for k in budgets if k >= max(cfg.min_train + 2, 5)]
    if not budgets:
        raise LabelError(f"{split.describe()}: too few to fit at --sizes {args.sizes}")
    form = task.default_form if args.features == "auto" else args.features
    if task.dense and form != "grid":
        raise LabelError(f"{task.name} reads token grids; --features pooled cannot predict maps or boxes")
    layers = parse_layers(args.layers) if form == "grid" else (-1,)

    columns: dict[str, tuple[Any, Any]] = {}  # name -> (features, recipe)
    pixel_grids: set[tuple] = set()
    for enc in encoders:
        card = registry.card(enc)
        init = random_init_like(registry, card.id, seed=0)
        for name, enc_id in ((card.name or card.id, card.id), (f"random init of {card.name or card.id}", init.id)):
            recipe = FeatureRecipe.for_encoder(card.config, form, layers)
            x, recipe, _ = stored_features(ws, index, enc_id, ids, recipe, embed_step(args.workspace, enc_id), report)
            columns[name] = (x, recipe)
        vit = card.config["encoder"]
        grid = (*vit["img_size"], vit["patch_size"])
        if grid not in pixel_grids:
            pixel_grids.add(grid)
            x = pixel_features(index, ids, vit, form)
            name = f"pixels {grid[0] // grid[2]}x{grid[1] // grid[2]}x{x.shape[-1]}"
            columns[name] = (x, FeatureRecipe.infer(x))

    rows = []
    for k in budgets:
        row: dict[str, Any] = {"labels": k, "results": {}}
        for name, (x, recipe) in columns.items():
            fits = [fit_budget(task, x, values, times, split, k, cfg, recipe, seed) for seed in range(args.seeds)]
            row["results"][name] = [f.metric for f in fits]
            row["baseline"] = fits[0].baseline
            row["n_train"], row["n_val"] = fits[0].n_train, fits[0].n_val
        report(f"{task.name}: {k} labels done")
        rows.append(row)
    return {"task": task.name, "labels": str(req.labels), "primary": task.primary, "unit": task.unit,
            "higher_is_better": task.higher_is_better, "split": split.describe(), "n_test": len(split.test),
            "shuffled_labels": bool(args.shuffle_labels), "fit_config": dataclasses.asdict(cfg),
            "features": form, "layers": list(layers), "columns": list(columns), "rows": rows}  # fmt: skip


def _cell(values: list[float]) -> str:
    import numpy as np

    v = np.asarray(values, np.float64)
    mean, half = float(v.mean()), float(v.max() - v.min()) / 2
    return f"{mean:.4g} ± {half:.2g}" if len(v) > 1 else f"{mean:.4g}"


def table(doc: dict[str, Any]) -> str:
    header = ["labels", *doc["columns"], "baseline"]
    body = [[str(r["labels"]), *(_cell(r["results"][c]) for c in doc["columns"]), f"{r['baseline']:.4g}"]
            for r in doc["rows"]]  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                     for line in (header, *body))  # fmt: skip


def plot(path: Path, doc: dict[str, Any]) -> Path:
    """Metric vs labels (log x): mean over head seeds, min-max shaded, the baseline dashed (matplotlib Agg)."""
    import numpy as np

    from heads.plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [r["labels"] for r in doc["rows"]]
    for c in doc["columns"]:
        v = np.asarray([r["results"][c] for r in doc["rows"]], np.float64)  # (budgets, seeds)
        (line,) = ax.plot(ks, v.mean(1), marker="o", ms=4, label=c)
        ax.fill_between(ks, v.min(1), v.max(1), color=line.get_color(), alpha=0.2)
    ax.plot(ks, [r["baseline"] for r in doc["rows"]], "k--", lw=1, label="baseline (best constant)")
    ax.set_xscale("log")
    ax.set_xlabel("labelled frames (earliest first)")
    unit = f" ({doc['unit']})" if doc["unit"] else ""
    better = "higher" if doc["higher_is_better"] else "lower"
    ax.set_ylabel(f"{doc['primary']}{unit}, {better} is better")
    ax.set_title(f"{doc['task']}: test on the {doc['n_test']} latest frames" +
                 (" (labels shuffled)" if doc["shuffled_labels"] else ""), fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def cmd_eval(args: argparse.Namespace) -> int:
    from fth.config import ConfigError
    from heads.labels import LabelError
    from heads.pipeline import newest_encoder
    from store.artifacts import ArtifactError, Registry
    from store.frame_index import FrameIndexError
    from store.paths import Workspace
    from store.recipe import FeatureError

    ws = Workspace.at(args.workspace)
    try:
        if args.seeds < 1:
            raise ValueError("--seeds must be at least 1")
        registry = Registry(ws.artifacts)
        encoders = [registry.card(e, "encoder", "--encoder").id for e in args.encoder] or [newest_encoder(registry)]
        out = Path(args.out) if args.out else ws.root / "eval"
        out.mkdir(parents=True, exist_ok=True)
        docs = []
        for spec in _task_specs(args):
            doc = evaluate_task(spec, args, encoders, registry, ws, lambda line: print(line, flush=True))
            doc["plot"] = plot(out / f"{doc['task']}.png", doc).name
            docs.append(doc)
            better = "higher" if doc["higher_is_better"] else "lower"
            print(f"\n{doc['task']}: {doc['primary']} on {doc['split']} ({better} is better; mean ± half the spread "
                  f"over {args.seeds} head seeds)")  # fmt: skip
            print(table(doc))
    except (LabelError, FeatureError, ArtifactError, FrameIndexError, ConfigError, ValueError, OSError) as e:
        print(f"fth eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    (out / "eval.json").write_text(json.dumps({"encoders": encoders, "tasks": docs}, indent=1, default=float) + "\n")
    print(f"\neval.json and plots: {out}")
    return 0
