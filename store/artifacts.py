"""The artifact registry: encoders and heads as safetensors weights beside a JSON card.

    <root>/<kind>/<id>/weights.safetensors
    <root>/<kind>/<id>/card.json     {"id", "kind", "name", "config", "parents", "metrics", "created"}

The id is `<kind>-<first 16 hex of sha256>` over the weights file and the canonical JSON of config and parents:
the same weights with the same lineage always get the same id, and any change gets a new one. An artifact is
written into a temporary folder and renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from store.fsutil import atomic_write, fsync_dir

WEIGHTS = "weights.safetensors"
_ID_RE = re.compile(r"[a-z][a-z0-9_]*-[0-9a-f]+")
CARD = "card.json"


class ArtifactError(LookupError):
    """An artifact that cannot be found or does not match what the caller needs."""


@dataclass
class Card:
    id: str
    kind: str
    config: dict[str, Any]
    parents: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    created: str = ""
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "config": self.config,
            "parents": self.parents,
            "metrics": self.metrics,
            "created": self.created,
        }


def _digest(weights: Path, config: dict[str, Any], parents: dict[str, Any]) -> str:
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps({"config": config, "parents": parents}, sort_keys=True).encode())
    return h.hexdigest()[:16]


class Registry:
    """Artifacts under one root folder (normally `Workspace.artifacts`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def register(
        self,
        kind: str,
        tensors: dict[str, torch.Tensor],
        config: dict[str, Any],
        parents: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> Card:
        """Write weights + card atomically; returns the card (registering identical content again is a no-op)."""
        parents, metrics = parents or {}, metrics or {}
        (self.root / kind).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root / kind))
        try:
            weights = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
            save_file(weights, str(tmp / WEIGHTS))
            art_id = f"{kind}-{_digest(tmp / WEIGHTS, config, parents)}"
            now = datetime.now(UTC).isoformat(timespec="microseconds")  # newest() orders by it: seconds tied
            card = Card(art_id, kind, config, parents, metrics, name, now)
            (tmp / CARD).write_text(json.dumps(card.to_json(), indent=2, sort_keys=True) + "\n")
            for f in (tmp / WEIGHTS, tmp / CARD):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            final = self.root / kind / art_id
            if final.exists():
                shutil.rmtree(tmp)
                return self.card(art_id)
            try:
                os.rename(tmp, final)
            except OSError:  # another writer registered the same content between the check and the rename
                if not (final / CARD).is_file():
                    raise
                shutil.rmtree(tmp)
                return self.card(art_id)
            fsync_dir(self.root / kind)
            card.path = final
            return card
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def path_of(self, ref: str | Path) -> Path:
        """An artifact id, or a path to its folder or card -> its folder."""
        path = Path(ref)
        if path.name == CARD:
            path = path.parent
        if (path / CARD).is_file():
            return path
        ref = str(ref)
        if not _ID_RE.fullmatch(ref):  # a path, or something that is neither a path nor an id
            raise ArtifactError(f"artifact {ref!r}: no {CARD} there, and it is not an artifact id (<kind>-<hex>)")
        kind = ref.split("-", 1)[0]
        candidate = self.root / kind / ref
        if (candidate / CARD).is_file():
            return candidate
        # a unique id prefix (at least <kind>-<4 hex>) also resolves
        matches = (
            [p for p in (self.root / kind).glob(f"{ref}*") if (p / CARD).is_file()] if len(ref) > len(kind) + 4 else []
        )
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(c.id for c in self.list()) or "none"
        hint = "ambiguous prefix" if matches else "not found"
        raise ArtifactError(f"artifact {ref!r}: {hint} in {self.root} (registered: {known})")

    def card(self, ref: str | Path, kind: str | None = None, flag: str = "") -> Card:
        """The card of `ref` (id, unique id prefix or artifact folder). With `kind`, an artifact of another kind is an
        ArtifactError naming both (`flag`, e.g. `--encoder`, says which argument named it)."""
        path = self.path_of(ref)
        data = json.loads((path / CARD).read_text())
        if kind is not None and data["kind"] != kind:
            where = f"{flag} {ref}: " if flag else ""
            raise ArtifactError(f"{where}{data['id']} is a {data['kind']!r} artifact, not {_article(kind)} {kind}")
        return Card(
            data["id"],
            data["kind"],
            data["config"],
            data.get("parents", {}),
            data.get("metrics", {}),
            data.get("name"),
            data.get("created", ""),
            path,
        )

    def load(self, ref: str | Path) -> tuple[dict[str, torch.Tensor], Card]:
        card = self.card(ref)
        return load_file(str(card.path / WEIGHTS)), card

    def update_metrics(self, ref: str | Path, metrics: dict[str, Any]) -> Card:
        """Merge `metrics` into an artifact's card, rewritten atomically. The id covers weights, config and parents,
        not metrics, so it stays valid (a gate decision or a later evaluation is added this way)."""
        card = self.card(ref)
        card.metrics = {**card.metrics, **metrics}
        with atomic_write(card.path / CARD, "w") as f:
            f.write(json.dumps(card.to_json(), indent=2, sort_keys=True) + "\n")
        return card

    def newest(self, kind: str, hint: str = "") -> Card:
        """The most recently registered artifact of `kind`; none is an error ending with `hint` (what to do).

        Random-init references (`fth model init`, registered by `fth eval`; card parents `init: random`) are only
        chosen when nothing else is registered: a default must never silently serve or fit on an untrained encoder."""
        cards = self.list(kind)
        if not cards:
            raise ArtifactError(f"no {kind} registered in {self.root}{hint}")
        trained = [c for c in cards if c.parents.get("init") != "random"]
        return (trained or cards)[-1]

    def list(self, kind: str | None = None) -> list[Card]:
        pattern = f"{kind}/*/{CARD}" if kind else f"*/*/{CARD}"
        cards = [self.card(p.parent) for p in self.root.glob(pattern)]
        return sorted(cards, key=lambda c: (c.created, c.id))


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
