"""The embedding store: per encoder version, memory-mapped float16 shards and an index frame id -> (shard, row).

    <workspace>/embeddings/<encoder id>/<table>/meta.json            {"row_shape", "dtype", "shard_rows"}
    <workspace>/embeddings/<encoder id>/<table>/<writer>-<k>.npy     (shard_rows, *row_shape) float16, NumPy .npy
    <workspace>/embeddings/<encoder id>/<table>/<writer>.index       lines "<frame id>\t<shard file>\t<row>\n"

A table is named by `store.recipe.table_name`: `pooled` ((D,) vectors for every frame) or `tokens` / `tokens.<layer>`
((gh, gw, D) grids for the frames that need them). Each writer (one per rank of `fth embed`) owns its shard files and
its index file, so ranks never contend. A batch is written into the memory-mapped shard and flushed before its index
lines are appended and fsynced: after a crash, every indexed row holds its vector, and unindexed rows are simply
embedded again. Shards are the .npy format (NEP 1), so `np.load(path, mmap_mode="r")` reads them without this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from store.fsutil import atomic_write

DTYPE = np.float16


class TableWriter:
    """Appends rows to one writer's shards of a table (resuming at the writer's last indexed row).

    Args:
        folder: the table folder.  writer: this writer's name (e.g. `r0`).  row_shape: shape of one row.
        shard_rows: rows per shard file.
    """

    def __init__(self, folder: Path, writer: str, row_shape: Sequence[int], shard_rows: int):
        self.folder, self.writer, self.row_shape, self.shard_rows = folder, writer, tuple(row_shape), shard_rows
        self.index_path = folder / f"{writer}.index"
        self.shard, self.row = 0, 0
        _drop_torn_line(self.index_path)
        for _, shard_file, row in _read_index(self.index_path):
            k = int(shard_file.rsplit("-", 1)[1].split(".")[0])
            if (k, row + 1) > (self.shard, self.row):
                self.shard, self.row = k, row + 1
        self._mm: np.memmap | None = None

    def _open(self) -> np.memmap:
        if self.row >= self.shard_rows:
            self.shard, self.row, self._mm = self.shard + 1, 0, None
        if self._mm is None:
            path = self.folder / f"{self.writer}-{self.shard:05d}.npy"
            shape = (self.shard_rows, *self.row_shape)
            if path.exists():
                self._mm = np.load(path, mmap_mode="r+")
            else:
                self._mm = np.lib.format.open_memmap(path, mode="w+", dtype=DTYPE, shape=shape)
        return self._mm

    def append(self, ids: Sequence[str], rows: np.ndarray) -> None:
        """Write `rows` (n, *row_shape) for frame `ids`; durable (data flushed, index fsynced) on return."""
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} do not fit table rows {self.row_shape}")
        lines = []
        i = 0
        while i < len(ids):
            mm = self._open()
            take = min(len(ids) - i, self.shard_rows - self.row)
            mm[self.row : self.row + take] = rows[i : i + take].astype(DTYPE)
            mm.flush()
            name = f"{self.writer}-{self.shard:05d}.npy"
            lines += [f"{ids[i + j]}\t{name}\t{self.row + j}\n" for j in range(take)]
            self.row += take
            i += take
        with open(self.index_path, "a") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self._mm = None


def _drop_torn_line(path: Path) -> None:
    """Cut a crash's half-written last index line, so the next append starts on a line of its own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            os.fsync(f.fileno())


def _read_index(path: Path) -> Iterable[tuple[str, str, int]]:
    if not path.exists():
        return
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                return  # a torn last line (crash mid-append): its rows are re-embedded
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3:
                yield parts[0], parts[1], int(parts[2])


class EmbeddingStore:
    """Embeddings of one encoder version.

    Args:
        root: the workspace's `embeddings/` folder.  encoder_id: the encoder version (its artifact id).
    """

    def __init__(self, root: str | Path, encoder_id: str):
        self.encoder_id = encoder_id
        self.folder = Path(root) / encoder_id
        self._shards: dict[Path, np.ndarray] = {}

    def tables(self) -> list[str]:
        return sorted(p.parent.name for p in self.folder.glob("*/meta.json"))

    def writer(self, table: str, row_shape: Sequence[int], writer: str = "r0", shard_rows: int = 4096) -> TableWriter:
        """A writer for `table`; the table's row shape is fixed by its first writer."""
        folder = self.folder / table
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "meta.json"
        if meta.exists():
            known = json.loads(meta.read_text())
            if tuple(known["row_shape"]) != tuple(row_shape):
                raise ValueError(f"table {table} holds rows of shape {known['row_shape']}, not {list(row_shape)}")
            shard_rows = known["shard_rows"]
        else:
            with atomic_write(meta, "w") as f:
                f.write(json.dumps({"row_shape": list(row_shape), "dtype": "float16", "shard_rows": shard_rows}))
        return TableWriter(folder, writer, row_shape, shard_rows)

    def index(self, table: str = "pooled") -> dict[str, tuple[str, int]]:
        """frame id -> (shard file name, row), over every writer of the table."""
        out: dict[str, tuple[str, int]] = {}
        for path in sorted((self.folder / table).glob("*.index")):
            for frame_id, shard, row in _read_index(path):
                out[frame_id] = (shard, row)
        return out

    def index_entries(self, table: str = "pooled") -> int:
        """Index lines over all writers (equals len(index) when no frame was embedded twice)."""
        return sum(1 for p in (self.folder / table).glob("*.index") for _ in _read_index(p))

    def _shard(self, table: str, name: str) -> np.ndarray:
        path = self.folder / table / name
        if path not in self._shards:
            self._shards[path] = np.load(path, mmap_mode="r")
        return self._shards[path]

    def get(self, ids: Sequence[str], table: str = "pooled") -> np.ndarray:
        """(n, *row_shape) float16 rows for `ids` in order; KeyError naming the first id not stored.

        One index read, then one fancy-indexed copy per shard file (not one per row)."""
        index = self.index(table)
        missing = next((i for i in ids if i not in index), None)
        if missing is not None:
            raise KeyError(f"frame {missing} has no {table} row for encoder {self.encoder_id}")
        meta = json.loads((self.folder / table / "meta.json").read_text())
        out = np.empty((len(ids), *meta["row_shape"]), DTYPE)
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for pos, frame_id in enumerate(ids):
            shard, row = index[frame_id]
            dest, rows = by_shard.setdefault(shard, ([], []))
            dest.append(pos)
            rows.append(row)
        for shard, (dest, rows) in by_shard.items():
            out[np.asarray(dest)] = self._shard(table, shard)[np.asarray(rows)]
        return out

    def all(self, table: str = "pooled") -> tuple[list[str], np.ndarray]:
        """Every stored frame id (sorted) and its rows."""
        ids = sorted(self.index(table))
        return ids, self.get(ids, table)
