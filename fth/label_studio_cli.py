"""`fth label push` and `fth label pull`: a live labelling loop against a running Label Studio.

    fth label push --url URL --project NAME --task T --count 50 --method hybrid --frames-url SERVE_URL
                   [--classes JSON] [--labels L] [--encoder ID] [--source S] [--token TOKEN] [--url-days 14]
                   [--refresh-urls]
    fth label pull --url URL --project NAME [--task T] [--out LABELS] [--refit] [--encoder ID] [--token TOKEN]

push chooses frames through `fth.label_cli.choose` (the one selection path), skipping frames the project or the
workspace's label set already holds, and creates one task per frame whose `data` carries our frame id, source and
capture time, and a signed, expiring image URL that `fth serve` answers (`server.frames`); the served (else newest)
head of the task on the encoder is attached as a pre-annotation (`predictions`, model_version = the head id).

pull exports the project's tasks, takes each task's latest annotation, joins it on `data.frame_id` (never a file
name), checks every frame is in the catalog and every value is a valid label for the task, and only then merges them
into the workspace's label set for the task, `<workspace>/labels/<task>/labelstudio.json`: a Label Studio JSON export
(one task per frame, its latest annotation) that `fth heads fit --labels` reads and a head's card records, so `fth
heads refit` finds it again. `--refit` then runs `fth heads fit` on it.

What a task's project looks like and how an annotation becomes its label belong to the task (`Task.label_studio_config`,
`label_studio_results`, `label_studio_value`, `label_studio_prediction`); nothing here branches on a task name. Tasks
with classes (detection, segmentation) take them from `--classes`, the project's labels or the pre-annotating head;
pull writes them as `classes.json` beside the label set, which the tasks' `labelstudio` readers read.

Wrong input (Label Studio unreachable, a refused token, a project with another labelling config, annotations of frames
the catalog no longer holds, unusable values) is one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from fth.heads_cli import WS_HELP, _guard

TOKEN_ENV = "LABEL_STUDIO_TOKEN"
LABEL_SET = "labelstudio.json"


def register(sub: argparse._SubParsersAction) -> None:
    from fth.cli import subcommand_actions
    from fth.label_cli import METHODS

    actions = subcommand_actions(sub, "label")
    if actions is None:
        return
    push = actions.add_parser("push", help="choose frames and create Label Studio tasks for them (with predictions)")
    _common(push)
    push.add_argument("--task", required=True, help="the task to label: people_count, time_of_day, detection or "
                      "segmentation")  # fmt: skip
    push.add_argument("--classes", help="class list JSON of detection / segmentation (default: the project's labels, "
                      "else the pre-annotating head's classes, else the task's default)")  # fmt: skip
    push.add_argument("--count", type=int, required=True, help="frames to add to the project")
    push.add_argument("--method", default="kcenter", choices=METHODS)
    push.add_argument("--labels", help="labels the method learns from (default: the workspace's label set)")
    push.add_argument("--encoder", default="", help="encoder of the selection and predictions (default: served)")
    push.add_argument("--source", help="only frames of this catalog source")
    push.add_argument("--seed", type=int, default=0)
    push.add_argument("--frames-url", required=True, help="base URL of `fth serve` as the labeller's browser reaches "
                      "it; images are signed, expiring links to its /v1/frames endpoint")  # fmt: skip
    push.add_argument("--url-days", type=float, default=14.0, help="days the image links stay valid (default 14)")
    push.add_argument("--refresh-urls", action="store_true", help="also renew the image links of the project's "
                      "tasks (with --count 0: only that)")  # fmt: skip
    push.set_defaults(func=cmd_push)

    pull = actions.add_parser("pull", help="fetch finished annotations into the workspace's label set")
    _common(pull)
    pull.add_argument("--task", help="the task (default: read from the project's labelling config)")
    pull.add_argument("--out", help=f"label set file (default: <workspace>/labels/<task>/{LABEL_SET})")
    pull.add_argument("--refit", action="store_true", help="fit the task's head on the label set (fth heads fit)")
    pull.add_argument("--encoder", default="", help="encoder to refit on (default: the newest registered)")
    pull.set_defaults(func=cmd_pull)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="Label Studio base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--project", required=True, help="Label Studio project title (created by push when missing)")
    p.add_argument("--token", default=None, help=f"personal access token (or legacy token); default ${TOKEN_ENV}")
    p.add_argument("--workspace", default=None, help=WS_HELP)


def _client(args: argparse.Namespace):
    from fth.label_studio import LabelStudio

    return LabelStudio(args.url, args.token or os.environ.get(TOKEN_ENV, ""))


def label_set_path(workspace: str | None, task: str, out: str | None = None) -> Path:
    from store.paths import Workspace

    return Path(out) if out else Workspace.at(workspace).root / "labels" / task / LABEL_SET


def read_label_set(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: not a label set (a Label Studio JSON list of tasks)")
    return data


def project_classes(project: dict[str, Any] | None, task: str) -> tuple[str, ...]:
    """The labels of the project's control for `task` (its class list, in the config's order), or ()."""
    control = ((project or {}).get("parsed_label_config") or {}).get(task) or {}
    return tuple(control.get("labels") or ())


def make_ls_task(name: str, classes: tuple[str, ...] = ()):
    """The Task `name` configured with `classes` (detection / segmentation read and write labels by class)."""
    from heads.tasks import TaskConfig, make_task

    return make_task(TaskConfig(name=name, classes=tuple(classes)))


def check_project(project: dict[str, Any], task) -> None:
    """The project's labelling config must hold our control for `task` (a control named after the task, of the
    task's type) with the task's classes, when it has any."""
    kind = _control_of(task.name)
    if kind is None:
        task.label_studio_config()  # raises the task's own one-line error
    parsed = project.get("parsed_label_config") or {}
    control = parsed.get(task.name) or {}
    where = f"project {project.get('title')!r} (id {project.get('id')})"
    if control.get("type") != kind:
        have = ", ".join(f"{k} ({v.get('type')})" for k, v in parsed.items()) or "none"
        raise ValueError(f"{where} has another labelling config: controls {have}; task {task.name} needs a {kind} "
                         f"control named {task.name!r}")  # fmt: skip
    classes = tuple(task.cfg.classes)
    if classes and project_classes(project, task.name) != classes:
        raise ValueError(f"{where} labels {list(project_classes(project, task.name))}, not the classes "
                         f"{list(classes)}")  # fmt: skip


# -- push ---------------------------------------------------------------------------------------------------------


@_guard
def cmd_push(args: argparse.Namespace) -> int:
    from fth.label_cli import SCORED, choose
    from heads.label_maps import read_classes
    from server.frames import secret, signed_url
    from store.frame_index import FrameIndex
    from store.paths import Workspace

    if _control_of(args.task) is None:  # a task without a config fails before any request, with its own message
        make_ls_task(args.task).label_studio_config()
    ws = Workspace.at(args.workspace)
    client = _client(args)
    project = client.project(args.project)
    classes = read_classes(args.classes) if args.classes else project_classes(project, args.task)
    task = make_ls_task(args.task, classes or head_classes(args, ws))
    if project is not None:
        check_project(project, task)
    try:
        _, config = task.label_studio_config()
    except ValueError as e:
        raise ValueError(f"{e}: pass --classes") from None
    existing = [t for t in client.tasks(project["id"]) if t.get("data", {}).get("frame_id")] if project else []
    in_project = {str(t["data"]["frame_id"]) for t in existing}
    key, ttl = secret(ws.root), args.url_days * 86400
    if args.refresh_urls:  # re-sign the images of the tasks already there (their links expire)
        for t in existing:
            data = {**t["data"], "image": signed_url(args.frames_url, key, str(t["data"]["frame_id"]), ttl)}
            client.request("PATCH", f"/api/tasks/{t['id']}/", json={"data": data})
        print(f"project {args.project!r}: image links of {len(existing)} tasks renewed for {args.url_days:g} days")
    if args.count == 0 and args.refresh_urls:
        return 0
    labels = args.labels or str(label_set_path(args.workspace, args.task))
    in_label_set = {str(t["data"]["frame_id"]) for t in read_label_set(Path(labels)) if labels.endswith(".json")
                    and t.get("data", {}).get("frame_id")} if Path(labels).is_file() else set()  # fmt: skip
    extra = {"task": args.task, "labels": labels} if args.method in SCORED else {}
    if extra and not Path(labels).exists():
        raise ValueError(f"--method {args.method} learns from labels and there are none yet at {labels}: push a first "
                         f"batch with --method kcenter (or random), label and pull it, or pass --labels")  # fmt: skip
    sel = choose(args.workspace, args.count, args.method, encoder=args.encoder, source=args.source,
                 labelled=sorted(in_project | in_label_set), seed=args.seed, **extra)  # fmt: skip
    ids = [f for f in sel.frame_ids if f not in in_project]  # choose already skips them; never a duplicate task
    index = FrameIndex(ws.root, ws.catalog, args.source)
    head_id, answers, why = predictions(args, ws, task, index, ids, sel.encoder)
    tasks = []
    for rank, fid in enumerate(ids):
        row = index.by_id[fid]
        data = {"image": signed_url(args.frames_url, key, fid, ttl), "frame_id": fid, "source": row.source,
                "captured_at": row.captured_at, "rank": rank, "method": sel.method}  # fmt: skip
        ls_task: dict[str, Any] = {"data": data}
        if head_id:
            ls_task["predictions"] = [{"model_version": head_id, "result": answers[rank]}]
        tasks.append(ls_task)
    created_project = project is None
    if created_project:
        project = client.create_project(args.project, config, f"fth {args.task} labels, pushed by fth label push")
    try:
        created = client.import_tasks(project["id"], tasks) if tasks else 0
    except ValueError:
        if created_project:  # nothing half-made: a project this push created goes again with its failed import
            client.request("DELETE", f"/api/projects/{project['id']}/")
        raise
    print(f"chose {sel.describe()}")
    print(f"project {args.project!r} (id {project['id']}, {'created' if created_project else 'reused'}): "
          f"{created} tasks created, {len(sel.frame_ids) - len(ids)} already there skipped, "
          f"{len(in_project)} there before; {len(in_label_set)} frames of the label set left out")  # fmt: skip
    print(f"pre-annotations: {f'head {head_id}' if head_id else f'none ({why})'}")
    return 0


def _head_card(args, ws, encoder: str | None):
    """The served, else newest, head card of the task on the encoder (the given, else `encoder`, else the served
    one), or None."""
    from store import release
    from store.artifacts import ArtifactError, Registry

    registry = Registry(ws.artifacts)
    try:
        encoder_id = registry.card(args.encoder).id if args.encoder else encoder or release.served(ws, registry)[0]
    except ArtifactError:
        return None
    heads = [c for c in registry.list("head") if c.config.get("task", {}).get("name") == args.task
             and c.parents.get("encoder") == encoder_id]  # fmt: skip
    if not heads:
        return None
    current = release.current(ws)
    served = [c for c in heads if current is not None and c.id in current.heads]
    return (served or heads)[-1]


def head_classes(args, ws) -> tuple[str, ...]:
    card = _head_card(args, ws, None)
    return tuple(card.config.get("task", {}).get("classes") or ()) if card else ()


def predictions(args, ws, task, index, ids: list[str], encoder: str | None) -> tuple[str, list[list[dict]], str]:
    """(the served, else newest, head of the task on the encoder; its answers on `ids` as Label Studio results; ""),
    or ("", [], why not) when there is no such head or the task has no pre-annotation."""
    from fth.heads_cli import embed_step
    from heads.artifact import load_head, predict
    from heads.labels import LabelError
    from heads.pipeline import stored_features
    from store.artifacts import Registry

    card = _head_card(args, ws, encoder)
    if card is None or not ids:
        return "", [], "no head of this task on the encoder"
    if tuple(card.config.get("task", {}).get("classes") or ()) not in ((), tuple(task.cfg.classes)):
        return "", [], f"head {card.id} has other classes than the project"
    try:
        head = load_head(card.id, Registry(ws.artifacts), card.parents["encoder"])
        x, _, _ = stored_features(ws, index, card.parents["encoder"], ids, head.recipe,
                                  embed_step(args.workspace, card.parents["encoder"]))  # fmt: skip
        sizes = [index.size(f) for f in ids]
        answers = [task.label_studio_prediction(a) for a in predict(head, x, sizes)]
    except LabelError as e:
        return "", [], str(e)
    return card.id, answers, ""


# -- pull ---------------------------------------------------------------------------------------------------------


@_guard
def cmd_pull(args: argparse.Namespace) -> int:
    from heads.label_maps import write_classes
    from heads.labels import LabelError, label_studio_labels, latest_annotation
    from heads.tasks import TASKS
    from store.frame_index import FrameIndex
    from store.fsutil import atomic_write
    from store.paths import Workspace

    client = _client(args)
    project = client.project(args.project)
    if project is None:
        raise ValueError(f"no project titled {args.project!r} at {client.url} (fth label push creates it)")
    parsed = project.get("parsed_label_config") or {}
    name = args.task or next((n for n, c in parsed.items() if n in TASKS and _control_of(n) == c.get("type")), None)
    if name is None:
        have = ", ".join(parsed) or "none"
        raise ValueError(f"project {args.project!r} has no control fth reads (controls: {have}); pass --task")
    task = make_ls_task(name, project_classes(project, name))
    check_project(project, task)
    exported = client.tasks(project["id"])
    done = [t for t in exported if latest_annotation(t, task, name)[0] is not None]
    keyless = [t.get("id") for t in done if not t.get("data", {}).get("frame_id")]
    if keyless:
        raise LabelError(f"{len(keyless)} of {len(done)} annotated tasks in project {args.project!r} carry no "
                         f"data.frame_id (not pushed by fth label push): task ids {keyless[:5]}")  # fmt: skip
    ws = Workspace.at(args.workspace)
    index = FrameIndex(ws.root, ws.catalog)
    where = f"project {args.project!r}"
    labels = label_studio_labels(done, task, where, from_name=name, known=index.by_id)  # unknown frames: an error
    try:  # maps of several frame sizes do not stack: each frame on its own
        for values in [[v] for v in labels.values] if task.map_labels else [labels.values]:
            task.targets(values)
    except (ValueError, TypeError) as e:
        raise LabelError(f"{where}: annotations that are not valid {name} labels: {e}") from None

    path = label_set_path(args.workspace, name, args.out)
    stored = {str(t["data"]["frame_id"]): t for t in read_label_set(path)}
    classes, classes_file = tuple(task.cfg.classes), path.parent / "classes.json"  # the readers' class order
    if classes and stored and _classes_in(classes_file) not in (None, classes):
        raise LabelError(f"{path} holds labels of the classes {list(_classes_in(classes_file) or ())}; project "
                         f"{args.project!r} labels {list(classes)}: pull it into another --out")  # fmt: skip
    new = changed = same = 0
    for t in done:
        fid = str(t["data"]["frame_id"])
        ann, value = latest_annotation(t, task, name)
        old = stored.get(fid)
        old_value = latest_annotation(old, task, name)[1] if old else None
        if old is not None and _same(old_value, value):
            same += 1
            continue
        new, changed = new + (old is None), changed + (old is not None)
        keep = {k: ann.get(k) for k in ("id", "result", "created_at", "updated_at", "completed_by", "lead_time")}
        stored[fid] = {"id": t.get("id"), "project": project["id"], "data": t["data"], "annotations": [keep]}
    if classes and _classes_in(classes_file) != classes:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_classes(classes_file, classes)
    if new or changed:
        with atomic_write(path, "w") as f:
            json.dump(list(stored.values()), f, indent=1)
    print(f"{where}: {len(exported)} tasks, {len(done)} annotated, {len(exported) - len(done)} not yet annotated")
    print(f"label set {path}: {new} new, {changed} changed, {same} unchanged (skipped); {len(stored)} labelled frames")
    if args.refit:
        return refit(args, name, path)
    return 0


def _control_of(name: str) -> str | None:
    from heads.labels import LabelError

    try:
        return make_ls_task(name, ("a", "b")).label_studio_config()[0]
    except LabelError:
        return None


def _classes_in(path: Path) -> tuple[str, ...] | None:
    from heads.label_maps import read_classes

    return read_classes(path) if path.is_file() else None


def _same(a: Any, b: Any) -> bool:
    import numpy as np

    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return a == b


def refit(args: argparse.Namespace, task: str, labels: Path) -> int:
    """`fth heads fit` on the label set: the same command, parsed by the same parser."""
    from fth.cli import build_parser

    argv = ["heads", "fit", "--task", task, "--labels", str(labels), "--format", "labelstudio"]
    argv += ["--encoder", args.encoder] if args.encoder else []
    argv += ["--workspace", args.workspace] if args.workspace else []
    fit = build_parser().parse_args(argv)
    return int(fit.func(fit) or 0)
