"""Bearer API keys (RFC 6750 `Authorization: Bearer <key>`), from an environment variable and/or a key file.

Keys are compared with `hmac.compare_digest` against every configured key (no early exit on the first match), so
the time taken says nothing about how much of a key was right. With no key configured, auth is off and the server
logs a warning at startup. Health, readiness, metrics and the OpenAPI document stay open.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


def load_keys(env_var: str | None, path: str | None) -> list[bytes]:
    """Comma-separated keys from `$env_var` plus one key per line of `path` (blank lines and `#` comments skipped)."""
    keys = []
    if env_var and os.environ.get(env_var):
        keys += [k.strip() for k in os.environ[env_var].split(",") if k.strip()]
    if path:
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(line)
    return [k.encode() for k in keys]


class KeyChecker:
    """Checks `Authorization` headers against configured keys.

    Args:
        keys: accepted API keys; empty disables auth.
    """

    def __init__(self, keys: list[bytes]):
        self.keys = keys
        if not keys:
            log.warning("no API keys configured: the API is open to anyone who can reach it")

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, header: str | None) -> str | None:
        """None when the request may pass, else a message saying what is wrong."""
        if not self.keys:
            return None
        if not header:
            return "missing Authorization header; send 'Authorization: Bearer <api key>'"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Authorization must be 'Bearer <api key>'"
        given = token.strip().encode()
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(given, key)
        return None if ok else "invalid API key"
