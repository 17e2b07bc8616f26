"""`fth heads`: fit task heads on stored embeddings, list them, export frames to label, predict on images.

It lives in `fth/` because it wires the two halves: `fit` and `export` embed the frames the store lacks with the
encoder job (`encoder.embed.run_embed`), and `predict` runs the encoder on images; `heads/` itself never imports
`encoder/`.

fth heads fit --task T --labels PATH|catalog [--format F] [--classes classes.json] [--encoder ID] [--config C]
              [--set k=v] [--workspace W] [--name NAME] [--out DIR] [--features auto|pooled|grid] [--layers -1]
fth heads list [--workspace W]
fth heads export --count N --method random|kcenter|uncertainty|hybrid --out tasks.json [--task T --labels L] ...
fth heads predict --head ID IMAGE... [--encoder ID] [--json]
fth heads adapt --from OLD --to NEW [--frames 300] [--method ridge|procrustes] [--source S] [--out DIR]
fth heads refit --encoder NEW [--from OLD] [--tolerance 0.02] [--max-flip-rate 0.05] [--shuffle-labels] [--out DIR]

`fit` prints a metrics-vs-baseline table and ends with `head: <id>` on its own line. `adapt` and `refit` print a table
per head and end with the JSON they wrote (`adapt: <path>`, `gate: <path>`); `refit` also prints `serve: <ids>`.
Wrong input (labels naming unknown frames, masks of the wrong size, unknown classes, a head on another encoder
without an adapter) is one line on stderr with the counts, and exit code 2. No torch import until a handler runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fth.cli import add_config_args

WS_HELP = "workspace folder (default: $FTH_WORKSPACE or ./workspace)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("heads", help="fit, list, export and run tiny task heads on embeddings")
    hs = p.add_subparsers(dest="heads_cmd", metavar="ACTION", required=True)

    fit = hs.add_parser("fit", help="fit a head on labelled frames' embeddings and register it")
    fit.add_argument("--task", required=True, help="a registered task: people_count, time_of_day, depth, "
                     "segmentation, detection")  # fmt: skip
    fit.add_argument("--labels", required=True, help="labels file or folder, or `catalog` (time_of_day only)")
    fit.add_argument("--format", default="auto", help="csv, coco, labelstudio, masks, depth or catalog (default: "
                     "detected from the path among the formats the task reads)")  # fmt: skip
    fit.add_argument("--classes", help="class list JSON for masks (default: classes.json inside the masks folder)")
    fit.add_argument("--encoder", default="", help="encoder id (default: the newest registered)")
    add_config_args(fit, shown="the task's preset: configs/heads.yaml for scalar tasks, heads_dense.yaml for maps, "
                    "heads_detect.yaml for boxes")  # fmt: skip
    fit.add_argument("--workspace", default=None, help=WS_HELP)
    fit.add_argument("--name", help="head name the server answers under (default: the task)")
    fit.add_argument("--out", help="plots and metrics.json folder (default: <workspace>/heads/<head id>)")
    fit.add_argument("--features", default="auto", choices=["auto", "pooled", "grid"],
                     help="pooled vectors or token grids (auto: pooled for time_of_day, grids otherwise)")  # fmt: skip
    fit.add_argument("--layers", default="-1", help="encoder blocks whose grids are read, comma-separated (-1 last)")
    fit.add_argument("--column", help="CSV value column (default: value, or the task's column)")
    fit.add_argument("--time-unit", default="hours", choices=["hours", "minutes", "seconds"])
    fit.add_argument(
        "--depth-scale", type=float, help="16-bit depth PNG units per metre (default: depth.json there, else 1000 = mm)"
    )
    fit.add_argument("--max-label-side", type=int, default=320, help="dense labels downsampled to this (nearest)")
    fit.add_argument("--source", help="only frames of this catalog source")
    fit.set_defaults(func=cmd_fit)

    ls = hs.add_parser("list", help="registered heads: id, task, encoder, metric vs baseline")
    ls.add_argument("--workspace", default=None, help=WS_HELP)
    ls.set_defaults(func=cmd_list)

    from fth.label_cli import add_select_args, cmd_select  # the one selection path (fth label select)

    ex = hs.add_parser("export", help="choose frames to label and write them as Label Studio tasks")
    add_select_args(ex)
    ex.set_defaults(func=cmd_select)

    pr = hs.add_parser("predict", help="run a registered head on image files")
    pr.add_argument("--head", required=True, help="head id (or unique prefix, or artifact folder)")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--encoder", default="", help="encoder to run (default: the head's own; another is refused)")
    pr.add_argument("--json", action="store_true", help="print full predictions (dense maps included) as JSON lines")
    pr.add_argument("--max-pixels", type=int, default=50_000_000, help="refuse larger images (decoded pixels)")
    pr.add_argument("--workspace", default=None, help=WS_HELP)
    pr.set_defaults(func=cmd_predict)

    ad = hs.add_parser("adapt", help="map a new encoder's features to an old one's so the old heads serve on it")
    ad.add_argument("--from", dest="old", required=True, metavar="OLD", help="encoder the heads were fitted on")
    ad.add_argument("--to", dest="new", required=True, metavar="NEW", help="encoder whose features are mapped")
    ad.add_argument("--frames", type=int, default=300, help="newest catalog frames to fit the maps on (default 300)")
    ad.add_argument("--method", default="ridge", choices=["ridge", "procrustes"],
                    help="ridge (default; any widths) or orthogonal Procrustes (equal widths)")  # fmt: skip
    ad.add_argument("--source", help="only frames of this catalog source")
    ad.add_argument("--out", help="folder for adapt.json (default: <workspace>/updates/<OLD>-to-<NEW>)")
    ad.add_argument("--workspace", default=None, help=WS_HELP)
    ad.set_defaults(func=cmd_adapt)

    rf = hs.add_parser("refit", help="refit every head of an old encoder on a new one, and gate each")
    rf.add_argument("--encoder", required=True, metavar="NEW", help="encoder to refit the heads on")
    rf.add_argument("--from", dest="old", metavar="OLD", help="encoder whose heads are refit (default: NEW's parent)")
    rf.add_argument("--tolerance", type=float, default=0.02,
                    help="how much worse (relative) a refit head's primary metric may be (default 0.02)")  # fmt: skip
    rf.add_argument("--max-flip-rate", type=float, default=0.05,
                    help="largest share of held-out frames that may flip to worse (default 0.05)")  # fmt: skip
    rf.add_argument("--shuffle-labels", action="store_true", help="refit on permuted labels (a control the gate "
                    "must refuse)")  # fmt: skip
    rf.add_argument("--out", help="folder for gate.json and plots (default: <workspace>/updates/<OLD>-to-<NEW>)")
    rf.add_argument("--workspace", default=None, help=WS_HELP)
    rf.set_defaults(func=cmd_refit)


def _guard(fn):
    """Wrong input -> one line `fth <command> <action>: error: ...` on stderr and exit code 2 (`fth heads` and `fth
    label` actions)."""

    def run(args: argparse.Namespace) -> int:
        from heads.labels import LabelError
        from store.artifacts import ArtifactError
        from store.frame_index import FrameIndexError
        from store.recipe import FeatureError

        try:
            return fn(args)
        except (LabelError, FeatureError, ArtifactError, FrameIndexError, ValueError, OSError) as e:
            msg = " ".join(str(e).split())
            print(f"fth {args.command} {args.heads_cmd}: error: {msg}", file=sys.stderr)
            return 2

    return run


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    rows = [tuple(_fmt(v) for v in r) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def embed_step(workspace, encoder_id: str):
    """The embed job as `heads.pipeline`'s `embed(frames, recipe)` step: embeds just those (id, path) frames' recipe
    tables (the caller already holds the catalog's FrameIndex, so the paths come with the ids)."""

    def embed(frames: list[tuple[str, Path]], recipe) -> int:
        from encoder.embed import EmbedConfig, run_embed
        from store.paths import Workspace
        from store.recipe import table_layer

        layers = [table_layer(t) for t in recipe.tables() if t != "pooled"]
        cfg = EmbedConfig(workspace=str(Workspace.at(workspace).root), encoder=encoder_id, tokens=bool(layers),
                          layers=layers or [-1])  # fmt: skip
        run_embed(cfg, frames, progress=False, token_ids={i for i, _ in frames})
        return len(frames)

    return embed


@_guard
def cmd_fit(args: argparse.Namespace) -> int:
    from heads.pipeline import FitRequest, newest_encoder, run_fit
    from store.artifacts import Registry
    from store.paths import Workspace
    from store.recipe import parse_layers

    req = FitRequest(
        task=args.task, labels=args.labels, format=args.format, classes=args.classes, encoder=args.encoder,
        config=args.config, overrides=args.overrides, workspace=args.workspace, name=args.name, out=args.out,
        features=args.features, layers=parse_layers(args.layers), column=args.column, time_unit=args.time_unit,
        depth_scale=args.depth_scale, max_label_side=args.max_label_side, source=args.source,
    )  # fmt: skip
    registry = Registry(Workspace.at(args.workspace).artifacts)
    encoder_id = registry.card(args.encoder).id if args.encoder else newest_encoder(registry)
    req.encoder = encoder_id
    rep = run_fit(req, embed=embed_step(args.workspace, encoder_id), report=lambda line: print(line, flush=True))
    task, s = rep.task, rep.summary
    rows = []
    for key, value in rep.metrics.items():
        base = rep.baseline.get(key)
        if isinstance(value, int | float) and key not in ("n", "pixels"):
            ratio = value / base if isinstance(base, int | float) and base else float("nan")
            rows.append((key + (" *" if key == task.primary else ""), value, base, ratio))
    print(f"{task.name} head ({s['head']}, {s['params']} params) on {rep.recipe} of encoder {rep.encoder_id}")
    print(f"frames: {s['split']}")
    print(f"best step {s['best_step']} of {s['max_steps']} (chosen on validation), {s['fit_seconds']:.1f}s; "
          f"metrics on the {s['reported_on']} frames (* = primary, "
          f"{'higher' if task.higher_is_better else 'lower'} is better)")  # fmt: skip
    print(_table(("metric", "head", "baseline", "head/baseline"), rows))
    for note in s["notes"]:
        print(f"note: {note}")
    print(f"plots and metrics.json: {rep.out}")
    print(f"head: {rep.head_id}")
    return 0


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    from store.artifacts import Registry
    from store.paths import Workspace

    rows = []
    for card in Registry(Workspace.at(args.workspace).artifacts).list("head"):
        m, task = card.metrics, card.config.get("task", {}).get("name", "?")
        primary, held = m.get("primary"), m.get("test", {})
        metric = f"{primary} {_fmt(held.get(primary))} vs {_fmt(m['baseline'].get(primary))}" if primary else "-"
        rows.append((card.id, card.name or "", task, card.parents.get("encoder", "?"), metric,
                     m.get("features", "-"), card.created))  # fmt: skip
    if not rows:
        print("no heads registered")
        return 0
    print(_table(("id", "name", "task", "encoder", "metric vs baseline", "features", "created"), rows))
    return 0


@_guard
def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from encoder.checkpoint import load_encoder
    from encoder.preprocess import normalize
    from heads.artifact import load_head, predict
    from server.images import APIError, Limits, decode
    from store.artifacts import Registry
    from store.paths import Workspace

    registry = Registry(Workspace.at(args.workspace).artifacts)
    card = registry.card(args.head)
    encoder_id = registry.card(args.encoder).id if args.encoder else card.parents.get("encoder", "")
    head = load_head(card.id, registry, encoder_id)  # refuses a head of another encoder
    model, _ = load_encoder(encoder_id, registry)
    size = tuple(model.cfg.img_size)
    for path in args.images:
        data = Path(path).read_bytes()
        try:  # the server's own checks: empty, truncated, not an image, or too many pixels are one-line errors
            arr, hw = decode(data, size, Limits(1, args.max_pixels), label=path)
        except APIError as e:
            raise ValueError(e.message) from None
        with torch.inference_mode():
            x = normalize(torch.from_numpy(arr[None].copy()), model.cfg)  # (1, 3, H, W)
            feats = head.recipe.assemble(model.tables(x, head.recipe.tables()))
        answer = predict(head, feats, sizes=[hw])[0]
        if args.json:
            print(json.dumps({"image": path, "head": card.id, **answer}))
        else:
            print(f"{path}  {head.task.describe(answer)}")
    return 0


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


@_guard
def cmd_adapt(args: argparse.Namespace) -> int:
    from heads.adapt import run_adapt

    embed_for = lambda enc: embed_step(args.workspace, enc)  # noqa: E731
    doc = run_adapt(args.workspace, args.old, args.new, args.frames, args.method, args.source, embed_for,
                    lambda line: print(line, flush=True), args.out)  # fmt: skip
    rows = [(h["name"], h["task"], h.get("primary", "-"), h.get("old", "-"), h.get("adapted", "-"),
             h.get("raw_new", "-"), _pct(h.get("retention")), _pct(h.get("flip_rate")), h.get("note", ""))
            for h in doc["heads"]]  # fmt: skip
    if rows:
        print(f"old heads on their held-out frames: on {doc['from']} features vs through the adapter on {doc['to']}")
        print(_table(("head", "task", "metric", "old", "adapted", "raw new", "retention", "neg. flips", "note"), rows))
    print(f"adapt: {doc['path']}")
    return 0


@_guard
def cmd_refit(args: argparse.Namespace) -> int:
    from heads.gate import GateConfig
    from heads.refit import run_refit

    if not 0 <= args.tolerance < 1 or not 0 <= args.max_flip_rate <= 1:
        raise ValueError(f"--tolerance {args.tolerance} and --max-flip-rate {args.max_flip_rate} must be in [0, 1)")
    doc = run_refit(args.workspace, args.encoder, args.old, GateConfig(args.tolerance, args.max_flip_rate),
                    args.shuffle_labels, lambda enc: embed_step(args.workspace, enc),
                    lambda line: print(line, flush=True), args.out)  # fmt: skip
    rows = [(h["name"], h["labels"], h["refit_head"] or "-", h.get("primary", "-"), h.get("old_metric", "-"),
             h.get("refit_metric", "-"), h.get("adapted_metric", "-") or "-", _pct(h.get("flip_rate")),
             h["decision"]) for h in doc["heads"]]  # fmt: skip
    if rows:
        print(f"gate (tolerance {args.tolerance:.0%}, negative flips <= {args.max_flip_rate:.0%}); old head on "
              f"{doc['from']} vs refit on {doc['to']}, same held-out frames")  # fmt: skip
        print(_table(("head", "labels", "refit", "metric", "old", "refit", "adapted", "neg. flips", "decision"), rows))
        for h in doc["heads"]:
            print(f"{h['name']}: {h['decision']}: {h['reason']}")
    else:
        print(f"no heads are registered on encoder {doc['from']}")
    if doc["unservable"]:
        print(f"unservable on {doc['to']} (no promoted refit, no adapter): {' '.join(doc['unservable'])}")
    print(f"gate: {doc['path']}")
    print(f"serve: {' '.join(doc['serve'])}")
    return 0
