"""Where fth keeps its data: one workspace folder, laid out the same for every command.

    <workspace>/workspace.yaml     optional: where the catalog and frames live instead (store.backends)
    <workspace>/catalog.sqlite     frame catalog (store.catalog), unless workspace.yaml names PostgreSQL
    <workspace>/frames/            frame files, relative paths in the catalog, unless workspace.yaml names S3
    <workspace>/artifacts/         encoders and heads: safetensors + JSON card (store.artifacts)
    <workspace>/embeddings/        per-encoder embedding shards (store.embeddings)
    <workspace>/runs/              training runs
    <workspace>/collector/         the collector daemon's status.json
    <workspace>/sim/<source>/      a sim source's live HLS folder and its sim.json (collector.sim)

The workspace is `--workspace`, else `$FTH_WORKSPACE`, else `./workspace`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_workspace() -> Path:
    return Path(os.environ.get("FTH_WORKSPACE", "workspace"))


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> Workspace:
        return cls(Path(root) if root is not None else default_workspace())

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def frames(self) -> Path:
        return self.root / "frames"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def collector(self) -> Path:
        return self.root / "collector"

    @property
    def sim(self) -> Path:
        return self.root / "sim"
