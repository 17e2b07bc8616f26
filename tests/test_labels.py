"""Label import/export: every format round-trips on our frame ids, and every bad input is a counted, named error."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from heads.label_maps import read_classes, read_depth, read_masks, write_classes, write_depth, write_masks
from heads.labels import (
    LabelError,
    LabelSet,
    label_studio_results,
    read_coco,
    read_csv,
    read_label_studio,
    write_coco,
    write_csv,
)
from heads.select import label_studio_tasks

IDS = [f"{i:064x}" for i in range(1, 7)]  # sha256-like frame ids
PATHS = {fid: f"cam1/2024-05-01/{n:04d}.jpg" for n, fid in enumerate(IDS)}
BY_PATH = {p: fid for fid, p in PATHS.items()}


def resolver(path):
    return BY_PATH.get(path)


def test_csv_round_trip_by_id_and_by_path(tmp_path):
    labels = LabelSet(IDS, [0.0, 3.0, 1.0, 7.0, 2.0, 0.0])
    got = read_csv(write_csv(tmp_path / "c.csv", labels, column="people_count"), known=set(IDS))
    assert got.ids == IDS and got.values == labels.values
    with open(tmp_path / "p.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "time_of_day", "note"])
        w.writerows([PATHS[i], f"{n:02d}:30:00", "x"] for n, i in enumerate(IDS))
    got = read_csv(tmp_path / "p.csv", column="time_of_day", resolver=resolver, known=set(IDS))
    assert got.ids == IDS and got.values[3] == "03:30:00"
    with pytest.raises(LabelError, match="choose the value column"):
        read_csv(tmp_path / "p.csv", resolver=resolver)


def test_csv_errors_count_offenders(tmp_path):
    labels = LabelSet(IDS + ["f" * 64, "e" * 64], [1.0] * 8)
    path = write_csv(tmp_path / "c.csv", labels)
    with pytest.raises(LabelError, match=r"2 of 8 labels .* name unknown frames: f{64}, e{64}"):
        read_csv(path, known=set(IDS))
    assert read_csv(path, known=set(IDS), unknown="drop").ids == IDS
    write_csv(tmp_path / "d.csv", LabelSet(IDS + IDS[:2], [1.0] * 6 + [2.0, 2.0]))
    with pytest.raises(LabelError, match="2 frames are labelled more than once, with different values"):
        read_csv(tmp_path / "d.csv")
    write_csv(tmp_path / "s.csv", LabelSet(IDS + IDS[:2], [1.0] * 8))  # byte-identical files: the same label twice
    same = read_csv(tmp_path / "s.csv")
    assert same.ids == IDS and "2 frames labelled twice with the same value" in same.note
    (tmp_path / "n.csv").write_text("path,value\nnowhere/a.jpg,1\nnowhere/b.jpg,2\n" + f"{PATHS[IDS[0]]},3\n")
    with pytest.raises(LabelError, match="2 of 3 paths .* resolve to no frame: nowhere/a.jpg"):
        read_csv(tmp_path / "n.csv", resolver=resolver)
    (tmp_path / "k.csv").write_text("file,value\na,1\n")
    with pytest.raises(LabelError, match="no key column"):
        read_csv(tmp_path / "k.csv")


def test_coco_counts_persons_without_crowds(tmp_path):
    counts = LabelSet(IDS, [2.0, 0.0, 5.0, 1.0, 0.0, 3.0])
    path = write_coco(tmp_path / "coco.json", counts, PATHS)
    data = json.loads(path.read_text())
    data["categories"].append({"id": 2, "name": "car"})
    data["annotations"] += [
        {"id": 900, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 5, 5]},  # a crowd: not counted
        {"id": 901, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [0, 0, 5, 5]},  # a car: not counted
    ]
    path.write_text(json.dumps(data))
    got = read_coco(path, resolver=resolver, known=set(IDS))
    assert got.as_dict() == counts.as_dict()
    data["annotations"].append({"id": 902, "image_id": 77, "category_id": 1, "iscrowd": 0})
    path.write_text(json.dumps(data))
    with pytest.raises(LabelError, match="1 annotations point at images not in the file: 902"):
        read_coco(path, resolver=resolver)


def test_label_studio_round_trip_from_our_export(tmp_path):
    tasks = label_studio_tasks(IDS, [PATHS[i] for i in IDS])
    values = [1.0, 4.0, 0.0, 2.0, 9.0, 3.0]
    for n, (task, v) in enumerate(zip(tasks, values, strict=True)):
        task["id"] = n + 1
        task["annotations"] = [
            {"id": 1, "was_cancelled": False, "updated_at": "2024-05-01T10:00:00", "result": label_studio_results(
                "people_count", v + 100)},
            {"id": 2, "was_cancelled": False, "updated_at": "2024-05-02T10:00:00", "result": label_studio_results(
                "people_count", v)},
            {"id": 3, "was_cancelled": True, "updated_at": "2024-05-03T10:00:00", "result": label_studio_results(
                "people_count", -1)},
        ]  # fmt: skip
    tasks.append({"id": 99, "data": {"frame_id": IDS[0]}, "annotations": []})  # unannotated: skipped
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    got = read_label_studio(tmp_path / "export.json", known=set(IDS))
    assert got.ids == IDS and got.values == values  # the latest non-cancelled annotation wins


def test_label_studio_boxes_paths_and_times(tmp_path):
    box = {"type": "rectanglelabels", "value": {"rectanglelabels": ["Person"]}}
    car = {"type": "rectanglelabels", "value": {"rectanglelabels": ["car"]}}
    tasks = [{"id": 1, "data": {"path": PATHS[IDS[2]]}, "annotations": [{"result": [box, box, car]}]}]
    (tmp_path / "b.json").write_text(json.dumps(tasks))
    assert read_label_studio(tmp_path / "b.json", resolver=resolver).as_dict() == {IDS[2]: 2.0}
    tasks = [{"data": {"frame_id": IDS[1]}, "annotations": [{"result": label_studio_results("time_of_day", "18:05")}]}]
    (tmp_path / "t.json").write_text(json.dumps(tasks))
    assert read_label_studio(tmp_path / "t.json", task="time_of_day").values == ["18:05"]
    tasks = [{"id": 5, "data": {"image": "x.jpg"}, "annotations": [{"result": [box]}]}]
    (tmp_path / "k.json").write_text(json.dumps(tasks))
    with pytest.raises(LabelError, match="1 annotated tasks carry neither data.frame_id nor data.path: 5"):
        read_label_studio(tmp_path / "k.json")


def test_masks_round_trip_and_errors(tmp_path):
    classes = ("background", "person", "car")
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, size=(12, 20)).astype(np.uint8) for _ in IDS]
    masks[0][0, :4] = 255  # ignore
    folder = write_masks(tmp_path / "m", LabelSet(IDS, masks), classes)
    got = read_masks(folder, folder / "classes.json", known=set(IDS), size=(12, 20))
    assert got.classes == classes and got.ids == IDS
    assert all(np.array_equal(a, b) for a, b in zip(got.values, masks, strict=True))
    (tmp_path / "coco_classes.json").write_text(json.dumps([{"id": 1, "name": "b"}, {"id": 0, "name": "a"}]))
    assert read_classes(tmp_path / "coco_classes.json") == ("a", "b")

    with pytest.raises(LabelError, match=r"6 of 6 masks .* wrong size: .*12x20, expected 24x40"):
        read_masks(folder, classes, size=(24, 40))
    with pytest.raises(LabelError, match=r"1 of 6 masks .* wrong size"):
        read_masks(folder, classes, size=lambda fid: (12, 21) if fid == IDS[4] else (12, 20))
    bad = masks[1].copy()
    bad[3, 3], bad[4, 4] = 7, 9
    write_masks(tmp_path / "m", LabelSet([IDS[1]], [bad]), classes)
    with pytest.raises(LabelError, match=r"1 masks .* class indices outside 0..2 .*: " + IDS[1] + r": \[7, 9\]"):
        read_masks(folder, classes)
    write_masks(tmp_path / "m", LabelSet([IDS[1]], [masks[1]]), classes)
    Image.new("RGB", (20, 12)).save(folder / f"{IDS[5]}.png")
    with pytest.raises(LabelError, match="1 masks .* not single-channel index PNGs"):
        read_masks(folder, classes)


def test_masks_via_index_csv_and_resolver(tmp_path):
    classes = write_classes(tmp_path / "classes.json", ["a", "b"])
    write_masks(tmp_path / "m", LabelSet(IDS[:2], [np.zeros((4, 6), np.uint8), np.ones((4, 6), np.uint8)]), ["a", "b"])
    (tmp_path / "index.csv").write_text(f"path,file\n{PATHS[IDS[0]]},m/{IDS[0]}.png\n{PATHS[IDS[1]]},m/{IDS[1]}.png\n")
    got = read_masks(tmp_path / "index.csv", classes, resolver=resolver, known=set(IDS))
    assert got.ids == IDS[:2] and got.values[1].sum() == 24


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_depth_round_trip(tmp_path, fmt):
    rng = np.random.default_rng(1)
    maps = [rng.uniform(0.5, 60.0, size=(12, 20)).astype(np.float32) for _ in IDS]
    maps[2][5, 5] = 0.0  # invalid stays invalid
    folder = write_depth(tmp_path / "d", LabelSet(IDS, maps), fmt=fmt, scale=1000.0)
    got = read_depth(folder, scale=1000.0, known=set(IDS))
    assert got.ids == IDS and got.values[2][5, 5] == 0.0
    tol = 0.5e-3 + 1e-6 if fmt == "png" else 0.0
    assert max(float(np.abs(a - b).max()) for a, b in zip(got.values, maps, strict=True)) <= tol


def test_depth_png_sentinels_are_invalid(tmp_path):
    raw = np.array([[0, 150, 65535]], np.uint16)  # the sim's centimetres: none, 1.5 m, sky
    (tmp_path / "d").mkdir()
    Image.fromarray(raw).save(tmp_path / "d" / f"{IDS[0]}.png")
    got = read_depth(tmp_path / "d", scale=100.0)
    assert got.values[0].tolist() == [[0.0, 1.5, 0.0]]


def test_depth_errors(tmp_path):
    maps = [np.full((8, 8), 2.0, np.float32), np.full((8, 9), 2.0, np.float32), np.full((8, 8), 2.0, np.float32)]
    folder = write_depth(tmp_path / "d", LabelSet(IDS[:3], maps), fmt="npy")
    with pytest.raises(LabelError, match=r"1 of 3 depth maps .* wrong size: " + IDS[1]):
        read_depth(folder)
    with pytest.raises(LabelError, match="beyond 16 bits"):
        write_depth(tmp_path / "e", LabelSet(IDS[:1], [np.full((2, 2), 70.0)]), scale=1000.0)
    Image.new("L", (8, 8)).save(tmp_path / "d" / f"{IDS[1]}.png")
    np.save(tmp_path / "d" / f"{IDS[1]}.npy", np.full((8, 8), -1.0, np.float32))
    with pytest.raises(LabelError, match="2 depth maps .* cannot be used"):
        read_depth(folder)
    (tmp_path / "d" / f"{IDS[1]}.png").unlink()
    np.save(tmp_path / "d" / f"{IDS[1]}.npy", np.full((8, 8), 1.0, np.float32))
    with pytest.raises(LabelError, match="1 of 3 labels .* unknown frames: " + IDS[1]):
        read_depth(folder, known={IDS[0], IDS[2]})
