"""Test helper (also for bench/drift.py and bench/eval.py): a workspace of simulated-camera frames in a real Catalog.

`sim_workspace(root, days, per_day, ...)` renders `per_day` frames per simulated day (evenly over the day/night cycle)
for `days` days with capture time = the sim clock from `START`, so each sim day is one local (UTC) catalog day; a
scene change (`change_day`) switches `SimConfig.change` on at the first frame of that day. Nothing here is used by fth.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from PIL import Image

from collector.config import SimConfig
from collector.sim import frame
from store.catalog import Catalog
from store.paths import Workspace

START = datetime(2026, 5, 1, tzinfo=UTC)


def day(k: int) -> str:
    """The local day of sim day k (0-based)."""
    return (START + timedelta(days=k)).strftime("%Y-%m-%d")


def sim_config(seed: int = 0, change_day: int = -1, change: str = "lighting", **kw) -> SimConfig:
    cfg = SimConfig(seed=seed, start_hour=0.0, change=change, **kw)  # type: ignore[arg-type]
    per_day = round(24 * 3600 / cfg.time_scale * cfg.fps)  # frames per sim day
    cfg.change_at_index = change_day * per_day if change_day >= 0 else -1
    return cfg


def sim_workspace(root, days: int, per_day: int, source: str = "sim", cfg: SimConfig | None = None,
                  offset: int = 0) -> tuple[Workspace, SimConfig]:  # fmt: skip
    """Render `days` x `per_day` frames of `cfg` (default sim_config()) into a catalog under `root`.

    `offset` shifts every frame index (a different sample of the same days: frames between the first run's)."""
    cfg = cfg or sim_config()
    ws = Workspace.at(root)
    frames_per_day = round(24 * 3600 / cfg.time_scale * cfg.fps)
    step = frames_per_day // per_day
    with Catalog(ws.root) as cat:
        for k in range(days * per_day):
            index = k * step + offset
            rgb, _ = frame(cfg, index)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
            when = START + timedelta(seconds=cfg.start_hour * 3600 + index / cfg.fps * cfg.time_scale)
            cat.add_frame(buf.getvalue(), source, when, cfg.width, cfg.height)
    return ws, cfg
