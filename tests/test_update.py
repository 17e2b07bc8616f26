"""`fth update` end to end on a sim workspace whose scene changes (lighting) on day 3: drift is flagged, the encoder is
continued from the served one on the changed frames (real `fth train --init`, a few steps), the old heads are adapted
and refit through the gate, and the new set is promoted into release.json (a dry run promotes nothing). An unchanged
stream stops after the drift step with no new encoder. Every step is a real `fth` child process.

Frames: 5 sim days x 30 at 64x96 (tests/sim_workspace.py); OLD = the tiny preset, seeded (tests/serving.py).
"""

from __future__ import annotations

import json

import pytest
from heads_update import fit, run
from serving import tiny_encoder
from sim_workspace import day, sim_config, sim_workspace

from collector.sim import write_labels
from store import release
from store.artifacts import Registry
from store.catalog import Catalog

pytestmark = pytest.mark.slow
REFERENCE = f"{day(0)}..{day(2)}"
TRAIN = ["--train-config", "mae_tiny", *(x for s in ("max_steps=6", "batch_size=8", "data.num_workers=0",
         "ckpt_every=0", "panel_every=0", "log_every=2") for x in ("--train-set", s))]  # fmt: skip


def workspace(root, change_day: int):
    cfg = sim_config(width=96, height=64, change_day=change_day)
    ws, _ = sim_workspace(root, days=5, per_day=30, cfg=cfg)
    with Catalog(ws.root) as cat:
        write_labels(cat, "sim", cfg, ws.root / "labels", dense=False)
    _, old = tiny_encoder(ws, seed=0)
    heads = [fit(ws, old.id, "--task", "people_count", "--labels", str(ws.root / "labels" / "people.csv"),
                 "--set", "head.hidden=16"),
             fit(ws, old.id, "--task", "time_of_day", "--labels", "catalog")]  # fmt: skip
    return ws, old, heads


@pytest.fixture(scope="module")
def changed(tmp_path_factory):
    return workspace(tmp_path_factory.mktemp("update_changed"), change_day=3)


def test_dry_run_then_update_promotes_the_gated_set(changed, tmp_path):
    ws, old, heads = changed
    argv = ["update", "--workspace", str(ws.root), "--reference", REFERENCE, *TRAIN]
    rc, out, err = run(*argv, "--dry-run", "--out", str(tmp_path / "dry"))
    assert rc == 0, err
    doc = json.loads((tmp_path / "dry" / "update.json").read_text())
    assert doc["old"] == old.id and doc["flagged"][0] == day(3)  # flagged in the first window after the change
    assert doc["since"].startswith(day(3))  # the continued run starts at the first changed frame
    new = Registry(ws.artifacts).card(doc["new"])
    assert new.parents["init"] == old.id and new.parents["since"].startswith(day(3))
    gate = doc["gate"]
    assert sorted(h["old_head"] for h in gate["heads"]) == sorted(heads)
    assert all(h["decision"] in ("promote", "keep-adapted") and h["refit_head"] for h in gate["heads"])
    assert len(gate["serve"]) == 2 and not gate["unservable"]
    assert [s["name"] for s in doc["steps"]] == ["drift", "train", "embed", "adapt", "refit"]
    assert release.current(ws) is None  # a dry run swaps nothing
    report = (tmp_path / "dry" / "update.md").read_text()
    assert "dry run" in report and "| people_count |" in report and (tmp_path / "dry" / "heads.png").stat().st_size

    rc, out, err = run(*argv, "--out", str(tmp_path / "real"))
    assert rc == 0, err
    doc = json.loads((tmp_path / "real" / "update.json").read_text())
    served = release.current(ws)
    assert served.encoder == doc["new"] and served.heads == doc["gate"]["serve"]
    assert doc["steps"][-1]["name"] == "promote" and "promoted" in doc["outcome"]


def test_an_unchanged_stream_stops_after_drift(tmp_path):
    ws, old, _ = workspace(tmp_path / "same", change_day=-1)
    rc, out, err = run("update", "--workspace", str(ws.root), "--reference", REFERENCE, *TRAIN, "--out",
                       str(tmp_path / "u"))  # fmt: skip
    assert rc == 0, err
    doc = json.loads((tmp_path / "u" / "update.json").read_text())
    assert doc["outcome"].startswith("no drift flagged") and "new" not in doc
    assert [c.id for c in Registry(ws.artifacts).list("encoder")] == [old.id]


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--reference", "yesterday"], "--reference 'yesterday'"), (["--encoder", "encoder-0000"], "not found"),
     (["--replay", "1.5"], "--replay 1.5")],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(changed, extra, message):
    ws, *_ = changed
    argv = ["update", "--workspace", str(ws.root), "--reference", REFERENCE, *extra]
    rc, out, err = run(*argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
