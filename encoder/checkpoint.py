"""Encoder checkpoints: the registered artifact is the ViT alone (no decoder), with its resolved config.

`save_encoder` registers weights + card; `load_encoder` needs only an id or a path and rebuilds the exact model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from encoder.config import ViTConfig
from encoder.vit import ViT
from fth.config import from_dict, to_dict
from store.artifacts import ArtifactError, Card, Registry
from store.paths import Workspace

KIND = "encoder"


def save_encoder(
    model: ViT,
    registry: Registry,
    parents: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    name: str | None = None,
) -> Card:
    """Register `model`'s weights with its config as an `encoder-<hash>` artifact."""
    return registry.register(KIND, model.state_dict(), {"encoder": to_dict(model.cfg)}, parents, metrics, name)


def load_encoder(ref: str | Path, registry: Registry | None = None, device: str = "cpu") -> tuple[ViT, Card]:
    """An encoder id (in `registry`, default: the workspace's) or an artifact folder/card path -> (ViT, card).

    The model comes back in eval mode; an unknown id or a non-encoder artifact raises `ArtifactError`.
    """
    registry = registry or Registry(Workspace.at().artifacts)
    weights, card = registry.load(ref)
    if card.kind != KIND:
        raise ArtifactError(f"{card.id} is a {card.kind!r} artifact, not an encoder")
    model = ViT(from_dict(ViTConfig, card.config["encoder"], source=f"{card.path}/card.json"))
    model.load_state_dict(weights, strict=True)
    return model.eval().to(device), card
