"""Registered heads: save/load through `store.artifacts.Registry` (kind "head") and JSON-able predictions.

The card's config holds the task config, the head config and the feature recipe (layers, pooled or grid, grid shape,
width); its parents hold the exact encoder id the features came from. `load_head` takes the encoder id the caller's
features come from and refuses any other (a head on another encoder's features gives plausible wrong numbers, so this
is an error, never a warning). `predict` also checks the features against the recipe before running.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fth.config import from_dict, to_dict
from heads.features import FeatureRecipe, as_float_tensor
from heads.fit import FitResult, predict_outputs
from heads.models import HeadConfig, build_head
from heads.tasks import Task, TaskConfig, make_task
from store.artifacts import ArtifactError, Card, Registry

KIND = "head"


class EncoderMismatchError(ArtifactError):
    """A head asked to run on features of an encoder other than the one it was fitted on."""


@dataclass
class TrainedHead:
    """A head ready to predict: module, task, the feature recipe it reads and the encoder it belongs to."""

    module: nn.Module
    task: Task
    recipe: FeatureRecipe
    head_cfg: HeadConfig
    encoder_id: str
    card: Card | None = None

    @classmethod
    def from_fit(cls, result: FitResult, encoder_id: str) -> TrainedHead:
        return cls(result.head, result.task, result.recipe, result.head_cfg, encoder_id)

    @property
    def id(self) -> str | None:
        return self.card.id if self.card else None


def save_head(
    head: TrainedHead | FitResult,
    registry: Registry,
    encoder_id: str | None = None,
    metrics: dict[str, Any] | None = None,
    name: str | None = None,
    parents: dict[str, Any] | None = None,
) -> Card:
    """Register a fitted head as `head-<hash>`; a FitResult needs `encoder_id` and brings its metrics summary.

    Args:
        parents: extra lineage (e.g. the label file's hash), stored beside the encoder id.
    """
    if isinstance(head, FitResult):
        if not encoder_id:
            raise ValueError("save_head(FitResult) needs the encoder id the features came from")
        metrics = {**head.summary(), **(metrics or {})}
        head = TrainedHead.from_fit(head, encoder_id)
    if encoder_id and encoder_id != head.encoder_id:
        raise EncoderMismatchError(f"head belongs to encoder {head.encoder_id}, not {encoder_id}")
    config = {"task": to_dict(head.task.cfg), "head": to_dict(head.head_cfg), "recipe": to_dict(head.recipe)}
    card = registry.register(
        KIND, head.module.state_dict(), config, {**(parents or {}), "encoder": head.encoder_id}, metrics, name
    )
    head.card = card
    return card


def load_head(ref: str | Path, registry: Registry, encoder_id: str) -> TrainedHead:
    """A head id/path -> TrainedHead, refusing it unless it was fitted on `encoder_id`'s features."""
    weights, card = registry.load(ref)
    if card.kind != KIND:
        raise ArtifactError(f"{card.id} is a {card.kind!r} artifact, not a head")
    fitted_on = card.parents.get("encoder")
    recipe = from_dict(FeatureRecipe, card.config["recipe"], f"{card.path}/card.json")
    if fitted_on != encoder_id:
        raise EncoderMismatchError(
            f"head {card.id} ({card.config['task']['name']}) was fitted on encoder {fitted_on} "
            f"({recipe.describe()}); refusing to run it on features of encoder {encoder_id}. "
            f"Refit it on {encoder_id}'s embeddings (fth heads fit --encoder {encoder_id})."
        )
    task_cfg = from_dict(TaskConfig, card.config["task"], f"{card.path}/card.json")
    head_cfg = from_dict(HeadConfig, card.config["head"], f"{card.path}/card.json")
    module = build_head(head_cfg)
    module.load_state_dict(weights, strict=True)
    return TrainedHead(module.eval(), make_task(task_cfg), recipe, head_cfg, fitted_on, card)


def predict(
    head: TrainedHead, features: Any, size: tuple[int, int] | None = None, batch: int = 256
) -> list[dict[str, Any]]:
    """Features of one frame or a batch -> one JSON-able prediction per frame.

    people_count -> {"count": float}; time_of_day -> {"time": "HH:MM", "minutes": float};
    depth -> {"depth": [[metres]], "shape": [h, w]}; segmentation -> {"segmentation": [[class]], "shape", "classes"}.
    Dense maps come at the head's output resolution, or at `size` (H, W) when given.
    """
    x = as_float_tensor(features)
    single = x.dim() == (2 if head.recipe.form == "pooled" else 4) - 1
    if single:
        x = x[None]
    head.recipe.check(x)
    return head.task.decode(predict_outputs(head.module, x, batch), size)
