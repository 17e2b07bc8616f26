"""The one GPU check: is training the seed preset on this GPU model-bound or input-bound? Run it whenever a GPU is lent.

Four parts, each a table and all in one JSON (bench/results/gpu-<device>.json):
1. Synthetic: training steps of the seed preset (bf16 autocast, fused AdamW, as `encoder.engine.Trainer`) on one
   batch kept on the GPU, over batch sizes (stopping at the first out-of-memory), eager and `torch.compile`d. MFU =
   model FLOP/s (`bench/train.py`'s FLOP model) / the GPU's dense bf16 peak. Peak memory per case.
2. Real input: the same `Trainer` loop fed by the real pipeline at the best synthetic batch size and compile
   setting, from (a) 1080p JPEG files (decoded on the GPU with nvJPEG, and in the loader workers with PIL) and
   (b) shards at training resolution (`fth shards export --size 576x960`, nvJPEG). Workers: cores per rank less one.
   The ratio real / synthetic says whether the input keeps up (goal: >= 0.9). The loop's own `data_wait_s` is
   reported too.
3. Attention crossover of `auto` on this device: one seed-width attention layer (1024 wide, 10 heads of 64, 256
   landmarks), exact (SDPA: flash in bf16) against Nystrom, forward + backward in bf16, over token counts. The
   crossover is the shortest length from which Nystrom is faster at every longer measured length. `--save-crossover`
   writes it into encoder/crossovers.json under this GPU's name (commit that file).
4. The table also names the GPU, torch and CUDA versions.

    .venv/bin/python bench/gpu.py                            # on a GPU machine: about 5-8 minutes
    .venv/bin/python bench/gpu.py --save-crossover           # ... and record the crossover for this GPU
    .venv/bin/python bench/gpu.py --device cpu --quick       # a smoke run of every code path on CPU (tiny preset)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, table, write_json  # noqa: E402
from bench.encoder import PEAK_BF16  # noqa: E402
from bench.train import mae_train_flops  # noqa: E402

log = logging.getLogger("bench.gpu")
REPO = Path(__file__).resolve().parent.parent


# -- helpers ----------------------------------------------------------------------------------------------------------


def peak_tflops(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in sorted(PEAK_BF16.items(), key=lambda kv: -len(kv[0])) if k in name), None)


def reset_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def train_config(args, batch: int, compile_model: bool, steps: int, **data):
    from encoder.train_config import TrainConfig
    from fth.config import build

    overrides = [
        f"model={args.preset}",
        f"batch_size={batch}",
        f"max_steps={steps}",
        f"compile={str(compile_model).lower()}",
        "ckpt_every=0",
        "panel_every=0",
        "log_every=1000000",
        "progress=false",
        "tensorboard=false",
        "wandb=false",
        "register=false",
        "optim.warmup_steps=1",
        *[f"data.{k}={v}" for k, v in data.items()],
    ]
    return build(TrainConfig, "mae_seed", overrides)


class Recorder:
    """A `Sink` that keeps every step's metrics."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def scalars(self, step, values) -> None: ...

    def panel(self, step, mae, batch) -> None: ...

    def progress(self, step, values) -> None:
        self.steps.append(dict(values))


