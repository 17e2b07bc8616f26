"""`fth demo`: the whole journey, end to end, on the built-in simulated camera (no network, no GPU).

Each step is one `fth` command run as a child process (fth.demo_procs), echoed as `$ fth ...` with its output in
`<workspace>/logs/`, so any step can be repeated by hand on a real stream:

    fth sim serve      the sim as a live HLS stream on 127.0.0.1 (background)
    fth collect        the collector daemon on that stream (background, stopped with SIGTERM)
    fth collect status / fth frames count
    fth train          the tiny MAE on the collected frames; registers the encoder
    fth embed          pooled vectors and token grids into the embedding store
    fth sim labels     the sim's ground truth for every collected frame, keyed by frame id
    fth heads fit      people count, time of day, depth, segmentation, detection
    fth eval           people count (pooled vectors) at 30 / 100 / all labels: the encoder vs its random init vs
                       raw pixels
    fth serve          gunicorn on a free loopback port (background), queried with server.client.Client

then the summary table and `<workspace>/report.md` (fth.report). Everything started is stopped in `finally`,
on Ctrl-C and on SIGTERM too. The workspace is the demo's own: a folder marked `.fth-demo` is wiped and reused.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from fth.demo_procs import Steps, guarded

log = logging.getLogger("fth.demo")
MARKER = ".fth-demo"
SIM_DAYS = 1.25  # simulated days during collection (see configs/demo_sim.yaml)
SOURCE = "sim"
# The tiny models' ops are too small to split across threads: on a shared 2-core machine one intra-op thread trained
# 100 MAE steps in ~14 s where two took 25-227 s (OpenMP threads spinning against other load).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the end-to-end demo on the simulated camera (no network, no GPU)")
    demo.add_argument("--workspace", default=None, help="the demo's own folder, wiped at start (default "
                      "workspace/demo, with --update workspace/demo-update)")  # fmt: skip
    demo.add_argument("--collect-seconds", type=float, default=None, help="collection time (default 120, quick 40)")
    demo.add_argument("--train-steps", type=int, default=None, help="MAE steps (default: configs/demo_mae.yaml)")
    demo.add_argument("--quick", action="store_true", help="CI size: 40 s of collection, 100 MAE and head steps")
    demo.add_argument("--requests", type=int, default=40, help="timed client round trips (default: 40)")
    demo.add_argument("--update", action="store_true", help="one encoder-update cycle instead (fth.demo_update): "
                      "the scene changes, fth update runs while a client queries the server")  # fmt: skip
    demo.set_defaults(func=run)


def prepare_workspace(root: Path) -> Path:
    """An empty demo workspace at `root`; a previous demo's (marked) folder is wiped, anything else is refused."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise SystemExit(f"fth demo: {root} is not empty and not a demo workspace; pick another --workspace")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by fth demo; wiped by the next one\n")
    return root


