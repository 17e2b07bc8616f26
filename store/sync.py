"""Copy frames (bytes and catalog rows) from one workspace's storage to another's: local -> PostgreSQL + S3, and back.

Idempotent and resumable: a frame is keyed by its content id, so one already in the target is skipped, and a copy
that stops half way is finished by running it again. Each copied frame goes through the target catalog's own
`add_frame` (row `writing`, bytes stored durably, row `ok`), with the source's capture time, timezone, flags and
relative path, after its bytes were checked against its id; the files imported frames came from (and their
byte-identical copies) go along, so labels keyed by them join on the target. `sync` ends by checking that every
source frame is in the target with the right bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from store.catalog import Catalog, FrameRow


@dataclass
class SyncReport:
    copied: int = 0
    present: int = 0
    failed: list[str] = field(default_factory=list)  # "id: reason"
    missing_after: list[str] = field(default_factory=list)  # source ids not verified in the target at the end


def _copy_one(src: Catalog, dst: Catalog, row: FrameRow) -> str:
    if dst.get(row.id) is not None:
        return "present"
    data = src.frame_store.read(row.path)
    if hashlib.sha256(data).hexdigest() != row.id:
        raise ValueError("the source's bytes do not hash to the frame id (run fth frames verify on the source)")
    ext = PurePosixPath(row.path).suffix.lstrip(".") or "jpg"
    stored, _ = dst.add_frame(
        data, row.source, row.captured, row.width, row.height, row.tz, row.duplicate_of, ext, src.original(row.id)
    )
    if row.stale:
        dst.mark_stale(stored.id)
    return "copied"


def sync(
    src: Catalog, dst: Catalog, source: str | None = None, threads: int = 8, progress: Callable | None = None
) -> SyncReport:
    """Copy every visible frame of `src` (of `source`, or all) that `dst` lacks; then verify the target."""
    report = SyncReport()
    rows = list(src.iter_frames(source))

    def one(row: FrameRow) -> tuple[FrameRow, str | Exception]:
        try:
            return row, _copy_one(src, dst, row)
        except Exception as e:  # noqa: BLE001 - one bad frame is reported, the rest are copied
            return row, e

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for row, outcome in pool.map(one, rows):
            if isinstance(outcome, Exception):
                report.failed.append(f"{row.id}: {type(outcome).__name__}: {outcome}")
            elif outcome == "copied":
                report.copied += 1
            else:
                report.present += 1
            if progress is not None:
                progress(1)
    for original, frame_id in src.originals(source):  # imported files' names (`fth frames import`), for label joins
        if dst.get(frame_id) is not None and dst.original(frame_id) != original:
            dst.add_alias(original, frame_id)
    for row in rows:
        if dst.get(row.id) is None or dst.frame_store.sha256(dst.get(row.id).path) != row.id:
            report.missing_after.append(row.id)
    return report
