"""`fth shards export s3://bucket/prefix` and training streamed from those shards (SeaweedFS on loopback): the same
samples, batch for batch, as from a local shard folder."""

from __future__ import annotations

import contextlib
import io

import pytest
from test_data import batches, same
from test_train import train_here
from test_train_support import make_catalog

from encoder.shards import ShardDataset, read_index
from encoder.train_config import DataConfig
from fth.cli import main


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--log-level", "WARNING", *argv])
    return rc, out.getvalue(), err.getvalue()


def test_export_to_s3_streams_like_local_and_trains(workspace, tmp_path, seaweed):
    make_catalog(workspace.root, 24)
    (workspace.root / "workspace.yaml").write_text(f"s3_endpoint: {seaweed.endpoint}\n")
    url = f"s3://{seaweed.new_bucket()}/runs/shards"
    local = tmp_path / "shards"
    for out in (url, str(local)):
        rc, stdout, err = run("shards", "export", out, "--workspace", str(workspace.root), "--per-shard", "5")
        assert rc == 0 and "24 frames in 5 shards" in stdout, err
    assert read_index(url, workspace.root) == read_index(local)
    cfg = DataConfig(workspace=str(workspace.root), num_workers=0)
    for rank in range(2):
        remote, here = (
            ShardDataset(f, (64, 96), 96, cfg, seed=0, batch_size=3, world=2, rank=rank) for f in (url, local)
        )
        remote.set_epoch(1)
        here.set_epoch(1)
        assert same(batches(remote), batches(here))
    with pytest.raises(FileNotFoundError, match="not a shard folder"):
        read_index(url + "-nothing", workspace.root)
    summary = train_here(workspace.root, tmp_path / "run", "data.source=shards", f"data.shards={url}", "batch_size=4",
                         "max_steps=2")  # fmt: skip
    assert summary["steps"] == 2
