"""Dense label readers and writers, joined on OUR frame id: index-PNG segmentation masks and depth maps.

Formats followed:
- Masks: one single-channel index PNG per frame (PIL mode `P` with a palette, `L`, or 16-bit `I;16`), pixel value =
  class index into a class list (`classes.json`: a list of names, `{"classes": [...]}`, or COCO-style
  `[{"id": 0, "name": ...}]`); `ignore_index` (255) marks unlabelled pixels.
- Depth: a 16-bit PNG per frame holding depth x `scale` (millimetres: scale 1000; the sim's centimetres: scale 100),
  where raw 0 (no measurement) and 65535 (saturated: sky / beyond range) are invalid; or a float `.npy` in metres
  (0, inf and nan invalid). Invalid pixels come out as 0, which the depth task ignores.
A source is a folder of such files (the stem is our frame id, or a path the resolver maps to one) or a CSV with
`frame_id`/`path` and a `file` column. Errors count the offenders: masks or maps of the wrong size (against the frame
sizes the catalog knows, or the most common size), unknown class indices, files that are not index images.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from heads.labels import LabelError, LabelSet, Resolver, _first, finish, resolve_keys

Size = tuple[int, int] | Callable[[str], tuple[int, int] | None] | None
INDEX_MODES = ("P", "L", "I;16", "I")


def read_classes(source: str | Path | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A class list (names in index order) from a list or a JSON file."""
    if isinstance(source, list | tuple):
        return tuple(str(c) for c in source)
    if not Path(source).is_file():
        raise LabelError(f"class list {source}: no such file")
    data = json.loads(Path(source).read_text())
    if isinstance(data, dict):
        data = data.get("classes", data.get("categories"))
    if isinstance(data, list) and data and isinstance(data[0], dict):
        by_id = {int(c["id"]): str(c["name"]) for c in data}
        if sorted(by_id) != list(range(len(by_id))):
            raise LabelError(f"{source}: class ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
        return tuple(by_id[i] for i in range(len(by_id)))
    if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
        raise LabelError(f"{source}: expected a list of class names (or {{'classes': [...]}})")
    return tuple(data)


def write_classes(path: str | Path, classes: tuple[str, ...] | list[str]) -> Path:
    Path(path).write_text(json.dumps({"classes": list(classes)}, indent=1))
    return Path(path)


def _files(source: str | Path, suffixes: tuple[str, ...], resolver: Resolver | None) -> tuple[list[str], list[Path]]:
    """A folder or an index CSV -> (frame ids, files)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in suffixes)
        return resolve_keys([str(p) for p in files], resolver, str(source)), files
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0]:
        raise LabelError(f"{source}: expected a folder, or a CSV with frame_id (or path) and file columns")
    files = [(source.parent / r["file"]).resolve() for r in rows]
    ids = [r["frame_id"] for r in rows] if "frame_id" in rows[0] else None
    ids = ids or resolve_keys([r["path"] for r in rows], resolver, str(source))
    return ids, files


def _check_sizes(ids: list[str], arrays: list[np.ndarray], size: Size, source: str, what: str) -> None:
    shapes = [a.shape[:2] for a in arrays]
    if callable(size):
        expected = [size(i) for i in ids]  # None: a frame the caller does not know (reported by `finish`)
    else:
        common = tuple(size) if size else Counter(shapes).most_common(1)[0][0]
        expected = [common] * len(ids)
    wrong = [f"{i} ({s[0]}x{s[1]}, expected {e[0]}x{e[1]})" for i, s, e in zip(ids, shapes, expected, strict=True)
             if e is not None and tuple(s) != tuple(e)]  # fmt: skip
    if wrong:
        raise LabelError(f"{len(wrong)} of {len(ids)} {what} in {source} have the wrong size: {_first(wrong, 3)}")


def read_masks(
    source: str | Path,
    classes: str | Path | list[str] | tuple[str, ...],
    resolver: Resolver | None = None,
    known: Container[str] | None = None,
    size: Size = None,
    ignore_index: int = 255,
    unknown: str = "error",
) -> LabelSet:
    """Index-PNG masks -> LabelSet of (H, W) int arrays with `classes`.

    Args:
        size: expected (H, W), or a callable frame id -> (H, W) (the catalog's frame sizes); None = the common size.
    """
    names = read_classes(classes)
    ids, files = _files(source, (".png",), resolver)
    masks, not_index, bad = [], [], []
    for fid, path in zip(ids, files, strict=True):
        with Image.open(path) as im:
            if im.mode not in INDEX_MODES:
                not_index.append(f"{path.name} (mode {im.mode})")
                continue
            arr = np.asarray(im).astype(np.int32)
        wrong = np.unique(arr[(arr >= len(names)) & (arr != ignore_index)])
        if wrong.size:
            bad.append(f"{fid}: {wrong[:5].tolist()}")
        masks.append(arr)
    if not_index:
        raise LabelError(f"{len(not_index)} masks in {source} are not single-channel index PNGs: {_first(not_index)}")
    if bad:
        raise LabelError(
            f"{len(bad)} masks in {source} hold class indices outside 0..{len(names) - 1} "
            f"({len(names)} classes, ignore {ignore_index}): {_first(bad, 3)}"
        )
    _check_sizes(ids, masks, size, str(source), "masks")
    return finish(ids, masks, str(source), known, unknown, classes=names)


def write_masks(folder: str | Path, labels: LabelSet, classes: tuple[str, ...] | list[str]) -> Path:
    """Masks -> `<frame_id>.png` palette PNGs plus `classes.json` in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    palette[255] = 0
    for fid, mask in zip(labels.ids, labels.values, strict=True):
        arr = np.asarray(mask)
        if arr.max(initial=0) > 255:
            Image.fromarray(arr.astype(np.uint16)).save(folder / f"{fid}.png")
            continue
        im = Image.fromarray(arr.astype(np.uint8), mode="P")
        im.putpalette(palette.flatten().tolist())
        im.save(folder / f"{fid}.png")
    write_classes(folder / "classes.json", classes)
    return folder


def read_depth(
    source: str | Path,
    scale: float = 1000.0,
    resolver: Resolver | None = None,
    known: Container[str] | None = None,
    size: Size = None,
    unknown: str = "error",
    invalid: tuple[int, ...] = (0, 65535),
) -> LabelSet:
    """16-bit PNGs (value / scale = metres) or float .npy (metres) -> LabelSet of (H, W) float32 maps, 0 = invalid.

    Args:
        invalid: raw PNG values that mean "no depth" (set to 0).
    """
    ids, files = _files(source, (".png", ".npy"), resolver)
    maps, bad = [], []
    for path in files:
        if path.suffix.lower() == ".npy":
            arr = np.load(path).astype(np.float32)
            arr[~np.isfinite(arr)] = 0.0
        else:
            with Image.open(path) as im:
                if im.mode not in ("I;16", "I", "I;16B"):
                    bad.append(f"{path.name} (mode {im.mode}, expected 16-bit)")
                    continue
                raw = np.asarray(im)
                arr = np.where(np.isin(raw, invalid), 0.0, raw.astype(np.float32) / scale).astype(np.float32)
        if arr.ndim != 2 or (arr < 0).any():
            bad.append(f"{path.name} (shape {arr.shape}, needs (H, W) depth >= 0)")
            continue
        maps.append(arr)
    if bad:
        raise LabelError(f"{len(bad)} depth maps in {source} cannot be used: {_first(bad, 3)}")
    _check_sizes(ids, maps, size, str(source), "depth maps")
    return finish(ids, maps, str(source), known, unknown)


def write_depth(folder: str | Path, labels: LabelSet, fmt: str = "png", scale: float = 1000.0) -> Path:
    """Depth maps (metres) -> `<frame_id>.png` (uint16 of depth x scale) or `<frame_id>.npy` in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for fid, depth in zip(labels.ids, labels.values, strict=True):
        arr = np.asarray(depth, dtype=np.float32)
        if fmt == "npy":
            np.save(folder / f"{fid}.npy", arr)
            continue
        scaled = np.round(arr * scale)
        if scaled.max(initial=0) > 65534:
            raise LabelError(f"depth of frame {fid} reaches {arr.max():.1f}, beyond 16 bits at scale {scale}")
        Image.fromarray(scaled.astype(np.uint16)).save(folder / f"{fid}.png")
    return folder


def stack(values: list[Any]) -> np.ndarray:
    """Label maps of one size -> (B, H, W) array (the dense tasks' `labels` argument)."""
    return np.stack([np.asarray(v) for v in values])
