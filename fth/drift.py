"""`fth drift`: has a camera's picture moved? Per source and local day (or hour), a drift score of that window's
pooled embeddings against a reference window's (heads.drift), as a table, drift.json and drift.png.

fth drift --reference 2026-05-01..2026-05-07 [--window 1d|1h] [--since DAY|HOUR] [--until ...] [--method auc|mmd]
          [--threshold X] [--source S ...] [--encoder ID] [--embed] [--out DIR] [--workspace W] [--config C] [--set k=v]

The latest score of each source goes to `<workspace>/drift/latest.json` (store.drift_latest), which the server exports
as Prometheus gauges. Windows with a score at or past the threshold are flagged (`*` in the table) and the command
exits 1 when any is; wrong input (unknown source, empty reference window, an encoder without embeddings) is one line
on stderr and exit code 2. It lives in `fth/` because `--embed` runs the encoder's embed job
(`fth.heads_cli.embed_step`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from fth.cli import add_config_args

WS_HELP = "workspace folder (default: $FTH_WORKSPACE or ./workspace)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drift", help="score how far each source's embeddings moved from a reference window")
    p.add_argument("--reference", required=True, metavar="DAY..DAY", help="reference local days, inclusive, e.g. "
                   "2026-05-01..2026-05-07 (or hours 2026-05-01T08..2026-05-01T11, or minutes "
                   "2026-05-01T08:00..2026-05-01T08:09)")  # fmt: skip
    p.add_argument("--window", default="1d", help="score per local day (1d), hour (1h) or N minutes (e.g. 10m; N "
                   "divides 60) (default 1d)")  # fmt: skip
    p.add_argument("--since", help="first window scored, as a window key: YYYY-MM-DD, YYYY-MM-DDTHH or "
                   "YYYY-MM-DDTHH:MM (default: after the reference)")  # fmt: skip
    p.add_argument("--until", help="windows before this one only (exclusive)")
    p.add_argument("--method", choices=["auc", "mmd"], help="domain classifier AUC or MMD permutation test "
                   "(default: the config's, auc)")  # fmt: skip
    p.add_argument("--threshold", type=float, help="auc: flag at AUC >= X (default 0.75); mmd: flag at p <= X "
                   "(default 0.01)")  # fmt: skip
    p.add_argument("--source", action="append", default=[], help="only this catalog source (repeatable)")
    p.add_argument("--encoder", default="", help="encoder whose pooled embeddings are compared (default: newest)")
    p.add_argument("--embed", action="store_true", help="embed the frames the store lacks first")
    p.add_argument("--out", help="folder for drift.json and drift.png (default: <workspace>/drift)")
    p.add_argument("--workspace", default=None, help=WS_HELP)
    add_config_args(p, shown="heads.drift.DriftConfig defaults")
    p.set_defaults(func=cmd_drift)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace):
    """(scores, config, encoder id, out folder); raises DriftError / ArtifactError / FrameIndexError on bad input."""
    import dataclasses
    from pathlib import Path

    from fth.config import build
    from heads.drift import DriftConfig, DriftError, FrameRef, parse_days, plot_scores, score_sources
    from store.artifacts import Registry
    from store.drift_latest import write_latest
    from store.embeddings import EmbeddingStore
    from store.frame_index import FrameIndex
    from store.paths import Workspace
    from store.recipe import FeatureRecipe

    ws = Workspace.at(args.workspace)
    cfg = build(DriftConfig, args.config, args.overrides)
    if args.method:
        cfg = dataclasses.replace(cfg, method=args.method, threshold=0.0)
    if args.threshold is not None:
        cfg = dataclasses.replace(cfg, threshold=args.threshold)
    reference = parse_days(args.reference)
    registry = Registry(ws.artifacts)
    encoder_id = registry.card(args.encoder).id if args.encoder else registry.newest("encoder", ": pass --encoder").id
    index = FrameIndex(ws.root, ws.catalog)
    known = sorted({r.source for r in index.rows})
    unknown = [s for s in args.source if s not in known]
    if unknown:
        raise DriftError(f"unknown source {unknown[0]!r} (the catalog has: {', '.join(known) or 'none'})")
    rows = [r for r in index.rows if not args.source or r.source in args.source]
    if not rows:
        raise DriftError("no frames in the catalog")
    store = EmbeddingStore(ws.embeddings, encoder_id)
    if args.embed:
        from fth.heads_cli import embed_step

        have = set(store.index("pooled"))
        missing = [r.id for r in rows if r.id not in have]
        if missing:
            print(f"embedding {len(missing)} frames that have no pooled embeddings yet (encoder {encoder_id})")
            embed_step(args.workspace, encoder_id)([(i, index.path(i)) for i in missing], FeatureRecipe("pooled"))
            store = EmbeddingStore(ws.embeddings, encoder_id)
    stored = store.index("pooled")
    if not stored:
        raise DriftError(f"encoder {encoder_id} has no embeddings in {ws.embeddings} (run fth embed --encoder "
                         f"{encoder_id}, or pass --embed)")  # fmt: skip

    def embeddings(ids):
        ids = [i for i in ids if i in stored]
        return dict(zip(ids, store.get(ids, "pooled").astype("float32"), strict=True)) if ids else {}

    frames = [FrameRef(r.id, r.source, r.local_day, r.local_tod) for r in rows]
    scores = score_sources(frames, embeddings, reference, cfg, args.window, args.since, args.until)
    scored = [s for s in scores if s.score is not None]
    if not scored:
        after = args.since or f"after {reference[1]}"
        raise DriftError(f"no window {after} has {cfg.min_frames} embedded frames to score (empty window?)")
    out = Path(args.out) if args.out else ws.root / "drift"
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    doc = {"encoder": encoder_id, "method": cfg.method, "threshold": cfg.limit, "window": args.window,
           "reference": f"{reference[0]}..{reference[1]}", "computed_at": now, "config": dataclasses.asdict(cfg),
           "windows": [s.to_json() for s in scores]}  # fmt: skip
    (out / "drift.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot_scores(out / "drift.png", scores, cfg)
    latest = {}
    for s in scored:  # windows come sorted per source: the last one scored is the latest
        latest[s.source] = {**s.to_json(), "method": cfg.method, "threshold": cfg.limit, "encoder": encoder_id,
                            "reference": doc["reference"], "computed_at": now}  # fmt: skip
    write_latest(ws.root, latest)
    return scores, cfg, encoder_id, out


def cmd_drift(args: argparse.Namespace) -> int:
    from heads.drift import DriftError
    from store.artifacts import ArtifactError
    from store.frame_index import FrameIndexError

    try:
        scores, cfg, encoder_id, out = run(args)
    except (DriftError, ArtifactError, FrameIndexError, OSError) as e:
        print(f"fth drift: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    what = "AUC" if cfg.method == "auc" else "MMD^2"
    rule = f"AUC >= {cfg.limit:g}" if cfg.method == "auc" else f"p <= {cfg.limit:g}"
    header = ("source", "window", "frames", what, "p", "drift")
    rows = [(s.source, s.window, str(s.frames), _fmt(s.score), _fmt(s.p_value),
             "*" if s.flagged else ("too few frames" if s.score is None else "")) for s in scores]  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"drift of encoder {encoder_id} pooled embeddings, {cfg.method} ({rule} flags *)")
    for line in (header, *rows):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    flagged = sorted({s.source for s in scores if s.flagged})
    print(f"drift.json and drift.png: {out}")
    print(f"flagged: {', '.join(flagged) if flagged else 'none'}")
    return 1 if flagged else 0
