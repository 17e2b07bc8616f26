"""Shared fixtures. GPU tests carry `@pytest.mark.gpu` and are skipped where CUDA is absent (CI never has it)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty workspace folder, also set as $FTH_WORKSPACE for commands run in the test."""
    root = tmp_path / "workspace"
    root.mkdir()
    monkeypatch.setenv("FTH_WORKSPACE", str(root))
    from store.paths import Workspace

    return Workspace.at(root)
