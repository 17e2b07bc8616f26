"""`fth heads fit` end to end: labels file -> catalog frames -> embedding store (embedding what is missing) -> fit ->
registered head, plots and metrics.json. The CLI (`heads/cli.py`) only parses arguments and prints.

    load_labels     a labels source in any supported format (CSV, COCO, Label Studio, index-PNG masks, depth maps,
                    or `catalog` for time of day) -> LabelSet keyed by our frame id, checked against the catalog
    ensure_embedded embed (encoder.embed.run_embed) the labelled frames the store lacks for the recipe's tables
    run_fit         the whole command; returns a FitReport

Joins are on our frame id; paths (absolute, relative to the workspace, or a catalog file's stem) are resolved to ids
through the catalog (`CatalogIndex.resolve`). Dense labels larger than `max_label_side` are downsampled (nearest, so
class ids and invalid-depth zeros survive) before fitting; metrics are reported at that size.
Shapes: B frames, (H, W) label size, gh/gw token grid, D width.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heads.labels import LabelError, LabelSet, _first

log = logging.getLogger(__name__)
TASKS = ("people_count", "time_of_day", "depth", "segmentation")
FORMATS = ("auto", "csv", "coco", "labelstudio", "masks", "depth")
VALUE_COLUMNS = {"people_count": ("people_count", "people", "count"), "time_of_day": ("time_of_day", "tod", "time")}
HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class FitRequest:
    """What `fth heads fit` was asked.

    Args:
        task: one of TASKS.  labels: labels file/folder, or `catalog` (time_of_day from local capture time).
        format: one of FORMATS (`auto` detects from the path).  classes: class list JSON for masks.
        encoder: encoder id (empty = newest registered).  config: FitConfig preset/YAML (None = by task).
        overrides: `--set` items.  workspace: workspace folder.  name: head name (default: the task).
        out: folder for plots and metrics.json (default `<workspace>/heads/<head id>`).
        features: `pooled`, `grid` or `auto` (grid for people_count and dense tasks, pooled for time_of_day).
        layers: encoder blocks read for grid features (concatenated on D).
        column: CSV value column.  time_unit: unit of numeric times of day.
        depth_scale: 16-bit PNG units per metre (None: 100 for sim labels, which are centimetres, else 1000).
        max_label_side: dense labels are downsampled (nearest) to at most this many pixels on their longer side.
        source: only frames of this catalog source.
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


@dataclass
class FitReport:
    head_id: str
    encoder_id: str
    task: str
    primary: str
    metrics: dict[str, Any]
    baseline: dict[str, Any]
    n_train: int
    n_val: int
    embedded: int
    recipe: str
    out: Path
    summary: dict[str, Any]


class CatalogIndex:
    """The catalog's visible frames in capture order, with lookups by id, by relative/absolute path and by file stem."""

    def __init__(self, root: Path, db_path: Path, source: str | None = None):
        from store.catalog import Catalog

        if not Path(db_path).exists():
            raise LabelError(f"no frame catalog at {db_path} (collect frames first, or pass --workspace)")
        self.root = Path(root)
        with Catalog(root, db_path=db_path, recover=False) as cat:
            self.rows = list(cat.iter_frames(source))
        self.by_id = {r.id: r for r in self.rows}
        self.by_path = {r.path: r.id for r in self.rows}
        self.by_stem = {Path(r.path).stem: r.id for r in self.rows}

    def resolve(self, key: str) -> str | None:
        """A frame id, a path (absolute or relative to the workspace) or a file stem -> our frame id, else None.

        A file named by a 64-hex id the catalog does not know resolves to that id, so the caller's check reports it as
        an unknown frame (with counts) rather than as an unresolvable path."""
        key = str(key)
        if key in self.by_id:
            return key
        path = Path(key)
        if path.is_absolute():
            try:
                rel = path.resolve().relative_to(self.root.resolve()).as_posix()
                if rel in self.by_path:
                    return self.by_path[rel]
            except ValueError:
                pass
        if key in self.by_path:
            return self.by_path[key]
        stem = path.stem
        if stem in self.by_id:
            return stem
        if stem in self.by_stem:
            return self.by_stem[stem]
        return stem if HEX64.fullmatch(stem) else None

    def size(self, frame_id: str) -> tuple[int, int] | None:
        row = self.by_id.get(frame_id)
        return (row.height, row.width) if row else None

    def image(self, frame_id: str, hw: tuple[int, int]) -> np.ndarray:
        """The frame as (H, W, 3) uint8 at `hw` (for plots)."""
        from PIL import Image

        with Image.open(self.root / self.by_id[frame_id].path) as im:
            return np.asarray(im.convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR))


def _find_up(name: str, *folders: Path) -> Path | None:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    return None


