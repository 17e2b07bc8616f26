"""Benchmark: the encoder forward (inference) against timm's VisionTransformer, then the seed preset per backend.

Part 1, at identical hyperparameters (576x960 input, 48 px patches -> 12x20 = 240 tokens + cls, width 1024, depth
10, 16 heads of 64, mlp_ratio 2.5, qkv bias, exact attention, no value residual): our `ViT.embed` vs timm's
`VisionTransformer` (fused SDPA attention, avg pool), timed interleaved in the same run; the result is the ratio.
Part 2: the seed preset (10 heads of 64, value residual, 256 landmarks) with each backend at 576x960 and 1056x1920
(1080 is not a multiple of 48; 1056 = 22 x 48 is the largest that fits, so a 1080p frame is resized or cropped to it).

FLOPs are counted analytically, as executed: the patch-embed matmul, q/k/v and output projections, the attention
matmuls (exact: QK^T and AV; Nystrom: its five products on the padded sequence plus 8 m^3 per pinv iteration per
head), and the MLP; 2 FLOPs per multiply-add. Norms, softmax, GELU and the value-residual conv are not counted.

    .venv/bin/python bench/encoder.py                                   # CPU, fp32
    .venv/bin/python bench/encoder.py --device cuda --dtype bf16 --batch 64 --seed-batch 32 --repeats 20
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, spread, table, time_interleaved, write_json  # noqa: E402

log = logging.getLogger("bench.encoder")
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendor data sheets; anything else needs --peak-tflops.
PEAK_BF16 = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def vit_flops(cfg, h: int, w: int) -> float:
    """FLOPs of one image through `ViT.embed` (or timm's equivalent) at (h, w), as executed."""
    p, d, a = cfg.patch_size, cfg.dim, cfg.attention
    inner, hidden = cfg.heads * cfg.dim_head, int(d * cfg.mlp_ratio)
    n = (h // p) * (w // p)
    t = n + 1  # cls
    from encoder.attention import crossover_for

    backend = a.backend if a.backend != "auto" else ("exact" if t < crossover_for(a, _device()) else "nystrom")
    flops = 2 * n * (cfg.in_chans * p * p) * d  # patch embed
    if backend == "exact":
        tp = t
        attn = 2 * 2 * t * t * inner
    else:
        m = a.num_landmarks
        tp = math.ceil(t / m) * m  # padded length; projections run on it
        per_head = 2 * cfg.dim_head * (4 * tp * m + m * m) + 2 * tp * m * m + a.pinv_iterations * 8 * m**3
        attn = cfg.heads * per_head
    proj = 2 * tp * d * 3 * inner + 2 * tp * inner * d
    mlp = 2 * 2 * t * d * hidden
    return flops + cfg.depth * (proj + attn + mlp)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=2, help="images per call in part 1")
    p.add_argument("--seed-batch", type=int, default=1, help="images per call in part 2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed-repeats", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the fraction-of-peak column")
    p.add_argument("--skip-seed", action="store_true", help="only part 1")
    p.add_argument("--name", default=None, help="results file (default: encoder-<device>-<dtype>)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import timm
    import torch

    from encoder.config import AttentionConfig, MAEConfig, ViTConfig
    from encoder.vit import ViT
    from fth.config import build

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    dev = args.device
    peak = args.peak_tflops
    if peak is None and dev.startswith("cuda") and args.dtype == "bf16":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)

    def prep(model: torch.nn.Module) -> torch.nn.Module:
        return model.eval().to(device=dev, dtype=dtype)

    def runner(model, x):
        def run():
            with torch.inference_mode():
                model(x)

        return run

    def row(label: str, times: list[float], batch: int, flops: float) -> dict:
        sec = median(times)
        r = {"case": label, "ms_per_call": 1000 * sec, "batch": batch, "images_per_s": batch / sec}
        r["spread"] = spread(times)
        r["tflops_per_s"] = flops * batch / sec / 1e12
        r["frac_of_peak"] = r["tflops_per_s"] / peak if peak else None
        return r

    # -- part 1: ours vs timm at identical hyperparameters -----------------------------------------------------
    h, w = 576, 960
    cfg = ViTConfig(
        img_size=(h, w), patch_size=48, dim=1024, depth=10, heads=16, dim_head=64, mlp_ratio=2.5, qkv_bias=True,
        attention=AttentionConfig(backend="exact", value_residual=False),
    )  # fmt: skip
    torch.manual_seed(0)
    ours = prep(ViT(cfg))
    ref = prep(
        timm.models.vision_transformer.VisionTransformer(
            img_size=(h, w), patch_size=48, embed_dim=1024, depth=10, num_heads=16, mlp_ratio=2.5, qkv_bias=True,
            num_classes=0, global_pool="avg", class_token=True,
        )
    )  # fmt: skip
    n_ours, n_ref = (sum(q.numel() for q in m.parameters()) for m in (ours, ref))
    log.info(
        "params: ours %.2fM, timm %.2fM; fused attn in timm: %s",
        n_ours / 1e6,
        n_ref / 1e6,
        ref.blocks[0].attn.fused_attn,
    )
    x = torch.randn(args.batch, 3, h, w, device=dev, dtype=dtype)
    times = time_interleaved({"ours": runner(ours, x), "timm": runner(ref, x)}, args.repeats, 1, dev)
    flops = vit_flops(cfg, h, w)
    part1 = [
        row("ours (exact, 16x64)", times["ours"], args.batch, flops),
        row("timm ViT", times["timm"], args.batch, flops),
    ]
    ratio = median(times["ours"]) / median(times["timm"])
    cols = ["case", "ms_per_call", "batch", "images_per_s", "tflops_per_s", "frac_of_peak", "spread"]
    print(f"## ours vs timm, {h}x{w}, {args.device} {args.dtype}, {flops / 1e9:.1f} GFLOP/image\n")
    print(table(part1, cols))
    print(f"\nours / timm time ratio: {ratio:.3f} (bar: <= 1.1) -> {'ok' if ratio <= 1.1 else 'MISSED'}\n")
    del ours, ref, x

    # -- part 2: the seed preset per backend ---------------------------------------------------------------------
    part2 = []
    if not args.skip_seed:
        for h, w in ((576, 960), (1056, 1920)):
            x = torch.randn(args.seed_batch, 3, h, w, device=dev, dtype=dtype)
            cases, cfgs = {}, {}
            for backend in ("exact", "nystrom", "auto"):
                mcfg = build(MAEConfig, "seed", [f"encoder.attention.backend={backend}"]).encoder
                torch.manual_seed(0)
                cases[backend], cfgs[backend] = runner(prep(ViT(mcfg)), x), mcfg
            times = time_interleaved(cases, args.seed_repeats, 1, dev)
            for backend in cases:
                r = row(f"seed {backend} {h}x{w}", times[backend], args.seed_batch, vit_flops(cfgs[backend], h, w))
                r["tokens"] = (h // 48) * (w // 48) + 1
                part2.append(r)
            del cases, x
        print(f"## seed preset per backend, {args.device} {args.dtype}\n")
        print(table(part2, ["case", "tokens", *cols[1:]]))
    name = args.name or f"encoder-{args.device.split(':')[0]}-{args.dtype}"
    payload = {"settings": vars(args), "peak_tflops": peak, "ours_over_timm": ratio, "part1": part1, "part2": part2}
    print(f"\nwrote {write_json(name, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
