"""collector.sim: deterministic rendering, exact truth, a stamp that survives JPEG and rescaling, fast enough."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image

from collector.config import SimConfig
from collector.sim import CLASSES, IGNORE, depth_png, frame, read_stamp, write_labels
from collector.sim_scene import daylight, render
from fth.cli import main
from fth.config import to_dict
from store.catalog import Catalog


def through_jpeg(rgb: np.ndarray, size=None, quality=70) -> np.ndarray:
    img = Image.fromarray(rgb)
    if size:
        img = img.resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def test_stamp_survives_jpeg_and_resize():
    cfg = SimConfig()
    for index in (0, 1, 12345, 2**28 - 1):
        rgb, _ = frame(cfg, index)
        assert read_stamp(rgb) == index
        assert read_stamp(through_jpeg(rgb, (960, 576), 50)) == index
        assert read_stamp(through_jpeg(rgb, (160, 96), 60)) == index
    noise = np.random.default_rng(0).integers(0, 255, (192, 320, 3), dtype=np.uint8)
    assert read_stamp(noise) is None
    assert read_stamp(np.zeros((192, 320, 3), np.uint8)) is None


def test_render_is_deterministic_with_consistent_truth():
    cfg = SimConfig(max_people=10)
    a, ta = render(cfg, 777)
    b, tb = render(cfg, 777)
    assert np.array_equal(a, b) and ta.people == tb.people and np.array_equal(ta.seg, tb.seg)
    counts = []
    for index in range(0, 3000, 50):
        _, t = render(cfg, index)
        person = t.seg == CLASSES.index("person")
        assert (t.people > 0) == bool(person.sum() >= 6)
        assert np.all(t.depth[person] >= 6) and np.all(t.depth[person] <= 35)
        assert np.all(t.seg[-8:] == IGNORE) and np.all(t.depth[-8:] == 0)
        counts.append(t.people)
    assert min(counts) < max(counts) and max(counts) <= cfg.max_people
    ground = t.depth[100:150, 0]
    assert np.all(np.diff(ground[np.isfinite(ground)]) <= 0)  # lower rows are nearer


def test_day_night_cycle():
    cfg = SimConfig(start_hour=12.0, time_scale=3600.0, fps=1.0)  # one sim hour per frame
    noon, t_noon = render(cfg, 0)
    night, t_night = render(cfg, 12)
    assert abs(t_noon.time_of_day - 12) < 1e-9 and abs(t_night.time_of_day - 0) < 1e-9
    assert noon.mean() > 2.5 * night.mean()
    assert daylight(12) > 0.95 and daylight(0) < 0.1


def test_render_faster_than_real_time():
    cfg = SimConfig()
    frame(cfg, 0)
    t0 = time.process_time()
    for i in range(40):
        frame(cfg, i)
    per = (time.process_time() - t0) / 40
    assert per < 0.5 / cfg.fps, f"{per * 1000:.1f} ms per frame"


def test_write_labels_joins_on_frame_id(workspace, tmp_path):
    cfg = SimConfig()
    indexes = [5, 400, 901]
    with Catalog(workspace.root) as cat:
        for k, index in enumerate(indexes):
            rgb, _ = frame(cfg, index)
            big = Image.fromarray(rgb).resize((480, 288))
            buf = io.BytesIO()
            big.save(buf, format="JPEG", quality=85)
            cat.add_frame(buf.getvalue(), "sim", datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=k), 480, 288)
        again = io.BytesIO()
        big.save(again, format="JPEG", quality=60)  # same sim frame, other bytes: labelled again
        cat.add_frame(again.getvalue(), "sim", datetime(2026, 1, 2, tzinfo=UTC), 480, 288)
        blank = io.BytesIO()
        Image.new("RGB", (480, 288), (90, 90, 90)).save(blank, format="JPEG")
        cat.add_frame(blank.getvalue(), "sim", datetime(2026, 1, 3, tzinfo=UTC), 480, 288)
        rows = cat.frames("sim")
        summary = write_labels(cat, "sim", cfg, tmp_path / "labels")
    assert summary.frames == 5 and summary.labelled == 4 and summary.unreadable == 1
    lines = (tmp_path / "labels" / "labels.csv").read_text().splitlines()[1:]
    for row, line in zip(rows[:3], lines, strict=False):
        frame_id, index, people, tod, path = line.split(",")
        truth = render(cfg, int(index))[1]
        assert frame_id == row.id and path == row.path and int(people) == truth.people
        assert abs(float(tod) - truth.time_of_day) < 1e-3
        depth = np.asarray(Image.open(tmp_path / "labels" / "depth" / f"{row.id}.png"))
        seg = np.asarray(Image.open(tmp_path / "labels" / "segmentation" / f"{row.id}.png"))
        assert depth.shape == seg.shape == (288, 480) and depth.dtype == np.uint16
        assert np.array_equal(np.unique(seg), np.unique(truth.seg))
        assert depth.max() == 65535 and depth_png(truth.depth).max() == 65535
    assert [int(line.split(",")[1]) for line in lines] == [*indexes, indexes[-1]]
    assert (tmp_path / "labels" / "people.csv").read_text().startswith("frame_id,value\n")


def test_sim_labels_counts_an_empty_frame_file_as_unreadable(workspace, tmp_path, capsys):
    """Issue 15, finding 11: a zero-byte catalogued frame is counted unreadable, not an UnidentifiedImageError."""
    cfg = SimConfig()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with Catalog(workspace.root) as cat:
        rows = [cat.add_frame(through_jpeg_bytes(frame(cfg, i)[0]), "sim", t0, 320, 192)[0] for i in (3, 40)]
    (workspace.root / rows[0].path).write_bytes(b"")
    sim_dir = tmp_path / "simdir"
    sim_dir.mkdir()
    (sim_dir / "sim.json").write_text(json.dumps({"sim": to_dict(cfg), "epoch": 0.0}))
    code = main(["sim", "labels", "--source", "sim", "--out", str(tmp_path / "out"), "--sim", str(sim_dir),
                 "--workspace", str(workspace.root), "--no-dense"])  # fmt: skip
    assert code == 0
    assert "1 of 2 frames labelled (1 unreadable)" in capsys.readouterr().out


def test_sim_labels_without_its_sim_folder_says_so(workspace, tmp_path, capsys):
    """Issue 15, finding 11: no sim folder for the source is a one-line error, not a FileNotFoundError traceback."""
    Catalog(workspace.root).close()
    code = main(["sim", "labels", "--source", "nosuch", "--out", str(tmp_path / "out"), "--workspace",
                 str(workspace.root)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "sim.json" in err and "--sim" in err and "Traceback" not in err


def through_jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()
