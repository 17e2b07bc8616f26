"""Registered heads: save/load through `store.artifacts.Registry` (kind "head"), and their answers.

The card's config holds the task config, the head config and the feature recipe (layers, pooled or grid, grid shape,
width); its parents hold the exact encoder id the features came from (and the labels' digest and frame ids, so a head
can be refitted without its user). `load_head` takes the encoder id the caller's features come from and refuses any
other (a head on another encoder's features gives plausible wrong numbers, so this is an error, never a warning),
unless an adapter maps that encoder's features into the head's own (`heads.adapt`, `fth heads adapt`): then the head
loads behind it, answering for the new encoder (`encoder_id`) and naming the adapter (`adapter_id`).
This is the only head system: `fth heads predict` and the server both load and run heads through it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fth.config import from_dict, to_dict
from heads.adapt import Adapted, find_adapter, load_adapter
from heads.fit import FitResult, predict_outputs
from heads.models import HeadConfig, as_float, build_head
from heads.tasks import Task, TaskConfig, make_task
from store.artifacts import ArtifactError, Card, Registry
from store.recipe import FeatureRecipe

log = logging.getLogger(__name__)
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
    adapter_id: str | None = None  # the adapter it reads `encoder_id`'s features through (None: fitted on them)

    @classmethod
    def from_fit(cls, result: FitResult, encoder_id: str) -> TrainedHead:
        return cls(result.head, result.task, result.recipe, result.head_cfg, encoder_id)

    @property
    def id(self) -> str | None:
        return self.card.id if self.card else None

    @property
    def name(self) -> str:
        """The name the server answers under: the card's name, else its id."""
        return (self.card.name or self.card.id) if self.card else self.task.name

    @torch.inference_mode()
    def outputs(self, features: Any) -> torch.Tensor:
        """Raw head outputs for a batch of features in the recipe's form, after checking them against it."""
        self.recipe.check(features)
        return self.module(as_float(features))


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
        parents: extra lineage (e.g. the labels' digest and frame ids), stored beside the encoder id.
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


def load_head(ref: str | Path, registry: Registry, encoder_id: str, device: str = "cpu") -> TrainedHead:
    """A head id/path -> TrainedHead, refusing it unless it was fitted on `encoder_id`'s features."""
    weights, card = registry.load(ref)
    if card.kind != KIND:
        raise ArtifactError(f"{card.id} is a {card.kind!r} artifact, not a head")
    where = f"{card.path}/card.json"
    if not {"task", "head", "recipe"} <= set(card.config):
        raise ArtifactError(f"head {card.id}: its card has no task/head/recipe config ({where}); refit it")
    fitted_on = card.parents.get("encoder")
    recipe = from_dict(FeatureRecipe, card.config["recipe"], where)
    adapter = find_adapter(registry, fitted_on, encoder_id, recipe) if fitted_on != encoder_id else None
    if fitted_on != encoder_id and adapter is None:
        raise EncoderMismatchError(
            f"head {card.id} ({card.config['task']['name']}) was fitted on encoder {fitted_on} "
            f"({recipe.describe()}); refusing to run it on features of encoder {encoder_id}. "
            f"Map {encoder_id}'s features to it (fth heads adapt --from {fitted_on} --to {encoder_id}) or refit it "
            f"(fth heads refit --encoder {encoder_id} --from {fitted_on})."
        )
    task_cfg = from_dict(TaskConfig, card.config["task"], where)
    head_cfg = from_dict(HeadConfig, card.config["head"], where)
    module: nn.Module = build_head(head_cfg)
    module.load_state_dict(weights, strict=True)
    if adapter is not None:
        weight, bias, recipe = load_adapter(adapter, registry)
        module = Adapted(weight, bias, module)
    head = TrainedHead(module.eval().to(device), make_task(task_cfg), recipe, head_cfg, encoder_id, card)
    head.adapter_id = adapter.id if adapter is not None else None
    return head


def load_heads(
    registry: Registry, encoder_id: str, refs: list[str], auto: bool, device: str = "cpu"
) -> dict[str, TrainedHead]:
    """The named heads (errors propagate) plus, with `auto`, every registered head fitted on `encoder_id` except those
    the gate refused (their card's `metrics.gate.decision` is `keep-adapted`), then, under each name still free, the
    newest head of another encoder that an adapter maps `encoder_id`'s features to. Heads that cannot load are skipped
    with a log line naming why. Keyed by the name they answer under."""
    heads: dict[str, TrainedHead] = {}
    for ref in refs:
        head = load_head(ref, registry, encoder_id, device)
        heads[head.name] = head
    if not auto:
        return heads
    loaded = {h.id for h in heads.values()}
    cards = registry.list(KIND)
    for card in cards:
        if card.parents.get("encoder") != encoder_id or card.id in loaded:
            continue
        gate = card.metrics.get("gate") or {}
        if gate.get("decision") == "keep-adapted":
            log.info("skipping head %s: the gate kept %s in service (%s)", card.id, gate.get("old_head"),
                     gate.get("reason"))  # fmt: skip
            continue
        _try_load(card, registry, encoder_id, device, heads)
    for card in reversed(cards):  # newest first: a name answers with the latest head that can serve it
        if card.parents.get("encoder") == encoder_id or card.id in loaded or (card.name or card.id) in heads:
            continue
        try:
            recipe = from_dict(FeatureRecipe, card.config.get("recipe") or {}, card.id)
        except ValueError as e:
            log.warning("skipping head %s: %s", card.id, e)
            continue
        if find_adapter(registry, card.parents.get("encoder"), encoder_id, recipe) is None:
            log.info("skipping head %s: fitted on encoder %s (no adapter to it)", card.id, card.parents.get("encoder"))
            continue
        _try_load(card, registry, encoder_id, device, heads)
    return heads


def _try_load(card: Card, registry: Registry, encoder_id: str, device: str, heads: dict[str, TrainedHead]) -> None:
    try:
        head = load_head(card.id, registry, encoder_id, device)
    except (ArtifactError, ValueError) as e:
        log.warning("skipping head %s: %s", card.id, e)
        return
    heads[head.name] = head


def predict(
    head: TrainedHead, features: Any, sizes: list[tuple[int, int]] | None = None, batch: int = 256
) -> list[dict[str, Any]]:
    """Features of one frame or a batch -> one JSON-able answer per frame (the task's `decode`).

    Args:
        sizes: each frame's (H, W) in pixels, for answers in image coordinates (boxes); maps stay at head size.
    """
    x = as_float(features)
    if x.dim() == (2 if head.recipe.form == "pooled" else 4) - 1:
        x = x[None]
    head.recipe.check(x)
    return head.task.decode(predict_outputs(head.module, x, batch), sizes)
