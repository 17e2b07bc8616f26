"""A real Label Studio on loopback for the tests (started once per session by the `label_studio` fixture in conftest).

Label Studio lives in its own locked environment, tools/label-studio/.venv (`make label-studio`, which `make test`
runs): it is ~800 MB and pins its own Django stack, so it never enters fth's environment. The server runs from a temp
data dir (SQLite) on a free port, with a user created by `label-studio start --username/--password`. Its API token is
made the supported way since 1.23 (legacy tokens are off by default): the user logs in through the login form (a
session, as a browser would) and creates a personal access token at `POST /api/token/`; that token is a JWT refresh
token, which fth's client exchanges for access tokens.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from fth.procs import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "tools" / "label-studio" / ".venv" / "bin" / "label-studio"
TEMPLATE = REPO / "tools" / "label-studio" / ".venv" / "fth-template" / "label_studio.sqlite3"  # made by the Makefile


class LabelStudioServer:
    """`label-studio start` on 127.0.0.1:<free port> with a throwaway data dir; `.url`, `.token` once started."""

    email = "labeller@example.com"
    password = "fth-test-password"

    def __init__(self):
        if not BIN.exists():
            raise FileNotFoundError(f"no Label Studio at {BIN}: run `make label-studio`")
        self.dir = Path(tempfile.mkdtemp(prefix="fth-ls-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.start_seconds = 0.0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> LabelStudioServer:
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(self.dir), "LATEST_VERSION_CHECK": "false",
               "COLLECT_ANALYTICS": "false", "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "false"}  # fmt: skip
        cmd = [str(BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
               "--username", self.email, "--password", self.password]  # fmt: skip
        t0 = time.monotonic()
        if TEMPLATE.is_file():  # an empty, migrated database: the server skips its migrations
            shutil.copyfile(TEMPLATE, self.dir / TEMPLATE.name)
        self._log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server process
        self.proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        try:
            self._wait(t0 + timeout)
            self.start_seconds = time.monotonic() - t0
            self.token = self.personal_access_token()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"Label Studio not up in time:\n{self.log()[-3000:]}")

    def login(self) -> requests.Session:
        """A browser-like session of the user (Django's login form, CSRF included)."""
        s = requests.Session()
        s.get(f"{self.url}/user/login/", timeout=30)
        r = s.post(f"{self.url}/user/login/", allow_redirects=False, timeout=30,
                   data={"email": self.email, "password": self.password, "csrfmiddlewaretoken": s.cookies["csrftoken"]},
                   headers={"Referer": f"{self.url}/user/login/"})  # fmt: skip
        if r.status_code != 302:
            raise RuntimeError(f"Label Studio login failed: HTTP {r.status_code}")
        return s

    def personal_access_token(self) -> str:
        s = self.login()
        r = s.post(f"{self.url}/api/token/", json={}, timeout=30,
                   headers={"X-CSRFToken": s.cookies["csrftoken"], "Referer": self.url})  # fmt: skip
        r.raise_for_status()
        return r.json()["token"]

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
