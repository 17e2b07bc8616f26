"""Storage backends: frames/s ingested by many writers, and the training frame-listing query on a big catalog.

    .venv/bin/python bench/store.py [--writers 10 50] [--frames 600] [--rows 1000000] [--repeats 3]

Ingest: `writers` threads, each a collector with its own `Catalog` (its own database connection), call the catalog's
one add path (`Catalog.add_frame`: row `writing`, bytes stored durably, row `ok`) with distinct ~1.5 KB JPEGs, `frames`
in all, into SQLite + local files (the baseline), PostgreSQL + S3 (SeaweedFS), and the two mixed pairs (to see which
half costs what), the servers started on loopback by this script with the test suite's helpers
(tests/storage_servers.py). Reported: frames/s and the ratio to SQLite + local at the same writer count in this run.

Listing: the query `encoder.data.catalog_records` runs (`Catalog.frames(source, since, until)`: visible rows in
capture order) on `rows` synthetic rows of 50 sources, written straight into the catalog's own schema and indexes
(state 'ok'; no frame bytes). Two shapes: one source over one day (what a training config with `sources` and
`since`/`until` lists), and every row (a config with no filters; this one is bound by turning rows into Python
objects; run only up to 2M rows). Median seconds over `repeats`, PostgreSQL vs SQLite.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table, write_json  # noqa: E402
from store.backends import S3Frames  # noqa: E402
from store.catalog import Catalog, utc_text  # noqa: E402
from tests.storage_servers import Postgres, Seaweed  # noqa: E402

log = logging.getLogger("bench.store")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SOURCES = 50
STEP_S = 5  # each source sampled every 5 s
ALL_ROWS_MAX = 2_000_000
BACKENDS = [("SQLite", "local"), ("PostgreSQL", "S3"), ("PostgreSQL", "local"), ("SQLite", "S3")]


def jpegs(n: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def ingest(open_cat, frames: list[bytes], writers: int) -> float:
    """frames/s for `writers` threads, each with its own catalog, adding `frames` between them."""
    cats = [open_cat() for _ in range(writers)]
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        barrier.wait()
        try:
            for k in range(w, len(frames), writers):
                cats[w].add_frame(frames[k], f"cam{w}", T0 + timedelta(seconds=k), 48, 32)
        except BaseException as e:  # noqa: BLE001 - reported after the run
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for c in cats:
        c.close()
    if errors:
        raise errors[0]
    return len(frames) / elapsed


SYNTH_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {rows} - 1)
INSERT INTO frames (id, path, source, captured_at, local_day, local_tod, tz, width, height, bytes, stale, state)
SELECT printf('%064x', i), printf('frames/cam%d/%08d.jpg', i % {src}, i), 'cam' || (i % {src}),
       strftime('%Y-%m-%dT%H:%M:%S.000000Z', {t0} + (i / {src}) * {step}, 'unixepoch'),
       strftime('%Y-%m-%d', {t0} + (i / {src}) * {step}, 'unixepoch'), ((i / {src}) * {step} % 86400) / 3600.0,
       'UTC', 960, 576, 50000, 0, 'ok' FROM n
"""
SYNTH_PG = """
INSERT INTO frames (id, path, source, captured_at, local_day, local_tod, tz, width, height, bytes, stale, state)
SELECT lpad(to_hex(i), 64, '0'), format('frames/cam%s/%s.jpg', i % {src}, lpad(i::text, 8, '0')), 'cam' || (i % {src}),
       to_char(to_timestamp({t0} + (i / {src}) * {step}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       to_char(to_timestamp({t0} + (i / {src}) * {step}) AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
       ((i / {src}) * {step} % 86400) / 3600.0, 'UTC', 960, 576, 50000, 0, 'ok'
FROM generate_series(0, {rows} - 1) AS i
"""


def fill(cat: Catalog, rows: int, pg: bool) -> float:
    """Write `rows` synthetic visible rows (50 sources, one frame per source every 5 s) into `cat`; seconds taken."""
    sql = (SYNTH_PG if pg else SYNTH_SQLITE).format(rows=rows, src=SOURCES, step=STEP_S, t0=int(T0.timestamp()))
    start = time.perf_counter()
    conn = cat._db.conn  # one statement, no parameters (psycopg would read the SQL's `%` as placeholders)
    conn.execute(sql)
    conn.execute("ANALYZE")
    return time.perf_counter() - start


