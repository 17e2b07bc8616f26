"""Crash-safe file writes: a file is written under a temporary name beside its final one, flushed and fsynced,
renamed into place (atomic on POSIX), and the folder fsynced so the rename itself survives a power cut. A reader
sees the old file or the new one, never half of one. Every store that writes files (catalog, registry, training
checkpoints, shards, status) goes through here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TMP_SUFFIX = ".tmp"


def stray_temps(final: str | Path) -> list[Path]:
    """Temporary files an interrupted `atomic_write(final)` may have left behind."""
    final = Path(final)
    return list(final.parent.glob(f".{final.name}.*{TMP_SUFFIX}"))


def fsync_dir(path: str | Path) -> None:
    """Make the entries of folder `path` (a rename into it, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(final: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `final` for writing; on a clean exit make it durable and rename it to `final`.

    On an exception the temporary file is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)
