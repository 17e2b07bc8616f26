"""`fth collect` (the daemon and its status), `fth sim` (the simulated camera and its labels), `fth frames import`.

fth collect --config configs/collector.yaml [--set key=value] [--workspace DIR]
fth collect status [--workspace DIR] [--json]
fth sim serve --out DIR [--port P] [--config configs/sim.yaml]       live HLS on 127.0.0.1 until Ctrl-C
fth sim labels --source ID --out DIR [--sim DIR_OR_SIM_JSON] [--no-dense]
fth sim render --out DIR [--count N]                                 a few stamped frames + truth, for a look
fth frames import PATH... [--source S] [--every SECONDS] [--times CSV] [--tz ZONE]
    images (files, folders, globs), videos sampled every N s, or CSVs of path,captured_at (collector.importer); an
    action of store.cli's `fth frames`, added here because importing frames is collecting them (store needs no
    collector code)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from fth.cli import add_config_args, subcommand_actions

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("collect", help="run the frame collector daemon (livestreams -> frame catalog)")
    add_config_args(c, default="collector")
    c.add_argument("--workspace", default=None, help="data root (default: config's, $FTH_WORKSPACE or ./workspace)")
    c.set_defaults(func=cmd_collect)
    cs = c.add_subparsers(dest="collect_cmd", metavar="ACTION")
    st = cs.add_parser("status", help="per source: state, last frame, frames/hour, errors, restarts")
    st.add_argument("--workspace", default=None)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    s = sub.add_parser("sim", help="the simulated camera: publish it, render it, write its ground-truth labels")
    ss = s.add_subparsers(dest="sim_cmd", metavar="ACTION", required=True)
    serve = ss.add_parser("serve", help="publish the sim as live HLS on 127.0.0.1 until Ctrl-C")
    serve.add_argument("--out", required=True, help="folder for the playlist, segments and sim.json")
    serve.add_argument("--port", type=int, default=8642)
    add_config_args(serve)
    serve.set_defaults(func=cmd_sim_serve)
    lab = ss.add_parser("labels", help="ground truth for every catalog frame of a sim source, keyed by frame id")
    lab.add_argument("--source", required=True)
    lab.add_argument("--out", required=True)
    lab.add_argument("--sim", default=None, help="sim folder or sim.json (default: <workspace>/sim/<source>)")
    lab.add_argument("--workspace", default=None)
    lab.add_argument("--no-dense", action="store_true", help="CSV labels only, no depth/segmentation PNGs")
    lab.set_defaults(func=cmd_sim_labels)
    ren = ss.add_parser("render", help="write a few stamped frames with depth and segmentation, for a look")
    ren.add_argument("--out", required=True)
    ren.add_argument("--count", type=int, default=8)
    ren.add_argument("--step", type=int, default=150, help="frame index step between rendered frames")
    add_config_args(ren)
    ren.set_defaults(func=cmd_sim_render)
    frames = subcommand_actions(sub, "frames")  # `fth frames` is store.cli's; importing frames is collecting them
    if frames is not None:
        import_args(frames.add_parser("import", help=IMPORT_HELP))


IMPORT_HELP = "import images (files, folders, globs), videos, or a CSV of path,captured_at"


def import_args(i: argparse.ArgumentParser) -> None:
    i.add_argument("paths", nargs="+", metavar="PATH")
    i.add_argument("--source", default="import", help="source name the frames are filed under (default: import)")
    i.add_argument("--every", type=float, default=10.0, help="seconds between frames sampled from a video (default 10)")
    i.add_argument("--times", metavar="CSV", help="path,captured_at rows giving the capture times of the files")
    i.add_argument("--tz", default="UTC", help="IANA zone of the source, and of times without an offset (default UTC)")
    i.add_argument("--threads", type=int, default=8, help="files read and stored in parallel (default 8)")
    i.set_defaults(func=cmd_import)


def cmd_collect(args) -> int:
    from collector.config import CollectorConfig
    from collector.daemon import main
    from fth.config import build
    from store.paths import Workspace

    cfg = build(CollectorConfig, args.config, args.overrides)
    ws = Workspace.at(args.workspace or cfg.workspace or None)
    if not cfg.sources:
        print("fth collect: the config lists no sources", file=sys.stderr)
        return 2
    from store.backends import StorageError
    from store.lock import SourceLeased, WorkspaceBusy

    try:
        return main(cfg, ws)
    except (WorkspaceBusy, SourceLeased, StorageError) as e:
        print(f"fth collect: {e}", file=sys.stderr)
        return 1


def cmd_status(args) -> int:
    from collector.status import format_status, read_status
    from store.paths import Workspace

    ws = Workspace.at(args.workspace)
    doc = read_status(ws.collector / "status.json")
    if doc is None:
        print(f"no collector status at {ws.collector / 'status.json'} (never started here?)", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=1) if args.json else format_status(doc))
    return 0 if doc["running"] else 3


def _sim_config(args):
    from collector.config import SimConfig
    from fth.config import build

    return build(SimConfig, args.config, args.overrides)


def cmd_sim_serve(args) -> int:
    import threading

    from collector.sim_publish import SimPublisher

    stop = threading.Event()
    with SimPublisher(_sim_config(args), args.out, port=args.port) as pub:
        pub.wait_ready()
        print(f"sim live at {pub.url} (Ctrl-C to stop)", flush=True)
        try:
            import signal

            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    return 0


def cmd_sim_labels(args) -> int:
    from collector.sim import load_sim_config, write_labels
    from store.backends import open_catalog
    from store.paths import Workspace

    ws = Workspace.at(args.workspace)
    try:
        cfg, _ = load_sim_config(args.sim or ws.sim / args.source)
    except FileNotFoundError as e:
        print(f"fth sim labels: {e}; pass --sim <sim folder or sim.json> (the collector writes it to "
              f"<workspace>/sim/<source>/)", file=sys.stderr)  # fmt: skip
        return 2
    with open_catalog(ws) as cat:
        summary = write_labels(cat, args.source, cfg, args.out, dense=not args.no_dense)
    print(f"{summary.labelled} of {summary.frames} frames labelled ({summary.unreadable} unreadable) in {summary.out}")
    return 0 if summary.labelled or not summary.frames else 1


def cmd_sim_render(args) -> int:
    from pathlib import Path

    from PIL import Image

    from collector.sim import depth_png, frame

    cfg = _sim_config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(args.count):
        index = k * args.step
        rgb, truth = frame(cfg, index)
        Image.fromarray(rgb).save(out / f"{index:08d}.png")
        Image.fromarray(depth_png(truth.depth)).save(out / f"{index:08d}_depth.png")
        Image.fromarray(truth.seg).save(out / f"{index:08d}_seg.png")
        print(f"{index:8d}  time_of_day={truth.time_of_day:5.2f}  people={truth.people}")
    return 0


def cmd_import(args) -> int:
    import contextlib
    import glob
    import re
    from pathlib import Path
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from tqdm import tqdm

    from collector.importer import ImportInputError, import_frames, summary
    from store.backends import StorageError, describe, open_catalog
    from store.lock import Lease, SourceLeased, holder_name
    from store.paths import Workspace

    def usage(msg: str) -> int:
        print(f"fth frames import: {msg}", file=sys.stderr)
        return 2

    if args.threads < 1:
        return usage("--threads must be >= 1")
    if not args.every > 0:
        return usage(f"--every must be > 0 seconds, got {args.every}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.source):
        return usage(f"--source {args.source!r}: use letters, digits, '_', '.', '-'")
    try:
        ZoneInfo(args.tz)
    except (ZoneInfoNotFoundError, ValueError):
        return usage(f"--tz {args.tz!r} is not an IANA time zone (e.g. Europe/Berlin)")
    missing = [p for p in args.paths if not glob.has_magic(p) and not Path(p).exists()]
    if missing:
        return usage(f"{missing[0]}: no such file or folder")
    ws = Workspace.at(args.workspace)
    try:
        cat = open_catalog(ws)
    except (StorageError, OSError) as e:
        return usage(str(e))
    lease = Lease(cat, f"source:{args.source}", holder_name("fth frames import"))
    try:
        lease.acquire()
    except SourceLeased as e:
        cat.close()
        print(f"fth frames import: {e}", file=sys.stderr)
        return 1
    with cat, contextlib.ExitStack() as stack, tqdm(unit="frame", desc="import") as bar:
        stack.callback(lease.release)  # before the catalog closes
        settled = cat.recover([args.source])  # what an import or collector of this source killed mid-write left
        bar.write(f"into {describe(ws)}, source {args.source}")
        if settled["rolled_back"] or settled["completed"]:
            bar.write(f"settled interrupted writes: {settled['completed']} completed, {settled['rolled_back']} rolled "
                      "back")  # fmt: skip

        def total(n: int) -> None:
            bar.total = n
            bar.refresh()

        try:
            rep = import_frames(
                cat, args.paths, args.source, args.every, args.tz, args.times, bar.update, total, args.threads
            )
        except ImportInputError as e:
            bar.close()
            return usage(str(e))
        except Exception as e:  # noqa: BLE001 - storage down mid-import: one line, and what the user can rely on
            bar.close()
            print(f"fth frames import: stopped by {type(e).__name__}: {e}; every frame stored so far is complete, "
                  "run the same command again to continue", file=sys.stderr)  # fmt: skip
            return 1
    for line in summary(rep):
        print(line)
    return 1 if rep.bad else 0