def detect_format(task: str, labels: str) -> str:
    """`auto` -> a concrete format from the task and the path."""
    path = Path(labels)
    if labels == "catalog":
        return "catalog"
    if not path.exists():
        raise LabelError(f"labels {labels!r}: no such file or folder")
    dense = {"depth": "depth", "segmentation": "masks"}
    if path.is_dir():
        if task not in dense:
            raise LabelError(f"labels {labels}: a folder holds dense maps; {task} needs a CSV, COCO or LS file")
        return dense[task]
    if path.suffix.lower() == ".csv":
        return dense.get(task, "csv")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, list):
            return "labelstudio"
        if isinstance(data, dict) and "images" in data:
            return "coco"
        raise LabelError(f"labels {labels}: JSON that is neither a Label Studio export (list) nor COCO (images)")
    raise LabelError(f"labels {labels}: cannot tell the format from {path.suffix!r}; pass --format")


def _classes_path(req: FitRequest) -> Path:
    """--classes, else classes.json beside the masks or one folder up (where collector.sim.write_labels puts it)."""
    folder = Path(req.labels) if Path(req.labels).is_dir() else Path(req.labels).parent
    given = Path(req.classes) if req.classes else None
    if given is not None and given.is_file():
        return given
    found = _find_up("classes.json", folder, folder.parent)
    if found is None:
        what = f"--classes {given} does not exist and no" if given else "no --classes given and no"
        raise LabelError(f"{what} classes.json beside {folder} or in {folder.parent}")
    if given is not None:
        log.warning("--classes %s does not exist; using %s", given, found)
    return found


def _depth_scale(req: FitRequest) -> float:
    if req.depth_scale:
        return req.depth_scale
    folder = Path(req.labels) if Path(req.labels).is_dir() else Path(req.labels).parent
    if _find_up("sim.json", folder, folder.parent):
        log.info("depth labels written by the sim: 16-bit PNG in centimetres (scale 100)")
        return 100.0
    return 1000.0


def load_labels(req: FitRequest, cat: CatalogIndex) -> tuple[LabelSet, str]:
    """(labels keyed by our frame id, the concrete format read)."""
    from heads import label_maps, labels

    fmt = detect_format(req.task, req.labels) if req.format == "auto" else req.format
    known = cat.by_id
    if fmt == "catalog":
        if req.task != "time_of_day":
            raise LabelError(f"--labels catalog gives times of day only; {req.task} needs a labels file")
        return LabelSet([r.id for r in cat.rows], [r.local_tod for r in cat.rows], "catalog"), fmt
    if fmt == "csv":
        column = req.column
        if column is None:
            with open(req.labels) as f:
                header = f.readline().strip().split(",")
            column = next((c for c in VALUE_COLUMNS.get(req.task, ()) if c in header and "value" not in header), None)
        return labels.read_csv(req.labels, column, cat.resolve, known), fmt
    if fmt == "coco":
        return labels.read_coco(req.labels, cat.resolve, known), fmt
    if fmt == "labelstudio":
        return labels.read_label_studio(req.labels, req.task, resolver=cat.resolve, known=known), fmt
    if fmt == "masks":
        return label_maps.read_masks(req.labels, _classes_path(req), cat.resolve, known, cat.size), fmt
    if fmt == "depth":
        return label_maps.read_depth(req.labels, _depth_scale(req), cat.resolve, known, cat.size), fmt
    raise LabelError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")


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


def default_form(task: str) -> str:
    return "pooled" if task == "time_of_day" else "grid"


def newest_encoder(registry) -> str:
    """The id of the newest registered encoder, with the hint a `fth heads` user needs when there is none."""
    return registry.newest("encoder", ": train one (fth train) or pass --encoder").id


def ensure_embedded(
    ws, encoder_id: str, cat: CatalogIndex, ids: list[str], form: str, layers: tuple[int, ...],
    report: Callable[[str], None] = print,
) -> int:  # fmt: skip
    """Embed the frames among `ids` that the store lacks for the recipe's tables; returns how many were embedded."""
    from encoder.embed import EmbedConfig, run_embed
    from heads.join import tables_for
    from store.embeddings import EmbeddingStore

    store = EmbeddingStore(ws.embeddings, encoder_id)
    tables = ["pooled", *([] if form == "pooled" else tables_for(form, layers))]
    have = [set(store.index(t)) for t in tables]
    missing = [i for i in ids if any(i not in h for h in have)]
    if not missing:
        return 0
    report(f"embedding {len(missing)} frames that have no features yet (encoder {encoder_id}, tables {tables})")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(missing) + "\n")
    try:
        cfg = EmbedConfig(workspace=str(ws.root), encoder=encoder_id, tokens=form == "grid", layers=list(layers),
                          token_frames=f.name if form == "grid" else None)  # fmt: skip
        run_embed(cfg, [(i, cat.root / cat.by_id[i].path) for i in missing], progress=False)
    finally:
        Path(f.name).unlink(missing_ok=True)
    store = EmbeddingStore(ws.embeddings, encoder_id)
    still = [i for i in missing if any(i not in set(store.index(t)) for t in tables)]
    if still:
        raise LabelError(f"{len(still)} of {len(missing)} labelled frames could not be embedded (unreadable files?): "
                         f"{_first(still)}")  # fmt: skip
    return len(missing)


