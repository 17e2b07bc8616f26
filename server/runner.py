"""The model side of the server: one encoder (+ its heads) on one device, run on uint8 batches by the batcher.

One encoder pass per batch serves every request in it: the feature tables some request or head needs (named as in
`store.recipe`: `pooled`, `tokens`, `tokens.<i>`, computed by `ViT.tables` exactly as `fth embed` stores them), and
the raw outputs of the heads. Heads are `heads.artifact.TrainedHead`s, loaded (and refused when fitted on another
encoder) by `heads.artifact.load_heads`; their answers are decoded per request by their task. Shapes: B batch,
N = gh * gw patch tokens, D width.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoder.checkpoint import load_encoder
from encoder.preprocess import normalize
from heads.artifact import TrainedHead, load_heads
from server.config import ServeConfig
from store.artifacts import Registry
from store.paths import Workspace
from store.release import Release, served

log = logging.getLogger(__name__)


def intra_op_threads(cfg: ServeConfig) -> int:
    """Threads for one worker's forward pass. On 2 shared cores torch's default (one per core, OpenMP spin-waiting)
    ran the tiny model 20-100x slower in `bench/serve.py` once other processes competed for the cores."""
    if cfg.torch_threads > 0:
        return cfg.torch_threads
    return max(1, (os.cpu_count() or 1) // (2 * max(1, cfg.workers)))


def served_set(cfg: ServeConfig, registry: Registry) -> tuple[str, list[str], bool, Release | None]:
    """What to serve: (encoder ref, head refs, auto_heads, the release or None).

    `cfg.encoder` set: that encoder, `cfg.heads`, `cfg.auto_heads` (no release). Else the workspace's release
    (`store.release`), when one was promoted: its encoder and exactly its heads (plus `cfg.heads`), no automatic
    heads, so a head the gate kept out is not served behind its back. Else the newest encoder with `cfg.heads` and
    `cfg.auto_heads`."""
    if cfg.encoder:
        return cfg.encoder, list(cfg.heads), cfg.auto_heads, None
    hint = "; train one, promote one (fth serve promote) or pass --encoder"
    encoder, release = served(Workspace.at(cfg.workspace), registry, hint)
    if release is not None:
        return encoder, [*release.heads, *cfg.heads], False, release
    return encoder, list(cfg.heads), cfg.auto_heads, None


class Runner:
    """Loads the encoder and heads to serve (`served_set`) and runs batches.

    Heads are loaded through `heads.artifact.load_heads` for the served encoder: a release may name heads fitted on
    an older encoder, which serve through their adapter (the heads package decides; the runner does not check cards).

    Args:
        cfg: serving config (workspace, encoder, heads, device, torch_threads).
    """

    def __init__(self, cfg: ServeConfig):
        torch.set_num_threads(intra_op_threads(cfg))
        registry = Registry(Workspace.at(cfg.workspace).artifacts)
        ref, head_refs, auto, self.release = served_set(cfg, registry)
        if Path(ref).exists():
            registry_for_ref = Registry(Path(ref).resolve().parent.parent)
            self.model, self.card = load_encoder(ref, registry_for_ref, cfg.device)
        else:
            self.model, self.card = load_encoder(ref, registry, cfg.device)
        self.device = torch.device(cfg.device)
        self.size: tuple[int, int] = tuple(self.model.cfg.img_size)
        self.heads: dict[str, TrainedHead] = load_heads(registry, self.card.id, head_refs, auto, cfg.device)
        source = f"release of {self.release.at}" if self.release else "encoder named" if cfg.encoder else "newest"
        log.info("encoder %s (%s) on %s, input %s, heads: %s", self.card.id, source, cfg.device, self.size,
                 sorted(self.heads))  # fmt: skip

    @property
    def encoder_id(self) -> str:
        return self.card.id

    def warmup(self, batch_sizes: tuple[int, ...]) -> float:
        """Run each batch size once (allocator, kernels, lazy inits); returns seconds taken."""
        start = time.perf_counter()
        needs = frozenset({"pooled", "tokens", *(f"head:{n}" for n in self.heads)})
        for b in batch_sizes:
            self.run(np.zeros((b, *self.size, 3), np.uint8), needs)
        return time.perf_counter() - start

    @torch.inference_mode()
    def run(self, images: np.ndarray, needs: frozenset[str]) -> dict[str, Any]:
        """images: (B, H, W, 3) uint8 -> {need: B rows}: feature tables (`pooled` (B, D), `tokens[.i]` (B, gh, gw, D))
        as float32 arrays, and `head:<name>` the head's raw outputs (B, ...) as a float32 array."""
        x = normalize(torch.from_numpy(images).to(self.device), self.model.cfg)  # (B, 3, H, W)
        heads = [self.heads[n.split(":", 1)[1]] for n in needs if n.startswith("head:")]
        tables = {n for n in needs if not n.startswith("head:")}.union(*(h.recipe.tables() for h in heads))
        feats = self.model.tables(x, sorted(tables))
        out: dict[str, Any] = {k: v.float().cpu().numpy() for k, v in feats.items() if k in needs}
        for head in heads:
            out[f"head:{head.name}"] = head.outputs(head.recipe.assemble(feats)).float().cpu().numpy()
        return out
