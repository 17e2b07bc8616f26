"""The simulated camera's public API: stamped frames, and ground-truth labels for the frames a collector stored.

The sim publishes its frames as a live HLS stream, so the frames the collector grabs are captured at times that
do not match render times. To join truth to frames exactly, every frame carries its frame index in a band of
32 black/white blocks along the bottom (`stamp_rows`): block 0 white and block 1 black (references), blocks 2-29
the index (28 bits, MSB first), blocks 30-31 the bit count mod 4 (a check). Blocks are 1/32 of the width and
the band is 1/16 of the height, so the stamp survives H.264, JPEG and any rescaling.

Labels for a collected source (`write_labels`, also `fth sim labels`), keyed by OUR frame id (DESIGN: join on
frame id, never on file names), all written under one folder:

    labels.csv            frame_id,sim_index,people,time_of_day,path
    people.csv            frame_id,value      (people in view)
    time_of_day.csv       frame_id,value      (hours in [0, 24) on the sim's clock)
    depth/<id>.png        uint16, centimetres; 0 = no depth (stamp band), 65535 = sky or beyond 655 m
    depth/depth.json      {"scale": 100, "unit": "cm"}: the folder says its own units
    segmentation/<id>.png uint8 class index; 255 = ignore
    segmentation/classes.json  the class list, beside the masks
    boxes.json            COCO detection: one person box per counted person (its visible pixels), images carry
                          our `frame_id` beside `file_name`
    classes.json, sim.json (the SimConfig that rendered them)

Dense maps are resized (nearest) to each catalog frame's own width x height, so they align pixel for pixel.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from collector.config import SimConfig
from collector.sim_scene import CLASSES, IGNORE, Truth, render, stamp_rows
from fth.config import from_dict, to_dict
from store.catalog import Catalog

log = logging.getLogger(__name__)

__all__ = ["CLASSES", "IGNORE", "Truth", "render", "frame", "stamp", "read_stamp", "write_labels", "load_sim_config"]

CELLS, INDEX_BITS = 32, 28
DEPTH_UNIT_M = 0.01


def _bits(index: int) -> list[int]:
    if not 0 <= index < 2**INDEX_BITS:
        raise ValueError(f"frame index {index} does not fit in {INDEX_BITS} bits")
    bits = [(index >> (INDEX_BITS - 1 - i)) & 1 for i in range(INDEX_BITS)]
    check = sum(bits) % 4
    return [1, 0, *bits, check >> 1, check & 1]


def stamp(rgb: np.ndarray, index: int) -> np.ndarray:
    """Draw the index band onto an (H, W, 3) uint8 frame (in place) and return it."""
    H, W = rgb.shape[:2]
    r0 = stamp_rows(H)
    edges = np.linspace(0, W, CELLS + 1).round().astype(int)
    for c, bit in enumerate(_bits(index)):
        rgb[r0:, edges[c] : edges[c + 1]] = 255 if bit else 0
    return rgb


def read_stamp(rgb: np.ndarray) -> int | None:
    """The frame index stamped on an (H, W, 3) or (H, W) image of any size, or None when it does not read back."""
    gray = rgb.astype(np.float32).mean(axis=2) if rgb.ndim == 3 else rgb.astype(np.float32)
    H, W = gray.shape
    r0 = stamp_rows(H)
    band = gray[r0 + (H - r0) // 4 : H - (H - r0) // 4 or H]
    edges = np.linspace(0, W, CELLS + 1)
    values = []
    for c in range(CELLS):
        a, b = edges[c], edges[c + 1]
        lo, hi = int(a + (b - a) * 0.25), max(int(a + (b - a) * 0.75), int(a + (b - a) * 0.25) + 1)
        values.append(float(band[:, lo:hi].mean()))
    white, black = values[0], values[1]
    if white - black < 60:
        return None
    bits = [int(v > (white + black) / 2) for v in values]
    index = int("".join(map(str, bits[2 : 2 + INDEX_BITS])), 2)
    if bits[0] != 1 or bits[1] != 0 or _bits(index)[-2:] != bits[-2:]:
        return None
    return index


def frame(cfg: SimConfig, index: int) -> tuple[np.ndarray, Truth]:
    """Frame `index` as published (stamped) with its exact truth."""
    rgb, truth = render(cfg, index)
    return stamp(rgb, index), truth


def save_sim_config(cfg: SimConfig, folder: Path, epoch: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sim.json").write_text(json.dumps({"sim": to_dict(cfg), "epoch": epoch}, indent=1))


def load_sim_config(path: str | Path) -> tuple[SimConfig, float]:
    """(SimConfig, epoch) from a sim folder's sim.json (or the file itself); the epoch is the Unix time of index 0."""
    path = Path(path)
    file = path / "sim.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no sim.json at {file}")
    doc = json.loads(file.read_text())
    return from_dict(SimConfig, doc["sim"], str(path)), float(doc.get("epoch", 0.0))


