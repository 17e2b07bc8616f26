"""`depth`: metric depth per pixel.

Labels: a folder of 16-bit PNGs (value / scale = metres; raw 0 and 65535 invalid) or float .npy maps in metres. The
scale comes from `--depth-scale`, else from a `depth.json` sidecar in the folder (`{"scale": 100}`: centimetres), else
1000 (millimetres, the common 16-bit convention); the reader says which. Output: log-depth at grid (or prior) size,
upsampled bilinearly to the label size. Loss: scale-invariant log loss of Eigen et al. 2014 (NeurIPS, "Depth map
prediction from a single image using a multi-scale deep network", lambda = `si_lambda`). Metrics over valid (> 0)
pixels: AbsRel (primary), RMSE, delta < 1.25, also on the "changed" pixels (where the per-pixel baseline is off by
more than 10%: a fixed camera's people). Baseline: per pixel, the training depths' median weighted by 1 / depth, which
is the constant minimising AbsRel there; it is also the scene prior a prior-head starts from (the per-pixel mean
log-depth, the earlier prior, is a constant that AbsRel ranks well below it: 0.0063 vs 0.0039 on sim frames).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heads import label_maps
from heads.labels import LabelError, LabelSet
from heads.tasks.base import LabelContext, Task, register_task, resize_map

SIDECAR = "depth.json"


def _read(path: Path, ctx: LabelContext, task: Task) -> LabelSet:
    scale, said = ctx.depth_scale, "--depth-scale"
    sidecar = path / SIDECAR if path.is_dir() else path.parent / SIDECAR
    if scale is None and sidecar.is_file():
        try:
            scale, said = float(json.loads(sidecar.read_text())["scale"]), str(sidecar)
        except (ValueError, KeyError, TypeError) as e:
            raise LabelError(f'{sidecar}: expected {{"scale": <PNG units per metre>}} ({e})') from None
    if scale is None:
        scale, said = 1000.0, f"the default (millimetres; no {SIDECAR} in {path} and no --depth-scale)"
    labels = label_maps.read_depth(path, scale, ctx.resolver, ctx.known, ctx.size)
    labels.note = f"16-bit depth PNGs at {scale:g} units per metre, from {said}"
    return labels


def _weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per column of (n, P) values, the median under (n, P) weights; columns with no weight give 0."""
    order = values.argsort(dim=0)
    v, w = values.gather(0, order), weights.gather(0, order)
    cum = w.cumsum(0)
    half = cum[-1:] / 2
    idx = (cum < half).sum(0, keepdim=True).clamp(max=values.shape[0] - 1)
    return torch.where(cum[-1:] > 0, v.gather(0, idx), torch.zeros_like(half))[0]


@register_task
class Depth(Task):
    name, dense, map_labels, out_dim, primary = "depth", True, True, 1, "absrel"
    preset = "heads_dense"
    flip_tolerance, relative_flip = 0.1, True  # a frame flips when its AbsRel grows by more than 10% of the old one

    def readers(self):
        return {"depth": _read}

    def targets(self, values: Any) -> torch.Tensor:
        t = torch.as_tensor(np.stack([np.asarray(v, dtype=np.float32) for v in values]))
        if t.dim() != 3 or (t < 0).any() or not torch.isfinite(t).all():
            raise ValueError("depth labels must be (H, W) maps of finite, non-negative depth (0 = invalid)")
        return t

    def depth(self, out: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return resize_map(out, size or tuple(out.shape[-2:]))[:, 0].clamp(-20, 20).exp()  # (B, H, W)

    def loss(self, out, target):
        z = resize_map(out, tuple(target.shape[-2:]))[:, 0]  # (B, H, W) log-depth
        valid = target > 0
        d = torch.where(valid, z - target.clamp_min(1e-6).log(), torch.zeros_like(z))
        n = valid.flatten(1).sum(1)  # (B,)
        has = n > 0
        n = n.clamp_min(1)
        mean_sq = (d * d).flatten(1).sum(1) / n
        mean = d.flatten(1).sum(1) / n
        per_image = mean_sq - self.cfg.si_lambda * mean * mean
        return per_image[has].mean() if has.any() else z.sum() * 0

    def stats(self, out, target):
        pred = self.depth(out, tuple(target.shape[-2:]))
        valid = target > 0
        p, t = pred[valid], target[valid]
        ratio = torch.maximum(p / t, t / p)
        return {
            "absrel": ((p - t).abs() / t).sum().item(),
            "sq": ((p - t) ** 2).sum().item(),
            "d1": (ratio < 1.25).sum().item(),
            "n": t.numel(),
        }

    def uncertainty(self, outs):
        """(K, B, 1, h, w) log-depth -> (B,) the K members' variance of log depth, averaged over the output's pixels."""
        return outs.float().var(dim=0, unbiased=False).flatten(1).mean(1)

    def frame_errors(self, out, target):
        """(B,) AbsRel over each frame's valid pixels (0 for a frame without any)."""
        pred = self.depth(out, tuple(target.shape[-2:]))
        valid = target > 0
        rel = torch.where(valid, (pred - target).abs() / target.clamp_min(1e-6), torch.zeros_like(pred))
        return rel.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)

    def finalize(self, s):
        n = max(s["n"], 1)
        return {"absrel": s["absrel"] / n, "rmse": math.sqrt(s["sq"] / n), "delta1": s["d1"] / n, "pixels": s["n"]}

    def baseline(self, train_target):
        n, (h, w) = train_target.shape[0], train_target.shape[-2:]
        t = train_target.reshape(n, h * w).float()
        valid = t > 0
        weights = torch.where(valid, 1.0 / t.clamp_min(1e-6), torch.zeros_like(t))
        med = _weighted_median(torch.where(valid, t, torch.zeros_like(t)), weights)  # (H*W,)
        overall = t[valid].median() if valid.any() else torch.tensor(1.0)
        med = torch.where(med > 0, med, overall)
        return med.log().reshape(1, 1, h, w)

    def changed(self, base, target):
        """Valid pixels where the per-pixel baseline is off by more than 10% (people in front of the scene)."""
        b = self.depth(base, tuple(target.shape[-2:]))  # (1, H, W)
        keep = (target > 0) & ((b - target).abs() > 0.1 * target)
        return torch.where(keep, target, torch.zeros_like(target))

    def output_bias(self, train_target):
        valid = train_target > 0
        return (train_target[valid].log().mean() if valid.any() else torch.tensor(0.0)).reshape(1)

    def decode(self, out, sizes=None):
        return [{"depth": d.tolist(), "shape": list(d.shape)} for d in self.depth(out)]

    def describe(self, answer):
        d = np.asarray(answer["depth"])
        return f"depth {d.shape[0]}x{d.shape[1]} m: min {d.min():.2f} median {np.median(d):.2f} max {d.max():.2f}"

    def plot_frames(self) -> int:
        return 4

    def plot(self, path: Path, out, target, images, title):
        from heads.plots import map_panels

        n = len(images) if images is not None else 4
        pred = self.depth(out[:n], tuple(target.shape[-2:]))
        return map_panels(path, target[:n].numpy(), pred.numpy(), images, title, kind="depth")
