"""The simulated camera's scene: a street seen from a pole, walking people-like figures, a day/night cycle.

`render(cfg, index)` is a pure function of the config and the frame index: the same index always gives the same
picture and the same ground truth, so truth never has to be stored per frame; it is re-rendered on demand.

Geometry: a pinhole camera `CAM_HEIGHT` m above flat ground, horizon at `HORIZON` of the height, focal length
`FOCAL` x width pixels. A ground pixel in row y lies at depth z = f * h / (y - y_horizon); buildings are fronto-
parallel walls at 30-70 m; people are 1.6-1.9 m tall figures walking across at 6-35 m, drawn far to near. Each
of `max_people` walker slots repeats a period with one crossing per period, switched on with a probability that
follows the time of day (few people at night). Frame index i is at sim time t = i / fps (walking speed is real
time); the time of day runs `time_scale` times faster: tod = (start_hour + t * time_scale / 3600) mod 24.

Scene change (`SimConfig.change_at_index`, `SimConfig.change`): from that index on, `lighting` multiplies the lit
scene by a warm colour cast and lifts it, `camera` moves the horizon up the frame to `MOVED_HORIZON` and pans every
building by `MOVED_PAN` of the width, and `building` adds one wall in front of the others. Frames before the index are
exactly the frames of the unchanged scene.
"""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass

import numpy as np

from collector.config import SimConfig

CLASSES = ("sky", "ground", "building", "person")  # segmentation indices 0..3; 255 = ignore (the stamp band)
IGNORE = 255
CAM_HEIGHT, HORIZON, FOCAL = 4.0, 0.38, 0.9
SKY_DEPTH = np.inf
MIN_PERSON_PIXELS = 6  # a figure counts as in view when at least this many of its pixels are visible
MOVED_HORIZON, MOVED_PAN = 0.30, 0.12  # `camera` change: tilted down (horizon higher in the frame), panned
CAST, LIFT = np.array([1.2, 1.0, 0.75], np.float32), 14.0  # `lighting` change: warm cast (x per channel) and lift
NEW_BUILDING = (22.0, 14.0, 0.35, 0.3)  # `building` change: depth m, height m, left edge and width (x W)


@dataclass
class Truth:
    """Exact ground truth of one sim frame. depth: (H, W) metres (inf = sky, 0 = no depth); seg: (H, W) uint8;
    boxes: (people, 4) pixel boxes x0, y0, x1, y1 (x1/y1 exclusive) around each counted person's visible pixels."""

    index: int
    time_s: float
    time_of_day: float
    people: int
    depth: np.ndarray
    seg: np.ndarray
    boxes: np.ndarray


def sim_time(cfg: SimConfig, index: int) -> tuple[float, float]:
    """(sim seconds, time of day in hours) of a frame index."""
    t = index / cfg.fps
    return t, (cfg.start_hour + t * cfg.time_scale / 3600.0) % 24.0


def changed(cfg: SimConfig, index: int) -> bool:
    """Whether frame `index` shows the changed scene."""
    return 0 <= cfg.change_at_index <= index


def daylight(tod: float) -> float:
    """Illumination factor in [0.06, 1]: sunrise ~6 h, noon 12 h, sunset ~18 h, with a soft twilight."""
    sun = np.sin(2 * np.pi * (tod - 6.0) / 24.0)
    x = np.clip((sun + 0.1) / 0.45, 0.0, 1.0)
    return float(0.06 + 0.94 * x * x * (3 - 2 * x))


def _horizon(cfg: SimConfig, after: bool) -> float:
    """The horizon row as a fraction of the height, before or after the scene change."""
    return MOVED_HORIZON if after and cfg.change == "camera" else HORIZON


