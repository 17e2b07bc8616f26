"""`fth model init --like ENCODER`: the same architecture at random init (seeded), registered as an encoder.

The yardstick `fth eval` compares every encoder against: what its heads reach with no pretraining at all. The card
names the encoder whose config it copies (`parents.like`), the seed, and says it is a random init; the id is a
content hash, so the same ENCODER and seed always give the same registered artifact. Being a plain registered encoder,
it can be served, embedded and fitted on like any other.

It adds `init` to `fth model` (registered by encoder.cli, which is loaded first in `fth.cli.CLI_MODULES`).
"""

from __future__ import annotations

import argparse
import sys

from fth.cli import subcommand_actions

WS_HELP = "workspace folder (default: $FTH_WORKSPACE or ./workspace)"


def register(sub: argparse._SubParsersAction) -> None:
    actions = subcommand_actions(sub, "model")
    if actions is None:  # `fth model` is not there (encoder.cli missing): nothing to add to
        return
    p = actions.add_parser("init", help="register ENCODER's architecture at random init (seeded)")
    p.add_argument("--like", required=True, metavar="ENCODER", help="encoder id whose config is copied")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the initialisation (default 0)")
    p.add_argument("--name", help="artifact name (default: random-init-of-<ENCODER name or id>-s<seed>)")
    p.add_argument("--workspace", default=None, help=WS_HELP)
    p.set_defaults(func=cmd_init)


def random_init_like(registry, like: str, seed: int = 0, name: str | None = None):
    """Build `like`'s architecture with seeded random weights and register it; returns its card."""
    import torch

    from encoder.checkpoint import KIND, save_encoder
    from encoder.config import ViTConfig
    from encoder.vit import ViT
    from fth.config import from_dict

    card = registry.card(like, KIND, "--like")
    cfg = from_dict(ViTConfig, card.config["encoder"], source=f"{card.path}/card.json")
    torch.manual_seed(seed)
    model = ViT(cfg).eval()
    parents = {"like": card.id, "init": "random", "seed": seed}
    metrics = {"note": f"random init (torch seed {seed}) of the config of {card.id}; never trained"}
    return save_encoder(model, registry, parents, metrics, name or f"random-init-of-{card.name or card.id}-s{seed}")


def cmd_init(args: argparse.Namespace) -> int:
    from store.artifacts import ArtifactError, Registry
    from store.paths import Workspace

    try:
        card = random_init_like(Registry(Workspace.at(args.workspace).artifacts), args.like, args.seed, args.name)
    except ArtifactError as e:
        print(f"fth model init: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"registered {card.name}: random init (seed {args.seed}) of {card.parents['like']}'s architecture")
    print(f"encoder: {card.id}")
    return 0
