"""`fth drift` end to end on sim frames: a lighting change switched on at the first frame of a day is flagged on that
day (within one window) and not before; the same stream without the change raises no flag; bad input is one line and
exit 2; the latest score per source lands in the workspace and the server's metrics export it as gauges.

Frames: 7 sim days x 16 frames at 64x96 (tests/sim_workspace.py), a seeded tiny encoder at random init embeds them
(`--embed`). The false-alarm rate over seeds and all three changes is measured by bench/drift.py (README "fth drift");
here the margins are the deterministic ones of seed 0.
"""

from __future__ import annotations

import json

import pytest
from fth_cli import run as _run
from serving import tiny_encoder
from sim_workspace import day, sim_config, sim_workspace

from heads.drift import DriftConfig, DriftError, FrameRef, classifier_auc, mmd_test, parse_days, score_sources
from server.metrics import MULTIPROC_ENV, Metrics
from store.drift_latest import read_latest

DAYS, PER_DAY, CHANGE_DAY = 7, 16, 5
REFERENCE = f"{day(0)}..{day(3)}"


def run(*argv: str) -> tuple[int, str, str]:
    return _run(*argv, level="ERROR")


def stream(root, change_day: int):
    ws, _ = sim_workspace(root, DAYS, PER_DAY, cfg=sim_config(0, change_day, "lighting", height=64, width=96))
    _, card = tiny_encoder(ws)
    return ws, card.id


@pytest.fixture(scope="module")
def changed(tmp_path_factory):
    ws, enc = stream(tmp_path_factory.mktemp("drift_changed"), CHANGE_DAY)
    rc, out, err = run("drift", "--workspace", str(ws.root), "--reference", REFERENCE, "--embed")
    return ws, enc, rc, out, err


@pytest.fixture(scope="module")
def unchanged(tmp_path_factory):
    ws, enc = stream(tmp_path_factory.mktemp("drift_unchanged"), -1)
    rc, out, err = run("drift", "--workspace", str(ws.root), "--reference", REFERENCE, "--embed")
    return ws, enc, rc, out, err


def windows(ws) -> dict[str, dict]:
    return {w["window"]: w for w in json.loads((ws.root / "drift" / "drift.json").read_text())["windows"]}


def test_scene_change_is_flagged_on_its_first_day_and_not_before(changed):
    ws, _, rc, out, err = changed
    assert rc == 1, err  # exit 1: some window flagged
    got = windows(ws)
    assert sorted(got) == [day(4), day(5), day(6)]
    assert not got[day(4)]["flagged"]
    assert got[day(5)]["flagged"] and got[day(6)]["flagged"]
    assert got[day(5)]["score"] > 0.9  # AUC; the unchanged day before it stays under the 0.75 threshold
    assert "flagged: sim" in out and (ws.root / "drift" / "drift.png").stat().st_size > 0


def test_unchanged_stream_raises_no_flag(unchanged, changed):
    ws, _, rc, out, err = unchanged
    assert rc == 0, err
    got = windows(ws)
    assert len(got) == 3 and not any(w["flagged"] for w in got.values())
    assert max(w["score"] for w in got.values()) < windows(changed[0])[day(5)]["score"] - 0.2
    assert "flagged: none" in out


def test_mmd_flags_the_same_change(changed):
    ws, enc, *_ = changed
    rc, out, err = run("drift", "--workspace", str(ws.root), "--reference", REFERENCE, "--method", "mmd",
                       "--since", day(5), "--out", str(ws.root / "mmd"))  # fmt: skip
    assert rc == 1, err
    doc = json.loads((ws.root / "mmd" / "drift.json").read_text())
    assert [w["window"] for w in doc["windows"]] == [day(5), day(6)]
    assert all(w["flagged"] and w["p_value"] <= 0.01 for w in doc["windows"])


