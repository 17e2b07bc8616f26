"""Scalar label readers and writers, joined on OUR frame id: CSV, COCO, Label Studio.

Formats followed:
- CSV: a header row; a key column `frame_id` (our id) or `path` (resolved to an id by the caller's resolver), and a
  value column (`value`, a named column such as `people_count`, or the only other column).
- COCO detection JSON (cocodataset.org/#format-data): people count per image = annotations of the `person` category
  with `iscrowd` 0; an image without such annotations counts 0. `file_name` is resolved to our frame id.
- Label Studio JSON export (labelstud.io/guide/export#JSON): a list of tasks `{"data": {...}, "annotations": [...]}`;
  our frame id is kept in `data.frame_id` (tasks exported by `heads.select` carry it), else `data.path` is resolved.
  The latest non-cancelled annotation that holds a label wins; what a label is, and each task's labelling config,
  belong to the task (`Task.label_studio_value`, `label_studio_config`, ...): this module only finds and joins them.

Every reader ends in `finish`, which raises `LabelError` naming counts and the first few offenders for duplicate labels,
paths that resolve to no frame, and frame ids the catalog does not know. A resolver is any callable path -> frame id
or None (the catalog provides one); without it a file's stem is taken as the id (and still checked against `known`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
Resolver = Callable[[str], str | None]
KEY_COLUMNS = ("frame_id", "path")


class LabelError(ValueError):
    """Labels that cannot be joined to frames or used as given; the message counts the offenders."""


@dataclass
class LabelSet:
    """Labels keyed by our frame id: `values[i]` labels frame `ids[i]`; `classes` for segmentation masks."""

    ids: list[str]
    values: list[Any]
    source: str = ""
    classes: tuple[str, ...] | None = None
    note: str = ""  # how the reader interpreted the file (units, class list), printed by `fth heads fit`

    def __len__(self) -> int:
        return len(self.ids)

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self.ids, self.values, strict=True))

    def align(self, frame_ids: list[str]) -> tuple[list[int], list[Any]]:
        """Rows of `frame_ids` that have a label, and those labels in that order (the join for fitting)."""
        lookup = self.as_dict()
        rows = [i for i, f in enumerate(frame_ids) if f in lookup]
        return rows, [lookup[frame_ids[i]] for i in rows]


def _first(items: Iterable[Any], k: int = 5) -> str:
    items = list(items)
    more = f", ... (+{len(items) - k} more)" if len(items) > k else ""
    return ", ".join(str(i) for i in items[:k]) + more


def default_resolver(path: str) -> str | None:
    """A file's stem as the frame id (frames named by their id); real joins pass the catalog's resolver."""
    return Path(str(path)).stem or None


def resolve_keys(keys: list[str], resolver: Resolver | None, source: str) -> list[str]:
    """Paths -> frame ids; raises LabelError listing the paths that resolve to nothing."""
    resolver = resolver or default_resolver
    ids = [resolver(k) for k in keys]
    missing = [k for k, i in zip(keys, ids, strict=True) if not i]
    if missing:
        raise LabelError(f"{len(missing)} of {len(keys)} paths in {source} resolve to no frame: {_first(missing)}")
    return [str(i) for i in ids]


def finish(
    ids: list[str],
    values: list[Any],
    source: str,
    known: Container[str] | None = None,
    unknown: str = "error",
    classes: tuple[str, ...] | None = None,
) -> LabelSet:
    """Check duplicates and unknown frames, then build the LabelSet.

    Args:
        known: the frame ids that exist (the catalog's); None skips the check.
        unknown: `error` (default) raises on labels naming unknown frames; `drop` drops them with a warning.
    """
    note = ""
    dup = [k for k, c in Counter(ids).items() if c > 1]
    if dup:  # byte-identical files are one frame: the same label twice is kept once, two different ones are an error
        import numpy as np

        first: dict[str, Any] = {}
        clash = []
        for i, v in zip(ids, values, strict=True):
            if i in first and not np.array_equal(np.asarray(first[i]), np.asarray(v)):
                clash.append(i)
            first.setdefault(i, v)
        if clash:
            raise LabelError(f"{len(set(clash))} frames are labelled more than once, with different values, in "
                             f"{source}: {_first(sorted(set(clash)))}")  # fmt: skip
        ids, values = list(first), list(first.values())
        note = f"{len(dup)} frames labelled twice with the same value (byte-identical files) kept once"
    if known is not None:
        missing = [i for i in ids if i not in known]
        if missing and unknown == "error":
            raise LabelError(f"{len(missing)} of {len(ids)} labels in {source} name unknown frames: {_first(missing)}")
        if missing:
            log.warning("dropping %d labels in %s that name unknown frames: %s", len(missing), source, _first(missing))
            keep = [j for j, i in enumerate(ids) if i in known]
            ids, values = [ids[j] for j in keep], [values[j] for j in keep]
    return LabelSet(list(ids), list(values), source, classes, note)


def sniff(path: str, formats: list[str]) -> str:
    """The format of a labels path among `formats` (a task's readers): `catalog`, a folder of maps, CSV, COCO JSON
    or a Label Studio export; a one-line error when the path is none of the task's."""
    if path == "catalog":
        if "catalog" in formats:
            return "catalog"
        raise LabelError(f"--labels catalog gives times of day only; this task reads {', '.join(formats)}")
    p = Path(path)
    if not p.exists():
        raise LabelError(f"labels {path}: no such file or folder")
    if p.is_dir():
        folder = [f for f in formats if f in FOLDER_FORMATS]
        if not folder:
            raise LabelError(f"labels {path}: a folder holds maps; this task reads {', '.join(formats)} files")
        return folder[0]
    suffix = p.suffix.lower()
    if suffix == ".csv" and "csv" in formats:
        return "csv"
    if suffix == ".json":
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LabelError(f"labels {path}: not valid JSON ({e})") from None
        kind = (
            "labelstudio" if isinstance(data, list) else "coco" if isinstance(data, dict) and "images" in data else ""
        )
        if not kind:
            raise LabelError(f"labels {path}: JSON that is neither a Label Studio export (list) nor COCO (images)")
        if kind in formats:
            return kind
        raise LabelError(f"labels {path}: a {kind} file; this task reads {', '.join(formats)}")
    raise LabelError(f"labels {path}: cannot tell the format from {suffix!r} for this task "
                     f"({', '.join(formats)}); pass --format")  # fmt: skip


FOLDER_FORMATS = ("masks", "depth")


def numbers(values: Iterable[Any], what: str) -> list[float]:
    """Label values -> finite floats; ValueError naming the rows (0-based) that are not numbers or not finite."""
    out, bad = [], []
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            bad.append(i)
            continue
        if not math.isfinite(f):
            bad.append(i)
        out.append(f)
    if bad:
        raise ValueError(f"{len(bad)} {what} are not finite numbers (rows {_first(bad)}: "
                         f"{_first([values[i] for i in bad] if isinstance(values, list) else bad)})")  # fmt: skip
    return out


def read_task_csv(path: Path, ctx: Any, task: Any, numeric: bool = True) -> LabelSet:
    """A task's CSV labels: the value column is `--column`, else `value`, else the first of the task's `columns` in
    the header; with `numeric`, every value must be a finite number (errors name the file and its lines)."""
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    column = ctx.column or next((c for c in task.columns if c in header and "value" not in header), None)
    labels = read_csv(path, column, ctx.resolver, ctx.known)
    if numeric:
        lines = {fid: n + 2 for n, fid in enumerate(labels.ids)}  # header is line 1
        bad = [(lines[i], v) for i, v in zip(labels.ids, labels.values, strict=True)
               if not isinstance(v, float) or not math.isfinite(v)]  # fmt: skip
        if bad:
            raise LabelError(f"{path}: {len(bad)} values are not finite numbers (lines "
                             f"{_first(f'{n}: {v!r}' for n, v in bad)})")  # fmt: skip
    return labels


def _value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text.strip()


def read_csv(
    path: str | Path,
    column: str | None = None,
    resolver: Resolver | None = None,
    known: Container[str] | None = None,
    unknown: str = "error",
) -> LabelSet:
    """CSV with a `frame_id` or `path` key column and a value column -> LabelSet (numbers parsed, others kept)."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0].keys()) if rows else []
    key = next((k for k in KEY_COLUMNS if k in header), None)
    if key is None:
        raise LabelError(f"{path}: no key column; expected one of {', '.join(KEY_COLUMNS)}, got {header}")
    others = [h for h in header if h not in KEY_COLUMNS]
    if column is None:
        column = "value" if "value" in others else (others[0] if len(others) == 1 else None)
    if column is None or column not in header:
        raise LabelError(f"{path}: choose the value column (column=...) among {others}")
    keys = [r[key] for r in rows]
    empty = [i + 2 for i, r in enumerate(rows) if not (r[key] or "").strip() or (r[column] or "").strip() == ""]
    if empty:
        raise LabelError(f"{path}: {len(empty)} rows miss a key or a value (lines {_first(empty)})")
    ids = keys if key == "frame_id" else resolve_keys(keys, resolver, str(path))
    return finish(ids, [_value(r[column]) for r in rows], str(path), known, unknown)


def write_csv(path: str | Path, labels: LabelSet, column: str = "value") -> Path:
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame_id", column])
        w.writerows(zip(labels.ids, labels.values, strict=True))
    return path


def read_coco(
    path: str | Path,
    resolver: Resolver | None = None,
    known: Container[str] | None = None,
    category: str = "person",
    unknown: str = "error",
) -> LabelSet:
    """COCO detection JSON -> person count per frame (iscrowd 0 only; images without persons count 0)."""
    path = Path(path)
    data = json.loads(path.read_text())
    cats = [c["id"] for c in data.get("categories", []) if c.get("name") == category]
    if not cats:
        names = [c.get("name") for c in data.get("categories", [])]
        raise LabelError(f"{path}: no {category!r} category among {names}")
    images = coco_image_ids(data, path, resolver)
    counts = dict.fromkeys(images, 0)
    orphans = []
    for ann in data.get("annotations", []):
        if ann.get("category_id") not in cats or ann.get("iscrowd", 0):
            continue
        if ann["image_id"] not in counts:
            orphans.append(ann.get("id", "?"))
            continue
        counts[ann["image_id"]] += 1
    if orphans:
        raise LabelError(f"{path}: {len(orphans)} annotations point at images not in the file: {_first(orphans)}")
    return finish([images[i] for i in counts], [float(c) for c in counts.values()], str(path), known, unknown)


def coco_image_ids(data: dict[str, Any], path: Path, resolver: Resolver | None) -> dict[Any, str]:
    """COCO image id -> our frame id: the image's `frame_id` field when present (fth writes it), else its
    `file_name` resolved through the catalog."""
    images = data.get("images", [])
    named = [im for im in images if not im.get("frame_id")]
    resolved = iter(resolve_keys([im["file_name"] for im in named], resolver, str(path)) if named else [])
    return {im["id"]: str(im["frame_id"]) if im.get("frame_id") else next(resolved) for im in images}


def write_coco(path: str | Path, counts: LabelSet, file_names: dict[str, str]) -> Path:
    """People counts -> a COCO file with that many (placeholder-box) person annotations per image."""
    images, anns = [], []
    for n, (fid, count) in enumerate(zip(counts.ids, counts.values, strict=True), start=1):
        images.append({"id": n, "file_name": file_names[fid]})
        for _ in range(int(count)):
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1]})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    Path(path).write_text(json.dumps(data))
    return Path(path)


def _as_task(task: Any) -> Any:
    """A `heads.tasks.Task`, given one or a registered task's name (imported here: the tasks import this module)."""
    if isinstance(task, str):
        from heads.tasks import make_task

        return make_task(task)
    return task


def latest_annotation(t: dict[str, Any], task: Any, from_name: str | None = None) -> tuple[dict | None, Any]:
    """A Label Studio task -> (its latest non-cancelled annotation that holds a label of `task` (a Task or its name),
    that label read by the task's `label_studio_value`), or (None, None) when no annotation holds one yet."""
    task = _as_task(task)
    anns = [a for a in t.get("annotations", []) if not a.get("was_cancelled")]
    anns.sort(key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id", 0)))
    for a in reversed(anns):
        value = task.label_studio_value(a.get("result", []), from_name)
        if value is not None:
            return a, value
    return None, None


def read_label_studio(
    path: str | Path,
    task: Any = "people_count",
    from_name: str | None = None,
    resolver: Resolver | None = None,
    known: Container[str] | None = None,
    unknown: str = "error",
) -> LabelSet:
    """Label Studio JSON export -> LabelSet of `task` (a Task or its name); tasks without a usable annotation are
    skipped (and counted in the log)."""
    path = Path(path)
    tasks = json.loads(path.read_text())
    if not isinstance(tasks, list):
        raise LabelError(f"{path}: expected a Label Studio JSON export (a list of tasks)")
    return label_studio_labels(tasks, task, str(path), from_name, resolver, known, unknown)


def label_studio_labels(
    tasks: list[dict[str, Any]],
    task: Any,
    source: str,
    from_name: str | None = None,
    resolver: Resolver | None = None,
    known: Container[str] | None = None,
    unknown: str = "error",
) -> LabelSet:
    """Label Studio tasks (an export file's, or a live project's) -> LabelSet keyed by our frame id (`data.frame_id`,
    else `data.path` resolved); `source` names them in errors."""
    task = _as_task(task)
    keys, values, skipped, keyless = [], [], 0, []
    for t in tasks:
        _, value = latest_annotation(t, task, from_name)
        if value is None:
            skipped += 1
            continue
        data = t.get("data", {})
        if data.get("frame_id"):
            keys.append(("id", str(data["frame_id"])))
        elif data.get("path"):
            keys.append(("path", str(data["path"])))
        else:
            keyless.append(t.get("id", "?"))
            continue
        values.append(value)
    if keyless:
        raise LabelError(f"{source}: {len(keyless)} annotated tasks carry neither data.frame_id nor data.path: "
                         f"{_first(keyless)}")  # fmt: skip
    if skipped:
        log.info("%s: %d of %d tasks have no usable %s annotation, skipped", source, skipped, len(tasks), task.name)
    paths = [k for kind, k in keys if kind == "path"]
    resolved = iter(resolve_keys(paths, resolver, source) if paths else [])
    ids = [k if kind == "id" else next(resolved) for kind, k in keys]
    classes = tuple(getattr(task.cfg, "classes", ()) or ()) or None
    return finish(ids, values, source, known, unknown, classes=classes)


def label_studio_classes(path: Path, given: str | None, tasks: list[dict[str, Any]], kind: str) -> tuple[str, ...]:
    """The class list of a Label Studio export of boxes or polygons: `--classes` when given, else `classes.json`
    beside the export (`fth label pull` writes it, in the project's label order), else the names the export's
    `kind` results use, in order of first appearance."""
    from heads.label_maps import read_classes

    if given:
        return read_classes(given)
    beside = Path(path).parent / "classes.json"
    if beside.is_file():
        return read_classes(beside)
    found: list[str] = []
    for t in tasks:
        for a in t.get("annotations", []):
            for r in a.get("result", []):
                if r.get("type") == kind:
                    found += [n for n in r.get("value", {}).get(kind, []) if n not in found]
    return tuple(found)


def ls_result(task: Any, kind: str, value: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One Label Studio result of `task`'s control (named after the task) on the image (`to_name` "image")."""
    return {"from_name": task.name, "to_name": "image", "type": kind, "value": value, **extra}


def ls_of(results: list[dict[str, Any]], kind: str, from_name: str | None = None) -> list[dict[str, Any]]:
    """The results of type `kind` (of control `from_name`, when given)."""
    return [r for r in results if r.get("type") == kind and (from_name is None or r.get("from_name") == from_name)]


def ls_labels_config(control: str, name: str, header: str, classes: tuple[str, ...] | list[str]) -> str:
    """A labelling config with one labels control (`RectangleLabels`, `PolygonLabels`) over `classes`."""
    from xml.sax.saxutils import quoteattr

    labels = "\n".join(f"    <Label value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Header value={quoteattr(header)}/>\n  <Image name="image" value="$image"/>\n'
            f'  <{control} name="{name}" toName="image">\n{labels}\n  </{control}>\n</View>')  # fmt: skip


def label_studio_results(task: Any, value: Any) -> list[dict[str, Any]]:
    """The result list a labeller's answer `value` produces in `task`'s labelling config (`Task.label_studio_results`;
    `task` a Task or its name)."""
    return _as_task(task).label_studio_results(value)


def label_studio_config(task: Any) -> tuple[str, str]:
    """(control type, labelling config XML) of `task` (`Task.label_studio_config`); LabelError for one without."""
    return _as_task(task).label_studio_config()
