"""The demo's results, read back from the files each step wrote: summary table and markdown report.

Everything here reads the workspace only (no model, no torch): the catalog (frames collected), the training run's
`metrics.jsonl` / `summary.json` / `panels/*.png`, each head's `heads/<id>/metrics.json` and plot PNGs, and the
client timings the demo measured. The report is GitHub-flavoured markdown with relative image links, so the
workspace folder can be moved or zipped and still renders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class HeadResult:
    task: str
    head_id: str
    metric: str
    value: float | None
    baseline: float | None
    higher_is_better: bool
    n_train: int
    n_val: int
    n_test: int = 0
    unit: str = ""
    probe: float | None = None  # a linear probe's value of the metric, when the fit ran one
    extra: dict[str, Any] = field(default_factory=dict)  # other metrics of note (e.g. detection's implied count)
    plots: list[Path] = field(default_factory=list)

    @property
    def beats_baseline(self) -> bool | None:
        if self.value is None or self.baseline is None:
            return None
        return self.value > self.baseline if self.higher_is_better else self.value < self.baseline


def frames_collected(catalog: Path, source: str | None = None) -> int:
    """Frames in the catalog (of one source): `catalog` is the workspace's catalog.sqlite; a workspace.yaml beside it
    may name PostgreSQL instead (store.backends)."""
    from store.backends import CatalogMissing, open_catalog

    try:
        with open_catalog(catalog.parent, create=False, db_path=catalog) as cat:
            return cat.count(source)
    except CatalogMissing:
        return 0


def training_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) pairs from the run's metrics.jsonl, in order."""
    path = run_dir / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if "loss" in row and "step" in row:
                out.append((int(row["step"]), float(row["loss"])))
    return out


def read_head(folder: Path) -> HeadResult:
    """One head's metrics.json (written by `fth heads fit`: it names its primary metric, direction and unit) and the
    PNGs beside it."""
    doc = json.loads((folder / "metrics.json").read_text())
    task, metric, higher = doc["task"], doc["primary"], bool(doc["higher_is_better"])
    value = doc.get("metrics", {}).get(metric)
    base = doc.get("baseline", {}).get(metric)
    probe = (doc.get("summary", {}).get("probe") or {}).get(metric)
    extra = {k: v for k, v in doc.get("metrics", {}).items() if k == "count_mae"}
    return HeadResult(
        task=task,
        head_id=doc.get("head_id", folder.name),
        metric=metric,
        value=None if value is None else float(value),
        baseline=None if base is None else float(base),
        higher_is_better=higher,
        n_train=int(doc.get("n_train", 0)),
        n_val=int(doc.get("n_val", 0)),
        n_test=int(doc.get("n_test", 0)),
        unit=doc.get("unit", ""),
        probe=None if probe is None else float(probe),
        extra=extra,
        plots=sorted(folder.rglob("*.png")),
    )


