"""`fth label`: choose the frames worth labelling next.

    fth label select --count N --method kcenter|random --out tasks.json [--task T] [--encoder ID] [--source S]

`choose` is the one selection path: `fth label select`, `fth heads export` and `fth label push` (fth.label_studio_cli,
which adds `push` and `pull` to this command) all call it. It lives in `fth/` because it wires the two halves: the
frames come from the catalog, their embeddings from the store (embedding what it lacks through the encoder), the
choice from `heads.select`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fth.heads_cli import WS_HELP, _guard, embed_step

METHODS = ("kcenter", "random")


@dataclass
class Selection:
    """The chosen frames in labelling order (rank 0 first), and how they were chosen."""

    frame_ids: list[str]
    paths: list[str]
    method: str
    encoder: str | None  # the encoder whose embeddings the choice used (None for random)
    pool: int  # frames it chose from
    scores: list[float] = field(default_factory=list)  # per chosen frame, when the method scores frames

    def describe(self) -> str:
        how = f"{self.method} over {self.encoder} pooled embeddings" if self.encoder else self.method
        return f"{len(self.frame_ids)} of {self.pool} frames ({how})"


def choose(
    workspace: str | None,
    count: int,
    method: str = "kcenter",
    *,
    encoder: str = "",
    source: str | None = None,
    labelled: Sequence[str] = (),
    seed: int = 0,
    report: Callable[[str], None] = print,
) -> Selection:
    """Choose `count` catalog frames to label next by `method`, skipping the frame ids in `labelled`; raises
    ValueError on wrong input (no frames, unknown method)."""
    from heads.pipeline import newest_encoder, stored_features
    from heads.select import kcenter_greedy, select_random
    from store.artifacts import Registry
    from store.frame_index import FrameIndex
    from store.paths import Workspace
    from store.recipe import FeatureRecipe

    if method not in METHODS:
        raise ValueError(f"selection method {method!r}: expected one of {', '.join(METHODS)}")
    if count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    ws = Workspace.at(workspace)
    index = FrameIndex(ws.root, ws.catalog, source)
    ids, paths = [r.id for r in index.rows], [r.path for r in index.rows]
    if not ids:
        raise ValueError(f"no frames in the catalog{' for source ' + source if source else ''}")
    done = set(labelled)
    encoder_id = None
    if method == "kcenter":
        registry = Registry(ws.artifacts)
        encoder_id = registry.card(encoder).id if encoder else newest_encoder(registry)
        embed = embed_step(workspace, encoder_id)
        x, _, _ = stored_features(ws, index, encoder_id, ids, FeatureRecipe("pooled"), embed, report)
        idx = kcenter_greedy(x, count, seed, [i for i, f in enumerate(ids) if f in done])
    else:
        pool = [i for i, f in enumerate(ids) if f not in done]
        idx = [pool[j] for j in select_random(len(pool), count, seed)]
    return Selection([ids[i] for i in idx], [paths[i] for i in idx], method, encoder_id, len(ids) - len(done))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="choose frames to label (and push them to / pull them from Label Studio)")
    ls = p.add_subparsers(dest="heads_cmd", metavar="ACTION", required=True)
    sel = ls.add_parser("select", help="choose frames to label and write them as Label Studio tasks")
    add_select_args(sel)
    sel.set_defaults(func=cmd_select)


def add_select_args(p: argparse.ArgumentParser) -> None:
    """The selection flags `fth label select` and `fth heads export` share."""
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--method", default="kcenter", choices=METHODS)
    p.add_argument("--out", required=True, help="tasks JSON to write")
    p.add_argument("--encoder", default="", help="encoder whose pooled embeddings k-center uses (default newest)")
    p.add_argument("--source", help="only frames of this catalog source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workspace", default=None, help=WS_HELP)


@_guard
def cmd_select(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from heads.select import label_studio_tasks

    sel = choose(args.workspace, args.count, args.method, encoder=args.encoder, source=args.source, seed=args.seed)
    Path(args.out).write_text(json.dumps(label_studio_tasks(sel.frame_ids, sel.paths), indent=1))
    print(f"wrote {sel.describe()} as Label Studio tasks to {args.out}")
    return 0
