"""The `fth` command line: one subcommand per job, each registered by its package's `cli` module.

A package's `cli` module defines `register(subparsers)`, adding its subcommands with `set_defaults(func=...)`.
Those modules import nothing heavy at import time (no torch), so `fth --help` stays fast; the handlers
import what they need when they run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from fth.config import ConfigError

# Each module here adds its subcommands; a module that does not exist yet is skipped.
# fth.model_init adds `init` to encoder.cli's `fth model`, so it comes after it; fth.label_studio_cli adds `push` and
# `pull` to fth.label_cli's `fth label`.
CLI_MODULES = (
    "store.cli", "collector.cli", "encoder.cli", "server.cli", "fth.heads_cli", "fth.demo", "fth.drift",
    "fth.model_init", "fth.eval", "fth.update", "fth.label_cli", "fth.label_studio_cli",
)  # fmt: skip


def add_config_args(parser: argparse.ArgumentParser, default: str | None = None, shown: str | None = None) -> None:
    """The `--config FILE` and repeatable `--set key=value` flags every configurable command takes.

    Args:
        default: the preset used when `--config` is absent.  shown: how help describes the default, when it is
            chosen later (e.g. by task).
    """
    shown = shown or default or "built-in defaults"
    parser.add_argument("--config", default=default, help=f"YAML file or preset name in configs/ (default: {shown})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set model.encoder.depth=2 (repeatable; value parsed as YAML)",
    )


def subcommand_actions(sub: argparse._SubParsersAction, name: str) -> argparse._SubParsersAction | None:
    """The ACTION subparsers of command `name` (e.g. `fth model`, `fth frames`), for a later module to add an action to
    a command another package registers; None when that command is not there."""
    cmd = sub.choices.get(name)
    if cmd is None:
        return None
    return next((a for a in cmd._actions if isinstance(a, argparse._SubParsersAction)), None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fth", description="Livestream frames -> self-supervised encoder -> tiny task heads, served over HTTP."
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in CLI_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"fth: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
