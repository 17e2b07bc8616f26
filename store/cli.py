"""`fth frames`: the user's view of the frame catalog (count, list, verify, export, recover).

fth frames count [--source S] [--by-day]
fth frames list [--source S] [--day YYYY-MM-DD] [--limit N]
fth frames verify [--source S] [--no-hash]      exit 1 when a file is missing/corrupt or has no row
fth frames export OUT.csv|OUT.txt [--source S] [--day D] [--no-stale] [--no-duplicates] [--absolute]
fth frames recover [--no-hash]                  settle interrupted writes; remove rows of missing files, quarantine
                                                corrupt files and orphans
fth frames import PATH...                       images, videos, CSVs of path,captured_at (collector.cli adds it)
fth frames sync --to OTHER | --from OTHER [--source S]     (also `fth sync`)
                                                copy frames and rows between this workspace and another (each with its
                                                own storage settings: local, PostgreSQL + S3), idempotent, verified
"""

from __future__ import annotations

import argparse
import csv
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frames", help="count, list, verify and export the frames in the catalog")
    p.add_argument("--workspace", default=None, help="data root (default: $FTH_WORKSPACE or ./workspace)")
    fs = p.add_subparsers(dest="frames_cmd", metavar="ACTION", required=True)
    c = fs.add_parser("count", help="frames and bytes per source (and per local day)")
    c.add_argument("--source")
    c.add_argument("--by-day", action="store_true")
    c.set_defaults(func=cmd_count)
    ls = fs.add_parser("list", help="one line per frame")
    ls.add_argument("--source")
    ls.add_argument("--day", help="local day at the source, YYYY-MM-DD")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=cmd_list)
    v = fs.add_parser("verify", help="every row has its file with the right hash; every file has a row")
    v.add_argument("--source")
    v.add_argument("--no-hash", action="store_true", help="check existence only (fast)")
    v.set_defaults(func=cmd_verify)
    e = fs.add_parser("export", help="write a frame list: .csv with all columns, or .txt with one path per line")
    e.add_argument("out")
    e.add_argument("--source")
    e.add_argument("--day")
    e.add_argument("--no-stale", action="store_true")
    e.add_argument("--no-duplicates", action="store_true")
    e.add_argument("--absolute", action="store_true", help="absolute paths instead of paths relative to the root")
    e.set_defaults(func=cmd_export)
    r = fs.add_parser(
        "recover", help="settle interrupted writes, then repair missing/corrupt files (not while collecting)"
    )
    r.add_argument("--no-hash", action="store_true", help="repair missing files only, without hashing every file")
    r.set_defaults(func=cmd_recover)
    sync_args(fs.add_parser("sync", help=SYNC_HELP))
    top = sub.add_parser("sync", help=f"{SYNC_HELP} (= fth frames sync)")
    top.add_argument("--workspace", default=None, help="data root (default: $FTH_WORKSPACE or ./workspace)")
    sync_args(top)


SYNC_HELP = "copy frames and rows to (or from) another workspace, e.g. one on PostgreSQL + S3"


def sync_args(y: argparse.ArgumentParser) -> None:
    where = y.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="WORKSPACE", help="the target workspace folder (its workspace.yaml says where)")
    where.add_argument("--from", dest="from_", metavar="WORKSPACE", help="the workspace to copy from")
    y.add_argument("--source", help="only this source")
    y.add_argument("--threads", type=int, default=8, help="parallel copies (default 8)")
    y.set_defaults(func=cmd_sync)


