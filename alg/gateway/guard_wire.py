"""The messages the defender's stores carry between processes (JSON objects), and what hearing one does.

Rules: a message is a fact one process tells the others: an act it scored ("offence", "user"), a ban it made
("ban") or lifted ("unban"); hearing it changes the local state only, never tells anyone again.
"""

from __future__ import annotations

from typing import Any, Protocol

from alg.ops.defender import Ban, Offence

Message = dict[str, Any]


class Hearer(Protocol):
    """What a store hands the facts it hears to (alg.gateway.guard.Guard)."""

    def heard_offence(self, client: str, offence: Offence, at: float) -> None: ...
    def heard_login_failed(self, user: str, at: float) -> None: ...
    def heard_ban(self, ban: Ban) -> None: ...
    def heard_unban(self, client: str) -> None: ...
    def bans(self) -> list[Ban]: ...


def offence_message(client: str, offence: Offence, at: float) -> Message:
    return {"t": "offence", "client": client, "offence": offence.value, "at": at}


def user_message(user: str, at: float) -> Message:
    return {"t": "user", "user": user, "at": at}


def unban_message(client: str) -> Message:
    return {"t": "unban", "client": client}


def ban_message(ban: Ban) -> Message:
    return {
        "t": "ban",
        "client": ban.client,
        "since": ban.since,
        "until": ban.until,
        "repeat": ban.repeat,
        "reason": ban.reason.value,
    }


def ban_from(message: Message) -> Ban:
    """The Ban a message carries (ValueError, KeyError or TypeError when it carries none)."""
    return Ban(
        str(message["client"]),
        float(message["since"]),
        float(message["until"]),
        int(message["repeat"]),
        Offence(message["reason"]),
    )


def hear(guard: Hearer, message: Message) -> bool:
    """Apply one message to `guard`; False when it is no fact we know (ValueError etc. when malformed)."""
    kind = message["t"]
    if kind == "offence":
        guard.heard_offence(str(message["client"]), Offence(message["offence"]), float(message["at"]))
    elif kind == "user":
        guard.heard_login_failed(str(message["user"]), float(message["at"]))
    elif kind == "ban":
        guard.heard_ban(ban_from(message))
    elif kind == "unban":
        guard.heard_unban(str(message["client"]))
    else:
        return False
    return True
