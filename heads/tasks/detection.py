"""`detection`: boxes (x0, y0, x1, y1, class) per frame, predicted from the token grid.

Architecture (chosen by measurement, see the README): a centre heatmap + box-size head on the grid, as in CenterNet
(Zhou et al. 2019, "Objects as Points"). Per grid cell the head outputs K class logits (is an object's centre in this
cell?), the centre's offset inside the cell (2, sigmoid) and the box's log width and height (2, in image fractions):
(B, K + 4, gh, gw), from the light convolutional decoder at grid resolution. DETR-style learned queries with Hungarian
matching need far more images and steps than a few hundred labelled frames to converge; a per-cell head trains in
seconds and its output is a map like the dense tasks', so the same decoders, linear probe and fitting loop serve it.

- Labels: COCO bbox JSON (images matched by our `frame_id` field when present, else `file_name` through the catalog;
  pixel boxes made relative with the image's width/height, else the catalogued size), Label Studio rectangle exports
  (percent coordinates), and `fth sim labels`' exact person boxes (`boxes.json`, COCO). Stored as (M, 5) arrays of
  image-relative x0, y0, x1, y1 and class index, padded to (B, M_max, 5) with class -1 for the fit.
- Loss: the penalty-reduced focal loss on a Gaussian-splatted heatmap (CenterNet eq. 1) plus L1 on offsets and log
  sizes at the centre cells.
- Metrics: COCO mAP@[.5:.95] and mAP@0.5 (primary) by pycocotools' COCOeval, not hand-written; and the count the
  detections imply (boxes scoring >= `score_threshold`) against the true box count (MAE), next to people_count's.
- Baseline: the training set's prior boxes: per cell, the frequency of box centres, their mean offset and log size
  (the same boxes for every frame). A linear probe on the same features is the second baseline (`linear_probe`).
- Answer: `{"boxes": [{"box": [x0, y0, x1, y1], "score", "class"}], "count"}` in the input image's pixels.
Shapes: B batch, K classes, M boxes, (gh, gw) grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from heads import labels as L
from heads.tasks.base import LabelContext, Task, TaskConfig, register_task

SCORE_THRESHOLD = 0.3  # answers and implied counts keep boxes at least this confident (option `score_threshold`)
TOP_K = 100  # most boxes decoded per frame (COCO's largest maxDets, which its summary's mAP reads)
COCO_SCALE = 1000.0  # relative boxes are scored as pixels of a 1000x1000 image (only COCO's size buckets see this)


def _classes(ctx: LabelContext, found: list[str]) -> tuple[str, ...]:
    if ctx.classes:
        from heads.label_maps import read_classes

        return read_classes(ctx.classes)
    return tuple(found) or ("person",)


def _read_coco(path: Path, ctx: LabelContext, task: Task) -> L.LabelSet:
    """COCO bbox JSON -> (M, 5) relative boxes per image (iscrowd boxes skipped; images without boxes have none)."""
    data = json.loads(path.read_text())
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    classes = _classes(ctx, [cats[k] for k in sorted(cats)])
    index = {name: i for i, name in enumerate(classes)}
    images = L.coco_image_ids(data, path, ctx.resolver)
    dims = {im["id"]: (im.get("height"), im.get("width")) for im in data.get("images", [])}
    boxes: dict[Any, list[list[float]]] = {i: [] for i in images}
    orphans, unknown_cat, bad = [], set(), []
    for ann in data.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        if ann.get("image_id") not in boxes:
            orphans.append(ann.get("id", "?"))
            continue
        name = cats.get(ann.get("category_id"))
        if name not in index:
            unknown_cat.add(str(name))
            continue
        h, w = dims[ann["image_id"]]
        if not (h and w):
            h, w = ctx.size(images[ann["image_id"]]) or (0, 0)
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        if not (h and w) or bw <= 0 or bh <= 0:
            bad.append(ann.get("id", "?"))
            continue
        boxes[ann["image_id"]].append([x / w, y / h, (x + bw) / w, (y + bh) / h, float(index[name])])
    if orphans:
        raise L.LabelError(f"{path}: {len(orphans)} annotations point at images not in the file: {L._first(orphans)}")
    if bad:
        raise L.LabelError(f"{path}: {len(bad)} boxes have no size or no known image size: {L._first(bad)}")
    if unknown_cat and ctx.classes:
        raise L.LabelError(f"{path}: categories {sorted(unknown_cat)} are not in --classes {list(classes)}")
    values = [np.asarray(boxes[i], np.float32).reshape(-1, 5) for i in images]
    return L.finish(list(images.values()), values, str(path), ctx.known, classes=classes)


def _read_label_studio(path: Path, ctx: LabelContext, task: Task) -> L.LabelSet:
    """Label Studio export -> (M, 5) relative boxes per task, read from its latest annotation by the task's
    `label_studio_value` (classes: `--classes`, else `classes.json` beside the export, else the rectangles' names)."""
    tasks = json.loads(path.read_text())
    if not isinstance(tasks, list):
        raise L.LabelError(f"{path}: expected a Label Studio JSON export (a list of tasks)")
    classes = L.label_studio_classes(path, ctx.classes, tasks, "rectanglelabels") or ("person",)
    boxes = type(task)(dataclasses.replace(task.cfg, classes=tuple(classes)))
    return L.label_studio_labels(tasks, boxes, str(path), resolver=ctx.resolver, known=ctx.known)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, >=4) and (m, >=4) x0 y0 x1 y1 boxes -> (n, m) IoU."""
    x0, y0 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x1, y1 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def frame_f1(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> float:
    """F1 of one frame's answered boxes (n, 6: x0 y0 x1 y1 score class, best first) against its true boxes (m, 5),
    greedy matching at IoU >= `iou` within a class; 1 when both are empty."""
    if not len(pred) and not len(truth):
        return 1.0
    if not len(pred) or not len(truth):
        return 0.0
    ious = _box_iou(pred, truth) * (pred[:, None, 5] == truth[None, :, 4])
    taken, hits = np.zeros(len(truth), bool), 0
    for row in ious:  # predictions best first, each takes its best free true box
        row = np.where(taken, 0.0, row)
        j = int(row.argmax())
        if row[j] >= iou:
            taken[j], hits = True, hits + 1
    return 2 * hits / (len(pred) + len(truth))


def _coco_eval(preds: list[np.ndarray], truths: list[np.ndarray], k: int) -> tuple[float, float]:
    """(mAP@[.5:.95], mAP@0.5) over images by pycocotools' COCOeval. preds: (n, 6) x0 y0 x1 y1 score class;
    truths: (m, 5) x0 y0 x1 y1 class; all relative."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not any(len(t) for t in truths):
        return float("nan"), float("nan")
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, truths, strict=True), start=1):
        images.append({"id": i, "width": COCO_SCALE, "height": COCO_SCALE})
        for x0, y0, x1, y1, c in t.tolist():
            w, h = (x1 - x0) * COCO_SCALE, (y1 - y0) * COCO_SCALE
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "iscrowd": 0, "area": w * h,
                         "bbox": [x0 * COCO_SCALE, y0 * COCO_SCALE, w, h]})  # fmt: skip
        for x0, y0, x1, y1, s, c in p.tolist():
            dets.append(
                {
                    "image_id": i,
                    "category_id": int(c) + 1,
                    "score": s,
                    "bbox": [x0 * COCO_SCALE, y0 * COCO_SCALE, (x1 - x0) * COCO_SCALE, (y1 - y0) * COCO_SCALE],
                }
            )
    if not dets:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1} for c in range(k)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval answers -1 where a summary has nothing to score
    return tuple(float("nan") if v < 0 else float(v) for v in ev.stats[:2])  # type: ignore[return-value]


