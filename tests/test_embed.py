"""`fth embed` over a real SQLite catalog: store round trip against the in-process encoder, resumability (a second
run does nothing), token grids for requested frames and layers, and a torchrun launch over 2 ranks that covers
every frame exactly once."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import torch
from PIL import Image
from serving import REPO, tiny_encoder

from encoder.embed import EmbedConfig, catalog_frames, load_frame, owner, run_embed
from encoder.preprocess import normalize
from store.catalog import Catalog
from store.embeddings import EmbeddingStore
from store.paths import Workspace


def fill_catalog(ws: Workspace, n: int = 20) -> list[str]:
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    with Catalog(ws.root) as catalog:
        for i in range(n):
            h, w = (64, 96) if i % 2 else (128, 192)
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(buf, "JPEG" if i % 3 else "PNG")
            row, _ = catalog.add_frame(buf.getvalue(), f"cam{i % 2}", t0 + timedelta(seconds=i), w, h)
            ids.append(row.id)
    return ids


def test_embed_round_trip_resume_and_tokens(workspace):
    model, card = tiny_encoder(workspace)
    ids = fill_catalog(workspace)
    frames = dict(catalog_frames(workspace))
    assert sorted(frames) == sorted(ids)
    token_ids = ids[:3]
    (workspace.root / "tok.txt").write_text("\n".join(token_ids) + "\n")
    cfg = EmbedConfig(batch_size=6, tokens=True, layers=[-1, 1], token_frames=str(workspace.root / "tok.txt"))
    stats = run_embed(cfg, progress=False)
    assert stats == {"frames": 20, "embedded": 20, "skipped": 0, "failed": 0}

    store = EmbeddingStore(workspace.embeddings, card.id)
    got_ids, pooled = store.all()
    assert sorted(got_ids) == sorted(ids) and pooled.shape == (20, model.cfg.dim)
    x = normalize(torch.from_numpy(np.stack([load_frame(frames[i], (64, 96)) for i in got_ids])), model.cfg)
    with torch.inference_mode():
        want = model.embed(x).numpy()
        grids = model.forward_features(x, layers=[-1, 1])
    np.testing.assert_allclose(pooled.astype(np.float32), want, atol=2e-3, rtol=2e-3)  # float16 storage
    assert sorted(store.index("tokens")) == sorted(token_ids) and sorted(store.index("tokens.1")) == sorted(token_ids)
    rows = [got_ids.index(i) for i in token_ids]
    np.testing.assert_allclose(store.get(token_ids, "tokens").astype(np.float32), grids[0][rows].numpy(), atol=5e-3)
    np.testing.assert_allclose(store.get(token_ids, "tokens.1").astype(np.float32), grids[1][rows].numpy(), atol=5e-3)

    again = run_embed(cfg, progress=False)
    assert again == {"frames": 20, "embedded": 0, "skipped": 20, "failed": 0}
    assert store.index_entries() == 20 and store.index_entries("tokens") == 3

    # Asking for tokens of more frames later embeds only those.
    (workspace.root / "tok.txt").write_text("\n".join(ids[:5]) + "\n")
    more = run_embed(cfg, progress=False)
    assert more["embedded"] == 2 and store.index_entries() == 20 and store.index_entries("tokens") == 5


def test_torchrun_two_ranks_cover_every_frame_exactly_once(workspace):
    _, card = tiny_encoder(workspace)
    ids = fill_catalog(workspace, 16)
    assert {owner(i, 2) for i in ids} == {0, 1}  # both ranks get work
    env = {**os.environ, "FTH_WORKSPACE": str(workspace.root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "server.cli", "embed", "--no-progress", "--batch-size", "4"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = EmbeddingStore(workspace.embeddings, card.id)
    index = store.index()
    assert sorted(index) == sorted(ids) and store.index_entries() == len(ids)
    writers = {shard.split("-")[0] for shard, _ in index.values()}
    assert writers == {"r0", "r1"}
    assert all(index[i][0].startswith(f"r{owner(i, 2)}-") for i in ids)
