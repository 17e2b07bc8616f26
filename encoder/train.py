"""MAE pretraining entry point: `fth train` in one process, `torchrun ... -m encoder.train` for DDP, same config.

`main(cfg)` wires the pieces: process group (NCCL on GPU, gloo on CPU, from torchrun's environment), data (catalog
frames or WebDataset shards), model (optionally DDP and `torch.compile`), optimiser, the `Trainer` loop, logging
sinks on rank 0 (TensorBoard, W&B when installed and configured, tqdm, PNG panels, metrics.jsonl), run lineage
(resolved config, git commit, frame-set digest, versions, world size) and, at the end, the encoder registered in
the artifact registry without its decoder.

Continued pretraining (`fth train --init ENCODER`): the MAE starts from a registered encoder (and its run's decoder,
`encoder.checkpoint.warm_start`) with a fresh optimiser and schedule, typically on a window of new frames
(`data.since`) with a replay share of older ones (`data.replay_fraction`); its card names the parent.

Run folder (`<workspace>/runs/<name>` or `run_dir`): config.yaml, lineage.json, metrics.jsonl, checkpoints/,
panels/, tb/, summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from PIL import Image

from encoder.attention import bind_crossover
from encoder.checkpoint import load_resume, warm_start
from encoder.engine import NonFiniteLoss, Trainer
from encoder.mae import MAE, patchify, unpatchify
from encoder.optim import build_optimizer, peak_lr, warmup_steps
from encoder.preprocess import normalize
from encoder.train_config import TrainConfig, add_train_args, config_from_args
from fth.config import ConfigError, to_dict
from store.paths import Workspace

log = logging.getLogger("encoder.train")
REPO = Path(__file__).resolve().parent.parent


# -- rank-0 reporting ---------------------------------------------------------------------------------------------


class NullSink:
    """What ranks other than 0 report to."""

    def start(self, step: int, total: int) -> None: ...

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def panel(self, step: int, mae: MAE, batch: dict[str, Any]) -> None: ...

    def progress(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class RunSink(NullSink):
    """Rank 0's reporting: metrics.jsonl, TensorBoard, W&B (installed and configured only), tqdm, PNG panels.

    Args:
        cfg: the run config (which sinks are on).  run_dir: the run folder.  device: where panels are computed.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, device: torch.device):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.tb = self.wandb = self.bar = None
        self.metrics_file = None

    def start(self, step: int, total: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (open for the whole run)
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=step or None)
            except ImportError as e:
                log.warning("TensorBoard scalars off: %s", e)
        if self.cfg.wandb and wandb_configured():
            import wandb

            run_id = self.run_dir / "wandb_id"
            if not run_id.is_file():
                run_id.write_text(wandb.util.generate_id())
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "fth"),
                name=self.cfg.name,
                id=run_id.read_text().strip(),
                resume="allow",
                dir=str(self.run_dir),
                config=to_dict(self.cfg),
            )
        if self.cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=step, desc=self.cfg.name, unit="step", dynamic_ncols=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.metrics_file.write(json.dumps({"step": step, **values}) + "\n")
        self.metrics_file.flush()
        for key, value in values.items():
            if self.tb is not None:
                self.tb.add_scalar(f"train/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in values.items()}, step=step)
        if self.bar is None:
            log.info(
                "step %d: loss %.4f lr %.3g %.1f img/s", step, values["loss"], values["lr"], values["images_per_s"]
            )

    def progress(self, step: int, values: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{values['loss']:.4f}",
                lr=f"{values['lr']:.2e}",
                ips=f"{values['images_per_s']:.1f}",
                refresh=False,
            )

    def panel(self, step: int, mae: MAE, batch: dict[str, Any]) -> None:
        folder = self.run_dir / "panels"
        folder.mkdir(parents=True, exist_ok=True)
        render_panel(mae, batch, self.device).save(folder / f"step-{step:08d}.png")
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        for thing in (self.bar, self.tb, self.metrics_file):
            if thing is not None:
                thing.close()
        if self.wandb is not None:
            self.wandb.finish()


def wandb_configured() -> bool:
    """W&B is used only when the package is importable and an API key, netrc entry or offline mode is set up."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        return False
    netrc = Path.home() / ".netrc"
    return bool(
        os.environ.get("WANDB_API_KEY")
        or os.environ.get("WANDB_MODE") in ("offline", "online")
        or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    )


@torch.no_grad()
def render_panel(mae: MAE, batch: dict[str, Any], device: torch.device, n: int = 4) -> Image.Image:
    """Up to `n` rows of original | masked | reconstruction (visible patches pasted back), as in the MAE paper."""
    enc = mae.cfg.encoder
    was_training = mae.training
    mae.eval()
    imgs = normalize(batch["image"][:n].to(device), enc)  # (B, 3, H, W)
    out = mae(imgs, noise=batch["noise"][:n].to(device))
    mae.train(was_training)
    p, grid = enc.patch_size, (imgs.shape[-2] // enc.patch_size, imgs.shape[-1] // enc.patch_size)
    target = patchify(imgs, p)  # (B, N, P)
    pred = out.pred.float()
    if mae.cfg.norm_pix_loss:  # undo the per-patch normalisation with the true patch statistics
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    hidden = out.mask[..., None].bool()  # (B, N, 1)
    masked = unpatchify(target.masked_fill(hidden, 0.0), p, grid)
    recon = unpatchify(torch.where(hidden, pred, target), p, grid)
    mean = torch.tensor(enc.pixel_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(enc.pixel_std, device=device).view(1, 3, 1, 1)
    rows = [torch.cat([x * std + mean for x in (imgs, masked, recon)], dim=-1)]  # (B, 3, H, 3W)
    panel = torch.cat(list(rows[0]), dim=-2).clamp(0, 1)  # (3, B*H, 3W)
    return Image.fromarray((panel.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))


def setup_distributed() -> tuple[int, int, int]:
    """(world, rank, local rank) from torchrun's environment; initialises the process group when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return world, rank, local


def pick_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def build_data(cfg: TrainConfig, world: int, rank: int, device: torch.device):
    """The rank's `TrainData`: catalog frames or shards, per `cfg.data.source`."""
    h, w = cfg.model.encoder.img_size
    p = cfg.model.encoder.patch_size
    num_patches = (h // p) * (w // p)
    if cfg.data.source == "shards":
        from encoder.shards import shard_data

        if not cfg.data.shards:
            raise ValueError("data.source is shards but data.shards (the shard folder) is not set")
        args = (cfg.data.shards, (h, w), num_patches, cfg.data, cfg.seed, cfg.batch_size, world, rank, device.type)
        data = shard_data(*args)
        return data, data.dataset.index["count"]
    from encoder.data import FrameData, catalog_records, replay_records

    if cfg.data.replay_fraction and cfg.data.source == "shards":
        from fth.config import ConfigError

        raise ConfigError("data.replay_fraction needs data.source catalog (replay draws from catalog frames)")
    records = catalog_records(cfg.data)
    replay = replay_records(cfg.data) if cfg.data.replay_fraction else []
    args = (records, (h, w), num_patches, cfg.data, cfg.seed, cfg.batch_size, world, rank, device.type)
    data = FrameData(*args, replay=replay)
    if replay:
        log.info(
            "replay: %d of %d samples per epoch from %d frames before %s (%s)",
            data.dataset.draw.count, len(data.dataset), len(replay), cfg.data.since, data.digests["replay"],
        )  # fmt: skip
    return data, len(data.dataset)


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_lineage(
    run_dir: Path, cfg: TrainConfig, digest: str, frames: int, world: int, step: int, init: dict | None = None
) -> dict:
    """Resolved config and lineage; each (re)start appends to lineage.json's `starts`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    path = run_dir / "lineage.json"
    lineage = json.loads(path.read_text()) if path.is_file() else {"starts": []}
    lineage |= {"data_digest": digest, "frames": frames, "git_commit": git_commit(), "name": cfg.name}
    if init:
        lineage["init"] = init
    lineage["starts"].append(
        {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "step": step,
            "world_size": world,
            "git_commit": lineage["git_commit"],
            "torch": torch.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "argv": sys.argv,
        }
    )
    path.write_text(json.dumps(lineage, indent=2) + "\n")
    return lineage


def main(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) one pretraining run; returns the summary (also written to summary.json on rank 0)."""
    world, rank, local = setup_distributed()
    device = pick_device(local)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda" and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ws = Workspace.at(cfg.data.workspace)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else ws.runs / cfg.name

    data, frames = build_data(cfg, world, rank, device)
    mae = MAE(cfg.model)
    init = None
    if cfg.init:
        from store.artifacts import Registry

        init = warm_start(mae, cfg.init, Registry(ws.artifacts), device="cpu")
        decoder = init["decoder"] or f"fresh ({init['decoder_note']})"
        log.info("warm start from %s: every encoder weight; decoder %s; optimiser and lr schedule start fresh",
                 init["encoder"], decoder)  # fmt: skip
    mae = mae.to(device)
    bind_crossover(mae, device)
    model: torch.nn.Module = mae
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(mae, device_ids=[local] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model, mode=cfg.compile_mode or None)
    effective = cfg.batch_size * cfg.accum_steps * world
    lr = peak_lr(cfg.optim, effective)
    optimizer = build_optimizer(mae, cfg.optim, lr, device)
    steps_per_epoch = max(1, data.batches_per_epoch() // cfg.accum_steps)
    warmup = warmup_steps(cfg.optim, steps_per_epoch)
    sink = RunSink(cfg, run_dir, device) if rank == 0 else NullSink()
    trainer = Trainer(cfg, mae, model, optimizer, data, device, lr, warmup, run_dir, sink)

    state, start = load_resume(cfg.resume, run_dir, device)
    if state is not None:
        trainer.load_state_dict(state)
        log.info("resumed from %s at step %d", start, trainer.step)
    if rank == 0:
        write_lineage(run_dir, cfg, data.digest, frames, world, trainer.step, init)
        log.info(
            "run %s: %d frames (%s), world %d, effective batch %d, peak lr %.3g, %d steps (%d per epoch), %s, "
            "decode on %s",
            run_dir, frames, data.digest, world, effective, lr, trainer.total_steps, steps_per_epoch, device,
            data.decode,
        )  # fmt: skip
    sink.start(trainer.step, trainer.total_steps)
    try:
        summary = trainer.fit()
    finally:
        sink.close()
    summary |= {"run": str(run_dir), "data_digest": data.digest, "world_size": world, "effective_batch": effective}
    if init:
        summary["init"] = init
    if rank == 0:
        if cfg.register:
            summary["encoder"] = register(cfg, mae, run_dir, data, summary, init)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info(
            "done: %d steps, final loss %s, %d frames skipped",
            summary["steps"],
            summary["final_loss"],
            summary["skipped_frames"],
        )
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return summary


def register(cfg: TrainConfig, mae: MAE, run_dir: Path, data, summary: dict[str, Any], init: dict | None = None) -> str:
    """Register the encoder (no decoder) with a card naming the run and the frame set it trained on (`data`: every
    frame it may read). A continued run's card also names its parent encoder (`init`) and the parent's frames
    (`init_data`), the window (`since`, `until`) and, with replay, the replay share and the two parts' digests."""
    from encoder.checkpoint import save_encoder
    from store.artifacts import Registry

    parents = {"run": run_dir.name, "run_dir": str(run_dir.resolve()), "data": data.digest, "git_commit": git_commit()}
    if init:
        parents |= {"init": init["encoder"], "init_data": init["encoder_data"], "init_decoder": bool(init["decoder"])}
        parents |= {"since": cfg.data.since, "until": cfg.data.until}
    if cfg.data.replay_fraction:
        parents |= {"replay_fraction": cfg.data.replay_fraction, "data_parts": getattr(data, "digests", {})}
    metrics = {
        "final_loss": summary["final_loss"],
        "steps": summary["steps"],
        "skipped_frames": summary["skipped_frames"],
    }
    registry = Registry(Workspace.at(cfg.data.workspace).artifacts)
    card = save_encoder(mae.encoder, registry, parents, metrics, name=cfg.name)
    log.info("registered %s (%s)", card.id, card.path)
    return card.id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="encoder.train", description="MAE pretraining (run under torchrun for DDP)")
    add_train_args(parser)
    return parser.parse_args(argv)


def cli_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    try:
        main(config_from_args(args))
    except NonFiniteLoss as e:
        log.error("%s", e)
        return 1
    except ConfigError as e:
        print(f"encoder.train: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
