"""`fth frames import`: bring images a user already has into the catalog, through its one add path.

Inputs: image files, folders of them (recursively), globs, video files (one frame every `every` seconds, decoded by
ffmpeg as the collector does), and CSV files of `path,captured_at` rows. Capture time, per file: the CSV's time, else
the image's EXIF DateTimeOriginal, else the file's modification time; for a video, its `creation_time` tag, else its
mtime, plus the frame's offset. Naive times are read in the zone `tz`. The report counts which was used.

Each frame goes through `Catalog.add_frame` (row `writing`, bytes stored durably, row `ok`), so an import stopped at
any point leaves no half-imported frame, and a re-import adds nothing (frames are keyed by the sha256 of their bytes).
JPEG files are stored byte for byte; other images (PNG, BMP, WebP, TIFF, ...) are re-encoded as JPEG (quality 95), the
format training decodes. The absolute path each frame came from is kept in the catalog (`original`); files
byte-identical to one already stored are recorded as other names of that frame (`aliases`), so a label file keyed by
the user's own paths or file names resolves (`store.frame_index.FrameIndex.resolve`).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from store.catalog import Catalog

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
VIDEO_EXT = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".ts", ".m4v", ".mpg", ".mpeg", ".flv"}
EXIF_IFD, DATETIME_ORIGINAL, DATETIME = 0x8769, 0x9003, 0x0132


class ImportInputError(ValueError):
    """Import inputs that cannot be used at all (no such path, a CSV without the columns); one line for the user."""


@dataclass
class Item:
    """One frame to import: where it came from (`original`), how to get its bytes, and its capture time if known."""

    original: str
    load: Callable[[], bytes]
    captured: datetime | None = None
    time_from: str = ""


@dataclass
class ImportReport:
    imported: int = 0
    already: int = 0  # this file (same path, same bytes) was imported before
    identical: list[tuple[str, str]] = field(default_factory=list)  # (file, the stored frame's original or path)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    converted: int = 0
    time_from: Counter = field(default_factory=Counter)


def _aware(t: datetime, tz: str) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=ZoneInfo(tz))


def parse_time(text: str, tz: str) -> datetime:
    """ISO 8601 (`2026-03-01T12:00:00Z`, with or without offset), EXIF (`2026:03:01 12:00:00`) or Unix seconds."""
    text = text.strip()
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    try:
        return _aware(datetime.fromisoformat(text.replace("Z", "+00:00")), tz)
    except ValueError:
        return _aware(datetime.strptime(text, "%Y:%m:%d %H:%M:%S"), tz)


def exif_time(image, tz: str) -> datetime | None:
    """The image's EXIF DateTimeOriginal (else DateTime), None when absent or unreadable."""
    try:
        exif = image.getexif()
        text = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL) or exif.get(DATETIME)
        return parse_time(str(text).strip("\x00"), tz) if text else None
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses the time, not the frame
        return None


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def _abs(path: str | Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def expand(paths: list[str]) -> Iterator[Path]:
    """Files named by `paths` (files, folders walked recursively in name order, globs), each once."""
    seen: set[str] = set()
    for arg in paths:
        matches = sorted(glob.glob(arg, recursive=True)) if glob.has_magic(arg) else [arg]
        if not matches:
            raise ImportInputError(f"{arg}: no file matches")
        for m in matches:
            p = Path(m)
            if not p.exists():
                raise ImportInputError(f"{arg}: no such file or folder")
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                if p.is_dir() and f.suffix.lower() not in IMAGE_EXT | VIDEO_EXT:
                    continue  # a folder's READMEs and sidecars are not frames
                if _abs(f) not in seen:
                    seen.add(_abs(f))
                    yield f


def read_csv(path: Path, tz: str) -> list[Item]:
    """`path,captured_at` rows (header required; the time column may be `captured_at`, `time` or `timestamp`);
    relative paths are relative to the CSV's folder."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0]) if rows else []
    tcol = next((c for c in ("captured_at", "time", "timestamp") if c in header), None)
    if "path" not in header or tcol is None:
        raise ImportInputError(
            f"{path}: expected a header with `path` and `captured_at` (or time/timestamp), got {header}"
        )
    items = []
    for r in rows:
        file = Path(r["path"]) if Path(r["path"]).is_absolute() else path.parent / r["path"]
        try:
            when = parse_time(r[tcol], tz)
        except ValueError:
            raise ImportInputError(f"{path}: {r[tcol]!r} (for {r['path']}) is not a time") from None
        items.append(Item(_abs(file), file.read_bytes, when, "csv"))
    return items


def video_items(path: Path, every: float, tz: str) -> list[Item]:
    """One JPEG every `every` seconds of the video (ffmpeg `fps=1/every`), timed from its creation_time tag or mtime."""
    from collector.ffmpeg_bin import ffmpeg_exe

    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
           "-vf", f"fps=1/{every}", "-q:v", "2", "-f", "image2pipe", "-c:v", "mjpeg", "-"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, timeout=3600)
    if out.returncode:
        raise ValueError(f"ffmpeg: {out.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    jpegs = _split_jpegs(out.stdout)
    if not jpegs:
        raise ValueError("no frames decoded")
    start, source = _video_start(path, tz)
    from datetime import timedelta

    return [
        Item(f"{_abs(path)}#t={k * every:g}", (lambda d=d: d), start + timedelta(seconds=k * every), source)
        for k, d in enumerate(jpegs)
    ]


def _split_jpegs(data: bytes) -> list[bytes]:
    """An MJPEG image2pipe stream -> its JPEGs (each runs from an SOI marker to the EOI before the next SOI)."""
    out, start = [], 0
    while True:
        end = data.find(b"\xff\xd9\xff\xd8", start)
        if end < 0:
            if data[start:]:
                out.append(data[start:])
            return out
        out.append(data[start : end + 2])
        start = end + 2


def _video_start(path: Path, tz: str) -> tuple[datetime, str]:
    """The video's `creation_time` tag (from the header ffmpeg prints for its input), else its mtime."""
    import re

    from collector.ffmpeg_bin import ffmpeg_exe

    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    found = re.search(r"^\s*creation_time\s*:\s*(\S+)", out.stderr, re.MULTILINE)
    if found:
        with contextlib.suppress(ValueError):
            return parse_time(found.group(1), tz), "video creation_time"
    return _mtime(path), "file mtime"


def items(
    paths: list[str], every: float, tz: str, times: str | None = None
) -> tuple[list[Item], list[tuple[str, str]]]:
    """What `paths` hold, as frames to import, and the (file, reason) of videos that could not be decoded. `times`: a
    CSV of `path,captured_at` giving the capture times of files among `paths` (matched by path, else file name)."""
    found: list[Item] = []
    bad: list[tuple[str, str]] = []
    for f in expand(paths):
        suffix = f.suffix.lower()
        if suffix == ".csv":
            found += read_csv(f, tz)
        elif suffix in VIDEO_EXT:
            try:
                found += video_items(f, every, tz)
            except (ValueError, OSError, subprocess.TimeoutExpired) as e:
                bad.append((_abs(f), f"video: {e}"))
        else:
            found.append(Item(_abs(f), f.read_bytes))
    if times:
        if not Path(times).is_file():
            raise ImportInputError(f"--times {times}: no such file")
        given = read_csv(Path(times), tz)
        by_path = {i.original: i.captured for i in given}
        by_name = {Path(i.original).name: i.captured for i in given}
        for item in found:
            when = by_path.get(item.original) or by_name.get(Path(item.original).name)
            if when is not None and not item.time_from:
                item.captured, item.time_from = when, "csv"
    return found, bad


def prepare(item: Item, tz: str) -> tuple[bytes, int, int, datetime, str, bool]:
    """(JPEG bytes, width, height, capture time, where the time came from, re-encoded?); ValueError for a file that
    is not a whole, decodable image."""
    from PIL import Image, UnidentifiedImageError

    data = item.load()
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            when = item.captured or exif_time(im, tz)
            im.load()  # decodes every pixel: a truncated or corrupt file fails here, not in training
            width, height = im.size
            converted = fmt != "JPEG"
            if converted:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, "JPEG", quality=95)
                data = buf.getvalue()
    except UnidentifiedImageError:
        raise ValueError("not an image format PIL can read") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a readable image ({type(e).__name__}: {str(e)[:80]})") from None
    source = item.time_from or ("exif" if when else "file mtime")
    if when is None:
        when = _mtime(Path(item.original))
    return data, width, height, when, source, converted