def depth_png(depth_m: np.ndarray) -> np.ndarray:
    """Depth in metres (inf = sky) -> uint16 centimetres (0 = none, 65535 = sky/far)."""
    cm = np.where(np.isfinite(depth_m), depth_m / DEPTH_UNIT_M, 65535.0)
    return np.clip(np.round(cm), 0, 65535).astype(np.uint16)


@dataclass
class LabelSummary:
    frames: int = 0
    labelled: int = 0
    unreadable: int = 0
    out: str = ""


def write_labels(
    catalog: Catalog, source: str, cfg: SimConfig, out: str | Path, dense: bool = True, limit: int | None = None
) -> LabelSummary:
    """Decode the stamp of every catalog frame of `source`, re-render its truth, write label files under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = json.dumps({"classes": list(CLASSES), "ignore": IGNORE}, indent=1)
    if dense:  # each label folder says its own units and classes: readers never guess from the simulator's files
        (out / "depth").mkdir(exist_ok=True)
        (out / "depth" / "depth.json").write_text(json.dumps({"scale": 1 / DEPTH_UNIT_M, "unit": "cm"}) + "\n")
        (out / "segmentation").mkdir(exist_ok=True)
        (out / "segmentation" / "classes.json").write_text(classes)
    (out / "classes.json").write_text(classes)
    (out / "sim.json").write_text(json.dumps({"sim": dataclasses.asdict(cfg)}, indent=1))
    summary = LabelSummary(out=str(out))
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    with contextlib.ExitStack() as stack:
        names = ("labels.csv", "people.csv", "time_of_day.csv")
        files = {name: stack.enter_context(open(out / name, "w", newline="")) for name in names}
        writers = {name: csv.writer(f) for name, f in files.items()}
        writers["labels.csv"].writerow(["frame_id", "sim_index", "people", "time_of_day", "path"])
        writers["people.csv"].writerow(["frame_id", "value"])
        writers["time_of_day.csv"].writerow(["frame_id", "value"])
        for row in catalog.iter_frames(source):
            if limit is not None and summary.frames >= limit:
                break
            summary.frames += 1
            try:
                with Image.open(io.BytesIO(catalog.frame_store.read(row.path))) as im:
                    index = read_stamp(np.asarray(im.convert("L")))
            except (OSError, SyntaxError, ValueError) as e:  # empty, truncated or missing file: UnidentifiedImageError
                log.warning("event=frame_unreadable frame=%s path=%s error=%s", row.id[:16], row.path, e)
                index = None
            if index is None:
                summary.unreadable += 1
                log.warning("event=stamp_unreadable frame=%s path=%s", row.id[:16], row.path)
                continue
            _, truth = render(cfg, index)
            tod = round(truth.time_of_day, 4)
            writers["labels.csv"].writerow([row.id, index, truth.people, tod, row.path])
            writers["people.csv"].writerow([row.id, truth.people])
            writers["time_of_day.csv"].writerow([row.id, tod])
            sx, sy = row.width / cfg.width, row.height / cfg.height  # truth is rendered at the sim's size
            image_id = len(coco["images"]) + 1
            coco["images"].append({"id": image_id, "file_name": row.path, "frame_id": row.id, "width": row.width,
                                   "height": row.height})  # fmt: skip
            for x0, y0, x1, y1 in truth.boxes.tolist():
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                            "category_id": 1, "iscrowd": 0,
                                            "bbox": [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy]})  # fmt: skip
            if dense:
                size = (row.width, row.height)
                Image.fromarray(depth_png(truth.depth)).resize(size, Image.NEAREST).save(
                    out / "depth" / f"{row.id}.png"
                )
                seg = Image.fromarray(truth.seg).resize(size, Image.NEAREST)
                seg.save(out / "segmentation" / f"{row.id}.png")
            summary.labelled += 1
    (out / "boxes.json").write_text(json.dumps(coco))
    log.info("event=labels_written source=%s labelled=%d unreadable=%d out=%s", source, summary.labelled,
             summary.unreadable, out)  # fmt: skip
    return summary
