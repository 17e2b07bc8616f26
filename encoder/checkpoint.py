"""Encoder checkpoints: the registered artifact is the ViT alone (no decoder), with its resolved config.

`save_encoder` registers weights + card; `load_encoder` needs only an id or a path and rebuilds the exact model.
`load_resume` reads a training checkpoint (`encoder.engine.save_checkpoint`) to resume from: a file that does not load
(truncated by a full disk or a killed copy) is named in the error, and `--resume auto` falls back to the newest
checkpoint that does load, saying so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from encoder.config import ViTConfig
from encoder.vit import ViT
from fth.config import from_dict, to_dict
from store.artifacts import ArtifactError, Card, Registry
from store.paths import Workspace

KIND = "encoder"
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be loaded; the message names the file."""


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


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """One training checkpoint's state dict; `CheckpointError` naming the file when it does not load."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # truncated zip, bad pickle, ...: torch's own message names neither file nor cause
        raise CheckpointError(
            f"checkpoint {path} does not load (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e


def load_resume(
    resume: str, run_dir: Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any] | None, Path | None]:
    """The state to resume a run from and its file: `none`/"" -> (None, None); `auto` -> the newest checkpoint in
    `run_dir/checkpoints` that loads (warning about each newer one that does not); else the file `resume` names."""
    from encoder.engine import checkpoints

    if resume in ("none", ""):
        return None, None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
        return load_checkpoint(path, device), path
    found = checkpoints(Path(run_dir) / "checkpoints")
    for path in reversed(found):
        try:
            state = load_checkpoint(path, device)
        except CheckpointError as e:
            log.warning("%s; trying the one before", e)
            continue
        if path != found[-1]:
            log.warning("resuming from %s, the newest checkpoint that loads (not %s)", path, found[-1])
        return state, path
    if found:
        raise CheckpointError(f"none of the {len(found)} checkpoints in {found[0].parent} loads")
    return None, None
