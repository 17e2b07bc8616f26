"""The frame catalog: one row per stored frame (SQLite WAL file or PostgreSQL), one JPEG per row (a file under the
workspace or an S3 object: `store.backends`), consistent across crashes.

Schema (table `frames`): `id` (sha256 hex of the encoded bytes, stable), `path` (relative to the data root),
`source`, `captured_at` (UTC, ISO 8601 `YYYY-MM-DDTHH:MM:SS.ffffffZ`, sorts as text), `local_day` and `local_tod`
(date and hour-of-day in [0, 24) at the source, from its IANA timezone), `tz`, `width`, `height`, `bytes`,
`duplicate_of` (id of an earlier near-identical frame of the same source, or NULL), `stale` (1 when the stream froze
on this frame: later samples were exact duplicates of it), and `state`.

Crash safety is a small journal in the `state` column. Adding a frame commits the row as `writing`, stores the
bytes durably (`FrameStore.put`: locally a temporary file, fsync, rename, fsync of the folder; on S3 one PUT whose
ETag and size are checked) and commits `ok`. Deleting commits `deleting`, deletes the file or object, then the row.
Only `ok` rows are visible; `recover()` (run by a writer that owns the sources) finishes or rolls back whatever a crash
interrupted, so after any crash every visible row has complete bytes whose hash is its id, and no frame is left
without a row. SQLite commits use `synchronous=FULL` and PostgreSQL's are synchronous: a frame reported as stored
survives a power cut.

Leases (table `leases`): one collector per source across processes and hosts. A lease names its holder and expires
`ttl` seconds after its last renewal (`store.lock.Lease` renews it); a crashed holder's lease lapses on its own.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from store.backends import FrameStore, LocalFrames

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    captured_at TEXT NOT NULL,
    local_day TEXT NOT NULL,
    local_tod REAL NOT NULL,
    tz TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    duplicate_of TEXT,
    stale INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'ok',
    original TEXT
);
CREATE INDEX IF NOT EXISTS frames_source_time ON frames (source, captured_at);
CREATE INDEX IF NOT EXISTS frames_time ON frames (captured_at);
CREATE INDEX IF NOT EXISTS frames_day ON frames (local_day, source);
CREATE INDEX IF NOT EXISTS frames_pending ON frames (state) WHERE state != 'ok';
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (original TEXT PRIMARY KEY, id TEXT NOT NULL);
"""
# PostgreSQL: byte-order ("C") text so keyset paging and sorting match SQLite's, whatever the database's locale;
# 8-byte floats and sizes.
PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id TEXT COLLATE "C" PRIMARY KEY,
    path TEXT COLLATE "C" NOT NULL UNIQUE,
    source TEXT COLLATE "C" NOT NULL,
    captured_at TEXT COLLATE "C" NOT NULL,
    local_day TEXT COLLATE "C" NOT NULL,
    local_tod DOUBLE PRECISION NOT NULL,
    tz TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    duplicate_of TEXT,
    stale INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'ok',
    original TEXT
);
ALTER TABLE frames ADD COLUMN IF NOT EXISTS original TEXT;
CREATE INDEX IF NOT EXISTS frames_source_time ON frames (source, captured_at, id);
CREATE INDEX IF NOT EXISTS frames_time ON frames (captured_at, id);
CREATE INDEX IF NOT EXISTS frames_day ON frames (local_day, source);
CREATE INDEX IF NOT EXISTS frames_pending ON frames (state) WHERE state != 'ok';
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (original TEXT PRIMARY KEY, id TEXT NOT NULL);
"""
COLUMNS = "id, path, source, captured_at, local_day, local_tod, tz, width, height, bytes, duplicate_of, stale"


@dataclass(frozen=True)
class FrameRow:
    """One catalog row. `path` is relative to the catalog's data root."""

    id: str
    path: str
    source: str
    captured_at: str
    local_day: str
    local_tod: float
    tz: str
    width: int
    height: int
    bytes: int
    duplicate_of: str | None = None
    stale: bool = False

    @property
    def captured(self) -> datetime:
        return datetime.strptime(self.captured_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def utc_text(t: datetime) -> str:
    """A datetime -> the catalog's sortable UTC text form."""
    if t.tzinfo is None:
        raise ValueError("captured_at must be timezone-aware")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def local_time(t: datetime, tz: str) -> tuple[str, float]:
    """(local date 'YYYY-MM-DD', hour of day in [0, 24)) of the instant `t` in the IANA zone `tz`."""
    lt = t.astimezone(ZoneInfo(tz))
    return lt.strftime("%Y-%m-%d"), lt.hour + lt.minute / 60 + (lt.second + lt.microsecond / 1e6) / 3600


class _Sqlite:
    """One SQLite connection (WAL, synchronous=FULL, autocommit)."""

    def __init__(self, path: Path):
        self.name = str(path)
        self.conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(frames)")}
        if columns and "original" not in columns:  # a catalog from before `fth frames import`: migrate in place
            self.conn.execute("ALTER TABLE frames ADD COLUMN original TEXT")
        self.conn.executescript(SCHEMA)

    def execute(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        return self.conn.execute(sql, args).fetchall()

    def close(self) -> None:
        self.conn.close()


class _Postgres:
    """One PostgreSQL connection (psycopg 3, autocommit); `?` placeholders become `%s`."""

    def __init__(self, url: str):
        import psycopg

        self.name = url.split("@")[-1]
        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        with self.conn.transaction():  # concurrent CREATE ... IF NOT EXISTS race on the catalog tables: serialize
            self.conn.execute("SELECT pg_advisory_xact_lock(7351)")
            for statement in PG_SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)

    def execute(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        cur = self.conn.execute(sql.replace("?", "%s"), list(args))
        return cur.fetchall() if cur.description else []

    def close(self) -> None:
        self.conn.close()


class Catalog:
    """The frame catalog of one workspace: rows in SQLite (`<root>/catalog.sqlite`) or PostgreSQL, frame bytes in a
    `FrameStore` (files under `<root>/frames/`, or S3). Open it with `store.backends.open_catalog(workspace)`, which
    reads the workspace's storage settings.

    Thread-safe: one connection guarded by a lock; frame I/O happens outside the lock. Other processes may read
    (and `fth frames` may verify) while a collector writes, as WAL (and PostgreSQL) allow.

    Args:
        root: data root (a workspace folder); created if missing.
        db_path: the SQLite file, default `<root>/catalog.sqlite` (ignored with `db_url`).
        recover: finish or roll back writes a crash interrupted (a writer owning every source should).
        db_url: `postgresql://...` or `sqlite:PATH`.  frames: where frame bytes live, default `LocalFrames(root)`.
    """

    def __init__(
        self,
        root: str | Path,
        db_path: str | Path | None = None,
        recover: bool = True,
        db_url: str | None = None,
        frames: FrameStore | None = None,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.frame_store = frames or LocalFrames(self.root)
        self._lock = threading.Lock()
        if db_url and db_url.startswith(("postgresql://", "postgres://")):
            self.db_path = None
            self._db = _Postgres(db_url)
        else:
            path = db_url[len("sqlite:") :] if db_url else db_path
            self.db_path = Path(path) if path else self.root / "catalog.sqlite"
            self._db = _Sqlite(self.db_path)
        if recover:
            self.recover()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _exec(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args)

    # -- writing -------------------------------------------------------------------------------------------------

    def add_frame(
        self,
        data: bytes,
        source: str,
        captured_at: datetime,
        width: int,
        height: int,
        tz: str = "UTC",
        duplicate_of: str | None = None,
        ext: str = "jpg",
        original: str | None = None,
    ) -> tuple[FrameRow, bool]:
        """Store encoded image bytes durably; returns (row, True), or (existing row, False) for bytes already stored.
        `original`: the file the frame was imported from (kept so labels keyed by the user's own paths resolve)."""
        frame_id = hashlib.sha256(data).hexdigest()
        existing = self.get(frame_id, any_state=True)
        if existing is not None:
            return existing, False
        captured = utc_text(captured_at)
        day, tod = local_time(captured_at, tz)
        hhmmss = captured[11:19].replace(":", "")
        rel = f"frames/{source}/{captured[:10]}/{hhmmss}_{frame_id[:16]}.{ext}"
        row = FrameRow(frame_id, rel, source, captured, day, tod, tz, width, height, len(data), duplicate_of)
        self._exec(
            f"INSERT INTO frames ({COLUMNS}, original, state) VALUES ({', '.join('?' * 13)}, 'writing')",
            (*_values(row), original),
        )
        try:
            self.frame_store.put(rel, data)
        except BaseException:
            self._exec("DELETE FROM frames WHERE id = ?", (frame_id,))
            raise
        self._exec("UPDATE frames SET state = 'ok' WHERE id = ?", (frame_id,))
        return row, True

    def add_alias(self, original: str, frame_id: str) -> bool:
        """Record `original` (a file byte-identical to frame `frame_id`'s) as another name of that frame; False when
        the name is already on record."""
        if self._exec("SELECT 1 FROM frames WHERE original = ? AND id = ?", (original, frame_id)):
            return False
        before = self._exec("SELECT id FROM aliases WHERE original = ?", (original,))
        self._exec(
            "INSERT INTO aliases (original, id) VALUES (?, ?) ON CONFLICT (original) DO NOTHING", (original, frame_id)
        )
        return not before

    def original(self, frame_id: str) -> str | None:
        """The path frame `frame_id` was imported from (None for a collected frame or an unknown id)."""
        rows = self._exec("SELECT original FROM frames WHERE id = ?", (frame_id,))
        return rows[0][0] if rows else None

    def originals(self, source: str | None = None) -> list[tuple[str, str]]:
        """(original path, frame id) of every imported visible frame and every byte-identical file recorded as an
        alias of one (the names `store.frame_index.FrameIndex.resolve` accepts besides ours)."""
        where, args = self._where(source, None, None, None, True, True)
        rows = self._exec(f"SELECT original, id FROM frames WHERE {where} AND original IS NOT NULL", args)
        rows += self._exec(
            f"SELECT a.original, a.id FROM aliases a JOIN frames ON frames.id = a.id WHERE {where}", args
        )
        return [(o, i) for o, i in rows]

    def mark_stale(self, frame_id: str, stale: bool = True) -> None:
        self._exec("UPDATE frames SET stale = ? WHERE id = ?", (int(stale), frame_id))

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float | None = None) -> tuple[str, float]:
        """Take (or renew) lease `name` for `holder` for `ttl` seconds unless another holder's lease is still live;
        returns (holder, expires) as now recorded: the lease is ours when the holder is `holder`. Atomic on both
        backends (one upsert). Hosts' clocks must agree to well within `ttl` (NTP)."""
        now = time.time() if now is None else now
        self._exec(
            "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "holder = excluded.holder, expires = excluded.expires "
            "WHERE leases.holder = excluded.holder OR leases.expires < ?",
            (name, holder, now + ttl, now),
        )
        holder_now, expires = self._exec("SELECT holder, expires FROM leases WHERE name = ?", (name,))[0]
        return holder_now, float(expires)

    def release_lease(self, name: str, holder: str) -> None:
        self._exec("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def leases(self) -> list[tuple[str, str, float]]:
        """(name, holder, expires) of every lease on record, live or lapsed."""
        return [(n, h, float(e)) for n, h, e in self._exec("SELECT name, holder, expires FROM leases ORDER BY name")]

    def delete(self, ids: list[str]) -> int:
        """Remove frames, file and row together (row hidden first, then file unlinked, then row deleted)."""
        if not ids:
            return 0
        rows = []
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows += self._db.execute(f"SELECT id, path FROM frames WHERE id IN ({marks})", chunk)
                self._db.execute(f"UPDATE frames SET state = 'deleting' WHERE id IN ({marks})", chunk)
        for _, rel in rows:
            self.frame_store.delete(rel)
        for chunk in _chunks([r[0] for r in rows], 500):
            self._exec(f"DELETE FROM frames WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        return len(rows)

    def recover(self, sources: list[str] | None = None) -> dict[str, int]:
        """Finish or undo interrupted writes and deletes (of `sources` only: a collector settles just the sources it
        holds the leases of, never another writer's frames in flight); returns counts of what it did."""
        done = {"completed": 0, "rolled_back": 0, "deleted": 0}
        pending = self._exec("SELECT id, path, state, source FROM frames WHERE state != 'ok'")
        for frame_id, rel, state, source in pending:
            if sources is not None and source not in sources:
                continue
            if state == "writing" and self.frame_store.sha256(rel) == frame_id:
                self._exec("UPDATE frames SET state = 'ok' WHERE id = ?", (frame_id,))
                done["completed"] += 1
                continue
            self.frame_store.delete(rel)
            self._exec("DELETE FROM frames WHERE id = ?", (frame_id,))
            done["rolled_back" if state == "writing" else "deleted"] += 1
        return done

    # -- reading -------------------------------------------------------------------------------------------------

    def get(self, frame_id: str, any_state: bool = False) -> FrameRow | None:
        extra = "" if any_state else " AND state = 'ok'"
        rows = self._exec(f"SELECT {COLUMNS} FROM frames WHERE id = ?{extra}", (frame_id,))
        return _row(rows[0]) if rows else None

    def frames(
        self,
        source: str | None = None,
        day: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        include_stale: bool = True,
        include_duplicates: bool = True,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[FrameRow]:
        """Visible rows, oldest first by capture time; filters combine (`day` is the local day at the source)."""
        where, args = self._where(source, day, since, until, include_stale, include_duplicates)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT {COLUMNS} FROM frames WHERE {where} ORDER BY captured_at {order}, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row(r) for r in self._exec(sql, args)]

    def iter_frames(self, source: str | None = None, batch: int = 1000) -> Iterator[FrameRow]:
        """All visible rows of a source (or all sources) in capture order, fetched in batches (keyset pagination on
        the row value (captured_at, id), which the capture-time indexes serve; a concatenated key cannot use them
        and made every batch scan and sort the whole table)."""
        after: tuple[str, str] = ("", "")
        while True:
            where, args = self._where(source, None, None, None, True, True)
            rows = self._exec(
                f"SELECT {COLUMNS} FROM frames WHERE {where} AND (captured_at, id) > (?, ?) "
                f"ORDER BY captured_at, id LIMIT {batch}",
                (*args, *after),
            )
            if not rows:
                return
            yield from (_row(r) for r in rows)
            after = (rows[-1][3], rows[-1][0])

    def counts(self, source: str | None = None, by_day: bool = True) -> list[tuple[str, str, int, int]]:
        """(source, local day or '*', frames, bytes) per source (and day), sorted."""
        where, args = self._where(source, None, None, None, True, True)
        day = "local_day" if by_day else "'*'"
        rows = self._exec(
            f"SELECT source, {day} AS d, COUNT(*), SUM(bytes) FROM frames WHERE {where} "
            f"GROUP BY source, d ORDER BY source, d",
            args,
        )
        return [(s, str(d), int(n), int(b or 0)) for s, d, n, b in rows]

    def count(self, source: str | None = None) -> int:
        where, args = self._where(source, None, None, None, True, True)
        return int(self._exec(f"SELECT COUNT(*) FROM frames WHERE {where}", args)[0][0])

    def total_bytes(self, source: str | None = None) -> int:
        where, args = self._where(source, None, None, None, True, True)
        return int(self._exec(f"SELECT COALESCE(SUM(bytes), 0) FROM frames WHERE {where}", args)[0][0])

    def last_frame(self, source: str) -> FrameRow | None:
        rows = self.frames(source=source, newest_first=True, limit=1)
        return rows[0] if rows else None

    def sources(self) -> list[str]:
        return [r[0] for r in self._exec("SELECT DISTINCT source FROM frames WHERE state = 'ok' ORDER BY source")]

    @staticmethod
    def _where(source, day, since, until, include_stale, include_duplicates) -> tuple[str, list]:
        clauses, args = ["state = 'ok'"], []
        for sql, value in (
            ("source = ?", source),
            ("local_day = ?", day),
            ("captured_at >= ?", utc_text(since) if since else None),
            ("captured_at < ?", utc_text(until) if until else None),
        ):
            if value is not None:
                clauses.append(sql)
                args.append(value)
        if not include_stale:
            clauses.append("stale = 0")
        if not include_duplicates:
            clauses.append("duplicate_of IS NULL")
        return " AND ".join(clauses), args

    # -- checking and retention ----------------------------------------------------------------------------------

    def verify(self, source: str | None = None, hashes: bool = True) -> dict[str, list[str]]:
        """Rows whose file is missing or whose bytes do not hash to the id, frame files with no row, and rows an
        interrupted write or delete left pending (`recover` settles them; a running writer has a few in flight)."""
        problems: dict[str, list[str]] = {"missing": [], "corrupt": [], "orphans": [], "pending": []}
        known = set()
        for row in self.iter_frames(source):
            known.add(row.path)
            if not hashes and not self.frame_store.exists(row.path):
                problems["missing"].append(row.id)
            elif hashes and (digest := self.frame_store.sha256(row.path)) != row.id:
                problems["missing" if digest is None else "corrupt"].append(row.id)
        pending_rows = self._exec("SELECT id, path, source FROM frames WHERE state != 'ok'")
        problems["pending"] = [r[0] for r in pending_rows if source is None or r[2] == source]
        pending = {r[1] for r in pending_rows}
        for rel in self.frame_store.list(f"frames/{source}/" if source else "frames/"):
            if rel not in known and rel not in pending:
                problems["orphans"].append(rel)
        return problems

    def repair(self, hashes: bool = True) -> dict[str, int]:
        """Make `verify` clean again after damage no crash journal covers: a row whose file is missing is removed; a
        row whose file is corrupt is removed and the file moved to the frame store's `quarantine/`, as is a frame file
        with no row. Nothing is deleted that could still be looked at.
        Run `recover` first (pending rows are left alone)."""
        problems = self.verify(hashes=hashes)
        by_id = {r.id: r for r in self.iter_frames() if r.id in set(problems["missing"] + problems["corrupt"])}
        for frame_id in problems["corrupt"]:
            self._quarantine(by_id[frame_id].path)
        self.delete(problems["missing"] + problems["corrupt"])
        for rel in problems["orphans"]:
            self._quarantine(rel)
        return {k: len(problems[k]) for k in ("missing", "corrupt", "orphans")}

    def _quarantine(self, rel: str) -> None:
        self.frame_store.quarantine(rel)

    def enforce_retention(
        self, max_bytes: int = 0, max_age_s: float = 0, source: str | None = None, now: datetime | None = None
    ) -> int:
        """Delete oldest frames (of `source`, or all) until under `max_bytes` and none older than `max_age_s`."""
        where, args = self._where(source, None, None, None, True, True)
        removed = 0
        if max_age_s > 0:
            cutoff = utc_text(datetime.fromtimestamp((now or datetime.now(UTC)).timestamp() - max_age_s, UTC))
            old = self._exec(f"SELECT id FROM frames WHERE {where} AND captured_at < ?", (*args, cutoff))
            removed += self.delete([r[0] for r in old])
        if max_bytes > 0:
            excess = self.total_bytes(source) - max_bytes
            doomed = []
            for row in self.iter_frames(source):
                if excess <= 0:
                    break
                doomed.append(row.id)
                excess -= row.bytes
            removed += self.delete(doomed)
        return removed


def _values(row: FrameRow) -> tuple:
    return (
        row.id, row.path, row.source, row.captured_at, row.local_day, row.local_tod, row.tz,
        row.width, row.height, row.bytes, row.duplicate_of, int(row.stale),
    )  # fmt: skip


def _row(r: tuple) -> FrameRow:
    return FrameRow(*r[:11], stale=bool(r[11]))


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