def _digest(labels: LabelSet) -> str:
    h = hashlib.sha256()
    for fid, value in zip(labels.ids, labels.values, strict=True):
        h.update(fid.encode())
        h.update(np.ascontiguousarray(np.asarray(value)).tobytes())
    return h.hexdigest()[:16]


def run_fit(req: FitRequest, report: Callable[[str], None] = print) -> FitReport:
    """The whole `fth heads fit`; raises LabelError / FeatureError / ArtifactError / ValueError on wrong input."""
    from fth.config import build
    from heads.artifact import save_head
    from heads.fit import FitConfig
    from heads.join import fit_from_labels, read_features
    from heads.plots import plot_fit
    from heads.tasks import TaskConfig
    from store.artifacts import Registry
    from store.paths import Workspace

    if req.task not in TASKS:
        raise LabelError(f"--task {req.task!r}: expected one of {', '.join(TASKS)}")
    dense = req.task in ("depth", "segmentation")
    ws = Workspace.at(req.workspace)
    registry = Registry(ws.artifacts)
    encoder_id = registry.card(req.encoder).id if req.encoder else newest_encoder(registry)
    enc_card = registry.card(encoder_id)
    if enc_card.kind != "encoder":
        raise LabelError(f"--encoder {req.encoder}: {enc_card.id} is a {enc_card.kind!r} artifact, not an encoder")
    cat = CatalogIndex(ws.root, ws.catalog, req.source)
    labels, fmt = load_labels(req, cat)
    if not len(labels):
        raise LabelError(f"labels {req.labels}: no labelled frames")
    if dense:
        hw = label_size(np.asarray(labels.values[0]).shape[:2], req.max_label_side)
        labels.values = [resize_nearest(np.asarray(v), hw) for v in labels.values]
    form = default_form(req.task) if req.features == "auto" else req.features
    layers = tuple(req.layers) if form == "grid" else (-1,)
    if dense and form != "grid":
        raise LabelError(f"{req.task} reads token grids; --features pooled cannot predict maps")
    ids = [r.id for r in cat.rows if r.id in set(labels.ids)]  # capture order
    embedded = ensure_embedded(ws, encoder_id, cat, ids, form, layers, report)

    from store.embeddings import EmbeddingStore

    x, recipe = read_features(EmbeddingStore(ws.embeddings, encoder_id), ids, form, layers)
    recipe.pool = enc_card.config["encoder"].get("pool", "mean")
    cfg = build(FitConfig, req.config or ("heads_dense" if dense else "heads"), req.overrides)
    task_cfg = TaskConfig(req.task, classes=tuple(labels.classes or ()), time_unit=req.time_unit)  # type: ignore[arg-type]
    times = [cat.by_id[i].captured_at for i in ids]
    result = fit_from_labels(task_cfg, labels, ids, x, times, cfg, recipe)
    extra = {"features": recipe.describe(), "labels": str(req.labels), "label_format": fmt, "embedded": embedded}
    card = save_head(result, registry, encoder_id, extra, req.name or req.task, {"labels": _digest(labels)})

    out = Path(req.out) if req.out else ws.root / "heads" / card.id
    out.mkdir(parents=True, exist_ok=True)
    values = [labels.as_dict()[i] for i in ids]
    images = None
    if dense:
        hw = np.asarray(values[0]).shape[:2]
        images = {int(j): cat.image(ids[j], hw) for j in result.val_idx[:4]}  # the frames plot_fit draws
    plot_fit(result, x, values, out, images)
    task = result.task
    doc = {"task": req.task, "head_id": card.id, "encoder_id": encoder_id, "metrics": result.metrics,
           "baseline": result.baseline, "n_train": len(result.train_idx), "n_val": len(result.val_idx),
           "primary": task.primary, "higher_is_better": task.higher_is_better, "features": recipe.describe(),
           "embedded": embedded, "summary": result.summary()}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return FitReport(card.id, encoder_id, req.task, task.primary, result.metrics, result.baseline,
                     len(result.train_idx), len(result.val_idx), embedded, recipe.describe(), out,
                     result.summary())  # fmt: skip