def import_frames(
    cat: Catalog,
    paths: list[str],
    source: str,
    every: float = 10.0,
    tz: str = "UTC",
    times: str | None = None,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    threads: int = 8,
    chunk: int = 256,
) -> ImportReport:
    """Import every frame `paths` hold into `cat` as source `source`; see the module docstring.

    `chunk` files at a time: read and checked by `threads` threads, byte-identical files within the chunk set aside
    (two concurrent adds of one id would collide on its primary key), the distinct ones stored by `threads` threads
    (an S3 PUT is a network round trip: one at a time would leave an import to a bucket waiting on latency), then
    the set-aside copies recorded as aliases. Memory is bounded by one chunk's bytes."""
    found, bad = items(paths, every, tz, times)
    if total is not None:
        total(len(found))
    report = ImportReport(bad=bad)

    def check(item: Item):
        try:
            return item, prepare(item, tz)
        except (ValueError, OSError) as e:
            return item, e

    def add(job):
        item, (data, width, height, when, _, _) = job
        return cat.add_frame(data, source, when, width, height, tz=tz, original=item.original)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(found), chunk):
            firsts, copies, seen = [], [], set()
            for item, prepared in pool.map(check, found[start : start + chunk]):
                if isinstance(prepared, Exception):
                    report.bad.append((item.original, str(prepared)))
                    if progress:
                        progress(1)
                    continue
                frame_id = hashlib.sha256(prepared[0]).hexdigest()
                (copies if frame_id in seen else firsts).append((item, prepared))
                seen.add(frame_id)
            for (item, prepared), (row, new) in zip(firsts, pool.map(add, firsts), strict=True):
                _account(cat, report, item, prepared, row, new)
                if progress:
                    progress(1)
            for item, prepared in copies:
                row, new = add((item, prepared))  # already stored: only its name is recorded
                _account(cat, report, item, prepared, row, new)
                if progress:
                    progress(1)
    return report


