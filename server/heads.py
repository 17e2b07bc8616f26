"""The head seam of the server: artifacts of kind "head" that read encoder features and answer JSON.

A head artifact's card holds `parents.encoder`, the exact encoder id it was fitted on; the server refuses a head
whose encoder id differs from the one it serves (a head on the wrong encoder answers plausible wrong numbers).
Two card forms are served:
- heads saved by `heads.artifact.save_head` (config with a feature `recipe`: pooled or grid, layers concatenated on
  D), answered by that package's own `predict`;
- the built-in form: config `type` (a key of `HEAD_TYPES`, builders `(weights, config) -> nn.Module`, extended with
  `register_head_type`), `input` (`pooled`: (B, D), or `tokens`: (B, gh, gw, D)), optional `layer` (default -1)
  and `labels` (class names for the last axis); the module's (B, ...) output becomes JSON via `ServedHead.to_json`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from store.artifacts import ArtifactError, Card, Registry

log = logging.getLogger(__name__)
KIND = "head"


class HeadMismatch(ArtifactError):
    """A head fitted on another encoder than the one being served."""


def _linear(weights: dict[str, torch.Tensor], config: dict[str, Any]) -> nn.Module:
    out_dim, in_dim = weights["weight"].shape
    module = nn.Linear(in_dim, out_dim)
    module.load_state_dict(weights)
    return module


class _GridMean(nn.Module):
    """(B, gh, gw, D) -> mean over the grid -> inner module; lets a linear head read token grids."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.inner(grid.mean(dim=(1, 2)))


HEAD_TYPES: dict[str, Callable[[dict[str, torch.Tensor], dict[str, Any]], nn.Module]] = {"linear": _linear}


def register_head_type(name: str, builder: Callable[[dict[str, torch.Tensor], dict[str, Any]], nn.Module]) -> None:
    """Teach the server a head type: `builder(weights, card.config)` returns the module."""
    HEAD_TYPES[name] = builder


@dataclass
class ServedHead:
    """A loaded head.

    Args:
        card: its artifact card.  module: the torch module in eval mode.
        input: `pooled` or `tokens`.  layers: block indices it reads; several are concatenated on D.
        decode: (head, features batch) -> one JSON value per image; default runs `module` and `to_json` per row.
    """

    card: Card
    module: nn.Module
    input: str
    layers: tuple[int, ...] = (-1,)
    decode: Callable[[ServedHead, torch.Tensor], list[Any]] | None = None

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def name(self) -> str:
        return self.card.name or self.card.id

    @property
    def features(self) -> set[str]:
        """Keys of the runner's features it reads: `pooled`, `tokens` (final grid) or `layer:<i>` grids."""
        if self.input == "pooled" and self.layers == (-1,):
            return {"pooled"}
        return {"tokens" if i == -1 else f"layer:{i}" for i in self.layers}

    def assemble(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's input batch: (B, D') pooled or (B, gh, gw, D') grids, layers concatenated on D."""
        if self.input == "pooled" and self.layers == (-1,):
            return feats["pooled"]
        grids = [feats["tokens" if i == -1 else f"layer:{i}"] for i in self.layers]  # each (B, gh, gw, D)
        x = torch.cat(grids, dim=-1) if len(grids) > 1 else grids[0]
        return x.mean(dim=(1, 2)) if self.input == "pooled" else x

    def predict(self, feats: dict[str, torch.Tensor]) -> list[Any]:
        x = self.assemble(feats)
        if self.decode is not None:
            return self.decode(self, x)
        return [self.to_json(row) for row in self.module(x).cpu()]

    def to_json(self, row: torch.Tensor) -> Any:
        """One image's output -> JSON: the values, plus the arg-max label when the card names labels."""
        values = row.float().tolist()
        labels = self.card.config.get("labels")
        if labels and row.ndim == 1 and len(labels) == row.shape[0]:
            return {"values": values, "label": labels[int(row.argmax())]}
        return {"values": values}


def _from_heads_package(registry: Registry, ref: str, encoder_id: str, device: str) -> ServedHead:
    """A head saved by `heads.artifact.save_head` (card config with a feature `recipe`), served by its own predict."""
    from heads import artifact

    try:
        trained = artifact.load_head(ref, registry, encoder_id)
    except artifact.EncoderMismatchError as e:
        raise HeadMismatch(str(e)) from e
    recipe = trained.recipe
    if recipe.form == "pooled" and recipe.layers != (-1,) and recipe.pool != "mean":
        raise ArtifactError(f"head {ref}: pooled features of layers {recipe.layers} need mean pooling")
    trained.module.to(device)

    def decode(head: ServedHead, x: torch.Tensor) -> list[Any]:
        return artifact.predict(trained, x)

    source = "pooled" if recipe.form == "pooled" else "tokens"
    return ServedHead(trained.card, trained.module, source, tuple(recipe.layers), decode)


def load_head(registry: Registry, ref: str, encoder_id: str, device: str = "cpu") -> ServedHead:
    """Load head `ref`; HeadMismatch when it was fitted on another encoder, ArtifactError for unknown types."""
    card = registry.card(ref)
    if card.kind != KIND:
        raise ArtifactError(f"{card.id} is a {card.kind!r} artifact, not a head")
    fitted_on = card.parents.get("encoder")
    if fitted_on != encoder_id:
        raise HeadMismatch(f"head {card.id} was fitted on encoder {fitted_on!r}, but this server runs {encoder_id!r}")
    if "recipe" in card.config:
        return _from_heads_package(registry, ref, encoder_id, device)
    weights, card = registry.load(ref)
    kind = card.config.get("type")
    if kind not in HEAD_TYPES:
        raise ArtifactError(f"head {card.id}: unknown head type {kind!r} (known: {', '.join(sorted(HEAD_TYPES))})")
    source = card.config.get("input", "pooled")
    if source not in ("pooled", "tokens"):
        raise ArtifactError(f"head {card.id}: input must be 'pooled' or 'tokens', not {source!r}")
    module = HEAD_TYPES[kind](weights, card.config)
    if source == "tokens" and kind == "linear":
        module = _GridMean(module)
    return ServedHead(card, module.eval().to(device), source, (int(card.config.get("layer", -1)),))


def load_heads(
    registry: Registry, encoder_id: str, names: list[str], auto: bool, device: str = "cpu"
) -> dict[str, ServedHead]:
    """The named heads (errors propagate) plus, with `auto`, every registered head fitted on `encoder_id`."""
    heads = {}
    for ref in names:
        head = load_head(registry, ref, encoder_id, device)
        heads[head.name] = head
    if auto:
        for card in registry.list(KIND):
            if card.parents.get("encoder") != encoder_id:
                log.info("skipping head %s: fitted on encoder %s", card.id, card.parents.get("encoder"))
                continue
            if any(h.id == card.id for h in heads.values()):
                continue
            try:
                head = load_head(registry, card.id, encoder_id, device)
            except ArtifactError as e:
                log.warning("skipping head %s: %s", card.id, e)
                continue
            heads[head.name] = head
    return heads


def save_linear_head(
    registry: Registry,
    linear: nn.Linear,
    encoder_id: str,
    name: str,
    input: str = "pooled",
    layer: int = -1,
    labels: list[str] | None = None,
) -> Card:
    """Register an `nn.Linear` as a head of `encoder_id` (the simplest head; also what the tests serve)."""
    config = {"type": "linear", "input": input, "layer": layer, "in_dim": linear.in_features}
    if labels:
        config["labels"] = list(labels)
    return registry.register(KIND, linear.state_dict(), config, parents={"encoder": encoder_id}, name=name)
