"""The release record: which encoder and heads a workspace serves, and the sets it served before.

    <workspace>/artifacts/release.json
    {"current": {"encoder", "heads", "note", "at"} | null,
     "history": [earlier sets, newest last],
     "log": [{"action": "promote" | "rollback", "encoder", "heads", "note", "at"}, ...]}

`promote` makes a set current and pushes the one it replaces onto `history`; `rollback` makes the newest set of
`history` current again (the set it replaces is dropped from the stack, not from `log`). `fth serve` serves
`current` when no encoder is named (`server.runner`); `fth serve promote / rollback` write here, then signal the
running servers (`server.swap`). Writes hold an exclusive `flock` on `release.lock` for the read-modify-write and
replace the file atomically (`store.fsutil.atomic_write`), so a reader sees one whole record or the next.

Only ids are checked here (the encoder is a registered encoder, each head a registered head); whether each head can
serve on the encoder (fitted on it, or through an adapter) is the heads package's question, asked by the caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from store.artifacts import ArtifactError, Registry
from store.fsutil import atomic_write
from store.paths import Workspace

FILE = "release.json"


class ReleaseError(RuntimeError):
    """A release change that cannot be made (nothing to roll back to, an id that is not registered)."""


@dataclass
class Release:
    """One served set: an encoder id, the head ids served with it, why, and when it became current (UTC ISO)."""

    encoder: str
    heads: list[str] = field(default_factory=list)
    note: str = ""
    at: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Release:
        return cls(data["encoder"], list(data.get("heads", [])), data.get("note", ""), data.get("at", ""))

    def describe(self) -> str:
        heads = ", ".join(self.heads) or "no heads"
        return f"{self.encoder} with {heads}" + (f" ({self.note})" if self.note else "")


def path(ws: Workspace) -> Path:
    return ws.artifacts / FILE


def _read(ws: Workspace) -> dict[str, Any]:
    file = path(ws)
    if not file.is_file():
        return {"current": None, "history": [], "log": []}
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ReleaseError(f"{file} is not valid JSON ({e}); fix or remove it") from e
    return {"current": data.get("current"), "history": data.get("history", []), "log": data.get("log", [])}


@contextlib.contextmanager
def _locked(ws: Workspace) -> Iterator[dict[str, Any]]:
    """The record, held exclusively; written back atomically when the body exits cleanly."""
    ws.artifacts.mkdir(parents=True, exist_ok=True)
    fd = os.open(ws.artifacts / "release.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = _read(ws)
        yield data
        with atomic_write(path(ws), "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current(ws: Workspace) -> Release | None:
    """The served set, or None when nothing was ever promoted in this workspace."""
    data = _read(ws)["current"]
    return Release.from_json(data) if data else None


def served(ws: Workspace, registry: Registry, hint: str = "") -> tuple[str, Release | None]:
    """(the encoder id the workspace serves, its release): the current release's encoder, else the newest registered
    encoder (no release); none registered is an `ArtifactError` ending with `hint`."""
    release = current(ws)
    return (release.encoder, release) if release is not None else (registry.newest("encoder", hint).id, None)


def history(ws: Workspace) -> list[Release]:
    """Earlier sets that `rollback` can return to, newest last."""
    return [Release.from_json(d) for d in _read(ws)["history"]]


def _resolve(registry: Registry, ref: str, kind: str) -> str:
    try:
        card = registry.card(ref)
    except ArtifactError as e:
        raise ReleaseError(str(e)) from None
    if card.kind != kind:
        raise ReleaseError(f"{card.id} is a {card.kind!r} artifact, not a {kind}")
    return card.id


def promote(ws: Workspace, encoder: str, heads: list[str], note: str = "") -> Release:
    """Make (encoder, heads) the served set; ids or unique id prefixes, stored as full ids. Returns the new set."""
    registry = Registry(ws.artifacts)
    release = Release(
        _resolve(registry, encoder, "encoder"), [_resolve(registry, h, "head") for h in heads], note, _now()
    )
    with _locked(ws) as data:
        if data["current"]:
            data["history"].append(data["current"])
        data["current"] = asdict(release)
        data["log"].append({"action": "promote", **asdict(release)})
    return release


def rollback(ws: Workspace) -> Release:
    """Serve the previous set again; `ReleaseError` when there is none. Returns the set now current."""
    with _locked(ws) as data:
        if not data["history"]:
            now = Release.from_json(data["current"]).describe() if data["current"] else "nothing was ever promoted"
            raise ReleaseError(f"no previous set to roll back to in {path(ws)} (current: {now})")
        back = Release.from_json(data["history"].pop())
        note = f"rollback to the set of {back.at}" + (f": {back.note}" if back.note else "")
        release = Release(back.encoder, back.heads, note, _now())
        data["current"] = asdict(release)
        data["log"].append({"action": "rollback", **asdict(release)})
    return release
