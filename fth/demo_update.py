"""`fth demo --update`: one encoder-update cycle on the simulated camera, end to end, every step an `fth` command.

    fth sim serve / fth collect   the sim with a scene change (lighting) switched on at a minute boundary ~75 s in;
                                  collection runs a minute past it
    fth train --until T           the old encoder, on the frames before the change
    fth sim labels / heads fit    people count and time of day on the old encoder
    fth serve promote, fth serve  the old set served (background); a client thread queries it throughout
    fth update                    drift (1-minute windows) -> fth train --init -> embed -> adapt -> refit -> gate ->
                                  fth serve promote: the running server swaps while the client keeps querying

then `<workspace>/report.md`: the swap as the client saw it (requests, failures, which encoder answered when) and the
update's own report (update.md: drift, adapters, old vs adapted vs refit per head, the gate's decisions).
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fth.demo import SOURCE, Demo, prepare_workspace, ready, wait_for
from fth.demo_procs import guarded

BEFORE_S = 75.0  # at least this much collection before the change (the old encoder's frames)
AFTER_S = 65.0  # collection after the change: one whole 1-minute drift window
TRAIN_STEPS = 300  # each of the two MAE runs (the demo's 1000 would not fit the budget twice)


@dataclass
class Traffic:
    """What a client querying the server throughout saw: per answer (seconds since start, encoder id or error)."""

    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, url: str, image: Path) -> None:
        from server.client import Client

        client, t0 = Client(url), time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    client.predict([image])
                    self.answers.append((time.monotonic() - t0, client.encoder_id or "?"))
                except Exception as e:  # every failure is counted and shown, never raised out of the thread
                    self.failures.append((time.monotonic() - t0, f"{type(e).__name__}: {e}"))
                time.sleep(0.05)
        finally:
            client.close()

    def summary(self) -> dict[str, Any]:
        switches = [(t, e) for i, (t, e) in enumerate(self.answers) if i == 0 or e != self.answers[i - 1][1]]
        return {"requests": len(self.answers) + len(self.failures), "failed": len(self.failures),
                "first_errors": self.failures[:3], "encoders_in_order": [e for _, e in switches],
                "switched_at_s": [round(t, 1) for t, _ in switches[1:]]}  # fmt: skip


class UpdateDemo(Demo):
    def change_plan(self) -> tuple[list[str], float, float]:
        """(sim --set items, collection seconds, the change's wall time): the change on the first minute boundary at
        least BEFORE_S after now, so 1-minute drift windows split cleanly into before and after."""
        from collector.config import SimConfig
        from fth.config import build

        fps = build(SimConfig, "demo_sim").fps
        now = time.time()
        change = math.ceil((now + BEFORE_S) / 60.0) * 60.0
        index = round((change - now) * fps)
        return [f"change_at_index={index}", "change=lighting"], change - now + AFTER_S, change

    def windows(self, change: float) -> str:
        """The drift reference: the 1-minute windows wholly before the change, as fth drift spells them (keys are
        in the source's local time, so they are read off the frames, not computed from the UTC change time)."""
        from datetime import UTC, datetime

        from heads.drift import window_key
        from store.frame_index import FrameIndex

        cut = datetime.fromtimestamp(change, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # captured_at's own form
        rows = FrameIndex(self.ws, self.ws / "catalog.sqlite").rows
        key = {r.id: window_key(r.local_day, r.local_tod, "1m") for r in rows}
        after = [key[r.id] for r in rows if r.captured_at >= cut]
        keys = sorted({key[r.id] for r in rows if r.captured_at < cut and (not after or key[r.id] < min(after))})
        if not keys:
            raise RuntimeError("no whole minute of frames before the scene change")
        return f"{keys[0]}..{keys[-1]}"

    def serve(self) -> tuple[Any, str]:
        from fth.procs import free_port

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = self.background("serve", ["serve", "--workspace", self.ws, "--bind", f"127.0.0.1:{port}"])
        wait_for(lambda: ready(url), 120, "the server's /readyz", server)
        return server, url


def run_update(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    args.workspace = args.workspace or "workspace/demo-update"
    args.train_steps = args.train_steps or (60 if args.quick else TRAIN_STEPS)
    t0 = time.monotonic()
    demo = UpdateDemo(args)
    traffic = Traffic()

    def cycle() -> None:
        prepare_workspace(demo.ws)
        sim_sets, seconds, change = demo.change_plan()
        args.collect_seconds = seconds
        when = datetime.fromtimestamp(change, UTC)
        print(f"fth demo --update: workspace {demo.ws}; the scene changes at {when:%H:%M:%S} UTC, collecting for "
              f"{seconds:.0f} s", flush=True)  # fmt: skip
        demo.collect(tuple(sim_sets))
        demo.train(("--until", when.isoformat()))
        old = demo.results["encoder"]
        demo.run("labels", ["sim", "labels", "--source", SOURCE, "--out", demo.ws / "labels", "--workspace", demo.ws],
                 echo=True)  # fmt: skip
        demo.fit_heads(("people_count", "time_of_day"))
        heads = [h.head_id for h in demo.results["heads"]]
        note = "fth demo --update: before the change"
        demo.run("promote-old", ["serve", "promote", "--workspace", demo.ws, "--encoder", old, "--heads",
                                 ",".join(heads), "--note", note], echo=True)  # fmt: skip
        server, url = demo.serve()
        image = next(p for p in sorted((demo.ws / "frames").rglob("*.jpg")))
        thread = threading.Thread(target=traffic.run, args=(url, image), daemon=True)
        thread.start()
        print(f"\n(a client thread queries {url}/v1/predict every 50 ms from now on)", flush=True)
        reference = demo.windows(change)
        steps = [x for s in (f"max_steps={args.train_steps}", "panel_every=0") for x in ("--train-set", s)]
        demo.run("update", ["update", "--workspace", demo.ws, "--reference", reference, "--window", "1m",
                            "--encoder", old, "--adapt-frames", 200, *steps, "--out", demo.ws / "update"],
                 echo=True)  # fmt: skip
        time.sleep(2.0)  # answers after the swap
        traffic.stop.set()
        thread.join(timeout=30)
        demo.run("serve-status", ["serve", "status", "--workspace", demo.ws], echo=True)
        demo.finish(server, "server stopped")

    rc = guarded(demo, "fth demo --update", cycle, cleanup=traffic.stop.set)
    if rc:
        return rc
    return report(demo, traffic.summary(), time.monotonic() - t0)


def report(demo: UpdateDemo, swap: dict[str, Any], seconds: float) -> int:
    import json

    up = json.loads((demo.ws / "update" / "update.json").read_text())
    lines = ["# fth demo --update", "",
             f"{demo.results['frames']} frames collected; the scene's lighting changed partway. Old encoder "
             f"{up['old']} (trained on the frames before the change), new encoder {up.get('new')} (continued from it "
             f"on the frames since {up.get('since')}). {seconds:.0f} s in all.", "",
             "## The swap, as a client saw it", "",
             f"{swap['requests']} predict requests while `fth update` ran, **{swap['failed']} failed**; encoders that "
             f"answered, in order: {' -> '.join(swap['encoders_in_order'])} (switched at "
             f"{', '.join(map(str, swap['switched_at_s'])) or '-'} s).", "",
             "## The update", "", (demo.ws / "update" / "update.md").read_text().split("\n", 2)[2]]  # fmt: skip
    if swap["failed"]:
        lines.insert(8, f"First errors: {swap['first_errors']}")
    text = "\n".join(lines).replace("](drift/", "](update/drift/").replace("](heads.png", "](update/heads.png")
    (demo.ws / "report.md").write_text(text)
    (demo.ws / "summary.json").write_text(json.dumps({"swap": swap, "update": up, "seconds": seconds}, indent=1,
                                                     default=str) + "\n")  # fmt: skip
    print("\nSummary")
    print(f"  drift flagged      {', '.join(up.get('flagged') or []) or 'none'}")
    print(f"  encoders           {up['old']} -> {up.get('new')}")
    for h in (up.get("gate") or {}).get("heads", []):
        print(f"  head {h['name']:<13} {h.get('primary')} old {_f(h.get('old_metric'))} adapted "
              f"{_f(h.get('adapted_metric'))} refit {_f(h.get('refit_metric'))}: {h.get('decision')}")  # fmt: skip
    print(f"  swap under load    {swap['requests']} requests, {swap['failed']} failed, answers from "
          f"{' -> '.join(swap['encoders_in_order'])}")  # fmt: skip
    print(f"  demo wall time     {seconds:.0f} s")
    print(f"\nreport: {demo.ws / 'report.md'}  (logs in {demo.logs})")
    return 0 if not swap["failed"] else 1


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"
