"""The admin endpoints for the defender's bans: GET /bans lists them, DELETE /bans/ADDRESS lifts one.

Rules: pure; the HTTP side (alg.ops.http) serves them with the same bearer token as /sessions. ADDRESS is an
address inside the banned network (203.0.113.7, 2001:db8:1:2::5) or the network itself (2001:db8:1:2::/64).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import unquote

from alg.ops.defender import Ban

PREFIX = b"/bans"


class BansSource(Protocol):
    """What the endpoints act on (alg.gateway.guard.Guard fits)."""

    @property
    def enabled(self) -> bool: ...

    def bans(self) -> list[Ban]: ...

    def unban(self, client: str) -> Ban | None: ...


def is_bans_path(path: bytes) -> bool:
    return path == PREFIX or path.startswith(PREFIX + b"/")


def unban_target(path: bytes) -> str | None:
    """The ADDRESS of /bans/ADDRESS (percent-decoded: a /64 may come as %2F64); None for /bans itself."""
    rest = path[len(PREFIX) + 1 :]
    return unquote(rest.decode("ascii", "replace")) if rest else None


def ban_record(ban: Ban, now: float) -> dict[str, object]:
    return {
        "client": ban.client,
        "reason": ban.reason.value,
        "repeat": ban.repeat,
        "since": round(ban.since, 3),
        "until": round(ban.until, 3),
        "duration_s": round(ban.until - ban.since, 3),
        "remaining_s": round(ban.remaining(now), 3),
    }


def bans_json(bans: Sequence[Ban], *, enabled: bool, now: float | None = None) -> bytes:
    at = time.time() if now is None else now
    body = {"enabled": enabled, "bans": [ban_record(ban, at) for ban in bans]}
    return json.dumps(body, indent=1, ensure_ascii=True).encode() + b"\n"
