"""Training configs for MAE pretraining (`fth train`, `torchrun -m encoder.train`).

`TrainConfig` nests the model (`MAEConfig`, so `model: tiny` loads `configs/tiny.yaml`), the data, the optimiser,
checkpointing and logging. Presets: `configs/mae_tiny.yaml` (CPU smoke run), `configs/mae_seed.yaml` (the reference
576x960 model on a GPU node). Batch sizes are per rank and per micro-step: the effective batch is
`batch_size x accum_steps x world_size`, and the peak learning rate is `base_lr x effective_batch / 256`
(Goyal et al. 2017, the linear scaling rule MAE uses).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Literal

from encoder.config import MAEConfig
from fth.config import build


@dataclass
class DataConfig:
    """Where frames come from and how they are augmented.

    Args:
        source: `catalog` (frames of the workspace catalog, filtered below) or `shards` (WebDataset tars written by
            `fth shards export`; every rank streams its own part).
        workspace: workspace folder holding the catalog and frames (default: `$FTH_WORKSPACE` or ./workspace).
        sources: catalog source ids to train on (empty: all).
        since, until: UTC ISO times bounding `captured_at` (since inclusive, until exclusive); empty: unbounded.
        replay_fraction: share of each epoch's samples drawn from frames captured before `since` (same sources and
            flags), for continued pretraining (`fth train --init`) that should not forget the older scenes: 0 = none,
            0.3 = 30%. An epoch is then the window's frames plus round(n x f / (1 - f)) older ones, drawn afresh each
            epoch without replacement (with replacement when fewer exist) from (seed, epoch): same seed, same draws.
            Needs `since` and `source: catalog`.
        include_duplicates, include_stale: keep frames the collector marked as near-duplicates / frozen-stream.
        shards: folder of `*.tar` shards and their `index.json` (source `shards`).
        crop_scale: random resized crop area fraction range.
        crop_ratio: range of the crop's aspect ratio relative to the target's (sampled log-uniformly).
        hflip: flip horizontally with probability 1/2.
        decode: where JPEGs are decoded, cropped, resized and flipped: `pil` (in the loader workers), `device` (on the
            training device, batched: nvJPEG on CUDA), or `auto` (`device` on CUDA, `pil` on CPU). Same random
            choices either way (`encoder.data.draw_sample`).
        num_workers: DataLoader worker processes per rank; -1: the cores per local rank less one.
        persistent_workers: keep workers alive across epochs (no re-fork stall at each epoch start).
        prefetch_factor: batches each worker prepares ahead.  pin_memory: pin host batches (CUDA only).
        max_skip: how many following frames to try in place of a corrupt or missing one before giving up.
    """

    source: Literal["catalog", "shards"] = "catalog"
    workspace: str | None = None
    sources: list[str] = field(default_factory=list)
    since: str | None = None
    until: str | None = None
    include_duplicates: bool = False
    include_stale: bool = False
    shards: str | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    hflip: bool = True
    decode: Literal["auto", "pil", "device"] = "auto"
    num_workers: int = -1
    persistent_workers: bool = True
    prefetch_factor: int = 4
    pin_memory: bool = True
    max_skip: int = 16
    replay_fraction: float = 0.0


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay, stepped per optimiser step.

    Args:
        base_lr: learning rate per 256 images of effective batch.
        min_lr: floor of the cosine (absolute).
        weight_decay: decoupled decay on weights; biases, norms, position embeddings and tokens get none.
        betas: AdamW betas (MAE uses 0.9, 0.95).
        warmup_steps: linear warmup length in optimiser steps (`warmup_epochs` used when this is 0).
        warmup_epochs: warmup length in epochs.
        clip_grad: max global grad norm; 0 disables clipping (the norm is still logged).
    """

    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    warmup_epochs: float = 1.0
    clip_grad: float = 0.0


