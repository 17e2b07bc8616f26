"""Test helpers (also for bench/serve.py): a registered tiny encoder, and a real gunicorn `fth serve` on a free port.

`LiveServer` starts `python -m fth serve` as a subprocess on a loopback port chosen at runtime, waits for `/readyz`,
and stops it with SIGTERM (graceful drain) on exit. Nothing here is used by the service itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from fth.procs import free_port

REPO = Path(__file__).resolve().parent.parent
__all__ = ["REPO", "LiveServer", "free_port", "tiny_encoder"]


def tiny_encoder(workspace, seed: int = 0, preset: str = "tiny"):
    """Build the preset's ViT with seeded weights and register it; returns (model, card)."""
    import torch

    from encoder.checkpoint import save_encoder
    from encoder.config import MAEConfig
    from encoder.vit import ViT
    from fth.config import build
    from store.artifacts import Registry

    torch.manual_seed(seed)
    model = ViT(build(MAEConfig, preset).encoder).eval()
    card = save_encoder(model, Registry(workspace.artifacts), name=f"{preset}-{seed}")
    return model, card


def linear_head(
    registry, linear, encoder_id: str, name: str, task: str = "time_of_day", form: str = "pooled",
    layers: tuple[int, ...] = (-1,), grid: tuple[int, int] = (0, 0),
):  # fmt: skip
    """Register an `nn.Linear` as a head of a built-in `task` (a linear probe with identity standardisation): the
    simplest head a test can compute by hand. Grid features are mean-pooled before the linear map."""
    from heads.artifact import TrainedHead, save_head
    from heads.models import HeadConfig, build_head
    from heads.tasks import make_task
    from store.recipe import FeatureRecipe

    cfg = HeadConfig(kind="linear", in_dim=linear.in_features, out_dim=linear.out_features, grid=grid)
    module = build_head(cfg)
    module.body.fc.load_state_dict(linear.state_dict())
    recipe = FeatureRecipe(form, layers, "mean", grid, linear.in_features)  # type: ignore[arg-type]
    return save_head(TrainedHead(module.eval(), make_task(task), recipe, cfg, encoder_id), registry, name=name)


def clock_minutes(out) -> list[float]:
    """time_of_day outputs (B, 2) = (sin, cos) -> minutes after midnight, as the task answers them."""
    import math

    return [round(((math.atan2(s, c) * 86400 / (2 * math.pi)) % 86400) / 60, 2) for s, c in out.tolist()]


class LiveServer:
    """`fth serve` (gunicorn, gthread) in a subprocess on 127.0.0.1:<free port>.

    Args:
        workspace: workspace folder.  overrides: ServeConfig fields as a dict (`--set` pairs).
        env: extra environment (e.g. FTH_API_KEYS).  log_path: where the server's output goes.
    """

    def __init__(self, workspace: Path, overrides: dict[str, Any] | None = None, env=None, log_path=None, dev=False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workspace, self.overrides, self.dev = Path(workspace), dict(overrides or {}), dev
        self.env = {**os.environ, "FTH_WORKSPACE": str(workspace), **(env or {})}
        self.log_path = Path(log_path or Path(workspace) / f"serve-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> LiveServer:
        cmd = [
            sys.executable,
            "-m",
            "server.cli",  # `fth serve` without the other packages' subcommands
            "serve",
            "--workspace",
            str(self.workspace),
            "--bind",
            f"127.0.0.1:{self.port}",
        ]
        for key, value in self.overrides.items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        if self.dev:
            cmd.append("--dev")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the server process
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            return self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> LiveServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
