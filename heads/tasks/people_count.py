"""`people_count`: how many people a frame shows.

Labels: CSV (`value`, `people_count`, `people` or `count` column), COCO (person boxes with iscrowd 0 per image), Label
Studio (a `number` result, else the person rectangles). Output: a log-rate, fitted by Poisson NLL (or squared error on
log(1 + count)). Metrics: MAE (primary) and RMSE. Baseline: the training median, the best constant for MAE (on a
mostly empty camera the mean is a poor bar: always 0 scored 0.88 MAE where the mean scored 1.22).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from heads import labels as L
from heads.tasks.base import Task, register_task

MAX_COUNT = 1e5  # beyond this a "count" is a unit or parsing mistake, not a crowd


@register_task
class PeopleCount(Task):
    name, out_dim, primary, unit = "people_count", 1, "mae", "people"
    columns = ("people_count", "people", "count")
    flip_tolerance = 0.5  # people: a frame flips when its error grows enough to change the rounded count

    def readers(self):
        return {
            "csv": lambda p, ctx, t: L.read_task_csv(p, ctx, t),
            "coco": lambda p, ctx, t: L.read_coco(p, ctx.resolver, ctx.known),
            "labelstudio": lambda p, ctx, t: L.read_label_studio(p, t, resolver=ctx.resolver, known=ctx.known),
        }

    # -- Label Studio: a Number per frame (an integer a labeller types; a head's count is pre-annotated rounded) -----

    def label_studio_config(self):
        return (
            "Number",
            f"""<View>
  <Image name="image" value="$image"/>
  <Header value="How many people are in the frame?"/>
  <Number name="{self.name}" toName="image" min="0" step="1" required="true"/>
</View>""",
        )

    def label_studio_results(self, value):
        return [L.ls_result(self, "number", {"number": value})]

    def label_studio_value(self, results, from_name=None):
        """A `number` result, else the number of person rectangles (an export of boxes counts them)."""
        for r in L.ls_of(results, "number", from_name):
            if "number" in r.get("value", {}):
                return float(r["value"]["number"])
        boxes = L.ls_of(results, "rectanglelabels", from_name)
        if boxes:
            return float(sum(any(x.lower() == "person" for x in r["value"]["rectanglelabels"]) for r in boxes))
        return None

    def label_studio_prediction(self, answer):
        return self.label_studio_results(max(0, round(float(answer["count"]))))

    def targets(self, values: Any) -> torch.Tensor:
        y = L.numbers(values, "people_count labels")
        bad = [i for i, v in enumerate(y) if v < 0 or v > MAX_COUNT]
        if bad:
            raise ValueError(f"{len(bad)} people_count labels are negative or above {MAX_COUNT:g} "
                             f"(rows {L._first(bad)}: {L._first([y[i] for i in bad])})")  # fmt: skip
        return torch.as_tensor(y, dtype=torch.float32)

    def check_labels(self, values: list[Any]) -> list[str]:
        y = np.asarray(L.numbers(values, "people_count labels"), dtype=np.float64)
        if y.size < 10:
            return []
        bound = 10 * max(float(np.quantile(y, 0.99)), 1.0) + 10
        far = np.flatnonzero(y > bound)
        if far.size:
            return [f"{far.size} people_count labels are far above the rest (> {bound:.0f}; rows "
                    f"{L._first(far.tolist())}, values {L._first(y[far].tolist())}): check them"]  # fmt: skip
        return []

    def count(self, out: torch.Tensor) -> torch.Tensor:
        z = out[:, 0]
        return z.clamp(max=20).exp() if self.cfg.count_loss == "poisson" else z.expm1().clamp_min(0)

    def _z(self, count: torch.Tensor) -> torch.Tensor:
        return count.clamp_min(1e-6).log() if self.cfg.count_loss == "poisson" else count.log1p()

    def loss(self, out, target):
        z = out[:, 0]
        if self.cfg.count_loss == "poisson":
            return F.poisson_nll_loss(z.clamp(max=20), target, log_input=True, full=False)
        return F.mse_loss(z, target.log1p())

    def stats(self, out, target):
        err = self.count(out) - target
        return {"abs": err.abs().sum().item(), "sq": (err * err).sum().item(), "n": target.numel()}

    def frame_errors(self, out, target):
        return (self.count(out) - target).abs()

    def uncertainty(self, outs):
        """(K, B, 1) -> (B,) variance of the K predicted counts (people^2)."""
        counts = torch.stack([self.count(o) for o in outs.float()])  # (K, B)
        return counts.var(dim=0, unbiased=False)

    def finalize(self, s):
        return {"mae": s["abs"] / s["n"], "rmse": math.sqrt(s["sq"] / s["n"]), "n": s["n"]}

    def baseline(self, train_target):
        return self._z(train_target.float().median()).reshape(1, 1)

    def output_bias(self, train_target):
        return self._z(train_target.float().mean()).reshape(1)  # the mean: a fit starts where its loss is lowest

    def decode(self, out, sizes=None):
        return [{"count": float(c)} for c in self.count(out).tolist()]

    def describe(self, answer):
        return f"count {answer['count']:.2f}"

    def plot(self, path: Path, out, target, images, title):
        from heads.plots import scatter

        return scatter(path, target.numpy(), self.count(out).numpy(), title, "true count (people)",
                       "predicted count (people)", integer=True)  # fmt: skip