def window(rows: int) -> tuple[datetime, datetime]:
    """One day of one source, starting a quarter into the catalog's span."""
    since = T0 + timedelta(seconds=rows // SOURCES * STEP_S) * 0.25
    return since, since + timedelta(days=1)


def listing(cat: Catalog, rows: int, repeats: int) -> dict[str, tuple[float, int]]:
    since, until = window(rows)
    shapes = {
        "one source, 1 day": lambda: cat.frames(source="cam7", since=since, until=until),
        "all rows": lambda: cat.frames(),
    }
    if rows > ALL_ROWS_MAX:  # 10M FrameRow objects: several GB of RAM and ~60 s
        del shapes["all rows"]
    out = {}
    for name, fn in shapes.items():
        times, n = [], 0
        for _ in range(repeats):
            start = time.perf_counter()
            n = len(fn())
            times.append(time.perf_counter() - start)
        out[name] = (statistics.median(times), n)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writers", type=int, nargs="+", default=[10, 50])
    p.add_argument("--frames", type=int, default=600, help="frames per ingest case (default 600)")
    p.add_argument("--rows", type=int, nargs="*", default=[1_000_000],
                   help="catalog sizes for the listing query (none: skip it)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-ingest", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    pg, s3 = Postgres().start(), Seaweed().start()
    results: dict = {"ingest": [], "listing": []}
    try:
        frames = jpegs(args.frames)
        for writers in [] if args.no_ingest else args.writers:
            fps = {}
            for catalog, frame_store in BACKENDS:
                root = Path(tempfile.mkdtemp(prefix="bench-store-"))
                db = pg.new_database() if catalog == "PostgreSQL" else None
                bucket = s3.new_bucket() if frame_store == "S3" else None

                def open_cat(root=root, db=db, bucket=bucket):
                    store = S3Frames(f"s3://{bucket}/bench", s3.endpoint) if bucket else None
                    return Catalog(root, db_url=db, frames=store, recover=False)

                open_cat().close()  # schema created once, before the writers race
                fps[(catalog, frame_store)] = ingest(open_cat, frames, writers)
            base = fps[BACKENDS[0]]
            for (catalog, frame_store), rate in fps.items():
                row = {"writers": writers, "backend": f"{catalog} + {frame_store}", "frames/s": rate,
                       "vs SQLite": rate / base}  # fmt: skip
                results["ingest"].append(row)
                log.info("%s", row)
        for rows in args.rows:
            sq = Path(tempfile.mkdtemp(prefix="bench-store-"))
            with Catalog(sq, recover=False) as cat:
                fill_sqlite = fill(cat, rows, pg=False)
                base = listing(cat, rows, args.repeats)
            with Catalog(sq, db_url=pg.new_database(), recover=False) as cat:
                fill_pg = fill(cat, rows, pg=True)
                since, until = (utc_text(t) for t in window(rows))
                plan = cat._exec(
                    "EXPLAIN SELECT id FROM frames WHERE state = 'ok' AND source = 'cam7' AND captured_at >= ? "
                    "AND captured_at < ? ORDER BY captured_at, id",
                    (since, until),
                )
                remote = listing(cat, rows, args.repeats)
            log.info("rows %d: filled SQLite in %.1f s, PostgreSQL in %.1f s; plan: %s", rows, fill_sqlite, fill_pg,
                     " / ".join(r[0].strip() for r in plan))  # fmt: skip
            for shape, (t_pg, n) in remote.items():
                t_sq = base[shape][0]
                results["listing"].append({"rows": rows, "query": shape, "returned": n, "SQLite s": t_sq,
                                           "PostgreSQL s": t_pg, "PG / SQLite": t_pg / t_sq})  # fmt: skip
    finally:
        s3.stop()
        pg.stop()
    print(table(results["ingest"], ["writers", "backend", "frames/s", "vs SQLite"]))
    print()
    print(table(results["listing"], ["rows", "query", "returned", "SQLite s", "PostgreSQL s", "PG / SQLite"]))
    print(f"wrote {write_json('store', {'args': vars(args), **results})}")


if __name__ == "__main__":
    main()
