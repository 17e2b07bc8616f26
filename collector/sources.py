"""Sources: what kind a URL is, and how it becomes a URL ffmpeg can open (yt-dlp for pages, as-is otherwise).

Kinds: `ytdlp` (YouTube or any other page yt-dlp understands), `hls` (a direct .m3u8), `rtsp` (rtsp/rtsps/rtmp),
`file` (a local path or file:// URL), `sim` (the built-in simulated camera, published as HLS by collector.sim).
A resolved URL may carry an expiry (YouTube live URLs carry `/expire/N/` or `?expire=N`, a Unix time ~6 h after
issue, after which every request is a 403): the supervisor re-resolves before it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from collector.config import SourceConfig

log = logging.getLogger(__name__)

YTDLP_HOSTS = ("youtube.com", "youtu.be", "twitch.tv", "dailymotion.com", "vimeo.com")
EXPIRE_PATH = re.compile(r"/expire/(\d{9,11})(?:/|$)")
# ffmpeg stderr lines that mean the URL itself went bad (signed URL expired or rotated): resolve again.
URL_GONE = re.compile(r"\b(403|404|410)\b.*(Forbidden|Not Found|Gone)|HTTP error (403|404|410)", re.IGNORECASE)


class ResolveError(RuntimeError):
    """The page could not be resolved to a media URL (network, extractor, or no video format)."""


@dataclass(frozen=True)
class Resolved:
    """A URL ffmpeg can open, with the headers to send and the Unix time it expires (None when unknown)."""

    url: str
    kind: str
    is_live: bool = True
    expires_at: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    title: str = ""


def detect_kind(url: str) -> str:
    """The kind of a URL: `rtsp`, `file`, `hls`, `sim` or `ytdlp` (anything else over http is a page for yt-dlp)."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "rtp"):
        return "rtsp"
    if scheme == "sim":
        return "sim"
    if scheme in ("", "file") or (len(scheme) == 1 and Path(url).exists()):  # C:\ paths
        return "file"
    host = parsed.hostname or ""
    if any(host == h or host.endswith("." + h) for h in YTDLP_HOSTS):
        return "ytdlp"
    if parsed.path.lower().endswith((".m3u8", ".m3u")):
        return "hls"
    return "ytdlp"


def url_expiry(url: str) -> float | None:
    """The `expire` Unix time a signed URL carries (path segment `/expire/N/` or query `expire=N`), else None."""
    m = EXPIRE_PATH.search(urlparse(url).path)
    if m:
        return float(m.group(1))
    values = parse_qs(urlparse(url).query).get("expire")
    if values and values[0].isdigit():
        return float(values[0])
    return None


def resolve_ytdlp(url: str, fmt: str = "best") -> Resolved:
    """A page URL -> the media URL of its best video format, through yt-dlp's Python API (no download)."""
    import yt_dlp

    opts = {"quiet": True, "no_warnings": True, "format": fmt, "noplaylist": True, "socket_timeout": 15}
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=False)
    except Exception as e:  # yt-dlp raises DownloadError/ExtractorError and sometimes plain network errors
        raise ResolveError(f"yt-dlp could not resolve {url}: {e}") from e
    if info.get("_type") == "playlist":
        entries = [e for e in info.get("entries") or [] if e]
        if not entries:
            raise ResolveError(f"yt-dlp found an empty playlist at {url}")
        info = entries[0]
    chosen = info
    if not info.get("url") and info.get("requested_formats"):
        chosen = next((f for f in info["requested_formats"] if f.get("vcodec") != "none"), info["requested_formats"][0])
    media = chosen.get("url")
    if not media:
        raise ResolveError(f"yt-dlp found no playable format at {url}")
    headers = dict(chosen.get("http_headers") or info.get("http_headers") or {})
    live = bool(info.get("is_live")) or info.get("live_status") == "is_live"
    return Resolved(media, "ytdlp", live, url_expiry(media), headers, info.get("title") or "")


def resolve(src: SourceConfig, sim_url: str | None = None) -> Resolved:
    """The URL to give ffmpeg for a source now. `sim_url` is the HLS URL of the source's running sim publisher."""
    kind = src.kind if src.kind != "auto" else detect_kind(src.url)
    if kind == "ytdlp":
        t0 = time.monotonic()
        out = resolve_ytdlp(src.url, src.ytdlp_format)
        log.info(
            "event=resolved source=%s live=%s expires_in_s=%s took_s=%.2f",
            src.id,
            out.is_live,
            None if out.expires_at is None else round(out.expires_at - time.time()),
            time.monotonic() - t0,
        )
        return out
    if kind == "sim":
        if not sim_url:
            raise ResolveError(f"source {src.id}: the sim publisher is not running")
        return Resolved(sim_url, "sim")
    if kind == "file":
        path = src.url[7:] if src.url.startswith("file://") else src.url
        if not Path(path).is_file():
            raise ResolveError(f"source {src.id}: no such file {path}")
        return Resolved(path, "file", is_live=False)
    return Resolved(src.url, kind, expires_at=url_expiry(src.url))


def playlist_durations(resolved: Resolved, timeout: float = 5.0) -> list[float] | None:
    """The segment durations (#EXTINF, oldest first) of a live HLS media playlist, or None when it cannot be read or
    is not a media playlist (a master playlist lists variants, not segments)."""
    import requests

    try:
        resp = requests.get(resolved.url, headers=resolved.headers, timeout=timeout)
        resp.raise_for_status()
    except requests.RequestException as e:
        log.warning("event=playlist_unreadable url=%s error=%s", resolved.url, e)
        return None
    durations = []
    for line in resp.text.splitlines():
        if line.startswith("#EXTINF:"):
            with contextlib.suppress(ValueError):
                durations.append(float(line[8:].split(",")[0]))
    return durations or None


def resume_start_index(durations: list[float], behind_s: float) -> int:
    """ffmpeg's `live_start_index` (negative: counted from the live edge) for a restart `behind_s` seconds after the
    newest stored frame was received: far enough back to hold twice that, and at least 10 s more, because that frame
    was received some unknown time after it was published (a busy collector runs behind the live edge). Replaying
    frames already stored costs a decode each (their content ids are known); a lost frame cannot be had back.
    An index before the oldest segment starts at the oldest one (ffmpeg clamps it). 0 s behind: the live edge."""
    if behind_s <= 0:
        return -1
    want = max(2 * behind_s, behind_s + 10.0)
    covered, k = 0.0, 0
    for d in reversed(durations):
        if covered >= want:
            break
        covered += d
        k += 1
    return -(k + (covered < want))
