"""`fth label push/pull` against a real Label Studio on loopback (the session's `label_studio` fixture), and the signed
frame URLs `fth serve` answers (server/frames.py, through Flask's test client on the real app).

The loop: push a k-center batch (tasks carry our frame id, source, capture time and a signed image URL), annotate most
tasks through the REST API as a labeller would, pull them into the workspace's label set and refit the head from it;
pull again (idempotent), change one annotation (one changed), push again (no duplicate task; the new head's answers are
pre-annotations). Bad input: unreachable server, refused tokens, a project with another labelling config, annotations
of frames the catalog no longer holds, values that are no label: exit 2, one line, nothing written.
"""

from __future__ import annotations

import io
import json
import time
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from collector.sim import frame
from fth.cli import main
from fth.label_studio import LabelStudio
from fth.procs import free_port
from heads.labels import LabelError, label_studio_config, label_studio_results
from heads.tasks import LabelContext, TaskConfig, make_task
from server.frames import PREFIX, check, secret, signed_url
from store.backends import open_catalog
from tests.serving import tiny_encoder
from tests.sim_workspace import sim_config, sim_workspace

FRAMES_URL = "http://frames.test:8000"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws, _ = sim_workspace(tmp_path_factory.mktemp("ls") / "ws", 1, 24)
    tiny_encoder(ws)
    return ws


