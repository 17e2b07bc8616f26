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


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback for the session (tests.storage_servers.Postgres); `.new_database()`."""
    from tests.storage_servers import Postgres

    try:
        server = Postgres()
    except FileNotFoundError as e:
        pytest.skip(f"{e} (.ci/run installs it)")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweed():
    """A real S3-compatible server (SeaweedFS) on loopback for the session; `.new_bucket()`, `.endpoint`."""
    from tests.storage_servers import Seaweed

    try:
        server = Seaweed()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def label_studio():
    """A real Label Studio server on loopback for the session (tests.label_studio_server); `.url`, `.token` (a
    personal access token), `.start_seconds`. Skipped when its environment is missing (`make label-studio`)."""
    from tests.label_studio_server import LabelStudioServer

    try:
        server = LabelStudioServer()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    server.start()
    yield server
    server.stop()
