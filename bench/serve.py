"""Serving benchmark: HTTP throughput and latency of `fth serve` (gunicorn, micro-batching) against the in-process
batched forward of the same model on the same images, in the same run.

For each concurrency c in 1, 4, 16, 64: c client threads (one requests.Session each) send one JPEG per request for
`--seconds`; the baseline decodes the same JPEGs and runs `Runner.run` in batches of min(c, max_batch) on one
thread. Repeats are interleaved (baseline, server, baseline, ...) and medians reported, because the machine is
shared. Bars (tiny preset): at c=16 server throughput >= 85% of in-process; at c=1 the server adds <= 15 ms p50.

    .venv/bin/python bench/serve.py [--preset tiny] [--repeats 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the LiveServer test helper

from serving import LiveServer, tiny_encoder  # noqa: E402

from server.config import ServeConfig  # noqa: E402
from server.images import Limits, decode  # noqa: E402
from store.paths import Workspace  # noqa: E402

CONCURRENCY = (1, 4, 16, 64)
SERVER_KEYS = {"max_batch", "max_wait_ms", "torch_threads", "threads", "workers", "switch_interval_ms"}


def jpegs(n: int, size: tuple[int, int]) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), np.uint8)
        image = Image.fromarray(base).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def proc_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of processes, from /proc (Linux)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def server_pids(pid: int) -> list[int]:
    """The `fth serve` process and its descendants (gunicorn master and workers)."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            pids.append(int(child))
            frontier.append(int(child))
    return pids


def in_process(runner, images: list[bytes], batch: int, seconds: float) -> dict:
    limits = Limits(64, 50_000_000)
    lat, done, i = [], 0, 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        chunk = [images[(i + k) % len(images)] for k in range(batch)]
        arrays = np.stack([decode(b, runner.size, limits)[0] for b in chunk])
        runner.run(arrays, frozenset({"pooled"}))
        lat.append(time.perf_counter() - t0)
        done += batch
        i += batch
    wall = time.perf_counter() - start
    cpu_ms = (time.process_time() - cpu0) * 1000 / done
    return {"throughput": done / wall, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "cpu_ms": cpu_ms}


def over_http(url: str, images: list[bytes], c: int, seconds: float, per_request: int = 1, pids=()) -> dict:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        session = requests.Session()
        mine, i = [], k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            if per_request == 1:
                body = {"data": images[i % len(images)], "headers": {"Content-Type": "image/jpeg"}}
            else:
                picks = [images[(i + k) % len(images)] for k in range(per_request)]
                body = {"files": [("files", (f"{k}.jpg", b, "image/jpeg")) for k, b in enumerate(picks)]}
            resp = session.post(f"{url}/v1/embed", **body)
            if resp.status_code == 200:
                mine.append(time.perf_counter() - t0)
            else:
                with lock:
                    errors[0] += 1
            i += c
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(c)]
    server_cpu0, client_cpu0 = proc_cpu(list(pids)), time.process_time()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done = max(1, len(lat) * per_request)
    return {
        "throughput": done / wall,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "errors": errors[0],
        "cpu_ms": (proc_cpu(list(pids)) - server_cpu0) * 1000 / done,
        "client_cpu_ms": (time.process_time() - client_cpu0) * 1000 / done,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--image-scale", type=int, default=2, help="JPEG side / model input side (draft decoding)")
    parser.add_argument("--per-request", type=int, default=1, help="images per HTTP request (multipart when > 1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY), help="client counts")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="ServeConfig key=value")
    args = parser.parse_args()

    import torch

    from fth.config import merge, parse_set
    from server.runner import Runner

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.at(tmp)
        model, card = tiny_encoder(ws, preset=args.preset)
        cfg = ServeConfig(workspace=tmp, encoder=card.id, warmup=False)
        for item in args.overrides:
            cfg = merge(cfg, parse_set(item), f"--set {item}")
        runner = Runner(cfg)
        h, w = runner.size
        images = jpegs(64, (h * args.image_scale, w * args.image_scale))
        overrides = {k: v for k, v in vars(cfg).items() if k in SERVER_KEYS}
        overrides["threads"] = max(overrides.get("threads", 16), 64)
        overrides["queue_images"] = 1024
        rows = {c: {"inproc": [], "server": []} for c in args.concurrency}
        with LiveServer(ws.root, {"encoder": card.id, **overrides}) as server:
            pids = server_pids(server.proc.pid)
            for c in args.concurrency:  # warm both paths once
                in_process(runner, images, min(c * args.per_request, cfg.max_batch), 0.3)
                over_http(server.url, images, c, 0.3, args.per_request)
            for _ in range(args.repeats):
                for c in args.concurrency:
                    batch = min(c * args.per_request, cfg.max_batch)
                    rows[c]["inproc"].append(in_process(runner, images, batch, args.seconds))
                    rows[c]["server"].append(over_http(server.url, images, c, args.seconds, args.per_request, pids))

    def med(items: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in items)

    table = []
    print(f"preset {args.preset}, input {h}x{w}, JPEG {h * args.image_scale}x{w * args.image_scale}, "
          f"{args.per_request} image(s)/request, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved repeats x {args.seconds:g} s, medians")  # fmt: skip
    print("| c | in-process img/s | p50 ms | p99 ms | server img/s | p50 ms | p99 ms ", end="")
    print("| server/in-process | +p50 ms | CPU ms/img in-proc | server | client | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in args.concurrency:
        ip, sv = rows[c]["inproc"], rows[c]["server"]
        row = {
            "concurrency": c,
            "inproc_throughput": med(ip, "throughput"),
            "inproc_p50_ms": med(ip, "p50_ms"),
            "inproc_p99_ms": med(ip, "p99_ms"),
            "server_throughput": med(sv, "throughput"),
            "server_p50_ms": med(sv, "p50_ms"),
            "server_p99_ms": med(sv, "p99_ms"),
            "errors": sum(r["errors"] for r in sv),
            "throughput_spread": [r["throughput"] for r in sv],
            "inproc_cpu_ms_per_image": med(ip, "cpu_ms"),
            "server_cpu_ms_per_image": med(sv, "cpu_ms"),
            "client_cpu_ms_per_image": med(sv, "client_cpu_ms"),
        }
        row["ratio"] = row["server_throughput"] / row["inproc_throughput"]
        row["added_p50_ms"] = row["server_p50_ms"] - row["inproc_p50_ms"]
        table.append(row)
        print(
            f"| {c} | {row['inproc_throughput']:.0f} | {row['inproc_p50_ms']:.1f} | {row['inproc_p99_ms']:.1f} "
            f"| {row['server_throughput']:.0f} | {row['server_p50_ms']:.1f} | {row['server_p99_ms']:.1f} "
            f"| {row['ratio']:.2f} | {row['added_p50_ms']:+.1f} | {row['inproc_cpu_ms_per_image']:.2f} "
            f"| {row['server_cpu_ms_per_image']:.2f} | {row['client_cpu_ms_per_image']:.2f} | {row['errors']} |"
        )
    by_c = {r["concurrency"]: r for r in table}
    bars = {}
    if 16 in by_c:
        bars["c16_throughput_ratio>=0.85"] = by_c[16]["ratio"] >= 0.85
    if 1 in by_c:
        bars["c1_added_p50_ms<=15"] = by_c[1]["added_p50_ms"] <= 15
    print("bars:", json.dumps(bars))
    name = f"serve-{args.preset}" + ("" if args.per_request == 1 else f"-x{args.per_request}")
    out = Path(__file__).resolve().parent / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": args.preset, "config": vars(args), "rows": table, "bars": bars}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
