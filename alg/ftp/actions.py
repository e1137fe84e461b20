"""The control channel's vocabulary: orders for the session (imperative) and facts for logs and metrics (past tense).

Rules: plain frozen values, no behaviour; the session matches on them (alg.gateway.session).
"""

from __future__ import annotations

from dataclasses import dataclass

from alg.ftp.addresses import HostPort
from alg.ftp.reasons import Refusal, SessionOutcome

# ---- actions: orders for the session (imperative) and facts for logs and metrics (past tense) -------------


@dataclass(frozen=True, slots=True)
class SendToClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendToServer:
    data: bytes
    # Send as TCP urgent data (RFC 959 4.1.3): servers such as vsftpd look for ABOR during a transfer only
    # when urgent data arrives, and the client's urgent mark cannot cross the gateway by itself.
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class ListenForClient:
    """Passive: open a public endpoint, accept only the control client, then connect to `then_connect`."""

    ticket: int
    then_connect: HostPort
    client_tls: bool = False  # PROT P on the client's leg: the gateway is its TLS server
    server_tls: bool = False  # PROT P on the server's leg: the gateway is its TLS client


@dataclass(frozen=True, slots=True)
class ListenForServer:
    """Active: open an internal endpoint, accept only the upstream server, then connect to `then_connect`."""

    ticket: int
    then_connect: HostPort
    client_tls: bool = False
    server_tls: bool = False


@dataclass(frozen=True, slots=True)
class ListenForBoth:
    """A client's PASV/EPSV served by PORT/EPRT toward the server (upstream_data_mode active): a public endpoint
    for the control client and an internal one for the server, both accepted, then relayed together."""

    ticket: int
    client_tls: bool = False
    server_tls: bool = False


@dataclass(frozen=True, slots=True)
class ConnectBoth:
    """A client's PORT/EPRT served by PASV/EPSV toward the server (upstream_data_mode passive): connect to the
    server's `server` first, then to the client's `client`, and relay them together."""

    ticket: int
    server: HostPort
    client: HostPort
    client_tls: bool = False
    server_tls: bool = False


@dataclass(frozen=True, slots=True)
class CloseDataEndpoint:
    ticket: int


@dataclass(frozen=True, slots=True)
class StartClientTls:
    """Order: the 234 has been queued; drain it, drop any plaintext the client sent after AUTH, handshake."""


@dataclass(frozen=True, slots=True)
class CloseSession:
    reason: SessionOutcome
    detail: str = ""  # in words, for the log


@dataclass(frozen=True, slots=True)
class CommandReceived:
    verb: str
    line: bytes = b""  # as received; log it only through alg.ops.logs.redact (PASS)


@dataclass(frozen=True, slots=True)
class Rewrote:
    kind: str  # port, eprt, pasv, epsv
    before: bytes
    after: bytes


@dataclass(frozen=True, slots=True)
class Translated:
    """The server got another data verb than the client sent (RFC 6384 section 7)."""

    client_verb: str
    server_verb: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Refusal
    verb: str
    reply_code: int
    detail: str
    rule: str = ""  # the configured rule that refused it (alg.ops.rules), when there is one; else the reason


@dataclass(frozen=True, slots=True)
class LoggedIn:
    user: str


@dataclass(frozen=True, slots=True)
class LoginFailed:
    """The server answered USER or PASS with 530 (a wrong password, or a user it refuses), for the defender."""

    user: str


@dataclass(frozen=True, slots=True)
class TransferRequested:
    ticket: int | None
    verb: str
    argument: bytes


@dataclass(frozen=True, slots=True)
class TransferReplied:
    ticket: int | None
    verb: str
    reply_code: int


Action = (
    SendToClient
    | SendToServer
    | ListenForClient
    | ListenForServer
    | ListenForBoth
    | ConnectBoth
    | CloseDataEndpoint
    | CloseSession
    | CommandReceived
    | Rewrote
    | Translated
    | Refused
    | LoggedIn
    | LoginFailed
    | TransferRequested
    | TransferReplied
    | StartClientTls
)
