"""`fth heads refit`: every head of OLD refit on NEW from what its card recorded, then the gate.

The same real encoder pair and sim frames as tests/test_heads_adapt.py. Heads on OLD: time of day (catalog labels,
pooled) and people count (a CSV copied to its own folder, token grid), plus a head registered the old way (no recorded
fit request). The tests run in order on one workspace: a fair refit is promoted; a refit on shuffled labels is refused
and the adapted old head keeps serving its name; a changed label file is refit and said so; a vanished one is reported,
never silently skipped.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from heads_update import fit, run, update_workspace
from serving import linear_head

from heads import artifact
from store.artifacts import Registry


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("refit")
    ws, old, new = update_workspace(root)
    labels = root / "mine" / "people.csv"
    labels.parent.mkdir()
    shutil.copy(ws.root / "labels" / "people.csv", labels)
    tod = fit(ws, old.id, "--task", "time_of_day", "--labels", "catalog")
    people = fit(ws, old.id, "--task", "people_count", "--labels", str(labels))
    legacy = linear_head(Registry(ws.artifacts), torch.nn.Linear(64, 2), old.id, "legacy").id
    rc, _, err = run("heads", "adapt", "--workspace", str(ws.root), "--from", old.id, "--to", new.id)
    assert rc == 0, err
    return ws, old, new, {"tod": tod, "people": people, "legacy": legacy}, labels


def refit(ws, new, old, *extra: str) -> tuple[dict, str]:
    rc, out, err = run("heads", "refit", "--workspace", str(ws.root), "--encoder", new.id, "--from", old.id, *extra)
    assert rc == 0, err
    path = next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("gate: "))
    return json.loads(open(path).read()), out


def test_heads_record_their_whole_fit_request(setup):
    ws, old, _, heads, labels = setup
    card = Registry(ws.artifacts).card(heads["people"])
    req = card.parents["request"]
    assert req["task"] == "people_count" and req["labels"] == str(labels.resolve())
    assert req["overrides"] == ["max_steps=80", "threads=1"] and req["features"] == "auto" and req["layers"] == [-1]
    assert {"format", "classes", "column", "time_unit", "depth_scale", "config", "max_label_side", "source",
            "name", "shuffle_labels"} <= set(req)  # fmt: skip
    assert len(card.parents["label_frames"]) == card.parents["label_count"] == 200
    assert card.parents["labels"] and card.parents["encoder"] == old.id


def test_a_fair_refit_is_promoted_and_the_unrecorded_head_is_reported(setup):
    ws, old, new, heads, _ = setup
    doc, out = refit(ws, new, old)
    rows = {r["old_head"]: r for r in doc["heads"]}
    assert set(rows) == set(heads.values())
    for key in ("tod", "people"):
        row = rows[heads[key]]
        assert row["decision"] == "promote", row
        assert row["labels"] == "unchanged" and row["n"] == 40 and row["flip_rate"] <= 0.05
        card = Registry(ws.artifacts).card(row["refit_head"])
        assert card.parents["encoder"] == new.id and card.parents["refit_of"] == heads[key]
        assert card.metrics["gate"]["decision"] == "promote" and card.metrics["gate"]["old_metric"] == row["old_metric"]
        assert card.parents["request"]["labels"] == Registry(ws.artifacts).card(heads[key]).parents["request"]["labels"]
    legacy = rows[heads["legacy"]]
    assert legacy["labels"] == "unrecorded" and legacy["refit_head"] is None and legacy["decision"] == "keep-adapted"
    assert "fth heads fit" in legacy["reason"] and "NOT REFIT (unrecorded)" in out
    assert heads["legacy"] in doc["serve"] and legacy["adapter"]  # pooled, like time of day: it serves adapted
    promoted = {rows[heads[k]]["refit_head"] for k in ("tod", "people")}
    assert promoted <= set(doc["serve"])


def test_the_gate_refuses_a_refit_on_shuffled_labels(setup):
    ws, old, new, heads, _ = setup
    doc, out = refit(ws, new, old, "--shuffle-labels", "--out", str(ws.root / "shuffled"))
    rows = {r["old_head"]: r for r in doc["heads"]}
    for key in ("tod", "people"):
        row = rows[heads[key]]
        assert row["decision"] == "keep-adapted", row
        assert "bound" in row["reason"] or "flip rate" in row["reason"]
        assert row["refit_metric"] > row["old_metric"]  # lower is better for both: the shuffled refit is worse
        assert row["adapted_metric"] is not None
        assert Registry(ws.artifacts).card(row["refit_head"]).metrics["gate"]["decision"] == "keep-adapted"
        assert heads[key] in doc["serve"] and row["refit_head"] not in doc["serve"]
    assert "KEEP-ADAPTED" in out
    # auto-loading on NEW: the refused refits are skipped; each name answers with a promoted refit (the fair run's)
    served = artifact.load_heads(Registry(ws.artifacts), new.id, [], auto=True)
    refused = {rows[heads[k]]["refit_head"] for k in ("tod", "people")}
    assert not refused & {h.id for h in served.values()}
    # explicit head lists (gate.json's `serve`) load as they are: the old heads through their adapters
    explicit = artifact.load_heads(Registry(ws.artifacts), new.id, [heads["tod"], heads["people"]], auto=False)
    assert all(h.adapter_id and h.encoder_id == new.id for h in explicit.values())


def test_changed_labels_are_refit_and_said_vanished_ones_reported(setup):
    ws, old, new, heads, labels = setup
    lines = labels.read_text().splitlines()
    fid, value = lines[1].split(",")
    lines[1] = f"{fid},{int(value) + 3}"
    labels.write_text("\n".join(lines) + "\n")
    doc, out = refit(ws, new, old, "--out", str(ws.root / "changed"))
    row = next(r for r in doc["heads"] if r["old_head"] == heads["people"])
    assert row["labels"] == "changed" and row["refit_head"] and "changed since the fit" in row["labels_note"]
    assert "changed since the fit" in out
    labels.unlink()
    doc, out = refit(ws, new, old, "--out", str(ws.root / "vanished"))
    row = next(r for r in doc["heads"] if r["old_head"] == heads["people"])
    assert row["labels"] == "vanished" and row["refit_head"] is None and row["decision"] == "keep-adapted"
    assert str(labels) in row["reason"] and "NOT REFIT (vanished)" in out
    assert heads["people"] in doc["serve"]  # it keeps serving through its adapter


def test_refit_refuses_bad_input(setup):
    ws, old, new, _, _ = setup
    rc, _, err = run("heads", "refit", "--workspace", str(ws.root), "--encoder", new.id, "--from", new.id)
    assert rc == 2 and "same encoder" in err
    rc, _, err = run("heads", "refit", "--workspace", str(ws.root), "--encoder", new.id)
    assert rc == 2 and "pass --from" in err  # a random init names no parent encoder
    rc, _, err = run("heads", "refit", "--workspace", str(ws.root), "--encoder", new.id, "--from", old.id,
                     "--tolerance", "2")  # fmt: skip
    assert rc == 2 and "--tolerance" in err


def test_the_gate_checks_each_bound_on_its_own():
    from heads.gate import GateConfig, compare, decide
    from heads.tasks import make_task

    task, cfg = make_task("people_count"), GateConfig(tolerance=0.02, max_flip_rate=0.05)
    target = torch.arange(100, dtype=torch.float32) % 5
    as_out = lambda counts: counts.clamp_min(1e-6).log()[:, None]  # noqa: E731 - counts -> the head's log-rate
    old = as_out(target + 0.2)  # every frame off by 0.2: MAE 0.2
    fair = as_out(target + 0.202)  # 1% worse, no frame worse by more than the 0.5 tolerance
    assert decide(task, compare(task, old, fair, target), cfg)[0] == "promote"
    worse = as_out(target + 0.21)  # 5% worse on the metric, still no flip
    decision, reason = decide(task, compare(task, old, worse, target), cfg)
    assert decision == "keep-adapted" and "above the bound" in reason
    flips = target + 0.2
    flips[:10] = target[:10] + 1.0  # better on average (most frames exact) but 10% of frames off by 0.8 more
    flips[10:] = target[10:]
    cmp = compare(task, old, as_out(flips), target)
    assert cmp["new_primary"] < cmp["old_primary"] and cmp["flip_rate"] == pytest.approx(0.10)
    decision, reason = decide(task, cmp, cfg)
    assert decision == "keep-adapted" and "flip rate 10.0%" in reason
