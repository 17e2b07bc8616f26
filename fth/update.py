"""`fth update`: keep the encoder current without breaking a head. One command runs the whole cycle, each step a
printed `fth` command in its own process (fth.demo_procs.Steps, logs under `<out>/logs/`), so any step can be rerun by
hand:

    fth drift           the served encoder's pooled embeddings: recent windows vs the reference (stop when none is
                        flagged, unless --force)
    fth train --init    continued pretraining from the served encoder on the frames since the first flagged window,
                        with a replay share of older frames (--replay)
    fth embed           the new encoder's pooled vectors
    fth heads adapt     maps from the new encoder's features to the old one's: every old head serves on the new one
    fth heads refit     every old head refit on the new encoder from its recorded labels, each through the gate
    fth serve promote   the new encoder with the gate's head set (promoted refits, else old heads through their
                        adapters); running servers switch without downtime. --dry-run stops before this step.

then `<out>/update.md` (with `heads.png`: each head's metric, old vs adapted vs refit, and the drift plot) and
`update.json`. `<out>` defaults to `<workspace>/updates/<UTC time>`. Exit codes: 0 done (or nothing to do), 1 a step
failed (its log's tail is printed), 2 wrong input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WS_HELP = "workspace folder (default: $FTH_WORKSPACE or ./workspace)"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models on few cores: see fth.demo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("update", help="drift -> continued pretraining -> adapt -> refit -> gate -> swap, one command")
    p.add_argument("--reference", required=True, metavar="DAY..DAY",
                   help="drift reference window (as fth drift: days, hours or minutes)")  # fmt: skip
    p.add_argument("--since", help="first drift window scored (default: the first after the reference)")
    p.add_argument("--window", default="1d", help="drift window: 1d, 1h or Nm (default 1d)")
    p.add_argument("--encoder", help="the encoder to update (default: the served one in release.json, else newest)")
    p.add_argument("--force", action="store_true", help="update even when no drift is flagged")
    p.add_argument("--train-config", default="demo_mae", help="fth train preset or YAML (default demo_mae)")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE", help="fth train --set items")
    p.add_argument("--replay", type=float, default=0.3, help="share of older frames replayed (default 0.3)")
    p.add_argument("--adapt-frames", type=int, default=300, help="newest frames the adapters fit on (default 300)")
    p.add_argument("--tolerance", type=float, default=0.02, help="gate: relative metric tolerance (default 0.02)")
    p.add_argument("--max-flip-rate", type=float, default=0.05, help="gate: negative flip bound (default 0.05)")
    p.add_argument("--dry-run", action="store_true", help="stop before the swap (nothing served changes)")
    p.add_argument("--out", help="folder for the report and logs (default: <workspace>/updates/<UTC time>)")
    p.add_argument("--workspace", default=None, help=WS_HELP)
    p.set_defaults(func=cmd_update)


def first_changed_time(ws, flagged_window: str, window: str, source_ids: set[str]) -> str:
    """The UTC capture time of the earliest frame in `flagged_window` or later (the continued run's `--since`)."""
    from heads.drift import window_key
    from store.frame_index import FrameIndex

    rows = [r for r in FrameIndex(ws.root, ws.catalog).rows if not source_ids or r.source in source_ids]
    times = [r.captured_at for r in rows if window_key(r.local_day, r.local_tod, window) >= flagged_window]
    if not times:
        raise RuntimeError(f"no frames in drift window {flagged_window} or later")
    return min(times)  # captured_at is UTC ISO text, which sorts in time order


class Update:
    """One update cycle: its folder, its steps, what they decided."""

    def __init__(self, args: argparse.Namespace, out: Path):
        from fth.demo_procs import Steps

        self.args, self.out = args, out
        self.steps = Steps(out / "logs")
        self.doc: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "dry_run": args.dry_run}

    def ws_args(self) -> list[str]:
        return ["--workspace", self.args.workspace] if self.args.workspace else []

    def drift(self, old: str) -> list[dict[str, Any]]:
        a = self.args
        argv = ["drift", *self.ws_args(), "--encoder", old, "--reference", a.reference, "--window", a.window,
                "--embed", "--out", self.out / "drift"]  # fmt: skip
        if a.since:
            argv += ["--since", a.since]
        step = self.steps.run("drift", argv, echo=True, ok=(0, 1), env=ONE_THREAD)
        doc = json.loads((self.out / "drift" / "drift.json").read_text())
        self.doc["drift"] = {"rc": step.proc.returncode, "windows": doc["windows"], "method": doc["method"],
                             "threshold": doc["threshold"], "plot": "drift/drift.png"}  # fmt: skip
        return [w for w in doc["windows"] if w.get("flagged")]

    def train(self, old: str, since: str) -> str:
        a = self.args
        name = f"update-{old.removeprefix('encoder-')[:8]}"
        sets = [f"data.replay_fraction={a.replay}", f"name={name}", "progress=false", *a.train_set]
        argv = ["train", "--config", a.train_config, *self.ws_args(), "--init", old, "--since", since,
                *(x for s in sets for x in ("--set", s))]  # fmt: skip
        step = self.steps.run("train", argv, show=("steps ", "encoder ", "fth train"), env=ONE_THREAD)
        line = step.last_line("encoder ")
        if not line:
            raise RuntimeError(f"fth train printed no `encoder <id>` line; see {step.log_path}")
        return line.split()[0]

    def adapt_refit(self, old: str, new: str) -> dict[str, Any]:
        a = self.args
        self.steps.run("embed", ["embed", *self.ws_args(), "--encoder", new, "--no-progress"], echo=True,
                       env=ONE_THREAD)  # fmt: skip
        self.steps.run("adapt", ["heads", "adapt", *self.ws_args(), "--from", old, "--to", new, "--frames",
                                 a.adapt_frames, "--out", self.out], echo=True, env=ONE_THREAD)  # fmt: skip
        self.steps.run("refit", ["heads", "refit", *self.ws_args(), "--encoder", new, "--from", old, "--tolerance",
                                 a.tolerance, "--max-flip-rate", a.max_flip_rate, "--out", self.out],
                       echo=True, env=ONE_THREAD)  # fmt: skip
        self.doc["adapt"] = json.loads((self.out / "adapt.json").read_text())
        gate = json.loads((self.out / "gate.json").read_text())
        self.doc["gate"] = gate
        return gate

    def promote(self, new: str, heads: list[str], note: str) -> None:
        argv = ["serve", "promote", *self.ws_args(), "--encoder", new, "--heads", ",".join(heads), "--note", note]
        self.steps.run("promote", argv, echo=True)


