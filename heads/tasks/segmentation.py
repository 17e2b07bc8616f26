"""`segmentation`: a class per pixel.

Labels: a folder of single-channel index PNGs (pixel = class index, 255 ignored) with its class list: `--classes`, else
`classes.json` inside the folder; a missing list is an error naming where it was looked for. Output: class logits
upsampled to the label size; cross-entropy with an ignore index. Metrics: mIoU (primary), pixel accuracy, per-class IoU
and accuracy, also on the "changed" pixels (where the class differs from the per-pixel majority). Baseline: the
per-pixel majority training class. Scene prior: the per-pixel log class frequency.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from heads import label_maps
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


@register_task
class Segmentation(Task):
    name, dense, map_labels, primary, higher_is_better = "segmentation", True, True, "miou", True
    preset = "heads_dense"
    flip_tolerance = 0.05  # a frame flips when its own mIoU drops by more than 5 points

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        self.out_dim = max(len(cfg.classes), 2)

    def readers(self):
        return {"masks": _read}

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