def _catalog(args, recover: bool = False):
    from store.backends import CatalogMissing, StorageError, open_catalog
    from store.paths import Workspace

    try:
        return open_catalog(Workspace.at(args.workspace), recover=recover, create=False)
    except (CatalogMissing, StorageError) as e:
        print(f"fth frames: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _table(cols: tuple[str, ...], rows: list[tuple]) -> str:
    rows = [tuple(str(v) for v in r) for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def cmd_count(args) -> int:
    with _catalog(args) as cat:
        rows = cat.counts(args.source, by_day=args.by_day)
    total_n, total_b = sum(r[2] for r in rows), sum(r[3] or 0 for r in rows)
    shown = [(s, d, n, f"{(b or 0) / 1e6:.1f}") for s, d, n, b in rows] + [
        ("total", "", total_n, f"{total_b / 1e6:.1f}")
    ]
    print(_table(("source", "day", "frames", "MB"), shown))
    return 0


def cmd_list(args) -> int:
    with _catalog(args) as cat:
        rows = cat.frames(source=args.source, day=args.day, limit=args.limit)
    flags = lambda r: ("stale " if r.stale else "") + (f"dup:{r.duplicate_of[:12]}" if r.duplicate_of else "")
    print(
        _table(
            ("id", "source", "captured_at (UTC)", "tod", "size", "bytes", "flags", "path"),
            [
                (
                    r.id[:16],
                    r.source,
                    r.captured_at,
                    f"{r.local_tod:.2f}",
                    f"{r.width}x{r.height}",
                    r.bytes,
                    flags(r),
                    r.path,
                )
                for r in rows
            ],  # fmt: skip
        )
    )
    return 0


def cmd_verify(args) -> int:
    with _catalog(args) as cat:
        n = cat.count(args.source)
        problems = cat.verify(args.source, hashes=not args.no_hash)
    for kind, items in problems.items():
        for item in items[:20]:
            print(f"{kind}: {item}")
        if len(items) > 20:
            print(f"{kind}: ... {len(items) - 20} more")
    bad = sum(len(v) for v in problems.values())
    print(f"{n} frames checked: {', '.join(f'{len(v)} {k}' for k, v in problems.items())}")
    if bad:
        print("run `fth frames recover` (with no collector running) to settle pending rows and repair the rest")
    return 1 if bad else 0


def cmd_export(args) -> int:
    with _catalog(args) as cat:
        rows = cat.frames(
            source=args.source, day=args.day, include_stale=not args.no_stale, include_duplicates=not args.no_duplicates
        )
        store = cat.frame_store
    path = lambda r: str(_absolute(store, r.path)) if args.absolute else r.path
    with open(args.out, "w", newline="") as f:
        if args.out.endswith(".csv"):
            w = csv.writer(f)
            w.writerow(["frame_id", "path", "source", "captured_at", "local_day", "local_tod", "width", "height",
                        "bytes", "stale", "duplicate_of"])  # fmt: skip
            for r in rows:
                w.writerow([r.id, path(r), r.source, r.captured_at, r.local_day, f"{r.local_tod:.4f}", r.width,
                            r.height, r.bytes, int(r.stale), r.duplicate_of or ""])  # fmt: skip
        else:
            f.writelines(path(r) + "\n" for r in rows)
    print(f"wrote {len(rows)} frames to {args.out}")
    return 0


def _absolute(store, rel: str) -> str:
    """A frame's full address: an absolute file path, or `s3://bucket/key`."""
    from store.backends import S3Frames

    return f"s3://{store.bucket}/{store.key(rel)}" if isinstance(store, S3Frames) else str(store.ref(rel).resolve())


def cmd_recover(args) -> int:
    from store.lock import WorkspaceBusy, workspace_lock
    from store.paths import Workspace

    try:
        with workspace_lock(Workspace.at(args.workspace), "fth frames recover"), _catalog(args) as cat:
            done = cat.recover()
            repaired = cat.repair(hashes=not args.no_hash)
    except WorkspaceBusy as e:
        print(f"fth frames recover: {e}", file=sys.stderr)
        return 1
    print(", ".join(f"{v} {k}" for k, v in done.items()))
    print(f"rows removed for missing files: {repaired['missing']}; moved to quarantine/: "
          f"{repaired['corrupt']} corrupt, {repaired['orphans']} orphans")  # fmt: skip
    return 0


def cmd_sync(args) -> int:
    from tqdm import tqdm

    from store.backends import CatalogMissing, StorageError, describe, open_catalog
    from store.paths import Workspace
    from store.sync import sync

    here, other = Workspace.at(args.workspace), Workspace.at(args.to or args.from_)
    src_ws, dst_ws = (here, other) if args.to else (other, here)
    if args.threads < 1:
        print("fth frames sync: --threads must be >= 1", file=sys.stderr)
        return 2
    try:
        src = open_catalog(src_ws, create=False)
        dst_ws.root.mkdir(parents=True, exist_ok=True)
        dst = open_catalog(dst_ws)
    except (CatalogMissing, StorageError, OSError) as e:
        print(f"fth frames sync: {e}", file=sys.stderr)
        return 2
    print(f"from {describe(src_ws)}\n  to {describe(dst_ws)}")
    with src, dst, tqdm(total=src.count(args.source), unit="frame", desc="sync") as bar:
        rep = sync(src, dst, args.source, args.threads, progress=bar.update)
    print(f"{rep.copied} copied, {rep.present} already there, {len(rep.failed)} failed")
    for line in rep.failed[:20]:
        print(f"failed: {line}")
    if rep.missing_after:
        print(f"verify: {len(rep.missing_after)} frames are not in the target with the right bytes, e.g. "
              f"{rep.missing_after[0]}")  # fmt: skip
    else:
        print("verify: every frame is in the target with the right bytes")
    return 1 if rep.failed or rep.missing_after else 0
