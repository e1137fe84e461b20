"""The admin endpoints' rules: who may call them (a bearer token), and what their paths and answers look like.

Rules: pure apart from `read_token`, which reads the token once at start-up; a token is compared in constant
time; the HTTP side (alg.ops.http) serves these routes only on a listener configured for them (admin.listen).
Routes: GET /sessions lists the live sessions as JSON; DELETE /sessions/ID (or POST /sessions/ID/end) ends one.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from pathlib import Path
from typing import Any, Protocol

from alg.errors import ConfigError

TOKEN_ENV = "FTP_ALG_ADMIN_TOKEN"
MAX_TOKEN_BYTES = 4096

_SESSION_PATH = re.compile(rb"/sessions/([0-9]{1,18})(/end)?")
_BEARER = re.compile(rb"Bearer[ \t]+(\S+)[ \t]*", re.IGNORECASE)


class SessionsSource(Protocol):
    """What the admin endpoints are handed (alg.gateway.registry.SessionsView fits)."""

    def snapshot(self) -> list[dict[str, Any]]: ...

    def end(self, number: int) -> bool: ...


def read_token(token_file: Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The admin token: the file's first line, else $FTP_ALG_ADMIN_TOKEN, else None (no token asked for).
    A file named but unreadable or empty is a ConfigError: running without the token it meant is not safe."""
    if token_file is not None:
        try:
            raw = token_file.read_bytes()[:MAX_TOKEN_BYTES]
        except OSError as error:
            raise ConfigError(f"cannot read the admin token: {error.strerror}", key="admin.token_file") from None
        lines = raw.decode("utf-8", "replace").splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"{token_file} is empty; write the token on its first line", key="admin.token_file")
        return token
    token = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    return token or None


def authorized(authorization: bytes | None, token: str | None) -> bool:
    """Whether a request's Authorization header carries `token` (always true when no token is configured)."""
    if token is None:
        return True
    if authorization is None:
        return False
    match = _BEARER.fullmatch(authorization.strip())
    return match is not None and hmac.compare_digest(match.group(1), token.encode())


def is_admin_path(path: bytes) -> bool:
    return path == b"/sessions" or path.startswith(b"/sessions/")


def session_number(path: bytes) -> tuple[int, bool] | None:
    """(session id, whether the path ends in /end) of /sessions/ID[/end]; None for any other path."""
    match = _SESSION_PATH.fullmatch(path)
    if match is None:
        return None
    return int(match.group(1)), match.group(2) is not None


def sessions_json(sessions: list[dict[str, Any]]) -> bytes:
    return json.dumps({"sessions": sessions}, indent=1, ensure_ascii=True).encode() + b"\n"
