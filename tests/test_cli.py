"""The `fth` command line, run as a real process in a temporary workspace: help, model info (the demo: test_demo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fth(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTH_WORKSPACE": str(cwd / "workspace"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "fth", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_subcommands_without_importing_torch(tmp_path):
    out = fth("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "model" in out.stdout and "demo" in out.stdout
    probe = "import sys, fth.cli; fth.cli.build_parser(); print('torch' in sys.modules)"
    check = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "False", check.stderr


def test_model_info_seed(tmp_path):
    out = fth("model", "info", "--config", "seed", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "grid 12x20" in out.stdout and "240 patches" in out.stdout and "72 visible" in out.stdout
    assert "encoder 85.83M params, decoder 29.29M params" in out.stdout


def test_model_info_bad_key_is_a_config_error(tmp_path):
    out = fth("model", "info", "--set", "encoder.depht=2", cwd=tmp_path)
    assert out.returncode == 2 and "unknown key 'encoder.depht'" in out.stderr
