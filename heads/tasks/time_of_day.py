"""`time_of_day`: the local clock time a frame was captured at, read from the picture.

Labels: CSV (`value`, `time_of_day`, `tod` or `time` column: hours, or minutes / seconds with `--time-unit`, or
"HH:MM[:SS]"), Label Studio (`number` seconds or `textarea` "HH:MM"), or `catalog` (the catalog's own local capture
time: no labelling needed). Output: the 24 h clock as an angle, (sin, cos); loss 1 - cos(error). Metric: mean absolute
error in minutes with wrap-around. Baseline: the circular median of the training times (the best constant for it).
"""

from __future__ import annotations

import math
from datetime import datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heads import labels as L
from heads.tasks.base import LabelContext, Task, register_task

DAY = 86400.0
UNIT_SECONDS = {"hours": 3600.0, "minutes": 60.0, "seconds": 1.0}


def parse_time_of_day(value: Any, unit: str = "hours") -> float:
    """Local time of day -> seconds since midnight. Accepts a number in `unit` (hours by default), "HH:MM[:SS[.f]]",
    an ISO datetime string (its local clock time is used), `datetime` or `time`."""
    if isinstance(value, datetime):
        value = value.time()
    if isinstance(value, time):
        return value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6
    if isinstance(value, bool):
        raise ValueError(f"time of day {value!r}: expected a number or HH:MM[:SS]")
    if isinstance(value, int | float | np.integer | np.floating):
        seconds = float(value) * UNIT_SECONDS[unit]
        if not 0 <= seconds < DAY:
            raise ValueError(f"time of day {value!r} {unit}: outside one day (is time_unit right?)")
        return seconds
    text = str(value).strip()
    if "T" in text or (" " in text and "-" in text):
        try:
            return parse_time_of_day(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            pass
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return parse_time_of_day(float(text), unit)
        if len(parts) in (2, 3):
            h, m = int(parts[0]), int(parts[1])
            s = float(parts[2]) if len(parts) == 3 else 0.0
            if 0 <= h < 24 and 0 <= m < 60 and 0 <= s < 61:
                return h * 3600 + m * 60 + s
    except ValueError:
        pass
    raise ValueError(f"time of day {value!r}: expected a number of {unit} or HH:MM[:SS]")


def format_time(seconds: float) -> str:
    minutes = int(round(seconds / 60.0)) % 1440
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _catalog(path: Path, ctx: LabelContext, task: Task) -> L.LabelSet:
    if ctx.catalog_values is None:
        raise L.LabelError("--labels catalog needs a frame catalog")
    ids, values = ctx.catalog_values()
    return L.LabelSet(ids, values, "catalog")


@register_task
class TimeOfDay(Task):
    name, out_dim, primary, unit = "time_of_day", 2, "mae_minutes", "min"
    default_form = "pooled"
    columns = ("time_of_day", "tod", "time")
    flip_tolerance = 30.0  # minutes: a frame flips when its clock error grows by more than half an hour

    def readers(self):
        return {
            "csv": lambda p, ctx, t: L.read_task_csv(p, ctx, t, numeric=False),
            "labelstudio": lambda p, ctx, t: L.read_label_studio(p, t, resolver=ctx.resolver, known=ctx.known),
            "catalog": _catalog,
        }

    # -- Label Studio: a TextArea holding HH:MM (the form `targets` parses); a `number` is read in `time_unit` ------

    def label_studio_config(self):
        return (
            "TextArea",
            f"""<View>
  <Image name="image" value="$image"/>
  <Header value="Local time of day at the camera (HH:MM)"/>
  <TextArea name="{self.name}" toName="image" maxSubmissions="1" required="true"/>
</View>""",
        )

    def label_studio_results(self, value):
        if isinstance(value, str):
            return [L.ls_result(self, "textarea", {"text": [value]})]
        return [L.ls_result(self, "number", {"number": value})]

    def label_studio_value(self, results, from_name=None):
        for r in L.ls_of(results, "number", from_name):
            if "number" in r.get("value", {}):
                return float(r["value"]["number"])
        for r in L.ls_of(results, "textarea", from_name):
            if r.get("value", {}).get("text"):
                return r["value"]["text"][0]
        return None

    def label_studio_prediction(self, answer):
        return self.label_studio_results(str(answer["time"])[:5])

    def targets(self, values: Any) -> torch.Tensor:
        unit = self.cfg.time_unit
        values = list(values)
        numbers = [float(v) for v in values if isinstance(v, int | float | np.integer | np.floating)]
        if unit != "hours" and len(numbers) >= 10 and max(numbers) < 24:
            raise ValueError(
                f"all {len(numbers)} numeric times of day are below 24 but time_unit is {unit!r}: hours of day? "
                "(pass --time-unit hours)"
            )
        out, bad, first = [], [], ""
        for i, v in enumerate(values):
            try:
                out.append(parse_time_of_day(v, unit))
            except ValueError as e:
                bad.append(i)
                first = first or str(e)
        if bad:
            raise ValueError(f"{len(bad)} time_of_day labels are not times of day (rows {L._first(bad)}; first: "
                             f"{first})")  # fmt: skip
        return torch.tensor(out, dtype=torch.float32)

    @staticmethod
    def angle(seconds: torch.Tensor) -> torch.Tensor:
        return seconds * (2 * math.pi / DAY)

    def seconds(self, out: torch.Tensor) -> torch.Tensor:
        return torch.remainder(torch.atan2(out[:, 0], out[:, 1]) * (DAY / (2 * math.pi)), DAY)

    def loss(self, out, target):
        a = self.angle(target)
        unit = out / out.norm(dim=1, keepdim=True).clamp_min(1e-6)  # (B, 2) on the unit circle
        return (1 - unit[:, 0] * a.sin() - unit[:, 1] * a.cos()).mean()

    def frame_errors(self, out, target):
        diff = torch.remainder(self.seconds(out) - target, DAY)
        return torch.minimum(diff, DAY - diff) / 60.0  # (B,) minutes, wrap-around

    def uncertainty(self, outs):
        """(K, B, 2) -> (B,) circular spread of the K predicted clock angles: 1 - their mean resultant length (0 when
        all agree, 1 when they cancel out)."""
        a = torch.stack([self.angle(self.seconds(o)) for o in outs.float()])  # (K, B)
        return 1 - torch.hypot(a.sin().mean(0), a.cos().mean(0))

    def stats(self, out, target):
        return {"abs_min": self.frame_errors(out, target).sum().item(), "n": target.numel()}

    def finalize(self, s):
        return {"mae_minutes": s["abs_min"] / s["n"], "n": s["n"]}

    def baseline(self, train_target):
        """The circular median: the minute of the day with the least total circular distance to the training times
        (searched over all 1440 minutes; no closed form on a circle)."""
        t = train_target.double()
        cand = torch.arange(1440, dtype=torch.float64) * 60.0  # (1440,)
        diff = torch.remainder(cand[:, None] - t[None, :], DAY)  # (1440, n)
        best = cand[torch.minimum(diff, DAY - diff).sum(1).argmin()]
        a = self.angle(best)
        return torch.stack([a.sin(), a.cos()]).reshape(1, 2).float()

    def decode(self, out, sizes=None):
        return [{"time": format_time(s), "minutes": round(s / 60.0, 2)} for s in self.seconds(out).tolist()]

    def describe(self, answer):
        return f"time {answer['time']}"

    def plot(self, path: Path, out, target, images, title):
        from heads.plots import scatter

        return scatter(path, target.numpy() / 3600, self.seconds(out).numpy() / 3600, title,
                       "true time of day (h)", "predicted time of day (h)", lo=0, hi=24)  # fmt: skip
