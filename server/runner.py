"""The model side of the server: one encoder (+ its heads) on one device, run on uint8 batches by the batcher.

One encoder pass per batch serves every request in it: pooled vectors, the final token grid, token grids of earlier
blocks, and the outputs of the heads, computed only for what some request of the batch needs. Shapes: B batch,
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
from server.config import ServeConfig
from server.heads import ServedHead, load_heads
from store.artifacts import Registry
from store.paths import Workspace

log = logging.getLogger(__name__)


def intra_op_threads(cfg: ServeConfig) -> int:
    """Threads for one worker's forward pass. On 2 shared cores torch's default (one per core, OpenMP spin-waiting)
    ran the tiny model 20-100x slower in `bench/serve.py` once other processes competed for the cores."""
    if cfg.torch_threads > 0:
        return cfg.torch_threads
    return max(1, (os.cpu_count() or 1) // (2 * max(1, cfg.workers)))


class Runner:
    """Loads the encoder and heads named by `cfg` and runs batches.

    Args:
        cfg: serving config (workspace, encoder, heads, device, torch_threads).
    """

    def __init__(self, cfg: ServeConfig):
        torch.set_num_threads(intra_op_threads(cfg))
        registry = Registry(Workspace.at(cfg.workspace).artifacts)
        ref = cfg.encoder or registry.newest("encoder", "; train one or pass --set encoder=<id or path>").id
        if Path(ref).exists():
            registry_for_ref = Registry(Path(ref).resolve().parent.parent)
            self.model, self.card = load_encoder(ref, registry_for_ref, cfg.device)
        else:
            self.model, self.card = load_encoder(ref, registry, cfg.device)
        self.device = torch.device(cfg.device)
        self.size: tuple[int, int] = tuple(self.model.cfg.img_size)
        self.heads: dict[str, ServedHead] = load_heads(registry, self.card.id, cfg.heads, cfg.auto_heads, cfg.device)
        log.info("encoder %s on %s, input %s, heads: %s", self.card.id, cfg.device, self.size, sorted(self.heads))

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
        """images: (B, H, W, 3) uint8 -> {need: B rows}; `pooled` (B, D), `tokens` / `layer:i` (B, gh, gw, D) float32
        arrays, `head:<name>` a list of B JSON values."""
        model = self.model
        x = normalize(torch.from_numpy(images).to(self.device), model.cfg)  # (B, 3, H, W)
        heads = [self.heads[n.split(":", 1)[1]] for n in needs if n.startswith("head:")]
        features = {n for n in needs if not n.startswith("head:")}.union(*(h.features for h in heads))
        layers = sorted({int(f.split(":", 1)[1]) for f in features if f.startswith("layer:")})
        tokens, (gh, gw) = model.patch_tokens(x)
        final, taps = model.run_blocks(model.with_cls(tokens), layers)  # (B, 1 + N, D)
        b, d = final.shape[0], final.shape[-1]

        def grid(t: torch.Tensor) -> torch.Tensor:
            return t[:, 1:].reshape(b, gh, gw, d)  # (B, gh, gw, D)

        feats: dict[str, torch.Tensor] = {}
        if "pooled" in features:
            feats["pooled"] = final[:, 0] if model.cfg.pool == "cls" else final[:, 1:].mean(dim=1)  # (B, D)
        if "tokens" in features:
            feats["tokens"] = grid(final)
        for i, t in zip(layers, taps, strict=True):
            feats[f"layer:{i}"] = grid(t)
        out: dict[str, Any] = {k: v.float().cpu().numpy() for k, v in feats.items() if k in needs}
        for head in heads:
            out[f"head:{head.name}"] = head.predict(feats)  # B JSON values
        return out
