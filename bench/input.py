"""Benchmark: the training input path per CPU core, against what one GPU consumes, and the per-epoch worker stall.

Per-core throughput (one thread; images/s) of read + decode + random resized crop + flip + mask noise + collate,
through the real datasets (`encoder.data.FrameDataset` on frame files, `encoder.shards.ShardDataset` on shards):
- `1080p/pil`: 1920x1080 JPEG files as the collector stores them (quality 90), decoded in the worker by PIL (today).
- `1080p/tv-cpu`: the same through the `device` path run on CPU: the worker reads bytes + header, then
  `encoder.decode.device_images` decodes (torchvision.io, libjpeg-turbo) and crops on the CPU.
- `1080p/worker-only`: only the worker half of the `device` path: what a CPU core still does per image when the GPU
  decodes (nvJPEG).
- `shards-576/...`: the same three on shards written by `fth shards export --size 576x960 --quality 90`
  (576x1024 frames).
PIL's `Image.draft` (reduced-size JPEG decode) is not a case: it scales by 1/2, 1/4 or 1/8 only, and the training
crops (0.2-1.0 of the area of a 1080p frame, resized to 960 wide) need full resolution except the widest ones.

GPU demand: images/s one GPU consumes at 40% of its dense bf16 peak for the seed preset, by `bench/train.py`'s FLOP
model; "cores per GPU" = demand / per-core images/s for each path. The GPU side of the `device` path (nvJPEG decode
+ crop on the GPU) is not measured here: `bench/gpu.py` does that on a GPU.

Epoch stall: how long the training loop waits for the first batch of each epoch after the first, with 2 workers and
a simulated training step (`--step-ms` per batch, enough for the workers to keep up inside an epoch): `refork`
(a new DataLoader per epoch: the old behaviour), `persistent` (one DataLoader, persistent workers, an iterator per
epoch) and `run-long` (what `encoder.engine.Trainer` now uses: one iterator for the run, prefetching across epochs).

Frames are synthetic (gradients, multi-scale texture, noise, boxes; about 470 KB and 9 ms PIL decode at 1080p q90,
like a busy street frame); `--frames-dir` measures your own JPEGs instead.

    .venv/bin/python bench/input.py                 # about a minute on 2 cores
    .venv/bin/python bench/input.py --frames 32 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, spread, table, time_interleaved, write_json  # noqa: E402

log = logging.getLogger("bench.input")

MFU = 0.4
GPUS = {"H100 SXM": 989.0, "H200": 989.0}  # dense bf16 TFLOP/s, vendor data sheets (as bench/encoder.PEAK_BF16)


def synthetic_frame(i: int, w: int = 1920, h: int = 1080, quality: int = 90) -> bytes:
    """A JPEG with detail at several scales, so it costs what a busy camera frame costs to decode."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    base = np.stack([x * rng.uniform(60, 255), y * rng.uniform(60, 255), (x + y) * rng.uniform(30, 128)], -1)
    for cells, amp in ((12, 40), (96, 25), (480, 15)):  # texture: coarse to fine noise fields, upsampled
        small = rng.normal(0, amp, (cells * h // w + 1, cells)).astype(np.float32)
        base += np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))[..., None]
    base += rng.normal(0, 6, base.shape)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, w - 200)), int(rng.integers(0, h - 150))
        box = [x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 150))]
        draw.rectangle(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def gpu_demand(preset: str = "seed") -> dict[str, float]:
    """Images/s one GPU trains at `MFU` of its dense bf16 peak, per GPU name, and the FLOPs per image."""
    from bench.train import mae_train_flops
    from encoder.config import MAEConfig
    from fth.config import build

    flops = mae_train_flops(build(MAEConfig, preset))
    return {"flops_per_image": flops, **{name: MFU * peak * 1e12 / flops for name, peak in GPUS.items()}}


def stall(data, epochs: int, step_s: float, run_long: bool) -> list[float]:
    """Seconds waited for the first batch of each epoch after the first, consuming every batch with a `step_s`
    pause (the training step) after it."""
    per_epoch, waits = data.batches_per_epoch(), []
    stream = data.run_batches(0, 0, per_epoch) if run_long else None
    for epoch in range(epochs):
        it = stream if run_long else iter(data.epoch_batches(epoch))
        for b in range(per_epoch):
            t0 = time.perf_counter()
            next(it)
            if b == 0:
                waits.append(time.perf_counter() - t0)
            time.sleep(step_s)
    del stream
    return waits[1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16, help="synthetic 1080p frames (default 16)")
    ap.add_argument("--frames-dir", default=None, help="measure these *.jpg files instead of synthetic frames")
    ap.add_argument("--batch", type=int, default=8, help="collate batch size (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--size", default="576x960", help="training input HxW (default 576x960, the seed preset)")
    ap.add_argument("--stall-epochs", type=int, default=4, help="epochs for the epoch-start stall (default 4)")
    ap.add_argument("--step-ms", type=float, default=300.0, help="simulated training step per batch (default 300)")
    ap.add_argument("--name", default="input", help="results file name (default input)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from encoder.data import FrameData, FrameDataset, FrameRecord, collate
    from encoder.decode import device_images
    from encoder.shards import ShardDataset, export_shards
    from encoder.train_config import DataConfig

    torch.set_num_threads(1)  # per core: a loader worker is one process on one core
    size = tuple(int(v) for v in args.size.split("x"))
    num_patches = (size[0] // 48) * (size[1] // 48)
    cpu = torch.device("cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench-input-"))
    if args.frames_dir:
        paths = sorted(Path(args.frames_dir).glob("*.jpg"))[: args.frames]
    else:
        paths = []
        for i in range(args.frames):
            paths.append(tmp / f"frame-{i:04d}.jpg")
            paths[-1].write_bytes(synthetic_frame(i))
    records = [FrameRecord(f"{i:064x}", p) for i, p in enumerate(paths)]
    n = len(records) - len(records) % args.batch
    if n == 0:
        raise SystemExit(f"need at least --batch {args.batch} frames")
    mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1e3
    log.info("%d frames, %.0f KB each on average; exporting shards at %s", len(paths), mean_kb, args.size)
    shard_dir = tmp / "shards"
    index = export_shards(records, shard_dir, per_shard=max(1, len(records) // 2), size=size, quality=90)
    shard_kb = sum(p.stat().st_size for p in shard_dir.glob("*.tar")) / index["count"] / 1e3

    cfg = DataConfig(num_workers=0)

    def frames_case(decode: str, on_cpu: bool):
        ds = FrameDataset(records, size, num_patches, cfg, seed=0, decode=decode)

        def run():
            for start in range(0, n, args.batch):
                batch = collate([ds[(0, i)] for i in range(start, start + args.batch)])
                if on_cpu:
                    device_images(batch, size, cpu)

        return run

    def shards_case(decode: str, on_cpu: bool):
        ds = ShardDataset(shard_dir, size, num_patches, cfg, seed=0, batch_size=args.batch, decode=decode)

        def run():
            for b in range(ds.batches_per_epoch()):
                batch = ds[(0, b)]
                if on_cpu:
                    device_images(batch, size, cpu)

        return run

    shard_images = ShardDataset(shard_dir, size, num_patches, cfg, 0, args.batch).batches_per_epoch() * args.batch
    paths_by_case = {"pil": ("pil", False), "tv-cpu": ("device", True), "worker-only": ("device", False)}
    cases, images = {}, {}
    for kind, maker, count in (("1080p", frames_case, n), ("shards-576", shards_case, shard_images)):
        for path, (decode, on_cpu) in paths_by_case.items():
            cases[f"{kind}/{path}"] = maker(decode, on_cpu)
            images[f"{kind}/{path}"] = count
    times = time_interleaved(cases, args.repeats, warmup=1)

    demand = gpu_demand("seed")
    rows = []
    for name, ts in times.items():
        ips = images[name] / median(ts)
        row = {"path": name, "images_per_s_per_core": ips, "ms_per_image": 1e3 / ips, "spread": spread(ts)}
        for gpu in GPUS:
            row[f"cores_per_{gpu.replace(' ', '_')}"] = demand[gpu] / ips
        rows.append(row)
    base = next(r for r in rows if r["path"] == "1080p/pil")
    for row in rows:
        row["vs_1080p_pil"] = row["images_per_s_per_core"] / base["images_per_s_per_core"]

    # Epoch-start stall on the 1080p frames, the three loader set-ups in turn (twice, so load from other processes
    # on this shared machine hits all of them).
    stalls = {"refork": [], "persistent": [], "run-long": []}
    for _ in range(2):
        for mode in stalls:
            dc = DataConfig(num_workers=2, persistent_workers=mode != "refork", prefetch_factor=2)
            data = FrameData(records[:n], size, num_patches, dc, seed=0, batch_size=args.batch)
            stalls[mode] += stall(data, args.stall_epochs, args.step_ms / 1e3, run_long=mode == "run-long")
            data.loader = None  # drops the persistent workers

    print(
        f"Input path per CPU core ({len(paths)} frames, {mean_kb:.0f} KB at 1080p, {shard_kb:.0f} KB at "
        f"{index['size'][0]}x{index['size'][1]} cover; batch {args.batch}; {args.repeats} interleaved rounds)"
    )
    gpu_cols = [f"cores_per_{g.replace(' ', '_')}" for g in GPUS]
    print(table(rows, ["path", "images_per_s_per_core", "ms_per_image", "vs_1080p_pil", *gpu_cols, "spread"]))
    print(
        f"GPU demand at {MFU:.0%} MFU, seed preset ({demand['flops_per_image'] / 1e9:.1f} GFLOP per training image): "
        + ", ".join(f"{g} {demand[g]:.0f} images/s" for g in GPUS)
    )
    stall_rows = [
        {"workers": mode, "first_batch_s_median": median(v), "first_batch_s_max": max(v), "epochs": len(v)}
        for mode, v in stalls.items()
    ]
    print(
        f"Epoch start: seconds waited for the first batch (epochs after the first; 2 workers, {args.step_ms:.0f} ms "
        "simulated step per batch)"
    )
    print(table(stall_rows, ["workers", "first_batch_s_median", "first_batch_s_max", "epochs"]))
    path = write_json(
        args.name,
        {
            "frames": len(paths),
            "frame_kb_1080p": mean_kb,
            "frame_kb_shards": shard_kb,
            "shard_size": index["size"],
            "batch": args.batch,
            "repeats": args.repeats,
            "mfu": MFU,
            "gpu_peak_tflops": GPUS,
            "gpu_demand": demand,
            "rows": rows,
            "epoch_stall": stall_rows,
            "step_ms": args.step_ms,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
