"""`fth serve` (the embedding service) and `fth embed` (batch embedding into the store).

`fth serve` runs gunicorn with gthread workers (one model per worker process, nothing loaded in the master);
`--dev` runs the Flask development server instead. No torch import happens until a handler runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from fth.cli import add_config_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve the encoder (and its heads) over HTTP")
    add_config_args(serve, default="serve")
    serve.add_argument("--workspace", default=None, help="workspace folder (default: $FTH_WORKSPACE or ./workspace)")
    serve.add_argument("--encoder", default=None, help="encoder id or artifact folder (default: newest registered)")
    serve.add_argument("--bind", default=None, help="host:port (default from config: 127.0.0.1:8000)")
    serve.add_argument("--dev", action="store_true", help="Flask development server instead of gunicorn")
    serve.set_defaults(func=_serve)

    embed = sub.add_parser("embed", help="embed catalog frames into the embedding store (resumable, torchrun-able)")
    add_config_args(embed)
    embed.add_argument("--workspace", default=None, help="workspace folder (default: $FTH_WORKSPACE or ./workspace)")
    embed.add_argument("--encoder", default=None, help="encoder id or artifact folder (default: newest registered)")
    embed.add_argument("--source", default=None, help="only frames of this catalog source")
    embed.add_argument("--tokens", action="store_true", help="also store token grids")
    embed.add_argument("--layers", default=None, help="comma-separated block indices for --tokens (default: -1)")
    embed.add_argument("--token-frames", default=None, help="file of frame ids that need token grids (default: all)")
    embed.add_argument("--batch-size", type=int, default=None)
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")
    embed.set_defaults(func=_embed)


def serve_config(args: argparse.Namespace):
    from fth.config import build, merge
    from server.config import ServeConfig

    cfg = build(ServeConfig, args.config, args.overrides)
    flags = {"workspace": args.workspace, "encoder": args.encoder, "bind": args.bind}
    return merge(cfg, {k: v for k, v in flags.items() if v is not None}, "command line")


def _serve(args: argparse.Namespace) -> int:
    from fth.config import to_dict

    cfg = serve_config(args)
    if cfg.workspace is None:
        cfg.workspace = os.environ.get("FTH_WORKSPACE", "workspace")
    os.environ["FTH_SERVE_CONFIG"] = json.dumps(to_dict(cfg))
    if args.dev:
        from server.app import create_app

        host, _, port = cfg.bind.rpartition(":")
        create_app(cfg).run(host=host or "127.0.0.1", port=int(port), threaded=True)
        return 0
    from pathlib import Path

    conf = Path(__file__).with_name("gunicorn_conf.py")
    argv = ["gunicorn", "--config", "python:server.gunicorn_conf", "server.wsgi:app"]
    del conf
    log.info("gunicorn on %s: %d worker(s) x %d threads", cfg.bind, cfg.workers, cfg.threads)
    from gunicorn.app.wsgiapp import run

    sys.argv = argv
    return run() or 0


def _embed(args: argparse.Namespace) -> int:
    from encoder.embed import EmbedConfig, run_embed
    from fth.config import build, merge

    cfg = build(EmbedConfig, args.config, args.overrides)
    flags = {
        "workspace": args.workspace,
        "encoder": args.encoder,
        "source": args.source,
        "token_frames": args.token_frames,
        "batch_size": args.batch_size,
        "tokens": True if args.tokens else None,
        "layers": [int(x) for x in args.layers.split(",")] if args.layers else None,
    }
    cfg = merge(cfg, {k: v for k, v in flags.items() if v is not None}, "command line")
    stats = run_embed(cfg, progress=not args.no_progress)
    print(json.dumps(stats))
    return 0 if stats["failed"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m server.cli serve|embed ...`: these two subcommands alone, independent of other packages' CLIs."""
    import fth.cli
    from fth.cli import main as fth_main

    fth.cli.CLI_MODULES = ("server.cli",)
    return fth_main(argv)


if __name__ == "__main__":
    sys.exit(main())
