"""Encoder checkpoints: the registered artifact is the ViT alone (no decoder), with its resolved config.

`save_encoder` registers weights + card; `load_encoder` needs only an id or a path and rebuilds the exact model.
`load_resume` reads a training checkpoint (`encoder.engine.save_checkpoint`) to resume from: a file that does not load
(truncated by a full disk or a killed copy) is named in the error, and `--resume auto` falls back to the newest
checkpoint that does load, saying so. `warm_start` (`fth train --init ENCODER`) loads a registered encoder into a new
run's MAE, strictly, and its decoder from the parent run's checkpoint when that run folder is still there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from encoder.config import ViTConfig
from encoder.vit import ViT
from fth.config import ConfigError, from_dict, to_dict
from store.artifacts import ArtifactError, Card, Registry
from store.paths import Workspace

KIND = "encoder"
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be loaded; the message names the file."""


class InitError(ConfigError):
    """An `--init` encoder that cannot start this run's model (unknown, not an encoder, another architecture); one
    line naming the parameter (a ConfigError, so `fth` prints it without a traceback and exits 2)."""


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
    weights, card = registry.load(registry.card(ref, KIND).path)
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


def _state_mismatch(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], prefix: str = "") -> str | None:
    """The first difference between two state dicts' names and shapes, as a phrase; None when they match."""
    missing, unexpected = sorted(own.keys() - given.keys()), sorted(given.keys() - own.keys())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return f"parameter {prefix}{missing[0]}{more} of this run's model is not in it"
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        return f"its parameter {prefix}{unexpected[0]}{more} is not in this run's model"
    for name in own:
        if own[name].shape != given[name].shape:
            return (
                f"parameter {prefix}{name} has shape {tuple(given[name].shape)} there but "
                f"{tuple(own[name].shape)} in this run's model"
            )
    return None


def _config_diff(own: dict[str, Any], parent: dict[str, Any]) -> str:
    keys = [k for k in own if k != "attention" and own.get(k) != parent.get(k)]
    return ", ".join(f"{k}={parent.get(k)!r} there, {own[k]!r} here" for k in keys)


def _decoder_checkpoint(card: Card, encoder_weights: dict[str, torch.Tensor], device) -> tuple[dict | None, str]:
    """The parent run's checkpoint whose encoder is exactly the registered one (newest first), and where it is; or
    (None, why not)."""
    from encoder.engine import checkpoints

    run_dir = card.parents.get("run_dir")
    if not run_dir:
        return None, f"{card.id} names no training run (parents.run_dir)"
    found = checkpoints(Path(run_dir) / "checkpoints")
    if not found:
        return None, f"no checkpoint in {run_dir}/checkpoints"
    for path in reversed(found):
        try:
            model = load_checkpoint(path, device)["model"]
        except (CheckpointError, KeyError) as e:
            log.warning("%s", e)
            continue
        if all(torch.equal(model.get(f"encoder.{k}", torch.empty(0)).cpu(), v) for k, v in encoder_weights.items()):
            return model, str(path)
    return None, f"no checkpoint in {run_dir}/checkpoints holds the registered encoder's weights"


def warm_start(mae: torch.nn.Module, ref: str | Path, registry: Registry, device="cpu") -> dict[str, Any]:
    """Load encoder `ref` (id, unique id prefix or artifact folder) into `mae.encoder`, every weight, strictly; and
    the decoder (everything of `mae` outside the encoder) from the parent run's checkpoint when one holds exactly
    this encoder. A decoder that is not there or does not fit starts fresh, with a warning.

    Returns what was loaded: {"encoder": parent id, "encoder_data": the parent's frame digest, "decoder": checkpoint
    path or None, "decoder_note": why not}. Raises `InitError` naming the first parameter that does not fit.
    """
    try:
        weights, card = registry.load(registry.card(ref, KIND).path)
    except ArtifactError as e:
        raise InitError(f"--init {ref}: {e}") from None
    problem = _state_mismatch(mae.encoder.state_dict(), weights, "encoder.")
    if problem:
        diff = _config_diff(to_dict(mae.cfg.encoder), card.config.get("encoder", {}))
        raise InitError(
            f"--init {card.id}: {problem}; train with its model config"
            + (f" (model.encoder differs: {diff})" if diff else "")
        )
    mae.encoder.load_state_dict(weights, strict=True)
    info: dict[str, Any] = {"encoder": card.id, "encoder_data": card.parents.get("data"), "decoder": None}
    state, where = _decoder_checkpoint(card, weights, device)
    if state is not None:
        problem = _state_mismatch(mae.state_dict(), state)
        if problem is None:
            mae.load_state_dict(state, strict=True)
            info["decoder"] = where
            return info
        where = f"{where} does not fit this run's decoder: {problem}"
    info["decoder_note"] = where
    log.warning("--init %s: the decoder starts fresh (%s)", card.id, where)
    return info
