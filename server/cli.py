"""`fth serve` (the embedding service) and `fth embed` (batch embedding into the store).

`fth serve` runs gunicorn in-process (`server.gunicorn_app`: one model per worker process, nothing loaded in the
master); `--dev` runs the Flask development server instead. A non-loopback `--bind` with no API key configured is
refused unless `--insecure-no-auth` is given. `fth serve promote / rollback / reload` change the served set
(`store.release`) and switch the running servers of the workspace to it without a failed request (`server.swap`).
No torch import happens until a handler runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
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
    actions = serve.add_subparsers(dest="serve_action", metavar="[ACTION]")
    promote = actions.add_parser(
        "promote", help="serve ENCODER and HEADS from now on: record the set, switch running servers (no downtime)"
    )
    promote.add_argument("--encoder", required=True, help="encoder id (or unique id prefix) to serve")
    promote.add_argument(
        "--heads",
        default=None,
        help="comma-separated head ids to serve with it (default: every registered head that loads on it); '' for none",
    )
    promote.add_argument("--note", default="", help="why (kept in release.json)")
    rollback = actions.add_parser("rollback", help="serve the previous set again, switching running servers")
    reload = actions.add_parser("reload", help="switch running servers to the set release.json names now")
    status = actions.add_parser("status", help="the served set, the sets rollback returns to, running servers")
    for action in (promote, rollback, reload, status):
        action.add_argument(
            "--workspace", default=argparse.SUPPRESS, help="workspace folder (default: $FTH_WORKSPACE or ./workspace)"
        )
    for action in (promote, rollback, reload):
        action.add_argument(
            "--wait", type=float, default=120.0, help="seconds to wait for each server to switch (0: do not wait)"
        )
    promote.set_defaults(func=_promote)
    rollback.set_defaults(func=_rollback)
    reload.set_defaults(func=_reload)
    status.set_defaults(func=_status)

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


def _servable(ws, encoder: str, heads: list[str] | None) -> tuple[str, list[str]]:
    """Load the set here, as a worker will (so a swap never forks workers that cannot start): (encoder id, head ids).
    `heads` None: every registered head that loads on the encoder."""
    from encoder.checkpoint import load_encoder
    from heads.artifact import load_heads
    from store.artifacts import Registry

    registry = Registry(ws.artifacts)
    _, card = load_encoder(encoder, registry)
    loaded = load_heads(registry, card.id, heads or [], auto=heads is None)
    return card.id, heads if heads is not None else [h.id for h in loaded.values()]


def _switch(ws, encoder: str, wait: float, what: str) -> int:
    """Switch every running server of `ws` to the recorded set; 0 when none runs (the next `fth serve` serves it)."""
    from server.swap import running, signal_swap, wait_swapped

    servers = running(ws)
    if not servers:
        print(f"no fth serve is running on {ws.root}; the next one serves {what}")
        return 0
    for server in servers:
        old = signal_swap(server)
        if wait <= 0:
            print(f"asked the server on {server.bind} (pid {server.pid}) to switch to {what}")
            continue
        try:
            seconds = wait_swapped(server, old, encoder, wait)
        except (TimeoutError, RuntimeError) as e:
            print(f"fth serve: {e}", file=sys.stderr)
            return 1
        print(f"server on {server.bind} (pid {server.pid}) serves {what} (switched in {seconds:.1f} s)")
    return 0


def _action_ws(args: argparse.Namespace):
    from store.paths import Workspace

    return Workspace.at(getattr(args, "workspace", None))


def _promote(args: argparse.Namespace) -> int:
    from store.artifacts import ArtifactError
    from store.release import ReleaseError, promote

    ws = _action_ws(args)
    heads = None if args.heads is None else [h.strip() for h in args.heads.split(",") if h.strip()]
    try:
        encoder, head_ids = _servable(ws, args.encoder, heads)
        release = promote(ws, encoder, head_ids, args.note)
    except (ArtifactError, ReleaseError, ValueError) as e:
        print(f"fth serve promote: {e}", file=sys.stderr)
        return 2
    print(f"release: {release.describe()}")
    return _switch(ws, release.encoder, args.wait, release.encoder)


def _rollback(args: argparse.Namespace) -> int:
    from store.artifacts import ArtifactError
    from store.release import ReleaseError, history, rollback

    ws = _action_ws(args)
    try:
        earlier = history(ws)
        if earlier:  # the set to return to must still load (an artifact may have been deleted since)
            _servable(ws, earlier[-1].encoder, earlier[-1].heads)
        release = rollback(ws)
    except (ArtifactError, ReleaseError, ValueError) as e:
        print(f"fth serve rollback: {e}", file=sys.stderr)
        return 1
    print(f"release: {release.describe()}")
    return _switch(ws, release.encoder, args.wait, release.encoder)


def _reload(args: argparse.Namespace) -> int:
    from server.swap import running
    from store.artifacts import ArtifactError, Registry
    from store.release import ReleaseError, served

    ws = _action_ws(args)
    if not running(ws):
        print(f"fth serve reload: no fth serve is running on {ws.root} (none recorded in {ws.root / 'serve'})",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        encoder, _ = served(ws, Registry(ws.artifacts))
    except (ReleaseError, ArtifactError) as e:
        print(f"fth serve reload: {e}", file=sys.stderr)
        return 1
    return _switch(ws, encoder, args.wait, encoder)


def _status(args: argparse.Namespace) -> int:
    from server.swap import running
    from store.release import current, history

    ws = _action_ws(args)
    release = current(ws)
    print(f"serving: {release.describe() if release else 'no release (fth serve picks the newest encoder)'}")
    for i, earlier in enumerate(reversed(history(ws)), 1):
        print(f"rollback {i}: {earlier.describe()}  (from {earlier.at})")
    for server in running(ws):
        print(f"running: {server.bind} (pid {server.pid}, {server.workers} worker(s))")
    return 0


@contextlib.contextmanager
def _metrics_dir():
    """A fresh `PROMETHEUS_MULTIPROC_DIR` for the workers' metric files (set before anything imports the client),
    removed when the master exits; a folder given in the environment is emptied first, as prometheus_client asks."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield
        return
    folder, owner = tempfile.mkdtemp(prefix="fth-metrics-"), os.getpid()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        # A gunicorn worker leaves through this frame too (it is a fork of the master's stack): only the master
        # removes the folder, or the first worker to exit (a swap, a restart) takes every other worker's files.
        if os.getpid() == owner:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            shutil.rmtree(folder, ignore_errors=True)


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
