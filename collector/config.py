"""Collector configuration: `CollectorConfig` (daemon-wide) holding a list of `SourceConfig` (one per stream).

`configs/collector.yaml` overrides these defaults and `--set key=value` overrides the file (see fth.config).
`SimConfig` describes the simulated camera (collector.sim) and is used both by a `kind: sim` source and by
`fth sim serve`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from fth.config import ConfigError

Kind = Literal["auto", "ytdlp", "hls", "rtsp", "file", "sim"]
SOURCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class RetentionConfig:
    """Keep at most `max_bytes` of frames and none older than `max_age_days`; 0 disables a limit."""

    max_bytes: int = 0
    max_age_days: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 or self.max_age_days > 0


@dataclass
class SimConfig:
    """The simulated camera: scene size, frame rate, people, the accelerated day/night clock, and a scene change.

    From frame `change_at_index` on (-1: never) the scene changes the way `change` says: `lighting` (a warm, brighter
    colour cast, as from new street lights or a changed white balance), `camera` (the camera tilted and panned: the
    horizon and every building move) or `building` (a new building in front of the old ones). Truth follows the
    change, so labels stay exact; `fth drift` is tested against it.
    """

    height: int = 192
    width: int = 320
    fps: float = 5.0
    seed: int = 0
    max_people: int = 8
    time_scale: float = 360.0  # simulated seconds per real second: one day in 4 minutes
    start_hour: float = 8.0  # time of day at frame 0
    noise: float = 3.0  # sensor noise std (0-255 scale) at full daylight; grows at night
    segment_s: float = 1.0  # HLS segment length and GOP
    list_size: int = 6  # segments kept in the live playlist
    change_at_index: int = -1  # first frame index of the changed scene; -1 = no change
    change: Literal["lighting", "camera", "building"] = "lighting"


@dataclass
class SourceConfig:
    """One stream. `kind: auto` detects it from the URL (see collector.sources.detect_kind).

    `width`/`height`: 0/0 keeps the source size; only `width` (or `height`) keeps the aspect; both give a fixed
    HxW. `keyframes_only` decodes keyframes only (`-skip_frame nokey`): ~10x cheaper when sampling slower than the
    keyframe interval, but samples land on keyframes. `stall_timeout_s` 0 means max(3 x interval, 15 s).
    `resume_s`: an HLS source (re)started at most this many seconds after its newest stored frame does not start at
    the live edge but far enough back in the live playlist to collect what was published while it was down (a crash,
    a restart, a stalled ffmpeg); frames already stored have the same content id and are not stored twice. 0 always
    starts at the live edge.
    """

    id: str = ""
    url: str = ""
    kind: Kind = "auto"
    enabled: bool = True
    interval_s: float = 5.0
    width: int = 0
    height: int = 0
    jpeg_quality: int = 90
    timezone: str = "UTC"
    keyframes_only: bool = True
    stall_timeout_s: float = 0.0
    rw_timeout_s: float = 10.0
    hold_counters: int = 0  # playlist reloads without new segments before ffmpeg gives up; 0 = from stall timeout
    realtime: bool = False  # file sources: read at native speed (a replayed "live" file) instead of as fast as possible
    max_failures: int = 0  # failures in a row before the source is marked failed; 0 = 5 for a file, never for live
    ytdlp_format: str = "best[height<=1080]/best"
    expiry_margin_s: float = 600.0  # re-resolve this long before a signed URL's `expire`
    flat_std: float = 2.0  # a frame whose pixel std is below this is a flat error frame, not stored
    near_duplicate: float = 0.0  # mean abs diff (0-255) to the previous frame at or below which duplicate_of is set
    resume_s: float = 300.0  # HLS: restarted within this long of the newest stored frame, replay the playlist window
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    sim: SimConfig = field(default_factory=SimConfig)

    @property
    def stall_timeout(self) -> float:
        return self.stall_timeout_s if self.stall_timeout_s > 0 else max(3 * self.interval_s, 15.0)


@dataclass
class CollectorConfig:
    """The daemon: its sources, reconnect policy, overall retention, status file and metrics port."""

    workspace: str = ""  # "" -> --workspace, $FTH_WORKSPACE or ./workspace
    sources: list[SourceConfig] = field(default_factory=list)
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    backoff_jitter: float = 0.3  # each wait is scaled by a uniform factor in [1 - jitter, 1 + jitter]
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    retention_every_s: float = 60.0
    status_every_s: float = 5.0
    metrics_port: int = 0  # Prometheus text format on 127.0.0.1:port when > 0
    metrics_host: str = "127.0.0.1"
    stop_timeout_s: float = 3.0  # per ffmpeg: SIGTERM, then SIGKILL after this
    lease_ttl_s: float = 30.0  # each source's lease in the catalog (store.lock.Lease) lapses this long after a crash
    lease_wait_s: float = 0.0  # wait this long for another host's live lease to lapse before refusing to start


def validate(cfg: CollectorConfig) -> CollectorConfig:
    """Checks the loader cannot express: ids unique and path-safe, URLs present, numbers in range."""
    if cfg.lease_ttl_s < 1 or cfg.lease_wait_s < 0:
        raise ConfigError("lease_ttl_s must be >= 1 and lease_wait_s >= 0")
    seen = set()
    for i, src in enumerate(cfg.sources):
        where = f"sources[{i}]"
        if not SOURCE_ID.match(src.id):
            raise ConfigError(f"{where}.id {src.id!r}: use 1-64 letters, digits, '_', '.', '-'")
        if src.id in seen:
            raise ConfigError(f"{where}.id {src.id!r} is used twice")
        seen.add(src.id)
        if not src.url and src.kind != "sim":
            raise ConfigError(f"{where}.url is empty (only kind: sim needs no url)")
        if src.interval_s <= 0:
            raise ConfigError(f"{where}.interval_s must be > 0")
        if src.resume_s < 0:
            raise ConfigError(f"{where}.resume_s must be >= 0")
        if not 1 <= src.jpeg_quality <= 100:
            raise ConfigError(f"{where}.jpeg_quality must be in 1..100")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(src.timezone)
        except Exception as e:
            raise ConfigError(f"{where}.timezone {src.timezone!r} is not an IANA zone") from e
    return cfg
