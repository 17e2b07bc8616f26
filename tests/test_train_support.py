"""Shared helpers for the training tests (no tests here): a small catalog of synthetic 64x96 frames."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent


def frame_bytes(i: int, size: tuple[int, int] = (96, 64)) -> bytes:
    """A JPEG of a smooth gradient with a few coloured boxes: structured, so an MAE can learn to fill it in."""
    rng = np.random.default_rng(i)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([x * rng.uniform(0, 255), y * rng.uniform(0, 255), (x + y) * rng.uniform(0, 128)], -1)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w - 16)), int(rng.integers(0, h - 16))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle([x0, y0, x0 + int(rng.integers(8, 32)), y0 + int(rng.integers(8, 24))], fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_catalog(root: Path, n: int, corrupt: int = 0, source: str = "cam1") -> list[str]:
    """Add `n` frames (the last `corrupt` of them garbage bytes named .jpg) to the catalog at `root`; returns ids."""
    from store.catalog import Catalog

    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    ids = []
    with Catalog(root) as catalog:
        for i in range(n):
            data = frame_bytes(i) if i < n - corrupt else b"\xff\xd8\xff\xe0 not really a jpeg %d" % i
            row, _ = catalog.add_frame(data, source, t0 + timedelta(seconds=10 * i), 96, 64)
            ids.append(row.id)
    return ids


def run(cmd: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


PYTHON = sys.executable