def read_eval(folder: Path) -> dict[str, Any]:
    """`fth eval`'s eval.json (first task) as {task, metric, unit, columns, rows: [(labels, [mean per column],
    baseline)], plot}; the means are over head seeds."""
    doc = json.loads((Path(folder) / "eval.json").read_text())
    task = doc["tasks"][0]
    rows = []
    for r in task["rows"]:
        means = [sum(v) / len(v) if v else None for v in (r["results"].get(c, []) for c in task["columns"])]
        rows.append((r["labels"], means, r["baseline"]))
    plot = Path(folder) / f"{task['task']}.png"
    return {"task": task["task"], "metric": task["primary"], "unit": task.get("unit", ""), "split": task["split"],
            "columns": task["columns"], "rows": rows, "plot": str(plot) if plot.exists() else None}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(item, value) rows of the summary table."""
    rows = [("frames collected", f"{results['frames']} in {results['collect_seconds']:.0f} s")]
    curve = results.get("curve") or []
    if curve:
        rows.append(("MAE loss (start -> end)", f"{curve[0][1]:.4f} -> {curve[-1][1]:.4f} over {curve[-1][0]} steps"))
    for h in results.get("heads", []):
        mark = {True: "better", False: "NOT better", None: "?"}[h.beats_baseline]
        probe = f", linear probe {_fmt(h.probe)}" if h.probe is not None else ""
        count = f", implied count MAE {_fmt(h.extra['count_mae'])}" if "count_mae" in h.extra else ""
        unit = f" {h.unit}" if h.unit else ""
        text = f"{h.metric} {_fmt(h.value)} vs baseline {_fmt(h.baseline)}{unit}{probe}{count}"
        text += f" ({mark}; test n={h.n_test})"
        rows.append((f"head {h.task}", " ".join(text.split())))
    ev = results.get("eval")
    if ev and ev["rows"]:
        labels, means, base = ev["rows"][0]
        cells = ", ".join(f"{c} {_fmt(m)}" for c, m in zip(ev["columns"], means, strict=True))
        rows.append((f"eval {ev['task']} @{labels}", f"{ev['metric']} {cells} (baseline {_fmt(base)})"))
    lat = results.get("latency_ms")
    if lat:
        rows.append(
            (
                "server round trip",
                f"p50 {percentile(lat, 50):.1f} ms, p90 {percentile(lat, 90):.1f} ms "
                f"(predict, 1 image, {len(lat)} calls)",
            )
        )
    rows.append(("demo wall time", f"{results['wall_s']:.0f} s"))
    return rows


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def write_report(ws: Path, results: dict[str, Any]) -> Path:
    """`<ws>/report.md`: the summary, the steps with their commands and logs, and every plot."""
    rel = lambda p: Path(p).resolve().relative_to(ws.resolve()).as_posix()  # noqa: E731
    lines = ["# fth demo report", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(results)]
    lines += ["", "## Steps", "", "| step | command | seconds | log |", "|---|---|---|---|"]
    for s in results.get("steps", []):
        lines.append(f"| {s['name']} | `{s['command']}` | {s['seconds']:.1f} | [log]({rel(s['log'])}) |")
    run_dir = results.get("run_dir")
    if run_dir:
        panels = sorted(Path(run_dir).glob("panels/*.png"))
        lines += ["", "## MAE reconstructions", "", "Rows: original | masked | reconstruction (visible patches kept)."]
        for p in [panels[0], panels[-1]] if len(panels) > 1 else panels:
            lines += ["", f"{p.stem}:", "", f"![{p.stem}]({rel(p)})"]
        curve = results.get("curve") or []
        if curve:
            picks = curve[:: max(1, len(curve) // 10)] + ([curve[-1]] if len(curve) > 1 else [])
            lines += ["", "| step | loss |", "|---|---|"] + [f"| {s} | {v:.4f} |" for s, v in dict(picks).items()]
    lines += ["", "## Heads", ""]
    for h in results.get("heads", []):
        lines += [
            f"### {h.task} (`{h.head_id}`)",
            "",
            f"{h.metric} {_fmt(h.value)} against baseline {_fmt(h.baseline)} (the best constant)"
            + (f" and a linear probe's {_fmt(h.probe)}" if h.probe is not None else "")
            + f", on {h.n_test} test frames (the latest by capture time; {h.n_train} training frames, {h.n_val} "
            "validation frames chose the step).",
            "",
        ]
        lines += [f"![{h.task} {p.stem}]({rel(p)})" for p in h.plots] + [""]
    ev = results.get("eval")
    if ev:
        lines += ["## Label efficiency (`fth eval`)", "",
                  f"{ev['task']}: {ev['metric']} ({ev['unit'] or 'unitless'}) on {ev['split']}; mean over head seeds.",
                  "", "| labels | " + " | ".join(ev["columns"]) + " | baseline |",
                  "|---" * (len(ev["columns"]) + 2) + "|"]  # fmt: skip
        lines += [f"| {n} | " + " | ".join(_fmt(m) for m in means) + f" | {_fmt(b)} |" for n, means, b in ev["rows"]]
        if ev["plot"]:
            lines += ["", f"![label efficiency]({rel(ev['plot'])})"]
        lines += [""]
    served = results.get("served")
    if served:
        lines += ["## Served predictions (Python client)", "", "```", served.rstrip(), "```", ""]
    path = ws / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (ws / "summary.json").write_text(json.dumps(to_json(results), indent=1) + "\n")
    return path


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in results.items() if k not in ("heads", "served")}
    heads = results.get("heads", [])
    out["heads"] = [{k: v for k, v in vars(h).items() if k != "plots"} | {"plots": len(h.plots)} for h in heads]
    out["summary"] = dict(summary_rows(results))
    return out
