"""Resuming from training checkpoints when the newest one is damaged (issue 15, finding 10)."""

from __future__ import annotations

import logging

import pytest
import torch

from encoder import train
from encoder.checkpoint import CheckpointError


def write(folder, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "weights": torch.arange(1000.0)}, folder / f"ckpt-{step:08d}.pt")


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_auto_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, caplog):
    folder = tmp_path / "run" / "checkpoints"
    write(folder, 10)
    write(folder, 20)
    truncate(folder / "ckpt-00000020.pt")
    caplog.set_level(logging.WARNING)
    state, path = train.load_resume("auto", tmp_path / "run", "cpu")
    assert path.name == "ckpt-00000010.pt" and state["step"] == 10
    text = caplog.text
    assert "ckpt-00000020.pt" in text and "ckpt-00000010.pt" in text


def test_truncated_checkpoint_error_names_the_file(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    write(folder, 30)
    truncate(folder / "ckpt-00000030.pt")
    with pytest.raises(CheckpointError, match="ckpt-00000030.pt"):
        train.load_resume(str(folder / "ckpt-00000030.pt"), tmp_path / "run", "cpu")
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints"):
        train.load_resume("auto", tmp_path / "run", "cpu")