def cmd_update(args: argparse.Namespace) -> int:
    from fth.demo_procs import guarded
    from heads.drift import DriftError, parse_days
    from store.artifacts import ArtifactError, Registry
    from store.paths import Workspace
    from store.release import ReleaseError, served

    ws = Workspace.at(args.workspace)
    try:
        parse_days(args.reference)
        if not 0.0 <= args.replay < 1.0:
            raise ValueError(f"--replay {args.replay}: expected a share in [0, 1)")
        registry = Registry(ws.artifacts)
        old = registry.card(args.encoder).id if args.encoder else served(ws, registry, ": train one (fth train)")[0]
    except (DriftError, ArtifactError, ReleaseError, ValueError) as e:
        print(f"fth update: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else ws.root / "updates" / stamp
    out.mkdir(parents=True, exist_ok=True)
    up = Update(args, out)
    up.doc |= {"old": old, "workspace": str(ws.root), "reference": args.reference, "window": args.window}
    t0 = time.monotonic()
    print(f"fth update: encoder {old}, report in {out}", flush=True)

    def cycle() -> None:
        flagged = up.drift(old)
        if not flagged and not args.force:
            up.doc["outcome"] = f"no drift flagged: encoder {old} stays (pass --force to update anyway)"
            return
        windows = sorted(w["window"] for w in flagged) if flagged else None
        first = windows[0] if windows else up.doc["drift"]["windows"][0]["window"]
        since = first_changed_time(ws, first, args.window, {w["source"] for w in flagged})
        up.doc |= {"flagged": windows or [], "since": since}
        new = up.train(old, since)
        up.doc["new"] = new
        gate = up.adapt_refit(old, new)
        up.doc["serve"] = gate["serve"]
        if args.dry_run:
            up.doc["outcome"] = f"dry run: {new} and heads {gate['serve']} would be promoted (nothing swapped)"
            return
        note = f"fth update: drift in {', '.join(windows) if windows else 'none (forced)'}; gate {out}"
        up.promote(new, gate["serve"], note)
        up.doc["outcome"] = f"promoted {new} with heads {gate['serve']}"

    rc = guarded(up.steps, "fth update", cycle)
    if rc:
        up.doc["outcome"] = "interrupted" if rc == 130 else "failed: see the step's log"
    report = write_report(out, up.doc, up.steps.steps, time.monotonic() - t0)
    if not rc:
        print(f"\n{up.doc['outcome']}")
    print(f"report: {report}")
    return rc


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def heads_plot(path: Path, gate: dict[str, Any]) -> Path | None:
    """One panel per head: its primary metric for the old head (old features), the old head through the adapter
    (new features) and the refit head (new features), the promoted one outlined."""
    from heads.plots import _plt, _save

    rows = [h for h in gate.get("heads", []) if h.get("old_metric") is not None]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, h in zip(axes[0], rows, strict=True):
        labels = ["old", "adapted", "refit"]
        values = [h.get("old_metric"), h.get("adapted_metric"), h.get("refit_metric")]
        keep = [(lbl, v) for lbl, v in zip(labels, values, strict=True) if v is not None]
        bars = ax.bar([k for k, _ in keep], [v for _, v in keep], color=["0.6", "tab:blue", "tab:orange"][: len(keep)])
        winner = "refit" if h.get("decision") == "promote" else "adapted"
        for bar, (lbl, _) in zip(bars, keep, strict=True):
            if lbl == winner:
                bar.set_edgecolor("black")
                bar.set_linewidth(2)
        better = "higher" if h.get("higher_is_better") else "lower"
        ax.set_title(f"{h['name']}\n{h.get('primary')} ({better} is better)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
    fig.tight_layout()
    fig.suptitle("held-out frames: old head vs adapted vs refit (outlined: served after the gate)", fontsize=9,
                 y=1.06)  # fmt: skip
    return _save(fig, path)


def write_report(out: Path, doc: dict[str, Any], steps: list[dict[str, Any]], seconds: float) -> Path:
    """`update.md` and `update.json` in `out`."""
    doc = {**doc, "steps": steps, "seconds": round(seconds, 1)}
    (out / "update.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    lines = ["# fth update", "", f"**{doc.get('outcome', '')}**", "",
             f"Encoder {doc.get('old')} -> {doc.get('new', '(none)')}; {seconds:.0f} s.", ""]  # fmt: skip
    drift = doc.get("drift")
    if drift:
        lines += ["## Drift", "", f"{drift['method']} against {doc['reference']} (threshold {drift['threshold']:g}); "
                  f"first changed frame used for training: {doc.get('since', '-')}", "",
                  "| source | window | frames | score | drift |", "|---|---|---|---|---|"]  # fmt: skip
        for w in drift["windows"]:
            lines.append(f"| {w['source']} | {w['window']} | {w['frames']} | {_fmt(w.get('score'))} | "
                         f"{'**yes**' if w.get('flagged') else ''} |")  # fmt: skip
        lines += ["", f"![drift]({drift['plot']})", ""]
    adapt = doc.get("adapt")
    if adapt:
        lines += ["## Adapters (new features -> old)", "", "| adapter | features | method | held-out R^2 |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {a['id']} | {a['key']} | {a['method']} | {_fmt(a['heldout_r2'])} |" for a in adapt["adapters"]]
        lines.append("")
    gate = doc.get("gate")
    if gate:
        g = gate["gate"]
        lines += ["## Heads: old vs adapted vs refit, and the gate", "",
                  f"Same held-out frames per head; promoted when the metric is within {g['tolerance']:.0%} of the old "
                  f"head's and at most {g['max_flip_rate']:.0%} of frames flip (right before, worse now).", "",
                  "| head | labels | metric | old | adapted | refit | negative flips | decision | why |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for h in gate["heads"]:
            flips = f"{h['flips']}/{h['n']}" if h.get("flips") is not None else "-"
            lines.append(f"| {h['name']} | {h.get('labels')} | {h.get('primary', '-')} | {_fmt(h.get('old_metric'))} "
                         f"| {_fmt(h.get('adapted_metric'))} | {_fmt(h.get('refit_metric'))} | {flips} | "
                         f"{h.get('decision')} | {h.get('reason', '')} |")  # fmt: skip
        plot = heads_plot(out / "heads.png", gate)
        if plot:
            lines += ["", "![heads](heads.png)"]
        lines += ["", f"Served on the new encoder: {', '.join(gate['serve']) or 'no heads'}"
                  + (f"; unservable: {', '.join(gate['unservable'])}" if gate["unservable"] else ""), ""]  # fmt: skip
    lines += ["## Commands", "", "| step | command | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | `{s['command']}` | {s['seconds']:.1f} |" for s in steps]
    (out / "update.md").write_text("\n".join(lines) + "\n")
    return out / "update.md"
