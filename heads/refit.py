"""`fth heads refit --encoder NEW [--from OLD]`: every head of OLD refit on NEW's features from its recorded fit
request (same labels, task, recipe, preset, overrides, split), each then put through the gate.

For each head of OLD (`heads.lineage.check_labels` says what became of its labels):

    unchanged     refit on the same labels
    changed       refit on the current labels, and the report says so (digest and counts before and after)
    vanished      not refit: its label file is gone; the old head stays in service through the adapter
    unreadable    not refit: its labels no longer read (the error is in the report)
    unrecorded    not refit: its card predates recorded fit requests (refit it by hand with `fth heads fit`)

A refit head is registered on NEW with `parents.refit_of` = the old head. The gate (`heads.gate`) compares it with
the old head on the same held-out frames (the old head on OLD's features, the refit on NEW's) and, when an adapter
exists, also measures the old head through it. The decision, both metrics and the flip rate go on the refit head's
card (`metrics.gate`) and into `gate.json`, whose `serve` list is the head set for NEW: each promoted refit head, and
for every other old head the old head itself (it loads behind the adapter on NEW). A head that has neither a
promoted refit nor an adapter is listed under `unservable`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from heads.gate import KEEP, PROMOTE, GateConfig, compare, decide, evaluate
from heads.lineage import REFITTABLE, check_labels, features, held_out
from heads.pipeline import Embed

ReportFn = Callable[[str], None]


def parent_encoder(card) -> str | None:
    """The encoder a continued encoder's card names as its parent (`parents.init` / `parent` / `encoder`)."""
    for key in ("init", "parent", "encoder", "from"):
        value = card.parents.get(key)
        if isinstance(value, str) and value.startswith("encoder-"):
            return value
    return None


def run_refit(
    workspace: str | None, new: str, old: str | None = None, gate: GateConfig | None = None,
    shuffle_labels: bool = False, embed_for: Callable[[str], Embed] | None = None, report: ReportFn = print,
    out: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Refit every head of `old` on `new`, gate each, write and return `gate.json` (under `out`, default
    `<workspace>/updates/<OLD>-to-<NEW>`).

    Args:
        old: the encoder whose heads are refit (default: the parent NEW's card names).
        shuffle_labels: refit on labels permuted among frames (a control the gate must refuse).
        embed_for: encoder id -> its embed step (None: every feature must already be stored).
    """
    from heads.adapt import find_adapter
    from heads.artifact import KIND as HEAD
    from heads.artifact import load_head
    from heads.fit import predict_outputs
    from heads.pipeline import run_fit
    from store.artifacts import Registry
    from store.frame_index import FrameIndex
    from store.fsutil import atomic_write
    from store.paths import Workspace

    gate = gate or GateConfig()
    ws = Workspace.at(workspace)
    registry = Registry(ws.artifacts)
    new = registry.card(new, "encoder", "--encoder").id
    if old is None:
        old = parent_encoder(registry.card(new))
        if old is None:
            raise ValueError(f"encoder {new}'s card names no parent encoder: pass --from OLD")
    old = registry.card(old, "encoder", "--from").id
    if old == new:
        raise ValueError(f"--from and --encoder are the same encoder {old}")
    folder = Path(out) if out else ws.root / "updates" / f"{old}-to-{new}"
    index = FrameIndex(ws.root, ws.catalog)
    embed_old, embed_new = (embed_for(old), embed_for(new)) if embed_for else (None, None)
    doc: dict[str, Any] = {"from": old, "to": new, "gate": dataclasses.asdict(gate), "shuffled_labels": shuffle_labels,
                           "heads": [], "serve": [], "unservable": []}  # fmt: skip
    for card in [c for c in registry.list(HEAD) if c.parents.get("encoder") == old]:
        name = card.name or card.id
        row: dict[str, Any] = {"old_head": card.id, "name": name, "task": card.config["task"]["name"],
                               "refit_head": None}  # fmt: skip
        check = check_labels(card, workspace, index)
        row.update(labels=check.status, labels_note=check.reason)
        adapter = find_adapter(registry, old, new, _recipe(card))
        row["adapter"] = adapter.id if adapter else None
        if check.status not in REFITTABLE:
            row.update(decision=KEEP, reason=f"not refit: {check.reason}")
            report(f"{name} ({card.id}): NOT REFIT ({check.status}): {check.reason}")
            _serve_old(doc, row)
            doc["heads"].append(row)
            continue
        if check.status != "unchanged":
            report(f"{name} ({card.id}): {check.reason}")
        req = dataclasses.replace(check.req, encoder=new, shuffle_labels=shuffle_labels, name=card.name,
                                  out=str(folder / "heads" / card.id))  # fmt: skip
        rep = run_fit(req, embed_new, report=lambda line, n=name: report(f"{n}: {line}"),
                      parents={"refit_of": card.id})  # fmt: skip
        row["refit_head"] = rep.head_id
        old_head, refit = load_head(card.id, registry, old), load_head(rep.head_id, registry, new)
        ho = held_out(old_head.task, check.labels, check.req, index)
        x_old = features(ws, index, old, ho.ids, old_head.recipe, embed_old, report)
        x_new = features(ws, index, new, ho.ids, old_head.recipe, embed_new, report)
        cmp = compare(old_head.task, predict_outputs(old_head.module, x_old), predict_outputs(refit.module, x_new),
                      ho.target)  # fmt: skip
        adapted_metric = None
        if adapter is not None:
            adapted = load_head(card.id, registry, new)
            adapted_out = predict_outputs(adapted.module, x_new)
            adapted_metric = evaluate(old_head.task, adapted_out, ho.target).get(cmp["primary"])
        decision, reason = decide(old_head.task, cmp, gate)
        verdict = {"decision": decision, "reason": reason, "old_head": card.id, "primary": cmp["primary"],
                   "higher_is_better": cmp["higher_is_better"], "old_metric": cmp["old_primary"],
                   "refit_metric": cmp["new_primary"], "adapted_metric": adapted_metric, "flips": cmp["flips"],
                   "flip_rate": cmp["flip_rate"], "n": cmp["n"], "part": ho.part, "tolerance": gate.tolerance,
                   "max_flip_rate": gate.max_flip_rate, "labels": check.status}  # fmt: skip
        registry.update_metrics(rep.head_id, {"gate": verdict})
        row.update({k: v for k, v in verdict.items() if k != "old_head"})
        report(f"{name}: {decision.upper()} refit {rep.head_id}: {reason}")
        if decision == PROMOTE:
            doc["serve"].append(rep.head_id)
        else:
            _serve_old(doc, row)
        doc["heads"].append(row)
    with atomic_write(folder / "gate.json", "w") as f:
        f.write(json.dumps(doc, indent=1, default=float) + "\n")
    doc["path"] = str(folder / "gate.json")
    return doc


def _recipe(card):
    from fth.config import from_dict
    from store.recipe import FeatureRecipe

    return from_dict(FeatureRecipe, card.config["recipe"], f"{card.path}/card.json")


def _serve_old(doc: dict[str, Any], row: dict[str, Any]) -> None:
    """The old head stays in service on NEW through its adapter (or is listed as unservable without one)."""
    if row["adapter"]:
        doc["serve"].append(row["old_head"])
    else:
        doc["unservable"].append(row["old_head"])
        row["reason"] += " (and no adapter maps the new encoder's features to it: run fth heads adapt)"
