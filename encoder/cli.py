"""`fth model` (presets, registered encoders), `fth train` (MAE pretraining), `fth shards export` (WebDataset tars).

No torch import until a handler runs."""

from __future__ import annotations

import argparse
import json
import sys

from encoder.train_config import add_train_args
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

    train = sub.add_parser("train", help="MAE pretraining in one process (torchrun -m encoder.train for DDP)")
    add_train_args(train)
    train.set_defaults(func=_train)

    shards = sub.add_parser("shards", help="WebDataset tar shards of the frame catalog")
    shards_sub = shards.add_subparsers(dest="shards_command", metavar="ACTION", required=True)
    export = shards_sub.add_parser("export", help="write catalog frames as shuffled tar shards + index.json")
    export.add_argument("out", help="folder to write the shards into, or s3://bucket/prefix (the workspace's endpoint)")
    export.add_argument("--workspace", default=None, help="workspace folder (default: $FTH_WORKSPACE or ./workspace)")
    export.add_argument("--source", action="append", default=[], help="catalog source id (repeatable; default all)")
    export.add_argument("--since", default=None, help="UTC ISO time, inclusive")
    export.add_argument("--until", default=None, help="UTC ISO time, exclusive")
    export.add_argument("--per-shard", type=int, default=1000, help="frames per shard (default 1000)")
    export.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    export.add_argument("--include-duplicates", action="store_true", help="keep near-duplicate frames")
    export.add_argument("--include-stale", action="store_true", help="keep frozen-stream frames")
    export.add_argument(
        "--size",
        type=_size,
        default=None,
        metavar="HxW",
        help="store frames re-encoded at training resolution: scaled (aspect kept) to cover HxW, e.g. 576x960 "
        "(default: the original bytes)",
    )
    export.add_argument("--quality", type=int, default=90, help="JPEG quality with --size (default 90)")
    export.set_defaults(func=_shards_export)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 576x960") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return h, w


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


def _train(args: argparse.Namespace) -> int:
    from encoder.engine import NonFiniteLoss
    from encoder.train import main
    from encoder.train_config import config_from_args

    try:
        summary = main(config_from_args(args))
    except NonFiniteLoss as e:
        print(f"fth train: {e}", file=sys.stderr)
        return 1
    print(f"steps {summary['steps']}  final loss {summary['final_loss']}  skipped frames {summary['skipped_frames']}")
    if summary.get("encoder"):
        print(f"encoder {summary['encoder']}  run {summary['run']}")
    return 0


def _shards_export(args: argparse.Namespace) -> int:
    from encoder.data import catalog_records
    from encoder.shards import export_shards
    from encoder.train_config import DataConfig

    cfg = DataConfig(
        workspace=args.workspace,
        sources=args.source,
        since=args.since,
        until=args.until,
        include_duplicates=args.include_duplicates,
        include_stale=args.include_stale,
    )
    if not 1 <= args.quality <= 100:
        print("fth shards export: --quality must be in 1..100", file=sys.stderr)
        return 2
    index = export_shards(
        catalog_records(cfg), args.out, args.per_shard, args.seed, args.size, args.quality, workspace=args.workspace
    )
    at = f" at {args.size[0]}x{args.size[1]} (cover, q{args.quality})" if args.size else ""
    print(f"{index['count']} frames in {len(index['shards'])} shards{at} -> {args.out}  ({index['digest']})")
    if index["missing"]:
        print(f"{index['missing']} catalog frames had no file and were left out")
    if index["unreadable"]:
        print(f"{index['unreadable']} catalog frames did not decode and were left out")
    return 0
