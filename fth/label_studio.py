"""A small client of Label Studio's REST API (labelstud.io/api): projects, task import, JSON export.

Plain `requests` rather than the label-studio-sdk: the few calls fth makes (list/create a project, import tasks with
predictions, export tasks with annotations) are stable REST endpoints, while the SDK brings pydantic/httpx pins of its
own and changed its whole interface at 2.0. Transient failures (connection refused for a moment, 502/503/504) are
retried by urllib3's `Retry` with backoff; a POST is retried only when it never reached the server.

Tokens (labelstud.io/guide/access_tokens): a personal access token (the default since 1.23, where legacy tokens are off
unless an organization turns them on) is a JWT refresh token; it is exchanged at `POST /api/token/refresh/` for a
short-lived access token sent as `Authorization: Bearer`, and exchanged again when that expires. Anything that is not
a JWT is taken as a legacy token (`Authorization: Token`). Every failure is a `LabelStudioError` with one line.
"""

from __future__ import annotations

import re
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


class LabelStudioError(ValueError):
    """Label Studio unreachable, the token refused, or an answer fth cannot use; one line."""


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


class LabelStudio:
    """A session against one Label Studio server.

    Args:
        url: the server's base URL (e.g. http://127.0.0.1:8080).  token: a personal access token or a legacy token.
        timeout_s: per request.  retries: attempts on connection errors and 502/503/504 (with backoff).
    """

    def __init__(self, url: str, token: str, timeout_s: float = 30.0, retries: int = 3):
        if not token:
            raise LabelStudioError("no Label Studio token: pass --token or set $LABEL_STUDIO_TOKEN")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=0, status=retries, backoff_factor=0.3,
                      status_forcelist=(502, 503, 504), allowed_methods=("GET",), raise_on_status=False)  # fmt: skip
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        self._auth = ""

    # -- transport ----------------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, auth: str | None, **kw) -> requests.Response:
        headers = {"Authorization": auth} if auth else {}
        try:
            return self.session.request(method, self.url + path, headers=headers, timeout=self.timeout_s, **kw)
        except requests.RequestException as e:
            found = re.search(r"\[Errno -?\d+\] [^'\")]*|timed out|Name or service not known", str(e))
            reason = found.group(0) if found else type(e).__name__
            raise LabelStudioError(f"Label Studio at {self.url} is unreachable ({reason})") from None

    def _authorize(self) -> str:
        if not _is_jwt(self.token):
            return f"Token {self.token}"
        r = self._send("POST", "/api/token/refresh/", None, json={"refresh": self.token})
        if r.status_code != 200 or "access" not in _json(r):
            raise LabelStudioError(f"Label Studio at {self.url} refused the personal access token "
                                   f"(HTTP {r.status_code} from /api/token/refresh/): {_detail(r)}")  # fmt: skip
        return f"Bearer {_json(r)['access']}"

    def request(self, method: str, path: str, **kw) -> Any:
        """`method path` with auth -> the decoded JSON answer; LabelStudioError on any failure."""
        if not self._auth:
            self._auth = self._authorize()
        r = self._send(method, path, self._auth, **kw)
        if r.status_code == 401 and self._auth.startswith("Bearer"):  # the short-lived access token expired
            self._auth = self._authorize()
            r = self._send(method, path, self._auth, **kw)
        if r.status_code in (401, 403):
            raise LabelStudioError(f"Label Studio at {self.url} refused the token (HTTP {r.status_code} on {path}): "
                                   f"{_detail(r)}")  # fmt: skip
        if not r.ok:
            raise LabelStudioError(f"Label Studio {method} {path}: HTTP {r.status_code}: {_detail(r)}")
        return _json(r) if r.content else None

    # -- the calls fth makes ------------------------------------------------------------------------------------

    def projects(self) -> list[dict[str, Any]]:
        out, page = [], 1
        while True:
            answer = self.request("GET", "/api/projects/", params={"page": page, "page_size": 100})
            if isinstance(answer, list):  # servers without pagination
                return answer
            out += answer.get("results", [])
            if not answer.get("next"):
                return out
            page += 1

    def project(self, title: str) -> dict[str, Any] | None:
        """The project titled `title` (the lowest id when several share it), else None."""
        found = sorted((p for p in self.projects() if p.get("title") == title), key=lambda p: p["id"])
        return self.request("GET", f"/api/projects/{found[0]['id']}/") if found else None

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]:
        return self.request("POST", "/api/projects/", json={"title": title, "label_config": label_config,
                                                            "description": description})  # fmt: skip

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations (the JSON export, `download_all_tasks`)."""
        answer = self.request("GET", f"/api/projects/{project_id}/export",
                              params={"exportType": "JSON", "download_all_tasks": "true"})  # fmt: skip
        if not isinstance(answer, list):
            raise LabelStudioError(f"Label Studio export of project {project_id}: expected a list of tasks")
        return answer

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        """Create tasks (with their `predictions`) in one request; returns how many Label Studio created."""
        answer = self.request("POST", f"/api/projects/{project_id}/import", json=tasks)
        return int((answer or {}).get("task_count", len(tasks)))


def _json(r: requests.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return {}


def _detail(r: requests.Response) -> str:
    body = _json(r)
    parts = [body.get("detail"), body.get("validation_errors")] if isinstance(body, dict) else []
    text = " ".join(str(p) for p in parts if p) or r.text[:200]
    return " ".join(text.split()) or r.reason
