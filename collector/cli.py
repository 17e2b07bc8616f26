"""`fth collect` (the daemon and its status) and `fth sim` (the simulated camera and its labels).

fth collect --config configs/collector.yaml [--set key=value] [--workspace DIR]
fth collect status [--workspace DIR] [--json]
fth sim serve --out DIR [--port P] [--config configs/sim.yaml]       live HLS on 127.0.0.1 until Ctrl-C
fth sim labels --source ID --out DIR [--sim DIR_OR_SIM_JSON] [--no-dense]
fth sim render --out DIR [--count N]                                 a few stamped frames + truth, for a look
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from fth.cli import add_config_args

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
