"""The catalog's visible frames in capture order, indexed for joins: by our frame id, relative path and file stem.

Built once per command in O(N) (one pass over the catalog, three dicts); each lookup is O(1), so joining L labels to
N frames costs O(N + L). `resolve` is the one place a label's key (a frame id, a path absolute or relative to the
workspace, or a catalog file's stem) becomes our frame id.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from store.catalog import FrameRow

HEX64 = re.compile(r"[0-9a-f]{64}")


def _stem(path: str) -> str:
    """`Path(path).stem` by string operations (`Path` doubled the index build at 100k rows)."""
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


class FrameIndexError(ValueError):
    """No catalog where one was expected."""


class FrameIndex:
    """Visible frames of a workspace's catalog (optionally one source), with O(1) lookups.

    Args:
        root: the workspace (frame paths are relative to it; its storage settings name the catalog and frame store,
            `store.backends`).  db_path: a SQLite catalog file other than the workspace's.  source: only this source.
    """

    def __init__(self, root: str | Path, db_path: str | Path | None = None, source: str | None = None):
        from store.backends import CatalogMissing, open_catalog

        self.root = Path(root)
        self._root_resolved = self.root.resolve()
        other = db_path if db_path and Path(db_path) != self.root / "catalog.sqlite" else None
        try:
            cat = open_catalog(self.root, create=False, db_path=other)
        except CatalogMissing as e:
            raise FrameIndexError(str(e)) from None
        with cat:
            self.rows: list[FrameRow] = list(cat.iter_frames(source))
            originals = cat.originals(source)
        self.store = cat.frame_store
        self.by_id = {r.id: r for r in self.rows}
        self.position = {r.id: i for i, r in enumerate(self.rows)}
        self.by_path = {r.path: r.id for r in self.rows}
        self.by_stem = {_stem(r.path): r.id for r in self.rows}
        # imported frames: the user's own absolute paths, and their file names and stems where those are unambiguous
        self.by_original = dict(originals)
        self.by_name: dict[str, str | None] = {}
        for original, frame_id in originals:
            name = original.rsplit("/", 1)[-1]
            for k in {name, _stem(name)}:
                self.by_name[k] = frame_id if self.by_name.get(k, frame_id) == frame_id else None

    def __len__(self) -> int:
        return len(self.rows)

    def resolve(self, key: str) -> str | None:
        """A frame id, a path (absolute or relative to the workspace) or a file stem -> our frame id, else None.

        Imported frames (`fth frames import`) also resolve by the path they were imported from (absolute, or relative
        to the current folder) and by that file's name or stem when no other imported file has the same one; every
        byte-identical copy among the imported files names the one stored frame.

        A file named by a 64-hex id the catalog does not know resolves to that id, so the caller's check reports it as
        an unknown frame (with counts) rather than as an unresolvable path."""
        key = str(key)
        if key in self.by_id:
            return key
        if key in self.by_path:
            return self.by_path[key]
        if key in self.by_original:
            return self.by_original[key]
        path = Path(key)
        if self.by_original:
            absolute = path if path.is_absolute() else Path.cwd() / path
            found = self.by_original.get(os.path.normpath(absolute)) or self.by_original.get(str(absolute.resolve()))
            if found:
                return found
        if path.is_absolute():
            try:
                rel = path.resolve().relative_to(self._root_resolved).as_posix()
                if rel in self.by_path:
                    return self.by_path[rel]
            except ValueError:
                pass
        stem = path.stem
        if stem in self.by_id:
            return stem
        if stem in self.by_stem:
            return self.by_stem[stem]
        for name in (path.name, stem):
            if self.by_name.get(name):
                return self.by_name[name]
        return stem if HEX64.fullmatch(stem) else None

    def in_capture_order(self, ids: list[str]) -> list[str]:
        """`ids` that the catalog holds, sorted by capture order (O(L log L))."""
        return sorted((i for i in set(ids) if i in self.position), key=self.position.__getitem__)

    def size(self, frame_id: str) -> tuple[int, int] | None:
        row = self.by_id.get(frame_id)
        return (row.height, row.width) if row else None

    def path(self, frame_id: str) -> Path | str:
        """The frame's ref in the workspace's frame store (a local path, or an S3 key): what `read` and
        `fth.heads_cli.embed_step`'s frames take."""
        return self.store.ref(self.by_id[frame_id].path)

    def read(self, frame_id: str) -> bytes:
        """The frame's encoded bytes, from wherever the workspace keeps them."""
        return self.store.read(self.by_id[frame_id].path)

    def image(self, frame_id: str, hw: tuple[int, int]) -> np.ndarray:
        """The frame as (H, W, 3) uint8 at `hw` (for plots)."""
        import io

        from PIL import Image

        with Image.open(io.BytesIO(self.read(frame_id))) as im:
            return np.asarray(im.convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR))
