"""`fth label push/pull` against a real Label Studio on loopback (the session's `label_studio` fixture), and the signed
frame URLs `fth serve` answers (server/frames.py, through Flask's test client on the real app).

The loop: push a k-center batch (tasks carry our frame id, source, capture time and a signed image URL), annotate most
tasks through the REST API as a labeller would, pull them into the workspace's label set and refit the head from it;
pull again (idempotent), change one annotation (one changed), push again (no duplicate task; the new head's answers are
pre-annotations). Bad input: unreachable server, refused tokens, a project with another labelling config, annotations
of frames the catalog no longer holds, values that are no label: exit 2, one line, nothing written.
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlparse

import pytest

from fth.cli import main
from fth.label_studio import LabelStudio
from fth.procs import free_port
from heads.labels import label_studio_config, label_studio_results
from server.frames import PREFIX, check, secret, signed_url
from store.backends import open_catalog
from tests.serving import tiny_encoder
from tests.sim_workspace import sim_workspace

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

    code, out, err = push(capsys, label_studio, ws, "counts", "--count", "4", "--method", "random")
    assert code == 0, err
    assert "reused): 4 tasks created" in out and "8 there before" in out and f"head {head_id}" in out
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
