"""`fth model`: inspect model presets and registered encoders (no torch import until a handler runs)."""

from __future__ import annotations

import argparse
import json

from fth.cli import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="inspect model presets and registered encoders")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    info = model_sub.add_parser("info", help="parameter counts and token grid of an MAE config")
    add_config_args(info, default="tiny")
    info.set_defaults(func=_info)

    ls = model_sub.add_parser("list", help="registered encoders in the workspace")
    ls.add_argument("--workspace", default=None, help="workspace folder (default: $FTH_WORKSPACE or ./workspace)")
    ls.set_defaults(func=_list)


def _info(args: argparse.Namespace) -> int:
    from encoder.config import MAEConfig
    from encoder.mae import MAE
    from fth.config import build, to_dict

    cfg = build(MAEConfig, args.config, args.overrides)
    mae = MAE(cfg)
    enc = sum(p.numel() for p in mae.encoder.parameters())
    total = sum(p.numel() for p in mae.parameters())
    gh, gw = mae.encoder.base_grid
    visible = int(gh * gw * (1 - cfg.mask_ratio))
    print(f"input {cfg.encoder.img_size[0]}x{cfg.encoder.img_size[1]}, patch {cfg.encoder.patch_size}: grid {gh}x{gw}")
    print(f"tokens: {gh * gw} patches (+cls); {visible} visible at mask ratio {cfg.mask_ratio}")
    print(f"encoder {enc / 1e6:.2f}M params, decoder {(total - enc) / 1e6:.2f}M params")
    print(json.dumps(to_dict(cfg), indent=2))
    return 0


def _list(args: argparse.Namespace) -> int:
    from store.artifacts import Registry
    from store.paths import Workspace

    for card in Registry(Workspace.at(args.workspace).artifacts).list("encoder"):
        enc = card.config["encoder"]
        print(
            f"{card.id}  {card.created}  {enc['img_size'][0]}x{enc['img_size'][1]} dim={enc['dim']} "
            f"depth={enc['depth']}  {card.name or ''}"
        )
    return 0