class SyntheticData:
    """One fixed uint8 batch already on the device, served forever: the loop's throughput with free input."""

    digest = "synthetic"

    def __init__(self, cfg, device):
        import torch

        h, w = cfg.model.encoder.img_size
        p = cfg.model.encoder.patch_size
        g = torch.Generator().manual_seed(0)
        self.batch = {
            "image": torch.randint(0, 256, (cfg.batch_size, h, w, 3), dtype=torch.uint8, generator=g).to(device),
            "noise": torch.rand(cfg.batch_size, (h // p) * (w // p), generator=g).to(device),
            "skipped": 0,
            "bad": [],
        }

    def batches_per_epoch(self) -> int:
        return 10**6

    def run_batches(self, epoch, start_batch, per_epoch):
        while True:
            yield self.batch


def run_trainer(cfg, data, device, warmup: int) -> dict[str, float]:
    """`cfg.max_steps` steps of the real `Trainer` on `data`; images/s and data wait over the steps after `warmup`."""
    import torch

    from encoder.attention import bind_crossover
    from encoder.engine import Trainer
    from encoder.mae import MAE
    from encoder.optim import build_optimizer

    torch.manual_seed(0)
    mae = MAE(cfg.model).to(device)
    bind_crossover(mae, device)
    model = torch.compile(mae, mode=cfg.compile_mode or None) if cfg.compile else mae
    optimizer = build_optimizer(mae, cfg.optim, 1e-4, device)
    sink = Recorder()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-gpu-run-"))
    reset_memory(device)
    trainer = Trainer(cfg, mae, model, optimizer, data, device, 1e-4, 1, run_dir, sink)
    trainer.save = lambda: None  # no checkpoint: this measures steps
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    timed = sink.steps[warmup:]
    step_s = [cfg.batch_size / s["images_per_s"] for s in timed]
    return {
        "images_per_s": cfg.batch_size / median(step_s),
        "data_wait_ms": 1e3 * median([s["data_wait_s"] for s in timed]),
        "data_wait_frac": sum(s["data_wait_s"] for s in timed) / sum(step_s),
        "peak_mem_gib": peak_gib(device),
        "wall_s": wall,
    }


# -- 1. synthetic MFU ---------------------------------------------------------------------------------------------


def synthetic(args, device, flops: float, peak: float | None) -> list[dict]:
    rows = []
    for compile_model in args.compile_modes:
        for batch in args.batches:
            cfg = train_config(args, batch, compile_model, args.warmup + args.steps)
            try:
                r = run_trainer(cfg, SyntheticData(cfg, device), device, args.warmup)
            except Exception as e:  # noqa: BLE001 (out of memory ends the sweep; anything else is re-raised)
                if not is_oom(e):
                    raise
                log.info("batch %d (compile %s): out of memory; sweep stops", batch, compile_model)
                rows.append({"case": "synthetic", "compile": compile_model, "batch": batch, "oom": True})
                break
            r |= {"case": "synthetic", "compile": compile_model, "batch": batch}
            r["mfu"] = r["images_per_s"] * flops / (peak * 1e12) if peak else None
            log.info("synthetic batch %d compile %s: %.0f images/s", batch, compile_model, r["images_per_s"])
            rows.append(r)
    return rows


# -- 2. real input ------------------------------------------------------------------------------------------------


def jpeg_variant(data: bytes, k: int) -> bytes:
    """The same JPEG with a comment segment naming `k`: distinct bytes (and catalog id), identical pixels."""
    comment = f"fth bench copy {k}".encode()
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


def make_frames(args, folder: Path) -> list:
    """`args.frames` distinct 1080p JPEG files from `args.unique` synthetic scenes (bench/input.py's)."""
    from bench.input import synthetic_frame
    from encoder.data import FrameRecord

    folder.mkdir(parents=True, exist_ok=True)
    scenes = [synthetic_frame(i) for i in range(args.unique)]
    records = []
    for k in range(args.frames):
        path = folder / f"frame-{k:06d}.jpg"
        path.write_bytes(jpeg_variant(scenes[k % len(scenes)], k))
        records.append(FrameRecord(f"{k:064x}", path))
    return records


def real_input(args, device, synth: list[dict]) -> list[dict]:
    """The real pipeline at the best synthetic setting, the batch capped at `--real-batch-max` (each loader worker
    holds `prefetch_factor` whole batches in shared memory: 2 x 256 decoded 576x960 images is 850 MB a worker)."""
    import shutil

    from encoder.data import FrameData
    from encoder.shards import export_shards, shard_data

    ok = [r for r in synth if not r.get("oom") and r["batch"] <= args.real_batch_max]
    best = max(ok, key=lambda r: r["images_per_s"])
    if Path("/dev/shm").is_dir():
        log.info("/dev/shm: %.1f GiB free", shutil.disk_usage("/dev/shm").free / 2**30)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    records = make_frames(args, tmp / "frames")
    h, w = train_config(args, 1, False, 1).model.encoder.img_size
    t0 = time.perf_counter()
    export_shards(records, tmp / "shards", per_shard=max(1, args.frames // 8), size=(h, w), quality=90)
    log.info("exported %d frames at %dx%d in %.1f s", args.frames, h, w, time.perf_counter() - t0)
    batch, compile_model = best["batch"], best["compile"]
    steps = args.warmup + args.steps
    cases = [("1080p-jpeg", "device"), ("1080p-jpeg", "pil"), ("shards-576", "device")]
    rows = []
    for source, decode in cases:
        cfg = train_config(args, batch, compile_model, steps, decode=decode, prefetch_factor=2)
        h, w = cfg.model.encoder.img_size
        n = (h // cfg.model.encoder.patch_size) * (w // cfg.model.encoder.patch_size)
        if source == "1080p-jpeg":
            data = FrameData(records, (h, w), n, cfg.data, cfg.seed, batch, device_type=device.type)
        else:
            data = shard_data(tmp / "shards", (h, w), n, cfg.data, cfg.seed, batch, device_type=device.type)
        try:
            r = run_trainer(cfg, data, device, args.warmup)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            rows.append({"case": f"{source}/{decode}", "batch": batch, "oom": True})
            continue
        r |= {"case": f"{source}/{decode}", "compile": compile_model, "batch": batch}
        r["real_over_synthetic"] = r["images_per_s"] / best["images_per_s"]
        log.info("%s: %.0f images/s (%.2f of synthetic)", r["case"], r["images_per_s"], r["real_over_synthetic"])
        rows.append(r)
    return rows


# -- 3. attention crossover ---------------------------------------------------------------------------------------


def crossover(args, device) -> tuple[list[dict], int | None]:
    import torch

    from bench.common import time_interleaved
    from encoder.attention import Attention
    from encoder.config import AttentionConfig

    dtype = torch.bfloat16 if device.type == "cuda" else None
    rows = []
    for n in args.lengths:
        layers = {}
        for backend in ("exact", "nystrom"):
            torch.manual_seed(0)
            cfg = AttentionConfig(backend=backend, num_landmarks=args.landmarks)
            layers[backend] = Attention(args.dim, args.heads, args.dim // args.heads, True, cfg).to(device)
        x = torch.randn(1, n, args.dim, device=device, requires_grad=True)

        def step(layer, x=x):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = layer(x)
            out.float().sum().backward()

        try:
            times = time_interleaved(
                {b: (lambda layer=layer: step(layer)) for b, layer in layers.items()}, args.repeats, 1, str(device)
            )
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            log.info("attention at %d tokens: out of memory; stopping", n)
            break
        row = {"tokens": n, **{f"{b}_ms": 1e3 * median(t) for b, t in times.items()}}
        row["nystrom_over_exact"] = row["nystrom_ms"] / row["exact_ms"]
        rows.append(row)
        log.info("attention %d tokens: exact %.2f ms, nystrom %.2f ms", n, row["exact_ms"], row["nystrom_ms"])
    found = None
    for i, row in enumerate(rows):
        if all(r["nystrom_over_exact"] < 1 for r in rows[i:]):
            found = row["tokens"]
            break
    return rows, found


def save_crossover(name: str, value: int, rows: list[dict]) -> Path:
    path = REPO / "encoder" / "crossovers.json"
    table_ = json.loads(path.read_text())
    ratios = ", ".join(f"{r['nystrom_over_exact']:.2f} at {r['tokens']}" for r in rows)
    table_[name] = {"crossover": value, "source": f"bench/gpu.py, Nystrom/exact fwd+bwd bf16 time: {ratios}"}
    path.write_text(json.dumps(table_, indent=2) + "\n")
    return path


# -- main ---------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="seed", help="model preset (default seed)")
    ap.add_argument("--batches", default="64,128,256,512,1024", help="synthetic batch sizes, ascending")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per case")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile happens here)")
    ap.add_argument("--real-batch-max", type=int, default=256, help="largest batch for the real-input cases")
    ap.add_argument("--frames", type=int, default=2048, help="1080p frames for the real-input cases")
    ap.add_argument("--unique", type=int, default=32, help="distinct synthetic scenes among them")
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768", help="crossover token counts")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=10)
    ap.add_argument("--landmarks", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds for the crossover")
    ap.add_argument("--save-crossover", action="store_true", help="write the crossover to encoder/crossovers.json")
    ap.add_argument("--quick", action="store_true", help="tiny sizes everywhere: a smoke run of the code paths")
    ap.add_argument("--name", default=None, help="results file (default gpu-<device name>)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.preset, args.batches, args.steps, args.warmup = "tiny", "4,8", 3, 1
        args.frames, args.unique, args.lengths, args.dim, args.heads, args.landmarks = 32, 2, "64,256", 64, 4, 32
        args.repeats = 2
    args.batches = [int(b) for b in args.batches.split(",")]
    args.lengths = [int(n) for n in args.lengths.split(",")]
    args.compile_modes = [False] if args.no_compile else [False, True]

    import torch

    from encoder.attention import device_name
    from encoder.config import MAEConfig
    from fth.config import build

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gpu = device_name(device)
    peak = peak_tflops(device)
    flops = mae_train_flops(build(MAEConfig, args.preset))
    log.info("%s: peak %s TFLOP/s bf16, %s preset %.1f GFLOP per training image", gpu, peak, args.preset, flops / 1e9)

    synth = synthetic(args, device, flops, peak)
    ok = [r for r in synth if not r.get("oom")]
    best = max(ok, key=lambda r: r["images_per_s"])
    real = real_input(args, device, synth)
    attn, found = crossover(args, device)

    print(f"Training the {args.preset} preset on {gpu} (torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"peak {peak} TFLOP/s; {flops / 1e9:.1f} GFLOP per image; {args.steps} timed steps per case)")  # fmt: skip
    cols = ["case", "compile", "batch", "images_per_s", "mfu", "data_wait_ms", "data_wait_frac", "peak_mem_gib"]
    print(table(synth, [*cols, "oom"]))
    print(table(real, [*cols[:4], "real_over_synthetic", *cols[5:], "oom"]))
    print(f"Attention layer ({args.dim} wide, {args.heads} heads, {args.landmarks} landmarks), fwd+bwd:")
    print(table(attn, ["tokens", "exact_ms", "nystrom_ms", "nystrom_over_exact"]))
    longest = args.lengths[-1] if attn else None
    print(f"auto crossover on {gpu}: {found if found else f'none up to {longest} tokens (exact always faster)'}")
    payload = {
        "device": gpu,
        "peak_tflops": peak,
        "preset": args.preset,
        "flops_per_image": flops,
        "steps": args.steps,
        "warmup": args.warmup,
        "synthetic": synth,
        "best_synthetic": best,
        "real_input": real,
        "attention": attn,
        "crossover": found,
        "quick": args.quick,
    }
    path = write_json(args.name or f"gpu-{gpu.replace(' ', '_')}", payload)
    print(f"wrote {path}")
    if args.save_crossover and attn:
        value = found if found else 2**31 - 1  # exact at every length measured: never switch
        print(f"saved crossover {value} for {gpu} in {save_crossover(gpu, value, attn)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