def test_latest_score_per_source_is_exported_as_gauges(changed, monkeypatch, tmp_path):
    ws, enc, *_ = changed
    latest = read_latest(ws.root)["sim"]
    assert latest["window"] == day(6) and latest["flagged"] and latest["encoder"] == enc
    text = Metrics(ws.root).render().decode()
    assert f'fth_drift_score{{method="{latest["method"]}",source="sim"}} {latest["score"]!r}' in text
    assert 'fth_drift_flagged{source="sim"} 1.0' in text
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))  # gunicorn's multiprocess scrape carries them too
    assert 'fth_drift_flagged{source="sim"} 1.0' in Metrics(ws.root).render().decode()
    assert "fth_drift_score{" not in Metrics(tmp_path).render().decode()  # no drift run: no samples


def test_hourly_windows_group_by_local_hour():
    import numpy as np

    rng = np.random.default_rng(0)
    frames, vectors = [], {}
    for d, shift in ((day(0), 0.0), (day(1), 0.0), (day(2), 3.0)):
        for h in range(3):
            for k in range(12):
                fid = f"{d}-{h}-{k}"
                frames.append(FrameRef(fid, "cam", d, h + k / 12))
                vectors[fid] = rng.normal(size=8) + (shift if h == 1 else 0.0)
    scores = score_sources(frames, lambda ids: {i: vectors[i] for i in ids}, (day(0), day(1)), DriftConfig(), "1h")
    assert [s.window for s in scores] == [f"{day(2)}T{h:02d}" for h in range(3)]
    assert [s.flagged for s in scores] == [False, True, False]  # only the shifted hour


def test_minute_windows_and_a_minute_reference():
    import numpy as np

    rng = np.random.default_rng(0)
    frames, vectors = [], {}
    for m in range(40):  # 08:00-08:39, 12 frames a minute; from 08:20 on the scene changed
        for k in range(12):
            fid = f"{m}-{k}"
            frames.append(FrameRef(fid, "cam", day(0), 8 + (m + k / 12) / 60))
            vectors[fid] = rng.normal(size=8) + (3.0 if m >= 20 else 0.0)
    ref = parse_days(f"{day(0)}T08:00..{day(0)}T08:09")
    scores = score_sources(frames, lambda ids: {i: vectors[i] for i in ids}, ref, DriftConfig(), "10m")
    assert [s.window for s in scores] == [f"{day(0)}T08:{m}0" for m in (1, 2, 3)]
    assert [s.flagged for s in scores] == [False, True, True]
    with pytest.raises(DriftError, match="finer than"):
        score_sources(frames, lambda ids: {}, ref, DriftConfig(), "1h")
    with pytest.raises(DriftError, match="N dividing 60"):
        score_sources(frames, lambda ids: {}, ref, DriftConfig(), "7m")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "nope"], "unknown source 'nope'"),
        (["--reference", "2020-01-01..2020-01-02"], "no frames in the reference window"),
        (["--reference", "2026-05-07..2026-05-01"], "the last day is before the first"),
        (["--reference", "2026-05-01..2026-05-01T08"], "both ends as"),
        (["--since", "2027-01-01"], "no window"),
        (["--encoder", "encoder-0000"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(changed, argv, message):
    ws, *_ = changed
    base = ["drift", "--workspace", str(ws.root), "--reference", REFERENCE]
    rc, out, err = run(*base, *argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_encoder_without_embeddings_is_one_line(changed):
    ws, *_ = changed
    _, other = tiny_encoder(ws, seed=1)
    rc, out, err = run("drift", "--workspace", str(ws.root), "--reference", REFERENCE, "--encoder", other.id)
    assert rc == 2 and f"encoder {other.id} has no embeddings" in err and len(err.strip().splitlines()) == 1


def test_both_tests_sit_at_chance_on_identical_distributions():
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(80, 32)), rng.normal(size=(30, 32))
    assert classifier_auc(a, b, DriftConfig())[0] < 0.7
    assert mmd_test(a, b, DriftConfig(method="mmd"))[1] > 0.01
    assert classifier_auc(a, b + 1.0, DriftConfig())[0] > 0.95
    assert mmd_test(a, b + 1.0, DriftConfig(method="mmd"))[1] <= 0.01
