"""`fth eval` on a small sim workspace: every label budget row and every column (the encoder, its architecture at
random init, raw pixels, the baseline) for two tasks from a YAML file, scored on the same held-out frames, with
eval.json and a plot per task; and a control that shows the comparison can fail: with the labels shuffled among the
frames no column beats the baseline.

Frames: 6 sim days x 30 frames at 64x96 (tests/sim_workspace.py), labels by collector.sim.write_labels, a seeded tiny
encoder (an untrained stand-in for a pretrained one: this tests the command, not the encoder; the bar for pretraining
is measured by `fth eval` itself, README "fth eval").
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fth_cli import run as _run
from serving import tiny_encoder
from sim_workspace import sim_config, sim_workspace

from collector.sim import write_labels
from store.artifacts import Registry
from store.catalog import Catalog

FAST = ["--set", "max_steps=60", "--set", "threads=1", "--seeds", "2"]


def run(*argv: str) -> tuple[int, str, str]:
    return _run(*argv, level="ERROR")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_sim")
    cfg = sim_config(height=64, width=96)
    ws, _ = sim_workspace(root, 6, 30, cfg=cfg)
    with Catalog(ws.root) as cat:
        write_labels(cat, "sim", cfg, ws.root / "labels")
    _, card = tiny_encoder(ws, seed=5)
    return ws, card


@pytest.fixture(scope="module")
def evaluated(sim):
    ws, card = sim
    tasks = ws.root / "tasks.yaml"
    tasks.write_text(f"tasks:\n- {{task: time_of_day, labels: catalog}}\n- {{task: people_count, labels: "
                     f"{ws.root / 'labels' / 'people.csv'}, set: [head.hidden=16]}}\n")  # fmt: skip
    rc, out, err = run("eval", "--workspace", str(ws.root), "--encoder", card.id, "--tasks", str(tasks),
                       "--sizes", "30,all", *FAST)  # fmt: skip
    assert rc == 0, err
    return out, json.loads((ws.root / "eval" / "eval.json").read_text())


def test_every_row_and_column_for_every_task(evaluated, sim):
    ws, card = sim
    out, doc = evaluated
    assert [t["task"] for t in doc["tasks"]] == ["time_of_day", "people_count"]
    init = next(c for c in Registry(ws.artifacts).list("encoder") if c.parents.get("like") == card.id)
    for task in doc["tasks"]:
        assert task["columns"] == [card.name, f"random init of {card.name}", task["columns"][2]]
        assert task["columns"][2].startswith("pixels 8x12x")
        assert [r["labels"] for r in task["rows"]] == [30, 144]  # 180 frames: the latest 36 are the test frames
        assert task["n_test"] == 36
        for row in task["rows"]:
            # validation is a fifth of the budget (not of budget + test frames), the rest trains less the split gap
            assert row["n_val"] == round(0.2 * row["labels"]) and row["n_train"] >= 0.7 * row["labels"]
            assert set(row["results"]) == set(task["columns"]) and np.isfinite(row["baseline"])
            assert all(len(v) == 2 and np.all(np.isfinite(v)) for v in row["results"].values())
        assert (ws.root / "eval" / task["plot"]).stat().st_size > 0
    # the random init was registered by fth itself, and the embeddings the store lacked were computed
    assert init.parents["init"] == "random" and (ws.embeddings / init.id / "pooled").is_dir()
    table = out.split("\ntime_of_day: mae_minutes")[1]
    assert "labels" in table and "baseline" in table and "random init of" in table


def test_time_of_day_heads_beat_the_baseline_with_all_labels(evaluated):
    _, doc = evaluated
    tod = doc["tasks"][0]
    last = tod["rows"][-1]
    assert all(np.mean(v) < 0.7 * last["baseline"] for v in last["results"].values())  # minutes of MAE, lower better


def test_shuffled_labels_do_not_beat_the_baseline(sim, tmp_path):
    ws, card = sim
    argv = ["--task", "time_of_day", "--labels", "catalog", "--sizes", "all", "--shuffle-labels"]
    argv += ["--out", str(tmp_path)]
    rc, out, err = run("eval", "--workspace", str(ws.root), "--encoder", card.id, *argv, *FAST)
    assert rc == 0, err
    tod = json.loads((tmp_path / "eval.json").read_text())["tasks"][0]
    assert tod["shuffled_labels"]
    row = tod["rows"][0]
    assert all(np.mean(v) > 0.9 * row["baseline"] for v in row["results"].values())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "people_count"], "name a task"),
        (["--task", "nope", "--labels", "catalog"], "nope"),
        (["--task", "time_of_day", "--labels", "catalog", "--sizes", "30,x"], "--sizes"),
        (["--task", "time_of_day", "--labels", "catalog", "--encoder", "encoder-0000"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(sim, argv, message):
    ws, _ = sim
    rc, out, err = run("eval", "--workspace", str(ws.root), *argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
