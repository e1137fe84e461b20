"""The control channel's bookkeeping: replies owed, data endpoints (tickets), and each side's held lines.

Rules: plain records, no behaviour. One `ChannelState` per session is shared, explicitly, by the two halves of
the control channel: the command/reply engine (control.py) and the data negotiation (datanegotiation.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from alg.ftp.addresses import HostPort
from alg.ftp.families import ServerFeatures
from alg.ftp.tls import ClientTls, TlsPolicy
from alg.ftp.wire import Command, LineFramer, Overlong

DOWNLOAD_VERBS = frozenset(("RETR", "LIST", "NLST", "MLSD"))
TRANSFER_VERBS = frozenset(("RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"))
# A running transfer's own final reply (RFC 959 5.4, after its 1xx: 226, 250, 425, 426, 451, 551, 552; and the
# 421 any command may get, and the transient 450/452 servers use for local errors). Other codes that come while
# later commands are owed are theirs (control.py).
TRANSFER_DONE = frozenset((226, 250, 421, 425, 426, 450, 451, 452, 551, 552))

CommandCheck = Callable[[Command], None]  # raises PolicyDenied to refuse
DataPeerCheck = Callable[[IPv4Address | IPv6Address, IPv4Address | IPv6Address], bool]  # (peer, expected)


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    max_line_bytes: int = 4096
    # Server replies may carry long listings (STAT) in continuation lines: a larger, still bounded limit.
    max_server_line_bytes: int = 65536
    max_pipelined_commands: int = 32
    max_data_channels: int = 4
    passive_target: str = "upstream"  # or "advertised"
    # follow: the server gets the client's data mode; passive/active: always that mode toward the server.
    upstream_data_mode: str = "follow"
    port_address_mismatch: str = "refuse"  # or "rewrite": use the control client's address instead
    min_active_port: int = 1024
    check_command: CommandCheck | None = None
    # passive_target "advertised": may a 227 name another host than the upstream? (default: never)
    allow_data_peer: DataPeerCheck | None = None
    tls: TlsPolicy = field(default_factory=TlsPolicy)


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
    started: bool = False  # a transfer that had its 1xx: its final reply is one of TRANSFER_DONE
    own: bool = False  # a PBSZ/PROT of the gateway's own (after REIN or a new USER): its reply is never the client's
    resets: bool = False  # REIN, or USER when logged in: accepted, the server starts the session over


@dataclass(slots=True)
class Ticket:
    passive: bool
    line: bytes  # the line to rewrite once the endpoint is ready
    verb: str  # the client's verb: decides the reply it gets
    sent: str = ""  # passive: the verb the server answered
    public: HostPort | None = None  # active: the endpoint the server was told of (kept for a retry)
    # Served in the other mode toward the server (upstream_data_mode): the client's own endpoint, the one
    # announced to it (a PASV's) or the one it announced (a PORT's).
    cross: bool = False
    client_end: HostPort | None = None
    connected: bool = False
    finished: bool = False
    ready: bool = False


@dataclass(slots=True)
class Side:
    framer: LineFramer
    backlog: deque[bytes | Overlong] = field(default_factory=deque)
    waiting_for: int | None = None  # ticket whose news must come before this side's lines move on


@dataclass(slots=True)
class ChannelState:
    """What both halves of the control channel read and change (the rest each half keeps to itself).

    `client` is the control client's address and `server` the upstream's, as the gateway sees them.
    """

    settings: ChannelSettings
    client: HostPort
    server: HostPort
    tls: ClientTls
    features: ServerFeatures
    client_side: Side  # the client's lines: framer, backlog, what they wait for
    server_side: Side
    # Replies owed, in command order; the banner is the reply to connecting.
    pending: deque[Pending] = field(default_factory=lambda: deque([Pending("<connect>")]))
    tickets: dict[int, Ticket] = field(default_factory=dict)
    armed: int | None = None  # the ticket the next transfer command will use
    held_reply: bytes | None = None  # a transfer's final reply waiting for its data to drain
    closed: bool = False
    # Toward the server, ABOR goes with the Telnet synch as urgent data; inside TLS there is no urgent data
    # (the mark would point into a record), so a TLS control leg gets a plain ABOR line.
    urgent_abort: bool = True
