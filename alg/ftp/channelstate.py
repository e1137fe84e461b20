"""The control channel's bookkeeping: replies owed, data endpoints (tickets), and each side's held lines.

Rules: plain mutable records owned by one ControlChannel; no behaviour.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from alg.ftp.addresses import HostPort
from alg.ftp.wire import LineFramer, Overlong

DOWNLOAD_VERBS = frozenset(("RETR", "LIST", "NLST", "MLSD"))
TRANSFER_VERBS = frozenset(("RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"))

# A client-side wait that is not a ticket: an EPSV/EPRT whose refusal may still be retried as PASV/PORT.
PROBING = 0


@dataclass(slots=True)
class Pending:
    """A command forwarded and waiting for its final reply, or a reply of ours waiting for its turn."""

    verb: str
    ticket: int | None = None
    local_reply: bytes | None = None
    argument: bytes = b""
    start_tls: bool = False  # a local 234: the client's TLS starts once it is sent
    sent: str = ""  # PASV/EPSV/PORT/EPRT: the verb the server got (families.py may translate it)
    probe: bool = False  # the client's next lines wait for this reply (a refusal would be retried first)
    fence: bool = False  # ABOR: a NOOP of ours follows it; NOOP: that one, its reply never the client's
    ended: bool = False  # a download whose data connection the gateway ended as its ABOR went unanswered


@dataclass(slots=True)
class Ticket:
    passive: bool
    line: bytes  # the line to rewrite once the endpoint is ready
    verb: str  # the client's verb: decides the reply it gets
    sent: str = ""  # passive: the verb the server answered
    public: HostPort | None = None  # active: the endpoint the server was told of (kept for a retry)
    connected: bool = False
    finished: bool = False
    ready: bool = False


@dataclass(slots=True)
class Side:
    framer: LineFramer
    backlog: deque[bytes | Overlong] = field(default_factory=deque)
    waiting_for: int | None = None  # ticket whose news must come before this side's lines move on
