"""`segmentation`: a class per pixel.

Labels: a folder of single-channel index PNGs (pixel = class index, 255 ignored) with its class list: `--classes`, else
`classes.json` inside the folder; a missing list is an error naming where it was looked for. Output: class logits
upsampled to the label size; cross-entropy with an ignore index. Metrics: mIoU (primary), pixel accuracy, per-class IoU
and accuracy, also on the "changed" pixels (where the class differs from the per-pixel majority). Baseline: the
per-pixel majority training class. Scene prior: the per-pixel log class frequency.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from heads import label_maps
from heads import labels as L
from heads.labels import LabelError, LabelSet
from heads.tasks.base import LabelContext, Task, TaskConfig, register_task, resize_map

CLASSES_FILE = "classes.json"


def _read(path: Path, ctx: LabelContext, task: Task) -> LabelSet:
    folder = path if path.is_dir() else path.parent
    if ctx.classes:
        classes = Path(ctx.classes)  # read_classes names it when it does not exist
    else:
        classes = folder / CLASSES_FILE
        if not classes.is_file():
            raise LabelError(f"no class list for the masks in {folder}: put {CLASSES_FILE} there or pass --classes")
    labels = label_maps.read_masks(path, classes, ctx.resolver, ctx.known, ctx.size, task.cfg.ignore_index)
    labels.note = f"{len(labels.classes or ())} classes from {classes}"
    return labels


def _read_label_studio(path: Path, ctx: LabelContext, task: Task) -> LabelSet:
    """Label Studio export of polygons -> class-index masks (classes: `--classes`, else `classes.json` beside the
    export, else the polygons' names)."""
    tasks = json.loads(path.read_text())
    if not isinstance(tasks, list):
        raise LabelError(f"{path}: expected a Label Studio JSON export (a list of tasks)")
    classes = L.label_studio_classes(path, ctx.classes, tasks, "polygonlabels")
    if len(classes) < 2:
        raise LabelError(f"{path}: segmentation needs at least two classes; found {list(classes)} (pass --classes)")
    regions = type(task)(dataclasses.replace(task.cfg, classes=tuple(classes)))
    labels = L.label_studio_labels(tasks, regions, str(path), resolver=ctx.resolver, known=ctx.known)
    labels.note = f"{len(classes)} classes: {', '.join(classes)}"
    return labels


@register_task
class Segmentation(Task):
    name, dense, map_labels, primary, higher_is_better = "segmentation", True, True, "miou", True
    preset = "heads_dense"
    flip_tolerance = 0.05  # a frame flips when its own mIoU drops by more than 5 points

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        self.out_dim = max(len(cfg.classes), 2)

    def readers(self):
        return {"masks": _read, "labelstudio": _read_label_studio}

    # -- Label Studio: PolygonLabels over the task's classes. Polygons, not BrushLabels: a brush result is Label
    # Studio's own RLE of the canvas, which needs its converter's decoder, while a polygon is a plain list of points (in
    # percent of the image) that rasterises here exactly. A pixel takes the class of the last polygon holding its
    # centre (matplotlib's point-in-polygon; PIL's ImageDraw.polygon rounds vertices to the pixel grid and fills the
    # boundary, so a polygon along pixel edges would grow by a pixel); pixels no polygon covers are ignore_index, so
    # a labeller outlines only what they are sure of. Size: the result's original_height x original_width.

    def label_studio_config(self):
        self._need_classes()
        return "PolygonLabels", L.ls_labels_config("PolygonLabels", self.name, "Outline each region with its class",
                                                   self.cfg.classes)  # fmt: skip

    def label_studio_results(self, value):
        """An (H, W) class-index mask -> one rectangle polygon per run of equal pixels in a row, runs stacked over
        rows merged (exact: rasterising gives the mask back; ignore_index pixels get none)."""
        mask = np.asarray(value)
        h, w = mask.shape
        rects, open_runs = [], {}  # (x0, x1, class) -> [y0, y1) of the run stack still growing
        for y in range(h + 1):
            row = mask[y] if y < h else np.full(w, -1)
            edges = np.flatnonzero(np.diff(row, prepend=-2, append=-2) != 0)
            runs = {(int(a), int(b), int(row[a])) for a, b in zip(edges[:-1], edges[1:], strict=True)}
            for key in list(open_runs):
                if key not in runs:
                    rects.append((*key, open_runs.pop(key), y))
            for key in runs:
                open_runs.setdefault(key, y)
        size = {"original_height": h, "original_width": w}
        return [L.ls_result(self, "polygonlabels", {"points": [[100 * a / w, 100 * y0 / h], [100 * b / w, 100 * y0 / h],
                [100 * b / w, 100 * y1 / h], [100 * a / w, 100 * y1 / h]], "polygonlabels": [self.cfg.classes[c]]},
                **size) for a, b, c, y0, y1 in sorted(rects, key=lambda r: (r[3], r[0]))
                if c != self.cfg.ignore_index and c >= 0]  # fmt: skip

    def label_studio_value(self, results, from_name=None):
        from matplotlib.path import Path as Polygon

        polygons = L.ls_of(results, "polygonlabels", from_name)
        if not polygons:
            return None
        index = {name: i for i, name in enumerate(self.cfg.classes)}
        h, w = polygons[0].get("original_height"), polygons[0].get("original_width")
        if not (h and w):
            raise L.LabelError("a polygon result without original_height/original_width: cannot rasterise it")
        h, w = int(h), int(w)
        mask = np.full((h, w), self.cfg.ignore_index, np.uint8 if self.out_dim < 256 else np.int32)
        for r in polygons:
            v = r.get("value", {})
            name = (v.get("polygonlabels") or [None])[0]
            if name not in index:
                raise L.LabelError(f"a polygon labelled {name!r}, not one of the classes {list(self.cfg.classes)}")
            if len(v.get("points", [])) < 3:
                raise L.LabelError(f"a {name!r} polygon with {len(v.get('points', []))} points (3 at least)")
            pts = np.asarray(v["points"], np.float64)  # (P, 2) x, y in percent
            x0, y0 = np.floor(pts.min(0) * [w, h] / 100).astype(int).clip(0)  # only the pixels of its bounding box
            x1, y1 = np.ceil(pts.max(0) * [w, h] / 100).astype(int).clip(None, [w, h])
            ys, xs = np.mgrid[y0:y1, x0:x1]
            centres = np.stack([(xs.ravel() + 0.5) * 100 / w, (ys.ravel() + 0.5) * 100 / h], 1)  # pixel centres, %
            mask[y0:y1, x0:x1][Polygon(pts).contains_points(centres).reshape(y1 - y0, x1 - x0)] = index[name]
        return mask

    def label_studio_prediction(self, answer):
        """The head's class map (at head resolution; polygons in percent do not depend on it) as polygons."""
        return self.label_studio_results(np.asarray(answer["segmentation"]))

    def _need_classes(self) -> None:
        if len(self.cfg.classes) < 2:
            raise ValueError("segmentation needs a class list of at least two names (TaskConfig.classes)")

    def targets(self, values: Any) -> torch.Tensor:
        self._need_classes()
        arr = np.stack([np.asarray(v) for v in values]).astype(np.int64)
        bad = (arr >= self.out_dim) & (arr != self.cfg.ignore_index) | (arr < 0)
        if bad.any():
            raise ValueError(
                f"segmentation labels hold {int(bad.sum())} pixels with class indices outside 0..{self.out_dim - 1} "
                f"(ignore index {self.cfg.ignore_index}): {sorted(set(arr[bad].tolist()))[:5]}"
            )
        small = self.out_dim < 256 and 0 <= self.cfg.ignore_index < 256
        return torch.from_numpy(arr.astype(np.uint8 if small else np.int32))

    def loss(self, out, target):
        logits = resize_map(out, tuple(target.shape[-2:]))
        return F.cross_entropy(logits, target.long(), ignore_index=self.cfg.ignore_index)

    def stats(self, out, target):
        k = self.out_dim
        pred = resize_map(out, tuple(target.shape[-2:])).argmax(1)
        t = target.long()
        valid = t != self.cfg.ignore_index
        conf = torch.bincount(t[valid] * k + pred[valid], minlength=k * k).reshape(k, k)  # (true, predicted)
        return {"conf": conf.double()}

    def frame_errors(self, out, target):
        """(B,) 1 - the frame's own mIoU (over the classes its label or its prediction shows; 0 when neither shows
        any valid pixel)."""
        k = self.out_dim
        pred = resize_map(out, tuple(target.shape[-2:])).argmax(1).flatten(1)  # (B, H*W)
        t = target.long().flatten(1)
        valid = t != self.cfg.ignore_index
        inter, union = [], []
        for c in range(k):
            p_c, t_c = (pred == c) & valid, (t == c) & valid
            inter.append((p_c & t_c).sum(1))
            union.append((p_c | t_c).sum(1))
        inter_t, union_t = torch.stack(inter, 1).double(), torch.stack(union, 1).double()  # (B, K)
        shown = union_t > 0
        iou = torch.where(shown, inter_t / union_t.clamp_min(1), torch.zeros_like(inter_t)).sum(1)
        miou = torch.where(shown.any(1), iou / shown.sum(1).clamp_min(1), torch.ones_like(iou))
        return (1 - miou).float()

    def uncertainty(self, outs):
        """(K, B, C, h, w) logits -> (B,) mutual information between the prediction and the member (BALD, Houlsby et
        al. 2011): entropy of the mean softmax minus the mean entropy of each member's, averaged over pixels (nats)."""
        logp = outs.float().log_softmax(dim=2)  # (K, B, C, h, w)
        p = logp.exp()
        mean = p.mean(0)  # (B, C, h, w)
        total = -(mean * mean.clamp_min(1e-12).log()).sum(1)  # (B, h, w)
        each = -(p * logp).sum(2).mean(0)  # (B, h, w)
        return (total - each).clamp_min(0).flatten(1).mean(1)

    def finalize(self, s):
        conf = s["conf"]
        tp, gt, pr = conf.diag(), conf.sum(1), conf.sum(0)
        union = gt + pr - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        acc = torch.where(gt > 0, tp / gt.clamp_min(1), torch.full_like(tp, float("nan")))
        names = self.cfg.classes
        return {
            "miou": float(iou[union > 0].mean()) if (union > 0).any() else 0.0,
            "pixel_acc": float(tp.sum() / gt.sum().clamp_min(1)),
            "iou": {n: None if math.isnan(v) else v for n, v in zip(names, iou.tolist(), strict=True)},
            "class_acc": {n: None if math.isnan(v) else v for n, v in zip(names, acc.tolist(), strict=True)},
            "pixels": int(gt.sum()),
        }

    def class_counts(self, train_target: torch.Tensor) -> torch.Tensor:
        """Per-pixel label counts over the training maps: (K + 1, H*W), the last row counting ignored pixels."""
        k, (h, w) = self.out_dim, train_target.shape[-2:]
        counts = torch.zeros(k + 1, h * w)
        for i in range(0, train_target.shape[0], 256):
            t = train_target[i : i + 256].long().reshape(-1, h * w)  # (b, H*W)
            t = torch.where(t == self.cfg.ignore_index, torch.full_like(t, k), t)
            counts.scatter_add_(0, t, torch.ones_like(t, dtype=torch.float32))
        return counts

    def baseline(self, train_target):
        k, (h, w) = self.out_dim, train_target.shape[-2:]
        majority = self.class_counts(train_target)[:k].argmax(0)  # (H*W,)
        return F.one_hot(majority, k).T.reshape(1, k, h, w).float()

    def prior(self, train_target):
        """Log per-pixel class frequency (add-one smoothed): (1, K, H, W)."""
        k, (h, w) = self.out_dim, train_target.shape[-2:]
        counts = self.class_counts(train_target)[:k] + 1.0
        freq = counts / counts.sum(0, keepdim=True)
        return freq.log().reshape(1, k, h, w)

    def changed(self, base, target):
        """Pixels whose class differs from the per-pixel majority (the baseline scores 0 there)."""
        b = resize_map(base, tuple(target.shape[-2:])).argmax(1)  # (1, H, W)
        keep = (target.long() != b) & (target.long() != self.cfg.ignore_index)
        return torch.where(keep, target, torch.full_like(target, self.cfg.ignore_index))

    def output_bias(self, train_target):
        t = train_target.long().flatten()
        freq = torch.bincount(t[t != self.cfg.ignore_index], minlength=self.out_dim)[: self.out_dim].float()
        return (freq / freq.sum().clamp_min(1)).clamp_min(1e-4).log()

    def decode(self, out, sizes=None):
        maps = out.argmax(1)
        return [{"segmentation": m.tolist(), "shape": list(m.shape), "classes": list(self.cfg.classes)} for m in maps]

    def describe(self, answer):
        seg = np.asarray(answer["segmentation"])
        frac = {c: round(float((seg == k).mean()), 3) for k, c in enumerate(answer["classes"])}
        return f"segmentation {seg.shape[0]}x{seg.shape[1]}: {frac}"

    def plot_frames(self) -> int:
        return 4

    def plot(self, path: Path, out, target, images, title):
        from heads.plots import map_panels

        n = len(images) if images is not None else 4
        pred = resize_map(out[:n], tuple(target.shape[-2:])).argmax(1)
        return map_panels(path, target[:n].numpy(), pred.numpy(), images, title, kind="segmentation",
                          classes=self.cfg.classes, ignore=self.cfg.ignore_index)  # fmt: skip