@functools.lru_cache(maxsize=8)
def _background(key: tuple, after: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Static albedo (H, W, 3) float32, depth (H, W), seg (H, W) and lit-window mask (H, W) for a config, before or
    after its scene change."""
    cfg = SimConfig(*key)
    H, W = cfg.height, cfg.width
    rng = np.random.default_rng([cfg.seed, 7])
    f, yh = FOCAL * W, _horizon(cfg, after) * H
    pan = MOVED_PAN * W if after and cfg.change == "camera" else 0.0
    rows = np.arange(H, dtype=np.float32)[:, None] + 0.5
    albedo = np.zeros((H, W, 3), np.float32)
    depth = np.full((H, W), SKY_DEPTH, np.float32)
    seg = np.zeros((H, W), np.uint8)
    ground = np.broadcast_to(rows > yh, (H, W))
    depth[ground] = np.broadcast_to(f * CAM_HEIGHT / np.maximum(rows - yh, 1e-3), (H, W))[ground]
    seg[ground] = 1
    stripes = (np.floor(np.where(np.isfinite(depth), depth, 0) / 4.0) % 2 * 12)[..., None]
    albedo[ground] = (np.array([105, 104, 100], np.float32) + stripes)[ground]
    windows = np.zeros((H, W), bool)
    cols = np.arange(W)[None, :]
    walls = []
    for _ in range(7):  # drawn in this order from the seeded stream, so the unchanged scene never changes
        zb, hb = rng.uniform(30, 70), rng.uniform(8, 28)
        left = rng.uniform(-0.1, 0.9)
        width = rng.uniform(0.12, 0.35)
        colour = rng.uniform(60, 190, 3).astype(np.float32)
        walls.append((zb, hb, left, width, colour, rng.integers(10)))
    if after and cfg.change == "building":
        walls.append((*NEW_BUILDING, np.array([150, 95, 75], np.float32), 3))
    for zb, hb, left, width, colour, lit_seed in walls:
        x0 = left * W - pan
        x1 = x0 + width * W
        yb, top = yh + f * CAM_HEIGHT / zb, yh + f * CAM_HEIGHT / zb - f * hb / zb
        box = (rows >= top) & (rows < yb) & (cols >= x0) & (cols < x1) & (depth > zb)
        depth[box], seg[box] = zb, 2
        albedo[box] = colour
        cell = max(2.0, f * 3.0 / zb)  # 3 m floors and window pitch
        win = box & ((rows - top) % cell < cell * 0.5) & ((cols - x0) % cell < cell * 0.45)
        lit = (np.floor((rows - top) / cell) * 7 + np.floor((cols - x0) / cell) * 13 + lit_seed) % 10 < 6
        windows |= win & lit
    if after and cfg.change == "building":  # the new wall hides the lit windows behind it
        windows &= (seg != 2) | (depth != NEW_BUILDING[0]) | (win & lit)
    return albedo, depth, seg, windows


def _walkers(cfg: SimConfig, t: float, tod: float, horizon: float = HORIZON) -> list[dict]:
    """The figures on screen at sim time t, far to near, each with its screen box and pose."""
    W, f = cfg.width, FOCAL * cfg.width
    out = []
    for i in range(cfg.max_people):
        srng = np.random.default_rng([cfg.seed, 11, i])
        period, phase = srng.uniform(14, 40), srng.uniform(0, 40)
        k = int(np.floor((t + phase) / period))
        u = t + phase - k * period
        rng = np.random.default_rng([cfg.seed, 13, i, k])
        z, crossing, height = rng.uniform(6, 35), period * rng.uniform(0.5, 0.9), rng.uniform(1.6, 1.9)
        direction, on = rng.choice([-1.0, 1.0]), rng.random()
        start_tod = (tod - u * cfg.time_scale / 3600.0) % 24.0
        if u > crossing or on > 0.15 + 0.85 * daylight(start_tod):
            continue
        half = (W / 2) / f * z + 1.0
        x = direction * (-half + 2 * half * u / crossing)
        out.append(
            {
                "z": z,
                "cx": W / 2 + f * x / z,
                "feet": horizon * cfg.height + f * CAM_HEIGHT / z,
                "hp": f * height / z,
                "swing": 0.45 * np.sin(2 * np.pi * 1.8 * u),
                "shirt": rng.uniform(30, 230, 3).astype(np.float32),
                "pants": rng.uniform(20, 120, 3).astype(np.float32),
                "skin": np.array([200, 160, 130], np.float32) * rng.uniform(0.5, 1.1),
            }
        )
    return sorted(out, key=lambda p: -p["z"])


def _segment_dist(px, py, ax, ay, bx, by):
    """Distance from points (px, py) to the segment (a, b), all in figure units."""
    dx, dy = bx - ax, by - ay
    s = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(px - ax - s * dx, py - ay - s * dy)


def _draw_person(p: dict, H: int, W: int):
    """(rows slice, cols slice, {part: mask}) of one figure, in figure units of its pixel height."""
    hp = p["hp"]
    top, bottom = int(np.floor(p["feet"] - hp)), int(np.ceil(p["feet"]))
    left, right = int(np.floor(p["cx"] - 0.35 * hp)), int(np.ceil(p["cx"] + 0.35 * hp))
    r0, r1, c0, c1 = max(top, 0), min(bottom, H), max(left, 0), min(right, W)
    if r0 >= r1 or c0 >= c1:
        return None
    py = (np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - (p["feet"] - hp)) / hp
    px = (np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - p["cx"]) / hp
    s = p["swing"]
    head = px**2 + (py - 0.09) ** 2 < 0.075**2
    torso = (np.abs(px) < 0.11 - 0.03 * (py - 0.17)) & (py > 0.17) & (py < 0.56)
    legs = (_segment_dist(px, py, -0.04, 0.55, -0.04 + 0.3 * s, 0.98) < 0.045) | (
        _segment_dist(px, py, 0.04, 0.55, 0.04 - 0.3 * s, 0.98) < 0.045
    )
    arms = (_segment_dist(px, py, -0.12, 0.2, -0.13 - 0.2 * s, 0.5) < 0.03) | (
        _segment_dist(px, py, 0.12, 0.2, 0.13 + 0.2 * s, 0.5) < 0.03
    )
    return slice(r0, r1), slice(c0, c1), {"pants": legs, "shirt": torso | arms, "skin": head}


def render(cfg: SimConfig, index: int) -> tuple[np.ndarray, Truth]:
    """Frame `index` of the sim: (rgb (H, W, 3) uint8 without the stamp, exact truth)."""
    H, W = cfg.height, cfg.width
    t, tod = sim_time(cfg, index)
    after = changed(cfg, index)
    albedo0, depth0, seg0, windows = _background(astuple(cfg), after)
    albedo, depth, seg = albedo0.copy(), depth0.copy(), seg0.copy()
    inst = np.full((H, W), -1, np.int16)
    for n, p in enumerate(_walkers(cfg, t, tod, _horizon(cfg, after))):
        drawn = _draw_person(p, H, W)
        if drawn is None:
            continue
        rs, cs, parts = drawn
        for part, mask in parts.items():
            albedo[rs, cs][mask] = p[part]
            depth[rs, cs][mask] = p["z"]
            seg[rs, cs][mask] = 3
            inst[rs, cs][mask] = n
    light = daylight(tod)
    sky = np.array([120, 170, 235], np.float32) * light + np.array([10, 14, 30], np.float32) * (1 - light)
    grad = np.linspace(0.8, 1.1, H, dtype=np.float32)[:, None, None]
    img = np.where((seg == 0)[..., None], sky * grad, albedo * light)
    if light < 0.35:
        img[windows & (seg == 2)] = np.array([255, 220, 140], np.float32) * (1.0 - light)
    if after and cfg.change == "lighting":
        img = img * CAST + LIFT
    rng = np.random.default_rng([cfg.seed, 17, index])
    img += rng.normal(0.0, cfg.noise * (1 + 3 * (1 - light)), img.shape).astype(np.float32)
    band = stamp_rows(H)
    depth[band:], seg[band:], inst[band:] = 0.0, IGNORE, -1
    ids, counts = np.unique(inst[inst >= 0], return_counts=True)
    counted = ids[counts >= MIN_PERSON_PIXELS]
    boxes = np.zeros((len(counted), 4), np.float32)
    for k, n in enumerate(counted):  # the visible extent: occluded parts and the stamp band are not in the box
        rows, cols = np.nonzero(inst == n)
        boxes[k] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    return rgb, Truth(index, t, tod, len(counted), depth, seg, boxes)


def stamp_rows(height: int) -> int:
    """First row of the stamp band at the bottom of a frame of this height."""
    return height - max(8, round(height / 16))
