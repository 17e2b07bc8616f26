"""The detection task on its own: COCO and Label Studio boxes joined on our frame id, the centre-heatmap targets and
their decoding (a perfect output gives back the true boxes, in image pixels when served), pycocotools' mAP, and the
prior-box baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from heads.labels import LabelError
from heads.tasks import LabelContext, TaskConfig, make_task

FRAMES = {f"{i:064x}": (100, 200) for i in range(3)}  # frame id -> (H, W) as catalogued


def ctx(**kw) -> LabelContext:
    by_path = {f"frames/{i}.jpg": fid for i, fid in enumerate(FRAMES)}
    return LabelContext(resolver=by_path.get, known=FRAMES, size=FRAMES.get, **kw)


def task(grid=(10, 20), classes=("person", "car")):
    t = make_task(TaskConfig("detection", classes=classes))
    t.prepare(grid)
    return t


def test_coco_boxes_join_on_frame_id_or_path_and_become_relative(tmp_path):
    ids = list(FRAMES)
    coco = {
        "images": [{"id": 1, "file_name": "frames/0.jpg", "width": 200, "height": 100},  # resolved through the catalog
                   {"id": 2, "file_name": "elsewhere.jpg", "frame_id": ids[1]},  # our id wins; size from the catalog
                   {"id": 3, "file_name": "frames/2.jpg", "width": 200, "height": 100}],  # no boxes: an empty frame
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [20, 10, 40, 50], "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 100, 100], "iscrowd": 0},
                        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 1}],
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "person"}],
    }  # fmt: skip
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco))
    labels, fmt = task().read_labels(str(path), "auto", ctx())
    assert fmt == "coco" and labels.ids == ids and labels.classes == ("car", "person")
    by_id = labels.as_dict()
    np.testing.assert_allclose(by_id[ids[0]], [[0.1, 0.1, 0.3, 0.6, 1.0]])  # person = index 1 of (car, person)
    np.testing.assert_allclose(by_id[ids[1]], [[0.0, 0.0, 0.5, 1.0, 0.0]])  # the crowd box is skipped
    assert by_id[ids[2]].shape == (0, 5)
    coco["annotations"].append({"id": 9, "image_id": 42, "category_id": 7, "bbox": [0, 0, 1, 1]})
    path.write_text(json.dumps(coco))
    with pytest.raises(LabelError, match="1 annotations point at images not in the file"):
        task().read_labels(str(path), "coco", ctx())


def test_label_studio_rectangles_in_percent(tmp_path):
    ids = list(FRAMES)
    rect = {"type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rectanglelabels": ["person"]}}  # fmt: skip
    export = [
        {"id": 1, "data": {"frame_id": ids[0]}, "annotations": [{"id": 1, "result": [rect]}]},
        {"id": 2, "data": {"path": "frames/1.jpg"}, "annotations": [{"id": 2, "result": []}]},  # checked, no boxes
        {"id": 3, "data": {"frame_id": ids[2]}, "annotations": [{"id": 3, "was_cancelled": True, "result": [rect]}]},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    labels, fmt = task(classes=()).read_labels(str(path), "auto", ctx())
    assert fmt == "labelstudio" and labels.ids == ids[:2] and labels.classes == ("person",)
    np.testing.assert_allclose(labels.values[0], [[0.1, 0.2, 0.4, 0.6, 0.0]])
    assert labels.values[1].shape == (0, 5)


def perfect_output(t, target: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """The head output that encodes `target` exactly: a confident centre logit and the true offset and size."""
    out = torch.full((target.shape[0], t.out_dim, gh, gw), -20.0)
    b, cls, row, col, offset, size, _, _ = t._cells(target, gh, gw)
    out[b, cls, row, col] = 20.0
    out[b, t.k, row, col] = torch.logit(offset[:, 0].clamp(1e-4, 1 - 1e-4))
    out[b, t.k + 1, row, col] = torch.logit(offset[:, 1].clamp(1e-4, 1 - 1e-4))
    out[b, t.k + 2, row, col], out[b, t.k + 3, row, col] = size[:, 0], size[:, 1]
    return out


def test_targets_heatmap_decode_and_map():
    t = task()
    boxes = [np.array([[0.1, 0.1, 0.3, 0.6, 1], [0.6, 0.2, 0.9, 0.5, 0]], np.float32), np.zeros((0, 5), np.float32)]
    target = t.targets(boxes)
    assert target.shape == (2, 2, 5) and (target[1, :, 4] == -1).all()  # padded with class -1
    heat = t.heatmap(target, 10, 20)
    assert heat.shape == (2, 2, 10, 20) and heat[0, 1, 3, 4] == 1 and heat[0, 0, 3, 15] == 1 and heat[1].max() == 0
    out = perfect_output(t, target, 10, 20)
    served = t.decode(out, [(100, 200), (50, 80)])
    got = sorted((b["class"], *b["box"]) for b in served[0]["boxes"])
    assert got == [("car", 20.0, 10.0, 60.0, 60.0), ("person", 120.0, 20.0, 180.0, 50.0)]  # image pixels
    assert served[1] == {"boxes": [], "count": 0, "image_size": [50, 80]}
    m = t.evaluate([(out, target)])
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0) and m["count_mae"] == 0
    assert t.loss(out, target) < t.loss(torch.zeros_like(out), target)
    with pytest.raises(ValueError, match="outside the image"):
        t.targets([np.array([[0.5, 0.5, 0.4, 0.9, 0]], np.float32)])


def test_prior_boxes_are_the_training_centres():
    t = task(grid=(4, 4), classes=("person",))
    box = np.array([[0.5, 0.5, 0.75, 1.0, 0]], np.float32)  # centre in cell (row 3, col 2), every frame
    target = t.targets([box] * 5)
    prior = t.baseline(target)
    assert prior.shape == (1, 5, 4, 4) and prior[0, 0].argmax() == 3 * 4 + 2
    m = t.evaluate([(prior.expand(5, -1, -1, -1), target)])
    assert m["map50"] == pytest.approx(1.0)  # a camera whose one object never moves: the prior is right
