"""Live sessions as an operator sees them: a JSON-ready snapshot of every session, and ending one by its id.

Rules: reads the sessions it is handed and changes nothing but what `end` asks for; times leave here as UTC
ISO 8601 (monotonic times are turned into wall-clock ones at the moment of the snapshot); the HTTP side
(alg.ops.http) gets this view and never the sessions themselves.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from alg.gateway.session import Session
from alg.ops.logs import printable
from alg.ops.metrics import direction_of


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe(session: Session, *, now_wall: float, now_monotonic: float) -> dict[str, Any]:
    """One session as `GET /sessions` lists it."""
    channel = session.channel
    idle_s = max(0.0, now_monotonic - session.last_activity)
    transfers = []
    for transfer in session.transfers:
        download, upload = transfer.moved() if transfer.moved is not None else (0, 0)
        transfers.append(
            {
                "command": transfer.verb,
                "direction": direction_of(transfer.verb),
                "path": printable(transfer.argument) if transfer.argument else None,
                "mode": transfer.mode,
                "state": "relaying" if transfer.moved is not None else "connecting",
                "started": _iso(transfer.started) if transfer.moved is not None else None,
                "bytes_download": download,
                "bytes_upload": upload,
            }
        )
    return {
        "id": session.id,
        "client": str(session.client.address),
        "user": channel.user if channel is not None else None,
        "logged_in": bool(channel is not None and channel.logged_in),
        "upstream": str(session.upstream),
        "started": _iso(session.started),
        "last_activity": _iso(now_wall - idle_s),
        "idle_s": round(idle_s, 3),
        "transfers": transfers,
    }


class SessionsView:
    """What the admin endpoints see of a gateway's sessions (the gateway's own id -> Session map)."""

    def __init__(self, sessions: Mapping[str, Session]) -> None:
        self._sessions = sessions

    def snapshot(self) -> list[dict[str, Any]]:
        now_wall, now_monotonic = time.time(), time.monotonic()
        return [
            describe(session, now_wall=now_wall, now_monotonic=now_monotonic) for session in self._sessions.values()
        ]

    def end(self, session_id: str) -> bool:
        """Send session `session_id` a 421 and close it; False when there is no such session."""
        session = self._sessions.get(session_id)
        if session is None:
            return False
        session.end()
        return True