class Demo(Steps):
    """The demo run: its workspace, the steps it ran (fth.demo_procs.Steps), what it measured."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(Path(args.workspace) / "logs")
        self.args = args
        self.ws = Path(args.workspace)
        self.results: dict[str, Any] = {}

    # -- the journey ----------------------------------------------------------------------------------------------

    def collect(self, sim_sets: tuple[str, ...] = ()) -> None:
        """Sim -> HLS -> collector for `--collect-seconds`; `sim_sets`: extra `--set` items for the sim."""
        import yaml

        from fth.config import resolve_path
        from fth.procs import free_port
        from fth.report import frames_collected

        seconds = self.args.collect_seconds
        sim_dir, port = self.ws / "sim" / SOURCE, free_port()
        scale = round(SIM_DAYS * 86400 / seconds, 1)
        sim = self.background(
            "sim-serve",
            [
                "sim",
                "serve",
                "--out",
                sim_dir,
                "--port",
                port,
                "--config",
                "demo_sim",
                "--set",
                f"time_scale={scale}",
                *(x for s in sim_sets for x in ("--set", s)),
            ],
        )
        wait_for(lambda: ".ts" in read(sim_dir / "index.m3u8"), 30, "the sim's first HLS segment", sim)
        url = f"http://127.0.0.1:{port}/index.m3u8"
        cfg = yaml.safe_load(resolve_path("demo_collector").read_text())
        cfg["sources"][0]["url"] = url
        config = self.ws / "collector.yaml"
        config.write_text(f"# configs/demo_collector.yaml with the sim's URL ({url})\n" + yaml.safe_dump(cfg))
        collector = self.background("collect", ["collect", "--config", config, "--workspace", self.ws])
        t0 = time.monotonic()
        next_report = 10.0
        while (elapsed := time.monotonic() - t0) < seconds:
            if collector.proc.poll() is not None:
                raise RuntimeError(f"fth collect exited early ({collector.proc.returncode}); see {collector.log_path}")
            collector.remember_children()
            if elapsed >= next_report:
                print(f"  [{elapsed:4.0f} s] {frames_collected(self.ws / 'catalog.sqlite')} frames", flush=True)
                next_report += 10.0
            time.sleep(0.5)
        self.run("collect-status", ["collect", "status", "--workspace", self.ws], echo=True, ok=(0,))
        self.finish(collector, "collector stopped")
        self.finish(sim, "sim stopped")
        self.results["collect_seconds"] = seconds
        self.results["frames"] = frames_collected(self.ws / "catalog.sqlite", SOURCE)
        self.run("frames-count", ["frames", "--workspace", self.ws, "count"], echo=True)
        if self.results["frames"] < 20:
            raise RuntimeError(f"only {self.results['frames']} frames collected; see {collector.log_path}")

    def train(self, more: tuple[str, ...] = ()) -> None:
        """`fth train --config demo_mae` (`more`: extra arguments, e.g. `--until T`)."""
        from fth.report import training_curve

        steps = self.args.train_steps
        extra = ["--set", f"max_steps={steps}", "--set", f"panel_every={max(1, steps // 2)}"] if steps else []
        extra += list(more)
        step = self.run(
            "train",
            ["train", "--config", "demo_mae", "--workspace", self.ws, *extra],
            show=("steps ", "encoder ", "fth train"),
            env=ONE_THREAD,
        )
        self.results["encoder"] = (step.last_line("encoder ") or "").split()[0]
        run_dir = self.ws / "runs" / "demo"
        self.results["run_dir"] = str(run_dir)
        self.results["curve"] = training_curve(run_dir)

    def embed_and_label(self) -> None:
        self.run("embed", ["embed", "--workspace", self.ws, "--tokens", "--no-progress"], echo=True, env=ONE_THREAD)
        self.run("labels", ["sim", "labels", "--source", SOURCE, "--out", self.ws / "labels", "--workspace", self.ws],
                 echo=True)  # fmt: skip

    def fit_heads(self, tasks: tuple[str, ...] = ()) -> None:
        """`fth heads fit` for each demo task (`tasks`: only these)."""
        from fth.report import read_head

        lab = self.ws / "labels"
        fits = {
            "people_count": ["--labels", lab / "people.csv", "--config", "demo_heads"],
            # the sim's clock: the catalog's local time of day is the wall clock, which moves 2 minutes in the demo
            "time_of_day": ["--labels", lab / "time_of_day.csv", "--config", "demo_heads"],
            # label folders carry their units (depth/depth.json) and classes (segmentation/classes.json)
            "depth": ["--labels", lab / "depth", "--config", "demo_heads_dense"],
            "segmentation": ["--labels", lab / "segmentation", "--config", "demo_heads_dense"],
            "detection": ["--labels", lab / "boxes.json", "--config", "demo_heads_detect"],  # the sim's person boxes
        }  # fmt: skip
        quick = ["--set", "max_steps=100"] if self.args.quick else []
        heads = []
        for task, extra in fits.items():
            if tasks and task not in tasks:
                continue
            step = self.run(
                f"heads-{task}",
                ["heads", "fit", "--workspace", self.ws, "--task", task, *extra, *quick],
                echo=True,
                env=ONE_THREAD,
            )
            head_id = step.last_line("head:")
            if not head_id:
                raise RuntimeError(f"fth heads fit --task {task} printed no `head: <id>` line; see {step.log_path}")
            heads.append(read_head(self.ws / "heads" / head_id))
        self.results["heads"] = heads

    def label_curve(self) -> None:
        """`fth eval` on people count read as pooled vectors (seconds per fit), the setting where the demo recipe came
        closest to issue 12's bar in bench/pretrain.py (it does not meet it; README, `fth eval`): the demo's encoder
        against its random init and raw pixels at 30, 100 and all labels, 3 head seeds, every fit scored on the same
        latest frames."""
        from fth.report import read_eval

        out, labels = self.ws / "eval", self.ws / "labels" / "people.csv"
        argv = ["eval", "--workspace", self.ws, "--task", "people_count", "--labels", labels, "--sizes", "30,100,all",
                "--seeds", 3, "--features", "pooled", "--config", "demo_heads", "--out", out]  # fmt: skip
        self.run("eval", argv, echo=True, env=ONE_THREAD)
        self.results["eval"] = read_eval(out)

    def serve_and_query(self) -> None:
        from fth.procs import free_port

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = self.background("serve", ["serve", "--workspace", self.ws, "--bind", f"127.0.0.1:{port}"])
        wait_for(lambda: ready(url), 120, "the server's /readyz", server)
        print(f"\n$ python -c 'from server.client import Client; Client(\"{url}\").predict([...])'", flush=True)
        t0 = time.monotonic()
        self.results["served"], self.results["latency_ms"] = query(url, self.ws, self.args.requests)
        self.steps.append({"name": "client", "command": f"Client({url!r}).embed/.predict", "seconds": 0.0,
                           "log": str(self.logs / "client.log")})  # fmt: skip
        (self.logs / "client.log").write_text(self.results["served"])
        self.steps[-1]["seconds"] = time.monotonic() - t0
        for line in self.results["served"].splitlines():
            print(f"  {line}")
        self.finish(server, "server stopped")


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def wait_for(check, timeout: float, what: str, step) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if step.proc.poll() is not None:
            raise RuntimeError(f"{step.shown} exited ({step.proc.returncode}) before {what}:\n{step.output()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {timeout:.0f} s; see {step.log_path}")
        step.remember_children()
        time.sleep(0.2)


def ready(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def query(url: str, ws: Path, n: int) -> tuple[str, list[float]]:
    """Embed and predict a few collected frames through the Python client; time `n` one-image predict calls."""
    import csv

    from server.client import Client

    with open(ws / "labels" / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picks = rows[-3:]  # the latest frames: in every head's validation split
    client = Client(url)
    try:
        emb = client.embed([ws / r["path"] for r in picks])
        models = client.models()
        out = client.predict([ws / r["path"] for r in picks])
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            client.predict([ws / rows[-1 - i % len(rows)]["path"]])
            lat.append((time.perf_counter() - t0) * 1e3)
    finally:
        client.close()
    lines = [f"encoder {client.encoder_id}; embeddings {emb.shape}; heads served: {len(out)}"]
    served = [m.get("name", m.get("id")) for m in models.get("heads", [])] if isinstance(models, dict) else []
    if served:
        lines.append(f"heads: {', '.join(map(str, served))}")
    for k, r in enumerate(picks):
        got = {name: _short(v[k]) for name, v in out.items()}
        lines.append(f"frame {r['frame_id'][:12]}  true people={r['people']} tod={float(r['time_of_day']):.2f}h  "
                     f"predicted {got}")  # fmt: skip
    return "\n".join(lines) + "\n", lat


def _short(value: Any) -> Any:
    """A prediction for one line: numbers rounded, dense maps shown by their shape."""
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items() if not isinstance(v, list)} or "map"
    if isinstance(value, list):
        return f"map[{len(value)}x{len(value[0]) if value and isinstance(value[0], list) else ''}]"
    return value


def run(args: argparse.Namespace) -> int:
    from fth.report import format_table, summary_rows, write_report

    if args.update:
        from fth.demo_update import run_update

        return run_update(args)
    args.workspace = args.workspace or "workspace/demo"
    args.collect_seconds = args.collect_seconds or (40.0 if args.quick else 120.0)
    if args.quick and args.train_steps is None:
        args.train_steps = 100
    t0 = time.monotonic()
    demo = Demo(args)

    def journey() -> None:
        prepare_workspace(demo.ws)
        print(f"fth demo: workspace {demo.ws}, collecting for {args.collect_seconds:.0f} s", flush=True)
        demo.collect()
        demo.train()
        demo.embed_and_label()
        demo.fit_heads()
        demo.label_curve()
        demo.serve_and_query()

    rc = guarded(demo, "fth demo", journey)
    if rc:
        return rc
    demo.results["wall_s"] = time.monotonic() - t0
    demo.results["steps"] = demo.steps
    report = write_report(demo.ws, demo.results)
    print("\nSummary\n" + format_table(summary_rows(demo.results)))
    print(f"\nreport: {report}  (logs in {demo.logs})")
    return 0
