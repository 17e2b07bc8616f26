"""`fth serve` (the embedding service) and `fth embed` (batch embedding into the store).

`fth serve` runs gunicorn in-process (`server.gunicorn_app`: one model per worker process, nothing loaded in the
master); `--dev` runs the Flask development server instead. A non-loopback `--bind` with no API key configured is
refused unless `--insecure-no-auth` is given. No torch import happens until a handler runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from fth.cli import add_config_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve the encoder (and its heads) over HTTP")
    add_config_args(serve, default="serve")
    serve.add_argument("--workspace", default=None, help="workspace folder (default: $FTH_WORKSPACE or ./workspace)")
    serve.add_argument("--encoder", default=None, help="encoder id or artifact folder (default: newest registered)")
    serve.add_argument("--bind", default=None, help="host:port (default from config: 127.0.0.1:8000)")
    serve.add_argument("--dev", action="store_true", help="Flask development server instead of gunicorn")
    serve.add_argument(
        "--insecure-no-auth", action="store_true", help="allow a non-loopback --bind with no API key configured"
    )
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
    flags = {
        "workspace": args.workspace,
        "encoder": args.encoder,
        "bind": args.bind,
        "insecure_no_auth": True if args.insecure_no_auth else None,
    }
    return merge(cfg, {k: v for k, v in flags.items() if v is not None}, "command line")


LOOPBACK = ("127.", "localhost", "[::1]", "::1", "unix:")


def check_bind(bind: str, has_keys: bool, insecure: bool) -> str | None:
    """Why `bind` may not be served as configured (None when it may): a non-loopback address needs API keys."""
    if has_keys or insecure or bind.startswith(LOOPBACK):
        return None
    return (
        f"refusing to serve on {bind} with no API key: anyone who can reach it could use the API. Set keys in "
        "$FTH_API_KEYS (or api_keys_env / api_keys_file), bind to 127.0.0.1, or pass --insecure-no-auth"
    )


def _serve(args: argparse.Namespace) -> int:
    from server.auth import load_keys

    cfg = serve_config(args)
    problem = check_bind(cfg.bind, bool(load_keys(cfg.api_keys_env, cfg.api_keys_file)), cfg.insecure_no_auth)
    if problem:
        print(f"fth serve: {problem}", file=sys.stderr)
        return 2
    if args.dev:
        from server.app import create_app

        host, _, port = cfg.bind.rpartition(":")
        create_app(cfg).run(host=host or "127.0.0.1", port=int(port), threaded=True)
        return 0
    with _metrics_dir():
        from server.gunicorn_app import GunicornApp

        log.info("gunicorn on %s: %d worker(s) x %d threads", cfg.bind, cfg.workers, cfg.threads)
        GunicornApp(cfg).run()
    return 0


@contextlib.contextmanager
def _metrics_dir():
    """A fresh `PROMETHEUS_MULTIPROC_DIR` for the workers' metric files (set before anything imports the client);
    a folder given in the environment is emptied first, as prometheus_client asks."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield
        return
    with tempfile.TemporaryDirectory(prefix="fth-metrics-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


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