def _account(cat: Catalog, report: ImportReport, item: Item, prepared: tuple, row, new: bool) -> None:
    """Count one file's outcome; a file byte-identical to a frame stored under another name becomes its alias."""
    if new:
        report.imported += 1
        report.converted += prepared[5]
        report.time_from[prepared[4]] += 1
    elif (kept := cat.original(row.id)) == item.original or not cat.add_alias(item.original, row.id):
        report.already += 1
    else:
        report.identical.append((item.original, kept or row.path))


def summary(report: ImportReport, show: int = 5) -> list[str]:
    """The lines `fth frames import` prints."""
    lines = [f"{report.imported} frames imported, {report.already} already imported, "
             f"{len(report.identical)} byte-identical to another file, {len(report.bad)} bad"]  # fmt: skip
    if report.time_from:
        lines.append("capture times from: " + ", ".join(f"{k} {v}" for k, v in sorted(report.time_from.items())))
    if report.converted:
        lines.append(f"{report.converted} non-JPEG images re-encoded as JPEG (quality 95)")
    for file, kept in report.identical[:show]:
        lines.append(f"identical: {file} = {kept} (stored once; labels may name either)")
    if len(report.identical) > show:
        lines.append(f"identical: ... {len(report.identical) - show} more")
    for file, reason in report.bad[:show]:
        lines.append(f"bad: {file}: {reason}")
    if len(report.bad) > show:
        lines.append(f"bad: ... {len(report.bad) - show} more")
    return lines
