"""Test helper for the encoder-update tests (tests/test_heads_adapt.py, tests/test_heads_refit.py): a sim workspace of
200 frames at 64x96 (5 sim days x 40, with exact labels), an OLD encoder (the tiny preset, seeded) and a NEW one of the
same architecture at another seed (`fth model init --like OLD --seed 1`: a real, different encoder), and `fth heads`
run through the CLI's `main`."""

from __future__ import annotations

from pathlib import Path

from fth_cli import run
from serving import tiny_encoder
from sim_workspace import sim_config, sim_workspace

from collector.sim import write_labels
from fth.model_init import random_init_like
from store.artifacts import Registry
from store.catalog import Catalog

QUICK = ["--set", "max_steps=80", "--set", "threads=1"]


def head_id(stdout: str) -> str:
    return next(line.split()[1] for line in stdout.splitlines() if line.startswith("head: "))


def update_workspace(root: Path):
    """(workspace, OLD card, NEW card) with labels under <root>/labels."""
    ws, cfg = sim_workspace(root, days=5, per_day=40, cfg=sim_config(width=96, height=64))
    with Catalog(ws.root) as cat:
        write_labels(cat, "sim", cfg, ws.root / "labels", dense=False)
    _, old = tiny_encoder(ws, seed=0)
    new = random_init_like(Registry(ws.artifacts), old.id, seed=1)
    return ws, old, new


def fit(ws, encoder: str, *args: str) -> str:
    rc, out, err = run("heads", "fit", "--workspace", str(ws.root), "--encoder", encoder, *QUICK, *args)
    assert rc == 0, err
    return head_id(out)
