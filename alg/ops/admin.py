"""The admin endpoints' rules: who may call them (a bearer token), and what their paths and answers look like.

Rules: pure apart from `read_token`, which reads the token once at start-up; a token is compared in constant
time; the HTTP side (alg.ops.http) serves these routes only on a listener configured for them (admin.listen).
Routes: GET /sessions lists the live sessions of every worker as JSON (?scope=worker: this worker's only);
DELETE /sessions/ID (or POST /sessions/ID/end) ends one. A session's id is WORKER-NUMBER (`2-417`), unique in the
whole gateway; a bare NUMBER names worker 0's session, accepted only when there is one worker.
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

_SESSION_PATH = re.compile(rb"/sessions/((?:[0-9]{1,4}-)?[0-9]{1,18})(/end)?")
_SESSION_ID = re.compile(r"(?:([0-9]{1,4})-)?([0-9]{1,18})")
_BEARER = re.compile(rb"Bearer[ \t]+(\S+)[ \t]*", re.IGNORECASE)


class SessionsSource(Protocol):
    """What the admin endpoints are handed (alg.gateway.registry.SessionsView fits)."""

    def snapshot(self) -> list[dict[str, Any]]: ...

    def end(self, session_id: str) -> bool: ...


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


def session_path(path: bytes) -> tuple[str, bool] | None:
    """(session id, whether the path ends in /end) of /sessions/ID[/end]; None for any other path."""
    match = _SESSION_PATH.fullmatch(path)
    if match is None:
        return None
    return match.group(1).decode(), match.group(2) is not None


def session_id(worker: int, number: int) -> str:
    """The id of session `number` of worker `worker`, unique in the whole gateway: `2-417`."""
    return f"{worker}-{number}"


def parse_session_id(text: str, workers: int = 1) -> tuple[int, int] | None:
    """(worker, number) of an id; a bare NUMBER is worker 0's only when there is one worker (with more it
    could name another client's session). None when it is not an id."""
    match = _SESSION_ID.fullmatch(text)
    if match is None or (match.group(1) is None and workers > 1):
        return None
    return int(match.group(1) or 0), int(match.group(2))


def json_document(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=1, ensure_ascii=True).encode() + b"\n"
