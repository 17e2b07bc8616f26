"""The task seam: a `Task` owns everything about one kind of head, and a registry maps names to tasks.

A task says which label formats it reads and how (`readers`), how a list of labels collates into one target tensor
(`targets`: fixed tensors, or padded variable-length boxes), its loss, its metrics (additive `stats` per batch, then
`finalize`) with the primary metric and its direction, the best constant predictor for that metric (`baseline`), the
default head kind, feature form and fitting preset, its served answer (`decode`), its one-line description of a
prediction (`describe`) and its plot (`plot`), and per frame, how wrong a prediction is (`frame_errors`) and when a
change of head counts as a negative flip (`negative_flips`: the error grew past the task's stated tolerance), and how
much an ensemble of its heads disagrees on a frame (`uncertainty`, what `heads.active` ranks frames to label by).
Nothing outside a task's own file branches on its name: adding a task is one file that subclasses `Task` and calls
`register_task` (a test module may do it too).

Shapes: B batch, (h, w) head output, (H, W) label size.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from heads.labels import LabelError, LabelSet, Resolver


@dataclass
class TaskConfig:
    """Which task and its options (each option is read by the tasks it concerns; the rest ignore it).

    Args:
        name: a registered task name (`heads.tasks.TASKS`).
        count_loss: `poisson` (NLL on a log-rate) or `log` (squared error on log(1 + count)) for counts.
        classes: class names (segmentation, detection): index i = classes[i].
        ignore_index: label value skipped by loss and metrics (segmentation).
        si_lambda: weight of the scale term of the scale-invariant log loss (depth; 0 = plain log MSE).
        time_unit: unit of NUMERIC time-of-day labels: `hours` in [0, 24), `minutes` or `seconds` since midnight.
        options: free-form options of tasks registered outside this package.
    """

    name: str = "people_count"
    count_loss: str = "poisson"
    classes: tuple[str, ...] = ()
    ignore_index: int = 255
    si_lambda: float = 0.5
    time_unit: str = "hours"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabelContext:
    """What label readers need from the workspace, built once by the fit pipeline.

    Args:
        resolver: path / stem / id -> our frame id (the catalog's `FrameIndex.resolve`), None when unknown.
        known: the frame ids the catalog holds.  size: frame id -> (H, W) as catalogued.
        classes: `--classes` file, when given.  depth_scale: `--depth-scale`, when given.
        column: `--column` of a CSV, when given.  catalog_values: frame ids and their catalog local time of day.
    """

    resolver: Resolver
    known: Container[str]
    size: Callable[[str], tuple[int, int] | None]
    classes: str | None = None
    depth_scale: float | None = None
    column: str | None = None
    catalog_values: Callable[[], tuple[list[str], list[Any]]] | None = None


Reader = Callable[[Path, LabelContext, "Task"], LabelSet]


class Task:
    """Interface every task implements.

    Class attributes:
        name: registry key.  dense: the head outputs a map (B, out, h, w) rather than a vector (B, out).
        map_labels: labels are per-pixel maps (downsampled for fitting, strided in the training loss, scene prior).
        out_dim: head outputs per frame (or per map cell).  primary: the metric early stopping and the gate watch.
        higher_is_better: direction of `primary`.  unit: unit of `primary` for tables ("" when unitless).
        default_form: `grid` or `pooled` features when the user does not say.
        preset: the FitConfig preset (configs/<preset>.yaml) used when `--config` is not given.
        columns: CSV value column names this task recognises, in preference order.
        flip_tolerance: how much a frame's error (`frame_errors`) may grow before a new head's answer counts as a
            negative flip against the old one's; a fraction of the old error when `relative_flip`.
    """

    name: str = ""
    dense: bool = False
    map_labels: bool = False
    out_dim: int = 1
    primary: str = ""
    higher_is_better: bool = False
    unit: str = ""
    default_form: str = "grid"
    preset: str = "heads"
    columns: tuple[str, ...] = ()
    flip_tolerance: float = 0.0
    relative_flip: bool = False

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    # -- labels ---------------------------------------------------------------------------------------------------

    def readers(self) -> dict[str, Reader]:
        """Label format -> reader; the first format that accepts a path is the one `auto` picks (see `sniff`)."""
        return {}

    # -- Label Studio (labelstud.io/tags; the control is named after the task, the image is `data.image`) ----------

    def label_studio_config(self) -> tuple[str, str]:
        """(control type, labelling config XML) of this task's Label Studio project."""
        raise LabelError(f"task {self.name} has no Label Studio labelling config")

    def label_studio_results(self, value: Any) -> list[dict[str, Any]]:
        """One label -> the result list a labeller submits for it in this task's config (pre-annotations too)."""
        raise LabelError(f"task {self.name} has no Label Studio labelling config")

    def label_studio_value(self, results: list[dict[str, Any]], from_name: str | None = None) -> Any:
        """One annotation's results (those of control `from_name`, or all) -> this task's label, or None when it
        holds none."""
        raise LabelError(f"task {self.name} has no Label Studio labelling config")

    def label_studio_prediction(self, answer: dict[str, Any]) -> list[dict[str, Any]]:
        """A head's decoded answer (`decode`, with the frame's size) -> pre-annotation results."""
        raise LabelError(f"task {self.name} has no Label Studio pre-annotation")

    def read_labels(self, path: str, fmt: str, ctx: LabelContext) -> tuple[LabelSet, str]:
        """Labels at `path` in format `fmt` (`auto` sniffs it) -> (LabelSet keyed by our frame id, format read)."""
        from heads.labels import sniff

        readers = self.readers()
        if fmt == "auto":
            fmt = sniff(path, list(readers))
        if fmt not in readers:
            raise LabelError(f"{self.name} reads labels as {', '.join(readers)}; not {fmt!r} ({path})")
        if fmt != "catalog" and not Path(path).exists():
            raise LabelError(f"labels {path}: no such file or folder")
        return readers[fmt](Path(path), ctx, self), fmt

    def targets(self, values: Any) -> torch.Tensor:
        """Label values (one per frame) -> one target tensor with frames on dim 0 (indexable by frame)."""
        raise NotImplementedError

    def check_labels(self, values: list[Any]) -> list[str]:
        """Warnings about plausible-but-suspicious labels (outliers); empty when none."""
        return []

    # -- fitting --------------------------------------------------------------------------------------------------

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stats(self, out: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
        """Additive statistics of one batch (summed over batches with `+`, then `finalize`)."""
        raise NotImplementedError

    def finalize(self, stats: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def evaluate(self, outs_and_targets) -> dict[str, Any]:
        """Iterable of (out, target) batches -> metrics."""
        total: dict[str, Any] = {}
        for out, target in outs_and_targets:
            for k, v in self.stats(out, target).items():
                total[k] = total[k] + v if k in total else v
        return self.finalize(total)

    def frame_errors(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Head outputs (B, ...) and targets -> (B,) float error per frame, lower is better, in the task's own terms
        (an absolute error for regressions, 1 - a per-frame score for maps and boxes, 0/1 for a class)."""
        raise NotImplementedError

    def negative_flips(self, old_err: torch.Tensor, new_err: torch.Tensor) -> torch.Tensor:
        """(B,) bool: frames a new head answers worse than the old one by more than the task's tolerance (for 0/1
        errors and a tolerance below 1: right before, wrong now)."""
        allowed = self.flip_tolerance * old_err if self.relative_flip else self.flip_tolerance
        return new_err > old_err + allowed

    def uncertainty(self, outs: torch.Tensor) -> torch.Tensor:
        """K ensemble members' raw outputs stacked (K, B, ...) -> (B,) disagreement, 0 where they all agree, higher
        the more they differ, in the task's own terms. The default: the members' variance, averaged over outputs."""
        return outs.float().var(dim=0, unbiased=False).flatten(1).mean(1)

    def baseline(self, train_target: torch.Tensor) -> torch.Tensor:
        """The best constant predictor for the primary metric, as one frame's head output (1, ...) broadcast over a
        batch (per pixel / per cell for map outputs)."""
        raise NotImplementedError

    def prior(self, train_target: torch.Tensor) -> torch.Tensor:
        """Map-label tasks: the per-pixel scene prior (1, out, H, W) in head-output space (see HeadConfig.prior)."""
        return self.baseline(train_target)

    def changed(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Map-label tasks: `target` with every pixel the baseline `base` already gets right marked invalid, so
        metrics read only what differs from the static scene; None for other tasks."""
        return None

    def output_bias(self, train_target: torch.Tensor) -> torch.Tensor | None:
        """Initial bias of the head's output layer (out_dim,), so fitting starts at the naive prediction."""
        return None

    def prepare(self, grid: tuple[int, int]) -> None:
        """Called once before fitting with the features' (gh, gw) (tasks whose targets live on the grid keep it)."""

    def head_defaults(self) -> dict[str, Any]:
        """HeadConfig fields this task needs whatever the preset says (e.g. no upsampling for box heads)."""
        return {}

    # -- answers --------------------------------------------------------------------------------------------------

    def decode(self, out: torch.Tensor, sizes: list[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
        """Head output (B, ...) -> one JSON-able answer per frame; `sizes` are the input images' (H, W) in pixels,
        for answers in image coordinates (maps stay at the head's resolution)."""
        raise NotImplementedError

    def describe(self, answer: dict[str, Any]) -> str:
        """One frame's answer as one line for `fth heads predict`."""
        return str(answer)

    def summary(self, metrics: dict[str, Any], baseline: dict[str, Any]) -> str:
        """`<primary> <value> vs baseline <value> <unit>` for tables and reports."""
        m, b = metrics.get(self.primary), baseline.get(self.primary)
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.primary} {_fmt(m)} vs baseline {_fmt(b)}{unit}"

    def plot(self, path: Path, out: torch.Tensor, target: torch.Tensor, images: list[Any] | None, title: str) -> Path:
        """The held-out plot: head outputs `out` and targets for some test frames (`images` (H, W, 3) uint8 of the
        first few, when the task draws on frames) -> a PNG at `path`."""
        raise NotImplementedError

    def plot_frames(self) -> int:
        """How many test frames' images `plot` draws on (0: none needed)."""
        return 0


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def resize_map(out: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W) bilinear; identity when already that size."""
    if tuple(out.shape[-2:]) == tuple(size):
        return out
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make `cls` available by `cls.name` (to fitting, loading, serving and the CLI)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    TASKS[cls.name] = cls
    return cls


def make_task(cfg: TaskConfig | str) -> Task:
    """A task instance from its config (or name); one-line error naming the known tasks."""
    if isinstance(cfg, str):
        cfg = TaskConfig(name=cfg)
    if cfg.name not in TASKS:
        raise LabelError(f"unknown task {cfg.name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[cfg.name](cfg)
