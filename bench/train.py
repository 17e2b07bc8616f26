"""Benchmark: MAE training throughput (images/s per optimiser step) per preset and encoder attention backend.

One step = forward + backward + AdamW step of the full MAE (encoder on the visible tokens, decoder on all), on a
fixed synthetic batch with fixed mask noise, exactly as `encoder.engine.Trainer.train_step` runs it (autocast on
CUDA in bf16, fused AdamW on CUDA). The encoder's attention backend varies (`exact`, `nystrom`, `auto`); the decoder
keeps its preset backend (exact). Cases are timed interleaved (bench/common.py) and the ratio column compares each
backend with `exact` of the same preset in the same run.

Model FLOPs per image (the usual MFU convention: exact attention, 2 FLOPs per multiply-add, x3 for forward +
backward): patch embedding on all N patches, encoder blocks on K+1 visible tokens, decoder embed, decoder blocks on
N+1 tokens, and the pixel predictor. Fraction of peak = achieved model FLOP/s / the GPU's dense bf16 peak.

    .venv/bin/python bench/train.py                                               # CPU: tiny + seed, fp32
    .venv/bin/python bench/train.py --device cuda --presets seed --batch seed=64 --steps 10 --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, spread, table, time_interleaved, write_json  # noqa: E402
from bench.encoder import PEAK_BF16  # noqa: E402

log = logging.getLogger("bench.train")


def block_flops(tokens: int, dim: int, heads: int, dim_head: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one pre-norm block on `tokens` tokens with exact attention."""
    inner, hidden = heads * dim_head, int(dim * mlp_ratio)
    proj = 2 * tokens * dim * 3 * inner + 2 * tokens * inner * dim
    attn = 2 * 2 * tokens * tokens * inner
    mlp = 2 * 2 * tokens * dim * hidden
    return proj + attn + mlp


def mae_train_flops(cfg) -> float:
    """Model FLOPs of one training image (forward x 3): encoder on visible tokens, decoder on all."""
    enc, dec = cfg.encoder, cfg.decoder
    h, w = enc.img_size
    p = enc.patch_size
    n = (h // p) * (w // p)
    k = int(n * (1 - cfg.mask_ratio))
    pix = p * p * enc.in_chans
    fwd = 2 * n * pix * enc.dim  # patch embed (runs on all patches before masking)
    fwd += enc.depth * block_flops(k + 1, enc.dim, enc.heads, enc.dim_head, enc.mlp_ratio)
    fwd += 2 * (k + 1) * enc.dim * dec.dim  # decoder embed
    fwd += dec.depth * block_flops(n + 1, dec.dim, dec.heads, dec.dim_head, dec.mlp_ratio)
    fwd += 2 * (n + 1) * dec.dim * pix  # pixel predictor
    return 3 * fwd


def make_step(cfg, batch: int, device, precision: str, compile_model: bool):
    """A closure running one training step of a fresh MAE on a fixed batch."""
    import torch

    from encoder.mae import MAE
    from encoder.optim import build_optimizer
    from encoder.train_config import OptimConfig

    torch.manual_seed(0)
    mae = MAE(cfg).to(device)
    model = torch.compile(mae) if compile_model else mae
    opt = build_optimizer(mae, OptimConfig(), 1e-4, device)
    h, w = cfg.encoder.img_size
    n = (h // cfg.encoder.patch_size) * (w // cfg.encoder.patch_size)
    imgs = torch.randn(batch, 3, h, w, device=device)
    noise = torch.rand(batch, n, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(imgs, noise=noise).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mae.parameters(), float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--presets", default="tiny,seed", help="comma-separated model presets")
    ap.add_argument("--backends", default="exact,nystrom,auto", help="encoder attention backends")
    ap.add_argument("--batch", action="append", default=[], metavar="PRESET=N", help="images per step per preset")
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: from the GPU's name)")
    ap.add_argument("--name", default=None, help="results file (default: train-<device>)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import dataclasses

    import torch

    from encoder.config import MAEConfig
    from fth.config import build

    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batches = {"tiny": 8, "seed": 2 if device.type == "cpu" else 64}
    batches |= {k: int(v) for k, v in (b.split("=", 1) for b in args.batch)}
    peak = args.peak_tflops
    if peak is None and device.type == "cuda" and precision == "bf16":
        gpu = torch.cuda.get_device_name()
        peak = next((v for k, v in sorted(PEAK_BF16.items(), key=lambda kv: -len(kv[0])) if k in gpu), None)

    cases, meta = {}, {}
    for preset in args.presets.split(","):
        base = build(MAEConfig, preset)
        for backend in args.backends.split(","):
            attn = dataclasses.replace(base.encoder.attention, backend=backend)
            cfg = dataclasses.replace(base, encoder=dataclasses.replace(base.encoder, attention=attn))
            step = make_step(cfg, batches[preset], device, precision, args.compile)
            name = f"{preset}/{backend}"
            cases[name] = lambda step=step: [step() for _ in range(args.steps)]
            meta[name] = {"preset": preset, "backend": backend, "batch": batches[preset], "flops": mae_train_flops(cfg)}
            log.info("built %s (batch %d, %.3g GFLOP per image)", name, batches[preset], meta[name]["flops"] / 1e9)
    times = time_interleaved(cases, args.repeats, warmup=1, device=args.device)

    rows = []
    for name, ts in times.items():
        m = meta[name]
        step_s = median(ts) / args.steps
        ips = m["batch"] / step_s
        row = {
            "case": name,
            "batch": m["batch"],
            "step_ms": step_s * 1e3,
            "images_per_s": ips,
            "gflop_per_img": m["flops"] / 1e9,
            "achieved_tflops": ips * m["flops"] / 1e12,
            "spread": spread(ts),
        }
        if peak:
            row["frac_of_peak"] = row["achieved_tflops"] / peak
        rows.append(row)
    for row in rows:
        exact = next(r for r in rows if r["case"] == row["case"].split("/")[0] + "/exact")
        row["vs_exact"] = row["images_per_s"] / exact["images_per_s"] if exact else None
    columns = ["case", "batch", "step_ms", "images_per_s", "vs_exact", "gflop_per_img", "achieved_tflops"]
    columns += ["frac_of_peak"] if peak else []
    print(f"MAE training step, {args.device} {precision}, {args.steps} steps x {args.repeats} interleaved rounds")
    print(table(rows, columns + ["spread"]))
    path = write_json(
        args.name or f"train-{args.device}",
        {"precision": precision, "steps": args.steps, "repeats": args.repeats, "peak_tflops": peak, "rows": rows},
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