@dataclass
class TrainConfig:
    """One MAE pretraining run.

    Args:
        model: the MAE (a preset name such as `tiny` or `seed`, or a mapping).
        data, optim: see `DataConfig`, `OptimConfig`.
        batch_size: images per rank per micro-step.  accum_steps: micro-steps per optimiser step.
        epochs: passes over the data; `max_steps` > 0 stops earlier (or later: epochs are then extended).
        seed: drives init, data order, augmentation and masks; same seed + data = same run.
        precision: `auto` (bf16 autocast on CUDA, fp32 on CPU), `fp32`, `bf16`, or `fp16` (autocast + GradScaler).
        tf32: allow TF32 matmuls on CUDA.  compile: wrap the model in `torch.compile` (`compile_mode`: its mode, e.g.
            `max-autotune`; empty for the default).
        max_nonfinite: stop after this many consecutive non-finite losses (each one skips its step).
        name: run name; the run folder is `run_dir` or `<workspace>/runs/<name>`.
        resume: `auto` (latest checkpoint of the run folder, if any), `none`, or a checkpoint path.
        ckpt_every: checkpoint every N optimiser steps (0: only at the end).  ckpt_keep: newest K kept.
        log_every: scalars every N steps.  panel_every: PNG panel every N steps (0: never).
        tensorboard: write TensorBoard scalars.  wandb: log to Weights & Biases when installed and configured.
        progress: tqdm progress bar on rank 0.
        register: register the encoder (no decoder) in the workspace artifact registry at the end.
        init: warm start (continued pretraining): a registered encoder id (or unique prefix, or artifact folder)
            whose weights start the encoder, every one, strictly (another architecture is an error naming the
            parameter); the decoder too, from the parent's run checkpoint when that is still there (else it starts
            fresh, with a warning). The optimiser and learning-rate schedule start fresh. The new card names the
            parent (`parents.init`) and its frame digest (`parents.init_data`). Empty: random init. A run that
            resumes from its own checkpoint resumes; `init` only sets where it started.
        step_delay: seconds to sleep after each step (tests use it to kill a run mid-epoch); 0 in real runs.
    """

    model: MAEConfig = field(default_factory=MAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 64
    accum_steps: int = 1
    epochs: int = 100
    max_steps: int = 0
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    tf32: bool = True
    compile: bool = False
    compile_mode: str = ""
    max_nonfinite: int = 5
    name: str = "mae"
    run_dir: str | None = None
    resume: str = "auto"
    ckpt_every: int = 1000
    ckpt_keep: int = 3
    log_every: int = 10
    panel_every: int = 1000
    tensorboard: bool = True
    wandb: bool = True
    progress: bool = True
    register: bool = True
    init: str = ""
    step_delay: float = 0.0


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `fth train` and `python -m encoder.train` (torch-free, for the CLI)."""
    from fth.cli import add_config_args

    add_config_args(parser, default="mae_tiny")
    parser.add_argument("--resume", default=None, help="auto (latest checkpoint of the run, if any), none, or a path")
    parser.add_argument("--workspace", default=None, help="workspace folder (default: $FTH_WORKSPACE or ./workspace)")
    parser.add_argument(
        "--init",
        default=None,
        metavar="ENCODER",
        help="continue pretraining from this registered encoder (and its run's decoder when available)",
    )
    parser.add_argument("--since", default=None, help="train on frames captured at or after this UTC ISO time")
    parser.add_argument("--until", default=None, help="... and before this one")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """`--config`, then `--set` overrides, then `--resume` / `--workspace` / `--init`."""
    overrides = list(args.overrides)
    # quoted: YAML would read a bare ISO time as a datetime, and an id of digits as a number
    for key, value in (("init", args.init), ("data.since", args.since), ("data.until", args.until)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.resume is not None:
        overrides.append(f"resume={args.resume}")
    if args.workspace is not None:
        overrides.append(f"data.workspace={args.workspace}")
    return build(TrainConfig, args.config, overrides)