def fth(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def push(capsys, server, ws, project: str, *extra: str, task: str = "people_count", token: str | None = None):
    return fth(capsys, "label", "push", "--url", server.url, "--token", token or server.token, "--project", project,
               "--task", task, "--workspace", str(ws.root), "--frames-url", FRAMES_URL, *extra)  # fmt: skip


def pull(capsys, server, ws, project: str, *extra: str, token: str | None = None):
    return fth(capsys, "label", "pull", "--url", server.url, "--token", token or server.token, "--project", project,
               "--workspace", str(ws.root), *extra)  # fmt: skip


def annotate(client: LabelStudio, task_id: int, task: str, value) -> dict:
    """What the labelling UI sends when a labeller submits."""
    body = {"result": label_studio_results(task, value), "lead_time": 3.5}
    return client.request("POST", f"/api/tasks/{task_id}/annotations/", json=body)


def count_of(frame_id: str) -> int:
    return int(frame_id[:2], 16) % 5


def project_tasks(client: LabelStudio, title: str) -> list[dict]:
    return client.tasks(client.project(title)["id"])


def test_push_annotate_pull_refit(capsys, label_studio, ws):
    client = LabelStudio(label_studio.url, label_studio.token)
    code, out, err = push(capsys, label_studio, ws, "counts", "--count", "8", "--method", "kcenter")
    assert code == 0, err
    assert "(id " in out and "created): 8 tasks created" in out and "pre-annotations: none" in out
    project = client.project("counts")
    assert project["parsed_label_config"]["people_count"]["type"] == "Number"
    tasks = project_tasks(client, "counts")
    with open_catalog(ws.root, create=False) as cat:
        rows = {t["data"]["frame_id"]: cat.get(t["data"]["frame_id"]) for t in tasks}
    assert len(rows) == 8 and all(rows.values())
    key = secret(ws.root)
    for t in tasks:
        d, row = t["data"], rows[t["data"]["frame_id"]]
        assert (d["source"], d["captured_at"]) == (row.source, row.captured_at)
        url = urlparse(d["image"])
        assert f"{url.scheme}://{url.netloc}" == FRAMES_URL and url.path == PREFIX + d["frame_id"]
        q = parse_qs(url.query)
        assert check(key, d["frame_id"], q["exp"][0], q["sig"][0]) is None
        assert int(q["exp"][0]) > time.time() + 13 * 86400  # --url-days 14 by default

    labelled = {t["data"]["frame_id"]: count_of(t["data"]["frame_id"]) for t in tasks[:6]}
    for t in tasks[:6]:
        annotate(client, t["id"], "people_count", labelled[t["data"]["frame_id"]])
    code, out, err = pull(capsys, label_studio, ws, "counts", "--refit")
    assert code == 0, err
    assert "8 tasks, 6 annotated, 2 not yet annotated" in out
    assert "6 new, 0 changed, 0 unchanged (skipped); 6 labelled frames" in out
    head_id = out.strip().splitlines()[-1].removeprefix("head: ")
    assert head_id.startswith("head-")
    path = ws.root / "labels" / "people_count" / "labelstudio.json"
    saved = json.loads(path.read_text())
    assert {t["data"]["frame_id"]: t["annotations"][0]["result"][0]["value"]["number"] for t in saved} == labelled

    stamp = path.stat().st_mtime_ns
    code, out, err = pull(capsys, label_studio, ws, "counts")
    assert code == 0 and "0 new, 0 changed, 6 unchanged (skipped)" in out, err
    assert path.stat().st_mtime_ns == stamp  # nothing new: not rewritten

    first = tasks[0]
    ann = client.request("GET", f"/api/tasks/{first['id']}/annotations/")[0]
    fixed = labelled[first["data"]["frame_id"]] + 1
    client.request("PATCH", f"/api/annotations/{ann['id']}/", json={"result": label_studio_results("people_count",
                                                                                                   fixed)})  # fmt: skip
    code, out, err = pull(capsys, label_studio, ws, "counts")
    assert code == 0 and "0 new, 1 changed, 5 unchanged" in out, err
    saved = {t["data"]["frame_id"]: t for t in json.loads(path.read_text())}
    assert saved[first["data"]["frame_id"]]["annotations"][0]["result"][0]["value"]["number"] == fixed

    # the next batch by the method that learns from the labels pulled so far (under --switch-at: TypiClust)
    code, out, err = push(capsys, label_studio, ws, "counts", "--count", "4", "--method", "hybrid")
    assert code == 0, err
    assert (
        "(hybrid" in out and "reused): 4 tasks created" in out and "8 there before" in out and f"head {head_id}" in out
    )
    after = project_tasks(client, "counts")
    ids = [t["data"]["frame_id"] for t in after]
    assert len(ids) == 12 and len(set(ids)) == 12  # no frame twice
    new = [t for t in after if t["data"]["frame_id"] not in rows]
    preds = client.request("GET", f"/api/tasks/{new[0]['id']}/")["predictions"]
    assert preds[0]["model_version"] == head_id and preds[0]["result"][0]["from_name"] == "people_count"

    code, out, err = push(capsys, label_studio, ws, "counts", "--count", "0", "--refresh-urls", "--url-days", "30")
    assert code == 0 and "image links of 12 tasks renewed for 30 days" in out and "created" not in out, err
    for t in project_tasks(client, "counts"):
        q = parse_qs(urlparse(t["data"]["image"]).query)
        assert int(q["exp"][0]) > time.time() + 29 * 86400 and check(key, t["data"]["frame_id"], q["exp"][0],
                                                                     q["sig"][0]) is None  # fmt: skip
    assert len(project_tasks(client, "counts")) == 12


def test_time_of_day_labels(capsys, label_studio, ws):
    client = LabelStudio(label_studio.url, label_studio.token)
    code, out, err = push(capsys, label_studio, ws, "clock", "--count", "3", "--method", "random", task="time_of_day")
    assert code == 0 and "3 tasks created" in out, err
    tasks = project_tasks(client, "clock")
    for t, hhmm in zip(tasks, ["06:30", "12:00", "23:15"], strict=True):
        annotate(client, t["id"], "time_of_day", hhmm)
    code, out, err = pull(capsys, label_studio, ws, "clock")  # the task is read from the project's config
    assert code == 0 and "3 new, 0 changed" in out, err
    saved = json.loads((ws.root / "labels" / "time_of_day" / "labelstudio.json").read_text())
    assert sorted(t["annotations"][0]["result"][0]["value"]["text"][0] for t in saved) == ["06:30", "12:00", "23:15"]


def test_bad_input(capsys, label_studio, ws, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = fth(capsys, "label", "pull", "--url", dead, "--token", "x" * 40, "--project", "p", "--workspace",
                       str(ws.root))  # fmt: skip
    assert code == 2 and err.startswith("fth label pull: error: Label Studio at") and "unreachable" in err, err
    assert err.count("\n") == 1

    for token, why in [("0" * 40, "refused the token"), (label_studio.token[:-4] + "AAAA", "personal access token")]:
        code, _, err = push(capsys, label_studio, ws, "counts", "--count", "2", token=token)
        assert code == 2 and why in err and err.count("\n") == 1, err

    client = LabelStudio(label_studio.url, label_studio.token)
    client.create_project("boxes", "<View><Image name='image' value='$image'/><RectangleLabels name='box' "
                          "toName='image'><Label value='person'/></RectangleLabels></View>")  # fmt: skip
    before = client.projects()
    for run in (push(capsys, label_studio, ws, "boxes", "--count", "2"),
                pull(capsys, label_studio, ws, "boxes", "--task", "people_count")):  # fmt: skip
        code, _, err = run
        assert code == 2 and "has another labelling config: controls box (RectangleLabels)" in err, err
    assert len(client.projects()) == len(before)
    code, _, err = pull(capsys, label_studio, ws, "no such project")
    assert code == 2 and "no project titled 'no such project'" in err, err


def test_pull_refuses_frames_gone_and_bad_values(capsys, label_studio, tmp_path):
    small, _ = sim_workspace(tmp_path / "small", 1, 6)
    client = LabelStudio(label_studio.url, label_studio.token)
    code, out, err = push(capsys, label_studio, small, "gone", "--count", "5", "--method", "random")
    assert code == 0, err
    tasks = project_tasks(client, "gone")
    for t in tasks:
        annotate(client, t["id"], "people_count", 1)
    with open_catalog(small.root) as cat:
        assert cat.delete([t["data"]["frame_id"] for t in tasks[:2]]) == 2
    code, _, err = pull(capsys, label_studio, small, "gone")
    assert code == 2 and "2 of 5 labels in project 'gone' name unknown frames" in err and err.count("\n") == 1, err
    assert not (small.root / "labels").exists()

    code, _, err = push(capsys, label_studio, small, "bad clock", "--count", "1", "--method", "random",
                        task="time_of_day")  # fmt: skip
    assert code == 0, err
    annotate(client, project_tasks(client, "bad clock")[0]["id"], "time_of_day", "teatime")
    code, _, err = pull(capsys, label_studio, small, "bad clock")
    assert code == 2 and "not valid time_of_day labels" in err and "teatime" in err, err
    assert not (small.root / "labels").exists()


# -- the signed frame URLs fth serve answers ------------------------------------------------------------------------


def test_frames_endpoint_signed_urls(ws, monkeypatch):
    from server.app import create_app

    monkeypatch.setenv("FTH_API_KEYS", "k-123")
    app = create_app({"workspace": str(ws.root), "warmup": False})
    http = app.test_client()
    with open_catalog(ws.root, create=False) as cat:
        row = next(cat.iter_frames())
        data = cat.frame_store.read(row.path)
    key = secret(ws.root)
    assert secret(ws.root) == key and (ws.root / "secrets" / "frames.key").stat().st_mode & 0o077 == 0

    url = urlparse(signed_url("http://x", key, row.id, 60))
    r = http.get(f"{url.path}?{url.query}")  # no Authorization header: the browser sends none
    assert r.status_code == 200 and r.data == data and r.mimetype == "image/jpeg"
    assert http.get("/v1/models").status_code == 401  # the rest of the API still wants the key

    q = parse_qs(url.query)
    exp, sig = q["exp"][0], q["sig"][0]
    other = "0" * 64  # a different frame id with this frame's signature
    bad = {
        "missing": f"{PREFIX}{row.id}",
        "no sig": f"{PREFIX}{row.id}?exp={exp}",
        "tampered sig": f"{PREFIX}{row.id}?exp={exp}&sig={sig[:-1]}{'0' if sig[-1] != '0' else '1'}",
        "extended exp": f"{PREFIX}{row.id}?exp={int(exp) + 3600}&sig={sig}",
        "other frame": f"{PREFIX}{other}?exp={exp}&sig={sig}",
        "expired": urlparse(signed_url("http://x", key, row.id, -1)),
    }
    for why, path in bad.items():
        path = f"{path.path}?{path.query}" if not isinstance(path, str) else path
        r = http.get(path)
        assert r.status_code == 403 and r.json["error"]["code"] == "forbidden", why
    assert "expired" in http.get(path).json["error"]["message"]
    gone = urlparse(signed_url("http://x", key, "f" * 64, 60))
    assert http.get(f"{gone.path}?{gone.query}").status_code == 404
    assert label_studio_config("people_count")[0] == "Number"


# -- detection and segmentation: the tasks' Label Studio hooks ------------------------------------------------------


def test_rectangles_percent_pixel_boxes_round_trip():
    task = make_task(TaskConfig(name="detection", classes=("person", "car")))
    kind, config = task.label_studio_config()
    assert kind == "RectangleLabels" and '<Label value="car"/>' in config and 'name="detection"' in config
    boxes = [{"box": [16.0, 24.0, 48.0, 72.0], "score": 0.9, "class": "car"},
             {"box": [0.0, 0.0, 160.0, 96.0], "score": 0.4, "class": "person"}]  # fmt: skip
    answer = {"boxes": boxes, "image_size": [96, 160]}
    results = task.label_studio_prediction(answer)
    v = results[0]["value"]
    assert (v["x"], v["y"], v["width"], v["height"], v["rectanglelabels"]) == (10.0, 25.0, 20.0, 50.0, ["car"])
    assert (results[0]["original_width"], results[0]["original_height"], results[0]["score"]) == (160, 96, 0.9)
    boxes = task.label_studio_value(results)  # relative x0 y0 x1 y1 class, as the detection labels hold them
    np.testing.assert_allclose(boxes[:, :4] * [160, 96, 160, 96], [b["box"] for b in answer["boxes"]], atol=1e-4)
    assert boxes[:, 4].tolist() == [1.0, 0.0]
    np.testing.assert_allclose(task.label_studio_value(task.label_studio_results(boxes)), boxes, atol=1e-6)
    assert task.label_studio_value([]).shape == (0, 5)  # submitted without boxes: no objects
    with pytest.raises(LabelError, match="a rectangle labelled 'bus', not one of the classes"):
        task.label_studio_value([{**results[0], "value": {**v, "rectanglelabels": ["bus"]}}])


def test_polygons_to_mask_and_back():
    task = make_task(TaskConfig(name="segmentation", classes=("sky", "ground", "person")))
    size = {"original_width": 8, "original_height": 4}
    square = {"type": "polygonlabels", "from_name": "segmentation", **size,
              "value": {"points": [[0, 0], [50, 0], [50, 50], [0, 50]], "polygonlabels": ["ground"]}}  # fmt: skip
    tri = {"type": "polygonlabels", "from_name": "segmentation", **size,
           "value": {"points": [[25, 0], [100, 0], [100, 100]], "polygonlabels": ["person"]}}  # fmt: skip
    mask = task.label_studio_value([square, tri])
    want = np.full((4, 8), 255, np.uint8)
    want[:2, :4] = 1  # the square: pixels whose centre is inside
    for y in range(4):
        for x in range(8):
            if x + 0.5 >= 2 + 6 * (y + 0.5) / 4:  # the triangle (the later polygon paints over the earlier)
                want[y, x] = 2
    np.testing.assert_array_equal(mask, want)
    assert task.label_studio_value([]) is None  # no polygons: no label
    _, truth = frame(sim_config(), 120)
    results = task.label_studio_results(np.minimum(truth.seg, 2) | (truth.seg == 255) * 255)  # 4 sim classes -> 3
    back = task.label_studio_value(results)
    np.testing.assert_array_equal(back, np.minimum(truth.seg, 2) | (truth.seg == 255) * 255)
    with pytest.raises(LabelError, match="without original_height/original_width"):
        task.label_studio_value([{**square, "original_width": None}])


def test_depth_has_no_label_studio_config(capsys, ws):
    with pytest.raises(LabelError, match="^task depth has no Label Studio labelling config$"):
        make_task("depth").label_studio_config()
    code, _, err = fth(capsys, "label", "push", "--url", "http://127.0.0.1:9", "--token", "x", "--project", "d",
                       "--task", "depth", "--count", "2", "--workspace", str(ws.root),
                       "--frames-url", FRAMES_URL)  # fmt: skip
    assert code == 2 and err == "fth label push: error: task depth has no Label Studio labelling config\n", err


def sim_truth(cfg, per_day: int) -> dict:
    """Frame id -> the simulator's truth, for the frames `sim_workspace(root, 1, per_day)` stored (ids are the JPEG
    bytes' hash, so re-encoding the same frames gives the same ids)."""
    import hashlib

    step = round(24 * 3600 / cfg.time_scale * cfg.fps) // per_day
    out = {}
    for k in range(per_day):
        rgb, truth = frame(cfg, k * step)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        out[hashlib.sha256(buf.getvalue()).hexdigest()] = truth
    return out


def test_detection_and_segmentation_loop(capsys, label_studio, ws):
    client = LabelStudio(label_studio.url, label_studio.token)
    truth = sim_truth(sim_config(), 24)
    code, out, err = push(capsys, label_studio, ws, "people boxes", "--count", "8", "--method", "random",
                          task="detection")  # fmt: skip
    assert code == 0 and "8 tasks created" in out, err
    project = client.project("people boxes")
    control = project["parsed_label_config"]["detection"]
    assert control["type"] == "RectangleLabels" and control["labels"] == ["person"]
    det = make_task(TaskConfig(name="detection"))
    tasks = project_tasks(client, "people boxes")
    for t in tasks:  # the simulator's person boxes, in percent, as a labeller draws them
        tr = truth[t["data"]["frame_id"]]
        h, w = tr.seg.shape
        boxes = np.concatenate([tr.boxes / [w, h, w, h], np.zeros((len(tr.boxes), 1))], 1)
        body = {"result": det.label_studio_results(boxes, (h, w)), "lead_time": 9.0}
        client.request("POST", f"/api/tasks/{t['id']}/annotations/", json=body)
    code, out, err = pull(capsys, label_studio, ws, "people boxes", "--refit")  # the task is read from the config
    assert code == 0 and "8 new, 0 changed" in out, err
    head_id = out.strip().splitlines()[-1].removeprefix("head: ")
    assert head_id.startswith("head-"), out
    folder = ws.root / "labels" / "detection"
    assert json.loads((folder / "classes.json").read_text()) == {"classes": ["person"]}
    code, out, err = push(capsys, label_studio, ws, "people boxes", "--count", "2", "--method", "random",
                          task="detection")  # fmt: skip
    assert code == 0 and f"pre-annotations: head {head_id}" in out, err
    new = [t for t in project_tasks(client, "people boxes") if t["data"]["frame_id"] not in {x["data"]["frame_id"]
           for x in tasks}]  # fmt: skip
    preds = client.request("GET", f"/api/tasks/{new[0]['id']}/")["predictions"][0]
    assert preds["model_version"] == head_id
    assert all(r["type"] == "rectanglelabels" and r["original_width"] == 320 for r in preds["result"]), preds

    seg_classes = ws.root / "seg-classes.json"
    seg_classes.write_text(json.dumps(["sky", "ground", "building", "person"]))
    code, out, err = push(capsys, label_studio, ws, "regions", "--count", "6", "--method", "random",
                          "--classes", str(seg_classes), task="segmentation")  # fmt: skip
    assert code == 0 and "6 tasks created" in out, err
    assert client.project("regions")["parsed_label_config"]["segmentation"]["type"] == "PolygonLabels"
    seg = make_task(TaskConfig(name="segmentation", classes=("sky", "ground", "building", "person")))
    masks = {}
    for t in project_tasks(client, "regions"):  # the simulator's class map as polygons
        masks[t["data"]["frame_id"]] = truth[t["data"]["frame_id"]].seg
        body = {"result": seg.label_studio_results(masks[t["data"]["frame_id"]])}
        client.request("POST", f"/api/tasks/{t['id']}/annotations/", json=body)
    code, out, err = pull(capsys, label_studio, ws, "regions", "--refit")
    assert code == 0 and "6 new, 0 changed" in out and out.strip().splitlines()[-1].startswith("head: head-"), err
    labels = make_task("segmentation").read_labels(
        str(ws.root / "labels" / "segmentation" / "labelstudio.json"), "labelstudio",
        LabelContext(resolver=lambda p: None, known=set(truth), size=lambda f: None))[0]  # fmt: skip
    assert labels.classes == ("sky", "ground", "building", "person") and len(labels) == 6
    for fid, mask in labels.as_dict().items():
        np.testing.assert_array_equal(mask, masks[fid])  # exactly the truth, after Label Studio and back
    seg_head = out.strip().splitlines()[-1].removeprefix("head: ")
    code, out, err = push(capsys, label_studio, ws, "regions", "--count", "1", "--method", "random",
                          task="segmentation")  # fmt: skip
    assert code == 0 and f"pre-annotations: head {seg_head}" in out, err  # classes from the project's config
    last = max(project_tasks(client, "regions"), key=lambda t: t["id"])
    preds = client.request("GET", f"/api/tasks/{last['id']}/")["predictions"][0]
    assert preds["result"] and {r["type"] for r in preds["result"]} == {"polygonlabels"}

    for run, why in [
        (push(capsys, label_studio, ws, "regions", "--count", "1", task="detection"), "another labelling config"),
        (pull(capsys, label_studio, ws, "people boxes", "--task", "segmentation"), "another labelling config"),
        (push(capsys, label_studio, ws, "people boxes", "--count", "1", "--classes", str(seg_classes),
              task="detection"), "labels ['person'], not the classes ['sky'"),
        (pull(capsys, label_studio, ws, "people boxes", "--out", str(ws.root / "labels" / "segmentation" /
              "labelstudio.json")), "holds labels of the classes ['sky', 'ground', 'building', 'person']; project"),
    ]:  # fmt: skip
        code, _, err = run
        assert code == 2 and why in err and err.count("\n") == 1, err
    assert json.loads((ws.root / "labels" / "segmentation" / "classes.json").read_text())["classes"][0] == "sky"
