"""Benchmark: one attention layer, exact (SDPA) vs Nystrom vs auto, over sequence lengths.

Setting from DESIGN.md: width 1024, 10 heads of 64, 256 landmarks, 6 pinv iterations, value residual on, batch 1,
no grad. Time is the median of interleaved repeats; memory is the peak-RSS rise of one forward in a fresh process
(see bench/common.py). Also reports the crossover: the shortest measured length where Nystrom beats exact, which
sets the default `AttentionConfig.crossover`, and checks the bar: auto <= 1.05 x the faster of the other two.

    .venv/bin/python bench/attention.py                       # the table at 72 ... 8100 tokens
    .venv/bin/python bench/attention.py --lengths 2304 2560 2816 3072 3584 --no-memory   # locate the crossover
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    in_subprocess,
    median,
    peak_rss_mib,
    reset_peak_rss,
    spread,
    table,
    time_interleaved,
    write_json,
)  # noqa: E402

log = logging.getLogger("bench.attention")
LENGTHS = [72, 240, 920, 2160, 4096, 8100]
BACKENDS = ["exact", "nystrom", "auto"]


def build(backend: str, crossover: int | None, args: argparse.Namespace):
    import torch

    from encoder.attention import Attention
    from encoder.config import AttentionConfig

    cfg = AttentionConfig(backend=backend, num_landmarks=args.landmarks)
    if crossover is not None:
        cfg.crossover = crossover
    torch.manual_seed(0)
    return Attention(args.dim, args.heads, args.dim_head, True, cfg).eval()


def memory_case(backend: str, n: int, crossover: int | None, args: argparse.Namespace) -> None:
    """Child process: build, then one forward; print the peak-RSS rise as JSON."""
    import torch

    layer = build(backend, crossover, args)
    x = torch.randn(1, n, args.dim)
    before = reset_peak_rss()
    with torch.inference_mode():
        layer(x)
    print(json.dumps({"peak_rss_rise_mib": peak_rss_mib() - before}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--heads", type=int, default=10)
    p.add_argument("--dim-head", type=int, default=64)
    p.add_argument("--landmarks", type=int, default=256)
    p.add_argument("--crossover", type=int, default=None, help="auto's crossover (default: AttentionConfig's)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
    p.add_argument("--name", default="attention", help="results file bench/results/<name>.json")
    p.add_argument("--memory-case", nargs=2, metavar=("BACKEND", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.memory_case:
        memory_case(args.memory_case[0], int(args.memory_case[1]), args.crossover, args)
        return 0

    import torch

    from encoder.attention import crossover_for
    from encoder.config import AttentionConfig

    crossover = args.crossover or crossover_for(AttentionConfig(), torch.device("cpu"))
    layers = {b: build(b, crossover, args) for b in BACKENDS}
    rows = []
    for n in args.lengths:
        x = torch.randn(1, n, args.dim)

        def run(layer=None, x=x):
            with torch.inference_mode():
                layer(x)

        cases = {b: (lambda layer=layers[b]: run(layer)) for b in BACKENDS}
        times = time_interleaved(cases, args.repeats, warmup=1)
        row = {"tokens": n, "auto_uses": layers["auto"].backend_for(n)}
        for b in BACKENDS:
            row[f"{b}_ms"] = 1000 * median(times[b])
            row[f"{b}_spread"] = spread(times[b])
        best = min(row["exact_ms"], row["nystrom_ms"])
        row["nystrom/exact"] = row["nystrom_ms"] / row["exact_ms"]
        row["auto/best"] = row["auto_ms"] / best
        row["bar_ok"] = row["auto/best"] <= 1.05
        if not args.no_memory:
            script, extra = Path(__file__), ["--dim", str(args.dim), "--heads", str(args.heads)]
            extra += [
                "--dim-head",
                str(args.dim_head),
                "--landmarks",
                str(args.landmarks),
                "--crossover",
                str(crossover),
            ]
            for b in BACKENDS:
                res = in_subprocess(script, [*extra, "--memory-case", b, str(n)])
                row[f"{b}_mib"] = res["peak_rss_rise_mib"]
        log.info("%s", row)
        rows.append(row)

    cols = ["tokens", "exact_ms", "nystrom_ms", "auto_ms", "auto_uses", "nystrom/exact", "auto/best", "bar_ok"]
    if not args.no_memory:
        cols += ["exact_mib", "nystrom_mib", "auto_mib"]
    print(table(rows, cols))
    faster = [r["tokens"] for r in rows if r["nystrom_ms"] < r["exact_ms"]]
    print(
        f"\nauto crossover {crossover}; Nystrom faster at: {faster or 'none'}; bar held at every length: "
        f"{all(r['bar_ok'] for r in rows)}"
    )
    settings = {k: getattr(args, k) for k in ("dim", "heads", "dim_head", "landmarks", "repeats")}
    path = write_json(args.name, {"settings": {**settings, "crossover": crossover, "batch": 1}, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
