"""`fth label`: choose the frames worth labelling next.

    fth label select --count N --method random|kcenter|uncertainty|hybrid --out tasks.json [--task T --labels L]
                     [--encoder ID] [--source S] [--seed 0] [--ensemble 5] [--switch-at 100] [--config C] [--set k=v]

`choose` is the one selection path: `fth label select`, `fth heads export` and `fth label push` (fth.label_studio_cli,
which adds `push` and `pull` to this command) all call it. It lives in `fth/` because it wires the two halves: the
frames come from the catalog, their embeddings from the store (embedding what it lacks through the encoder), the
choice from `heads.select.choose_indices` (the one place a method name becomes frames). `uncertainty` and `hybrid`
read the task's labels collected so far the way `fth heads fit` reads them (`heads.pipeline.labelled`), fit an ensemble
of the task's heads on them (`heads.active`) and score every unlabelled frame by the members' disagreement.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fth.cli import add_config_args
from fth.heads_cli import WS_HELP, _guard, embed_step
from heads.select import METHODS, SWITCH_AT  # no torch: the method names live with the methods

SCORED = ("uncertainty", "hybrid")  # methods that need a task and its labels


@dataclass
class Selection:
    """The chosen frames in labelling order (rank 0 first), and how they were chosen."""

    frame_ids: list[str]
    paths: list[str]
    method: str
    encoder: str | None  # the encoder whose embeddings the choice used (None for random)
    pool: int  # frames it chose from
    scores: list[float] = field(default_factory=list)  # per chosen frame, when the method scores frames
    how: str = ""  # the rule that chose (hybrid: typiclust or uncertainty)
    detail: str = ""  # e.g. the ensemble that scored the frames

    def describe(self) -> str:
        how = self.method if self.how in ("", self.method) else f"{self.method}: {self.how}"
        how = f"{how} over {self.encoder} embeddings" if self.encoder else how
        return f"{len(self.frame_ids)} of {self.pool} frames ({how}{'; ' + self.detail if self.detail else ''})"


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
    task: str | None = None,
    labels: str | None = None,
    label_format: str = "auto",
    ensemble: int = 5,
    switch_at: int = SWITCH_AT,
    config: str | None = None,
    overrides: Sequence[str] = (),
) -> Selection:
    """Choose `count` catalog frames to label next by `method`, skipping the frame ids in `labelled` and every frame
    `labels` names; raises ValueError (or the label / feature errors) on wrong input.

    Args:
        task, labels: the task and its labels collected so far (a file or folder `fth heads fit` reads); needed by
            `uncertainty` and `hybrid`.  label_format: as `fth heads fit --format`.
        ensemble: heads in the ensemble (K).  switch_at: hybrid's switch, in labelled frames.
        config, overrides: the ensemble's FitConfig preset (default: the task's) and `--set` items.
    """
    from fth.config import build
    from heads.active import ensemble_from_labels
    from heads.fit import FitConfig
    from heads.pipeline import FitRequest, newest_encoder, stored_features
    from heads.pipeline import labelled as read_labelled
    from heads.select import choose_indices
    from store.artifacts import Registry
    from store.frame_index import FrameIndex
    from store.paths import Workspace
    from store.recipe import FeatureRecipe

    if method not in METHODS:
        raise ValueError(f"selection method {method!r}: expected one of {', '.join(METHODS)}")
    if count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    if method in SCORED and not (task and labels):
        raise ValueError(f"--method {method} needs --task and --labels (the labels collected so far)")
    if ensemble < 2:
        raise ValueError(f"--ensemble must be >= 2 (members that can disagree), got {ensemble}")
    ws = Workspace.at(workspace)
    index = FrameIndex(ws.root, ws.catalog, source)
    ids, paths = [r.id for r in index.rows], [r.path for r in index.rows]
    if not ids:
        raise ValueError(f"no frames in the catalog{' for source ' + source if source else ''}")
    label_set, task_obj = None, None
    if task and labels:  # read even for methods that do not score, so their frames are skipped
        req = FitRequest(task=task, labels=labels, format=label_format, workspace=workspace, source=source)
        task_obj, label_set, _, _ = read_labelled(req, index, report)
    done = set(labelled) | set(label_set.ids if label_set else ())
    done_idx = [i for i, f in enumerate(ids) if f in done]
    if len(done_idx) >= len(ids):
        raise ValueError(f"all {len(ids)} catalog frames are labelled already: nothing left to choose")
    encoder_id, x_pooled, detail = None, None, []
    needs_pooled = method == "kcenter" or (method == "hybrid" and len(done_idx) < switch_at)
    if method != "random":
        registry = Registry(ws.artifacts)
        enc_card = registry.card(encoder or newest_encoder(registry), "encoder", "--encoder")
        encoder_id = enc_card.id
    embed = embed_step(workspace, encoder_id) if encoder_id else None
    if needs_pooled:
        x_pooled, _, _ = stored_features(ws, index, encoder_id, ids, FeatureRecipe("pooled"), embed, report)

    def uncertainty():
        recipe = FeatureRecipe.for_encoder(enc_card.config, task_obj.default_form)
        x, recipe, _ = stored_features(ws, index, encoder_id, ids, recipe, embed, report)
        cfg = build(FitConfig, config or task_obj.preset, list(overrides))
        times = [index.by_id[i].captured_at for i in ids]
        ens = ensemble_from_labels(task_obj, label_set, ids, x, times, cfg, recipe, ensemble, seed)
        detail.append(f"{ensemble} {task_obj.name} heads on {len(label_set)} labels, fitted in {ens.seconds:.1f} s")
        return ens.uncertainty(x)

    choice = choose_indices(method, count, len(ids), embeddings=x_pooled, labelled=done_idx, seed=seed,
                            uncertainty=uncertainty, switch_at=switch_at)  # fmt: skip
    return Selection([ids[i] for i in choice.idx], [paths[i] for i in choice.idx], method, encoder_id,
                     len(ids) - len(done_idx), choice.scores, choice.how, "; ".join(detail))  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="choose frames to label (and push them to / pull them from Label Studio)")
    ls = p.add_subparsers(dest="heads_cmd", metavar="ACTION", required=True)
    sel = ls.add_parser("select", help="choose frames to label and write them as Label Studio tasks")
    add_select_args(sel)
    sel.set_defaults(func=cmd_select)


def add_select_args(p: argparse.ArgumentParser) -> None:
    """The selection flags `fth label select` and `fth heads export` share."""
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--method", default="kcenter", choices=METHODS,
                   help="random, kcenter (diverse), uncertainty (where an ensemble of heads disagrees), hybrid "
                   "(typical frames while fewer than --switch-at are labelled, uncertain after)")  # fmt: skip
    p.add_argument("--out", required=True, help="tasks JSON to write")
    p.add_argument("--task", help="the task whose heads score frames (uncertainty, hybrid)")
    p.add_argument("--labels", help="the task's labels so far, as `fth heads fit --labels` reads them (uncertainty, "
                   "hybrid; with another method, their frames are skipped)")  # fmt: skip
    p.add_argument("--format", dest="label_format", default="auto", help="--labels format, as for fth heads fit")
    p.add_argument("--encoder", default="", help="encoder whose embeddings are used (default newest)")
    p.add_argument("--source", help="only frames of this catalog source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ensemble", type=int, default=5, metavar="K", help="heads in the ensemble (default 5)")
    switch = f"hybrid: labelled frames from which on it picks uncertain ones (default {SWITCH_AT})"
    p.add_argument("--switch-at", type=int, default=SWITCH_AT, metavar="N", help=switch)
    add_config_args(p, shown="the task's fitting preset (the ensemble's heads)")
    p.add_argument("--workspace", default=None, help=WS_HELP)


@_guard
def cmd_select(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from heads.select import label_studio_tasks

    sel = choose(args.workspace, args.count, args.method, encoder=args.encoder, source=args.source, seed=args.seed,
                 task=args.task, labels=args.labels, label_format=args.label_format, ensemble=args.ensemble,
                 switch_at=args.switch_at, config=args.config, overrides=args.overrides)  # fmt: skip
    extra = [{"uncertainty": s} for s in sel.scores] if sel.scores else None
    Path(args.out).write_text(json.dumps(label_studio_tasks(sel.frame_ids, sel.paths, extra=extra), indent=1))
    print(f"wrote {sel.describe()} as Label Studio tasks to {args.out}")
    return 0
