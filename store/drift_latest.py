"""The latest drift score per source: a small JSON file in the workspace that `fth drift` writes and the server reads.

    <workspace>/drift/latest.json
    {"sources": {"<source>": {"window", "score", "p_value", "flagged", "frames", "method", "threshold", "reference",
                              "encoder", "computed_at"}}}

A run updates the sources it scored and keeps the others' entries; the file is replaced atomically, so a scrape
never reads half of it. The server exports it as Prometheus gauges at scrape time (`server.metrics`): a scrape reads
the file, it never computes a score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from store.fsutil import atomic_write

LATEST = "latest.json"


def latest_path(workspace_root: str | Path) -> Path:
    return Path(workspace_root) / "drift" / LATEST


def read_latest(workspace_root: str | Path) -> dict[str, dict[str, Any]]:
    """source -> its latest entry; {} when no drift run wrote one (or the file does not parse)."""
    path = latest_path(workspace_root)
    try:
        return dict(json.loads(path.read_text()).get("sources", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def write_latest(workspace_root: str | Path, entries: dict[str, dict[str, Any]]) -> Path:
    """Merge `entries` (source -> entry) into the file, replacing those sources' previous entries."""
    sources = read_latest(workspace_root)
    sources.update(entries)
    path = latest_path(workspace_root)
    with atomic_write(path, "w") as f:
        f.write(json.dumps({"sources": dict(sorted(sources.items()))}, indent=1) + "\n")
    return path