@register_task
class Detection(Task):
    name, dense, primary, higher_is_better = "detection", True, "map50", True
    preset = "heads_detect"
    flip_tolerance = 0.1  # a frame flips when its F1 drops by more than 0.1 (e.g. one of three people lost)

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        self.classes = tuple(cfg.classes) or ("person",)
        self.k = len(self.classes)
        self.out_dim = self.k + 4
        self.threshold = float(cfg.options.get("score_threshold", SCORE_THRESHOLD))

    def readers(self):
        return {"coco": _read_coco, "labelstudio": _read_label_studio}

    # -- Label Studio: RectangleLabels over the task's classes. Label Studio gives x, y, width, height in percent of
    # the image (original_width x original_height), so a label (relative x0 y0 x1 y1) is that / 100; a head's answer
    # (pixel boxes with the image's size) is divided by the size. An annotation without rectangles: no objects.

    def label_studio_config(self):
        return "RectangleLabels", L.ls_labels_config("RectangleLabels", self.name, "Draw a box around each object",
                                                     self.classes)  # fmt: skip

    def label_studio_results(self, value, size: tuple[int, int] | None = None, scores=None):
        """(M, 5) relative boxes -> rectanglelabels results in percent (`size` (H, W) adds original_height/width)."""
        extra = {"original_height": int(size[0]), "original_width": int(size[1])} if size else {}
        out = []
        for j, (x0, y0, x1, y1, c) in enumerate(np.asarray(value, np.float64).reshape(-1, 5).tolist()):
            rect = {"x": x0 * 100, "y": y0 * 100, "width": (x1 - x0) * 100, "height": (y1 - y0) * 100, "rotation": 0,
                    "rectanglelabels": [self.classes[int(c)]]}  # fmt: skip
            score = {"score": float(scores[j])} if scores is not None else {}
            out.append(L.ls_result(self, "rectanglelabels", rect, **extra, **score))
        return out

    def label_studio_value(self, results, from_name=None):
        index = {name: i for i, name in enumerate(self.classes)}
        boxes = []
        for r in L.ls_of(results, "rectanglelabels", from_name):
            v = r.get("value", {})
            name = (v.get("rectanglelabels") or [None])[0]
            if name not in index:
                raise L.LabelError(f"a rectangle labelled {name!r}, not one of the classes {list(self.classes)}")
            if abs(float(v.get("rotation", 0) or 0)) > 1e-6:
                raise L.LabelError(f"a rotated rectangle ({v['rotation']} degrees): detection boxes are upright")
            x, y, w, h = (float(v[k]) / 100.0 for k in ("x", "y", "width", "height"))
            boxes.append([x, y, x + w, y + h, float(index[name])])
        return np.asarray(boxes, np.float32).reshape(-1, 5)

    def label_studio_prediction(self, answer):
        h, w = answer["image_size"]
        boxes = [[*(np.asarray(b["box"], np.float64) / [w, h, w, h]), self.classes.index(b["class"])]
                 for b in answer["boxes"]]  # fmt: skip
        return self.label_studio_results(boxes, (h, w), [b["score"] for b in answer["boxes"]])

    # -- targets ---------------------------------------------------------------------------------------------------

    def targets(self, values: Any) -> torch.Tensor:
        """Per-frame (M, 5) relative boxes -> (B, M_max, 5), padded with class -1."""
        arrays = [np.asarray(v, np.float32).reshape(-1, 5) for v in values]
        bad = [i for i, a in enumerate(arrays) if len(a) and (
            (a[:, 2] <= a[:, 0]).any() or (a[:, 3] <= a[:, 1]).any() or (a[:, :4] < -0.01).any()
            or (a[:, :4] > 1.01).any() or (a[:, 4] < 0).any() or (a[:, 4] >= self.k).any())]  # fmt: skip
        if bad:
            raise ValueError(f"{len(bad)} frames hold boxes outside the image, of no size or of unknown classes "
                             f"(rows {L._first(bad)})")  # fmt: skip
        m = max([len(a) for a in arrays] + [1])
        out = torch.full((len(arrays), m, 5), -1.0)
        for i, a in enumerate(arrays):
            out[i, : len(a)] = torch.from_numpy(a)
        return out

    def _cells(self, target: torch.Tensor, gh: int, gw: int):
        """Valid boxes of a (B, M, 5) target: (frame index, class, cell row, cell col, offset (2), log size (2))."""
        valid = target[..., 4] >= 0  # (B, M)
        b, _ = valid.nonzero(as_tuple=True)
        t = target[valid]  # (n, 5)
        cx, cy = (t[:, 0] + t[:, 2]) / 2 * gw, (t[:, 1] + t[:, 3]) / 2 * gh  # centre in cell units
        col, row = cx.floor().clamp(0, gw - 1), cy.floor().clamp(0, gh - 1)
        offset = torch.stack([cx - col, cy - row], dim=1).clamp(0, 1)
        size = torch.stack([t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]], dim=1).clamp_min(1e-4).log()
        bw, bh = (t[:, 2] - t[:, 0]) * gw, (t[:, 3] - t[:, 1]) * gh  # box size in cells
        return b, t[:, 4].long(), row.long(), col.long(), offset, size, bw, bh

    def heatmap(self, target: torch.Tensor, gh: int, gw: int, cells=None) -> torch.Tensor:
        """(B, M, 5) boxes -> (B, K, gh, gw) Gaussian-splatted centre heatmap, 1 at each centre cell (`cells`: the
        target's `_cells`, when the caller has them already)."""
        b, cls, row, col, _, _, bw, bh = cells if cells is not None else self._cells(target, gh, gw)
        heat = torch.zeros(target.shape[0] * self.k, gh * gw)
        if not len(b):
            return heat.reshape(-1, self.k, gh, gw)
        ys = torch.arange(gh, dtype=torch.float32)[None, :, None]
        xs = torch.arange(gw, dtype=torch.float32)[None, None, :]
        sigma = (torch.stack([bw, bh], 1).clamp_min(1.0) / 6).clamp_min(0.5)  # (n, 2) in cells, CenterNet-like
        g = torch.exp(
            -((xs - col[:, None, None]) ** 2) / (2 * sigma[:, 0, None, None] ** 2)
            - ((ys - row[:, None, None]) ** 2) / (2 * sigma[:, 1, None, None] ** 2)
        )  # (n, gh, gw)
        rows = (b * self.k + cls)[:, None].expand(-1, gh * gw)  # each box's (frame, class) row
        heat.scatter_reduce_(0, rows, g.reshape(-1, gh * gw), "amax")  # overlapping objects: the larger value
        heat = heat.reshape(-1, self.k, gh, gw)
        heat[b, cls, row, col] = 1.0
        return heat

    # -- fitting ---------------------------------------------------------------------------------------------------

    def loss(self, out, target):
        gh, gw = out.shape[-2:]
        logits = out[:, : self.k]
        cells = self._cells(target, gh, gw)
        heat = self.heatmap(target, gh, gw, cells)
        pos = heat.eq(1).float()
        p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
        focal = -(pos * (1 - p) ** 2 * p.log() + (1 - pos) * (1 - heat) ** 4 * p**2 * (1 - p).log()).sum()
        n = pos.sum().clamp_min(1)
        b, _, row, col, offset, size, _, _ = cells
        reg = out.new_zeros(())
        if len(b):
            cell = out[b, :, row, col]  # (n, K + 4)
            reg = F.l1_loss(cell[:, self.k : self.k + 2].sigmoid(), offset) + F.l1_loss(cell[:, self.k + 2 :], size)
        return focal / n + reg

    def detections(self, out: torch.Tensor, min_score: float = 0.01) -> list[np.ndarray]:
        """(B, K + 4, gh, gw) -> per frame (n, 6) relative x0 y0 x1 y1 score class, best first (3x3 peak NMS)."""
        b, _, gh, gw = out.shape
        heat = out[:, : self.k].sigmoid()
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)  # keep local maxima only
        scores, flat = peaks.reshape(b, -1).topk(min(TOP_K, self.k * gh * gw))
        cls, cell = flat // (gh * gw), flat % (gh * gw)
        row, col = cell // gw, cell % gw
        regs = out[:, self.k :].reshape(b, 4, -1).gather(2, cell[:, None, :].expand(-1, 4, -1))  # (B, 4, top)
        cx = (col + regs[:, 0].sigmoid()) / gw
        cy = (row + regs[:, 1].sigmoid()) / gh
        w, h = regs[:, 2].clamp(-10, 0.5).exp(), regs[:, 3].clamp(-10, 0.5).exp()
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores, cls.float()], dim=-1)
        boxes[..., :4] = boxes[..., :4].clamp(0, 1)
        return [bx[bx[:, 4] >= min_score].numpy() for bx in boxes.float()]

    def stats(self, out, target):
        preds = self.detections(out)
        truths = [t[t[:, 4] >= 0].numpy() for t in target]
        counted = np.array([float((p[:, 4] >= self.threshold).sum()) for p in preds])
        true_n = np.array([float(len(t)) for t in truths])
        return {"preds": preds, "truths": truths, "count_abs": float(np.abs(counted - true_n).sum()), "n": len(preds)}

    def frame_errors(self, out, target):
        """(B,) 1 - F1 at IoU 0.5 of the boxes the answer keeps (score >= the threshold) against the true boxes."""
        preds = self.detections(out, self.threshold)
        errs = [1 - frame_f1(p, t[t[:, 4] >= 0].numpy()) for p, t in zip(preds, target, strict=True)]
        return torch.tensor(errs, dtype=torch.float32)

    def uncertainty(self, outs):
        """(K, B, K_cls + 4, gh, gw) -> (B,) box disagreement: 1 - the mean F1 at IoU 0.5 between every two members'
        answered boxes (score >= the threshold; `frame_f1`, one member's boxes taken as the other's truth). 0 when every
        member answers the same boxes (or none), 1 when no two members share a box."""
        dets = [self.detections(o, self.threshold) for o in outs.float()]  # K lists of B (n, 6)
        k, b = len(dets), outs.shape[1]
        if k < 2:
            return torch.zeros(b)
        f1 = torch.zeros(b)
        for i in range(k):
            for j in range(i + 1, k):
                f1 += torch.tensor([frame_f1(p, t[:, [0, 1, 2, 3, 5]]) for p, t in zip(dets[i], dets[j], strict=True)])
        return 1 - f1 / (k * (k - 1) / 2)

    def finalize(self, s):
        m, m50 = _coco_eval(s["preds"], s["truths"], self.k)
        return {"map50": m50, "map": m, "count_mae": s["count_abs"] / max(s["n"], 1),
                "boxes": int(sum(len(t) for t in s["truths"])), "n": s["n"]}  # fmt: skip

    def baseline(self, train_target):
        """Prior boxes: per cell, logit of how often a box centre falls there, mean offset and log size."""
        gh, gw = self.grid
        b, cls, row, col, offset, size, _, _ = self._cells(train_target, gh, gw)
        n = max(train_target.shape[0], 1)
        freq = torch.zeros(self.k, gh, gw).index_put_((cls, row, col), torch.ones(len(b)), accumulate=True) / n
        out = torch.zeros(1, self.out_dim, gh, gw)
        out[0, : self.k] = torch.logit(freq.clamp(1e-4, 1 - 1e-4))
        mean_size = size.mean(0) if len(b) else torch.tensor([math.log(0.1)] * 2)
        cnt = torch.zeros(gh, gw).index_put_((row, col), torch.ones(len(b)), accumulate=True).clamp_min(1)
        for j, v in enumerate((offset[:, 0], offset[:, 1])):
            s = torch.zeros(gh, gw).index_put_((row, col), v, accumulate=True)
            out[0, self.k + j] = torch.logit((s / cnt).where(s > 0, torch.tensor(0.5)).clamp(0.01, 0.99))
        for j in range(2):
            s = torch.zeros(gh, gw).index_put_((row, col), size[:, j], accumulate=True)
            out[0, self.k + 2 + j] = torch.where(s != 0, s / cnt, mean_size[j])
        return out

    @property
    def grid(self) -> tuple[int, int]:
        g = self.cfg.options.get("grid")
        if not g:
            raise ValueError("the detection baseline needs the grid; fit through heads.fit, which sets it")
        return int(g[0]), int(g[1])

    def prepare(self, grid: tuple[int, int]) -> None:
        self.cfg.options["grid"] = list(grid)

    def output_bias(self, train_target):
        gh, gw = self.grid
        *_, size, _, _ = self._cells(train_target, gh, gw)
        mean_size = size.mean(0) if len(size) else torch.tensor([math.log(0.1)] * 2)
        return torch.cat([torch.full((self.k,), -2.19), torch.zeros(2), mean_size])  # -2.19: CenterNet's prior 0.1

    # -- answers ---------------------------------------------------------------------------------------------------

    def decode(self, out, sizes=None):
        answers = []
        for i, det in enumerate(self.detections(out, self.threshold)):
            h, w = sizes[i] if sizes else (1, 1)
            boxes = [{"box": [round(x0 * w, 1), round(y0 * h, 1), round(x1 * w, 1), round(y1 * h, 1)],
                      "score": round(float(s), 4), "class": self.classes[int(c)]}
                     for x0, y0, x1, y1, s, c in det.tolist()]  # fmt: skip
            answers.append({"boxes": boxes, "count": len(boxes), "image_size": [h, w]})
        return answers

    def describe(self, answer):
        parts = [f"{b['class']} {b['score']:.2f} [{', '.join(f'{v:.0f}' for v in b['box'])}]" for b in answer["boxes"]]
        return f"{answer['count']} boxes" + (": " + "; ".join(parts[:8]) if parts else "")

    def plot_frames(self) -> int:
        return 6

    def plot(self, path: Path, out, target, images, title):
        from heads.plots import box_panels

        n = len(images)
        answers, truths = [], []
        for i in range(n):
            h, w = images[i].shape[:2]
            answers.append(self.decode(out[i : i + 1], [(h, w)])[0])
            t = target[i][target[i][:, 4] >= 0][:, :4].numpy()
            truths.append(t * np.array([w, h, w, h], np.float32))
        return box_panels(path, images, truths, answers, title, self.classes)
