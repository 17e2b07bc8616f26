"""`fth heads fit` end to end: labels -> catalog frames -> stored embeddings -> fit -> registered head, plots and
metrics.json. The command layer (`fth/heads_cli.py`) parses arguments, supplies the embed step and prints.

    run_fit   the whole fit; `embed(frames, recipe)` is called with the (id, path) pairs of the labelled frames the
              store lacks (the command layer runs the embed job: heads never loads an encoder or embeds an image)

Joins are on our frame id; paths (absolute, relative to the workspace, or a catalog file's stem) are resolved to ids
through the catalog's `FrameIndex`. Map labels larger than `max_label_side` are downsampled (nearest, so class ids and
invalid-depth zeros survive) before fitting; metrics are reported at that size.
Shapes: B frames, (H, W) label size, gh/gw token grid, D width.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heads.labels import LabelError, LabelSet, _first

log = logging.getLogger(__name__)
Embed = Callable[[list[tuple[str, Path]], Any], int]  # ((frame id, path) pairs, FeatureRecipe) -> frames embedded


@dataclass
class FitRequest:
    """What `fth heads fit` was asked.

    Args:
        task: a registered task name.  labels: labels file/folder, or `catalog` (time_of_day from local capture time).
        format: a format the task reads, or `auto` (detected from the path).  classes: class list JSON for masks.
        encoder: encoder id (empty = newest registered).  config: FitConfig preset/YAML (None = the task's preset).
        overrides: `--set` items.  workspace: workspace folder.  name: head name (default: the task).
        out: folder for plots and metrics.json (default `<workspace>/heads/<head id>`).
        features: `pooled`, `grid` or `auto` (the task's default form).
        layers: encoder blocks read for grid features (concatenated on D).
        column: CSV value column.  time_unit: unit of numeric times of day.
        depth_scale: 16-bit PNG units per metre (None: the labels' depth.json sidecar, else 1000).
        max_label_side: map labels are downsampled (nearest) to at most this many pixels on their longer side.
        source: only frames of this catalog source.
        shuffle_labels: permute the label values among the frames (seeded): a control head that must not beat the
            baseline, and the deliberately worse refit the gate test refuses.
        frames: only these labelled frame ids (empty: all); `fth heads refit` passes a catalog-labelled head's own
            frames, since the catalog's label set grows with every frame collected.
    """

    task: str
    labels: str
    format: str = "auto"
    classes: str | None = None
    encoder: str = ""
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    workspace: str | None = None
    name: str | None = None
    out: str | None = None
    features: str = "auto"
    layers: tuple[int, ...] = (-1,)
    column: str | None = None
    time_unit: str = "hours"
    depth_scale: float | None = None
    max_label_side: int = 320
    source: str | None = None
    shuffle_labels: bool = False
    frames: tuple[str, ...] = ()

    def recorded(self) -> dict[str, Any]:
        """The request as a head card records it (`parents.request`) so `fth heads refit` can repeat it: paths made
        absolute, the run-specific fields (workspace, out, encoder, frames) left out."""
        doc = dataclasses.asdict(self)
        for key in ("workspace", "out", "encoder", "frames"):
            doc.pop(key)
        for key in ("labels", "classes", "config"):
            if doc[key] and doc[key] != "catalog" and Path(doc[key]).exists():
                doc[key] = str(Path(doc[key]).resolve())
        doc["layers"] = list(doc["layers"])
        return doc


@dataclass
class FitReport:
    head_id: str
    encoder_id: str
    task: Any
    metrics: dict[str, Any]
    baseline: dict[str, Any]
    embedded: int
    recipe: str
    out: Path
    summary: dict[str, Any]
    test_ids: list[str] = field(default_factory=list)  # the held-out frames the metrics are on, in capture order
    labels_digest: str = ""


def label_size(hw: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(H, W) scaled down so the longer side is at most `max_side` (never up)."""
    scale = min(1.0, max_side / max(hw))
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def resize_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) map -> (h, w) by nearest pixel centres (class ids and invalid zeros are kept exactly)."""
    if a.shape[:2] == tuple(hw):
        return a
    rows = ((np.arange(hw[0]) + 0.5) * a.shape[0] / hw[0]).astype(np.int64)
    cols = ((np.arange(hw[1]) + 0.5) * a.shape[1] / hw[1]).astype(np.int64)
    return a[rows[:, None], cols[None, :]]


def newest_encoder(registry) -> str:
    """The id of the newest registered encoder, with the hint a `fth heads` user needs when there is none."""
    return registry.newest("encoder", ": train one (fth train) or pass --encoder").id


def missing_features(store, ids: list[str], recipe) -> list[str]:
    """The frames among `ids` that lack a row in any of the recipe's tables (one index read per table)."""
    have = [set(store.index(t)) for t in recipe.tables()]
    return [i for i in ids if any(i not in h for h in have)]


def digest(labels: LabelSet) -> str:
    h = hashlib.sha256()
    for fid, value in zip(labels.ids, labels.values, strict=True):
        h.update(fid.encode())
        h.update(np.ascontiguousarray(np.asarray(value)).tobytes())
    return h.hexdigest()[:16]


def read_labels(req: FitRequest, index) -> tuple[Any, LabelSet, str]:
    """(the task, configured with the labels' classes; labels keyed by our frame id; the format read)."""
    from heads.tasks import LabelContext, TaskConfig, make_task

    task_cfg = TaskConfig(name=req.task, time_unit=req.time_unit)
    ctx = LabelContext(
        resolver=index.resolve, known=index.by_id, size=index.size, classes=req.classes, depth_scale=req.depth_scale,
        column=req.column, catalog_values=lambda: ([r.id for r in index.rows], [r.local_tod for r in index.rows]),
    )  # fmt: skip
    labels, fmt = make_task(task_cfg).read_labels(req.labels, req.format, ctx)
    if labels.classes:
        task_cfg = dataclasses.replace(task_cfg, classes=tuple(labels.classes))
    return make_task(task_cfg), labels, fmt


def labelled(req: FitRequest, index, report: Callable[[str], None] = print) -> tuple[Any, LabelSet, str, str]:
    """(task, labels ready to fit: restricted to `req.frames`, maps downsampled, shuffled when asked; the format read;
    the labels' digest, taken before any shuffle so a shuffled control still names the labels it permuted)."""
    task, labels, fmt = read_labels(req, index)
    if req.frames:
        keep = set(req.frames)
        pairs = [(i, v) for i, v in zip(labels.ids, labels.values, strict=True) if i in keep]
        labels.ids, labels.values = [i for i, _ in pairs], [v for _, v in pairs]
    if not len(labels):
        raise LabelError(f"labels {req.labels}: no labelled frames")
    if labels.note:
        report(f"labels: {labels.note}")
    for warning in task.check_labels(labels.values):
        report(f"warning: {warning}")
    if task.map_labels:
        hw = label_size(np.asarray(labels.values[0]).shape[:2], req.max_label_side)
        labels.values = [resize_nearest(np.asarray(v), hw) for v in labels.values]
    labels_digest = digest(labels)
    if req.shuffle_labels:
        labels.values = [labels.values[i] for i in np.random.default_rng(0).permutation(len(labels))]
        report("labels: shuffled among the frames (a control)")
    return task, labels, fmt, labels_digest


def stored_features(
    ws, index, encoder_id: str, ids: list[str], recipe, embed: Embed | None,
    report: Callable[[str], None] = print, what: str = "frames",
) -> tuple[Any, Any, int]:  # fmt: skip
    """Features of `ids` (in order) for `encoder_id` in `recipe`'s form -> (features, the recipe completed from them,
    frames embedded). Frames the store lacks are embedded by `embed` first; without it they are an error naming
    them (`what` says what the frames are)."""
    from heads.join import read_features
    from store.embeddings import EmbeddingStore

    missing = missing_features(EmbeddingStore(ws.embeddings, encoder_id), ids, recipe)
    embedded = 0
    if missing:
        if embed is None:
            raise LabelError(f"{len(missing)} {what} have no {'/'.join(recipe.tables())} features for encoder "
                             f"{encoder_id}: {_first(missing)} (fth embed them first)")  # fmt: skip
        report(f"embedding {len(missing)} frames that have no features yet (encoder {encoder_id}, "
               f"tables {recipe.tables()})")  # fmt: skip
        embedded = embed([(i, index.path(i)) for i in missing], recipe)
        still = missing_features(EmbeddingStore(ws.embeddings, encoder_id), missing, recipe)
        if still:
            raise LabelError(f"{len(still)} of {len(missing)} {what} could not be embedded (unreadable files?): "
                             f"{_first(still)}")  # fmt: skip
    x, recipe = read_features(EmbeddingStore(ws.embeddings, encoder_id), ids, recipe)
    return x, recipe, embedded


def run_fit(
    req: FitRequest,
    embed: Embed | None = None,
    report: Callable[[str], None] = print,
    parents: dict[str, Any] | None = None,
) -> FitReport:
    """The whole `fth heads fit`; raises LabelError / FeatureError / ArtifactError / ValueError on wrong input.
    `parents`: extra lineage for the card (a refit names the head it refits)."""
    from fth.config import build
    from heads.artifact import save_head
    from heads.fit import FitConfig, predict_outputs
    from heads.join import fit_from_labels
    from heads.plots import loss_curve
    from store.artifacts import Registry
    from store.frame_index import FrameIndex
    from store.paths import Workspace
    from store.recipe import FeatureRecipe

    ws = Workspace.at(req.workspace)
    registry = Registry(ws.artifacts)
    enc_card = registry.card(req.encoder or newest_encoder(registry), "encoder", "--encoder")
    encoder_id = enc_card.id
    index = FrameIndex(ws.root, ws.catalog, req.source)
    task, labels, fmt, labels_digest = labelled(req, index, report)
    form = task.default_form if req.features == "auto" else req.features
    if task.dense and form != "grid":
        raise LabelError(f"{task.name} reads token grids; --features pooled cannot predict maps or boxes")
    recipe = FeatureRecipe.for_encoder(enc_card.config, form, req.layers)
    ids = index.in_capture_order(labels.ids)
    x, recipe, embedded = stored_features(ws, index, encoder_id, ids, recipe, embed, report, "labelled frames")
    cfg = build(FitConfig, req.config or task.preset, req.overrides)
    times = [index.by_id[i].captured_at for i in ids]
    result = fit_from_labels(task, labels, ids, x, times, cfg, recipe)
    extra = {"features": recipe.describe(), "labels": str(req.labels), "label_format": fmt, "embedded": embedded}
    lineage = {"labels": labels_digest, "label_count": len(labels), "label_path": str(Path(req.labels).resolve())
               if req.labels != "catalog" else "catalog", "request": req.recorded(), "label_frames": ids,
               **(parents or {})}  # fmt: skip
    card = save_head(result, registry, encoder_id, extra, req.name or task.name, lineage)

    out = Path(req.out) if req.out else ws.root / "heads" / card.id
    out.mkdir(parents=True, exist_ok=True)
    test = result.test_idx
    values = labels.as_dict()
    y_test = task.targets([values[ids[j]] for j in test])
    outputs = predict_outputs(result.head, x[test])
    images = None
    if task.plot_frames():
        hw = tuple(y_test.shape[-2:]) if task.map_labels else index.size(ids[test[0]])
        images = [index.image(ids[j], hw) for j in test[: task.plot_frames()]]
    title = f"{task.summary(result.metrics, result.baseline)} ({result.reported_on} n={len(test)})"
    plots = [task.plot(out / f"{task.name}.png", outputs, y_test, images, title),
             loss_curve(out / "loss.png", result.history, task.primary, result.best_step)]  # fmt: skip
    doc = {"task": task.name, "head_id": card.id, "encoder_id": encoder_id, "metrics": result.metrics,
           "baseline": result.baseline, "val_metrics": result.val_metrics, "primary": task.primary,
           "higher_is_better": task.higher_is_better, "unit": task.unit, "reported_on": result.reported_on,
           "n_train": len(result.split.train), "n_val": len(result.split.val), "n_test": len(result.split.test),
           "split": result.split.describe(), "features": recipe.describe(), "embedded": embedded,
           "summary": result.summary(), "plots": [p.name for p in plots]}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return FitReport(card.id, encoder_id, task, result.metrics, result.baseline, embedded, recipe.describe(), out,
                     result.summary(), [ids[j] for j in test], labels_digest)  # fmt: skip
