"""`fth demo`: the fastest end-to-end run of what exists, on built-in data (no network, no GPU).

For now: a few optimisation steps of the tiny MAE on random frames, the encoder registered in a workspace, reloaded
from its card alone, and an embedding computed by both copies.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("fth.demo")


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the end-to-end demo on built-in data")
    demo.add_argument("--workspace", default="workspace/demo", help="where the demo writes (default: workspace/demo)")
    demo.add_argument("--steps", type=int, default=20, help="MAE optimisation steps (default: 20)")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from encoder.checkpoint import load_encoder, save_encoder
    from encoder.config import MAEConfig
    from encoder.mae import MAE
    from fth.config import build
    from store.artifacts import Registry
    from store.paths import Workspace

    torch.manual_seed(0)
    ws = Workspace.at(Path(args.workspace))
    cfg = build(MAEConfig, "tiny")
    mae = MAE(cfg)
    h, w = cfg.encoder.img_size
    frames = torch.rand(8, 3, h, w)  # stand-in frames until the collector exists
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3, betas=(0.9, 0.95))
    start = time.perf_counter()
    losses = []
    for _ in range(args.steps):
        loss = mae(frames).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    log.info(
        "tiny MAE: %d steps in %.2fs, loss %.4f -> %.4f",
        args.steps,
        time.perf_counter() - start,
        *losses[:: len(losses) - 1],
    )
    card = save_encoder(mae.encoder, Registry(ws.artifacts), parents={"data": "random-frames"}, name="demo")
    encoder, _ = load_encoder(card.id, Registry(ws.artifacts))
    mae.encoder.eval()
    with torch.no_grad():
        same = torch.allclose(mae.encoder.embed(frames), encoder.embed(frames))
    print(f"MAE loss   {losses[0]:.4f} -> {losses[-1]:.4f} over {args.steps} steps")
    print(f"encoder    {card.id} at {card.path}")
    print(f"embedding  {tuple(encoder.embed(frames[:2]).shape)}; reloaded copy matches: {same}")
    return 0 if same else 1
