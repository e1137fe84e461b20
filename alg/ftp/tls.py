"""FTPS negotiation (RFC 2228, RFC 4217) as decisions: what AUTH, PBSZ, PROT and CCC get, per leg.

Rules: pure, no I/O; the control channel asks `ClientTls` about each client command and acts on the answer;
`UpstreamTls` drives the gateway's own AUTH TLS toward the server one reply at a time. Transports switch in
the shell: these classes only say when.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from alg.ftp.actions import StartClientTls as StartClientTls
from alg.ftp.wire import Command, LineFramer, Overlong, parse_reply_line, reply

# ---- actions and settings --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    client_mode: str = "refuse"  # refuse | allow | require
    client_data: str = "follow"  # follow | require (PROT C refused)
    upstream_data: str = "private"  # private | follow | clear


# AUTH arguments that mean TLS (RFC 4217 4; TLS-C and SSL are older spellings clients still send).
TLS_MECHANISMS = frozenset((b"TLS", b"TLS-C", b"SSL", b"TLS-P"))
TLS_FEATURES = (b" AUTH TLS\r\n", b" PBSZ\r\n", b" PROT\r\n")
_SECURITY_FEATURE = re.compile(rb"\s*(AUTH|PBSZ|PROT|CCC|ADAT|MIC|CONF|ENC)\b", re.IGNORECASE)
_LOGIN_VERBS = frozenset(("USER", "PASS", "ACCT"))


# ---- decisions about client commands ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer the client ourselves; `rule` set: it is a refusal, counted by that reason."""

    code: int
    text: str
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass the command to the server (a PROT the server's leg follows)."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """Answer 234, then switch the client's control connection to TLS."""


Decision = Answer | Forward | StartTls | None  # None: not a TLS matter, carry on as usual


@dataclass(slots=True)
class ClientTls:
    """The client leg's FTPS state, and the server leg's PROT level as far as the data channels care."""

    policy: TlsPolicy = field(default_factory=TlsPolicy)
    secured: bool = False  # the client's control connection is TLS (after AUTH, or implicit)
    starting: bool = False  # 234 decided, handshake not yet done: client bytes now are plaintext injection
    client_private: bool = False  # PROT P accepted for the client's data connections
    server_secured: bool = False  # the server's control connection is TLS
    server_private: bool = False  # the server's data connections use TLS

    def decide(self, command: Command, *, transfer: bool) -> Decision:
        verb = command.verb
        mode = self.policy.client_mode
        if verb == "AUTH":
            if mode == "refuse":
                return Answer(502, "AUTH TLS is not offered by this gateway; continue in plain FTP", "tls_off")
            if command.argument.strip().upper() not in TLS_MECHANISMS:
                return Answer(504, "Security mechanism not understood; use AUTH TLS", "unsupported")
            if self.secured:
                return Answer(503, "Already using TLS", "syntax")
            return StartTls()
        if verb == "CCC":
            # RFC 4217 13: CCC would leave the 227/PORT lines in clear, but the server leg may still need TLS,
            # and whoever reads the control channel could then hijack the session; the gateway keeps TLS.
            return Answer(533, "CCC refused: the gateway keeps the control connection encrypted", "unsupported")
        if verb in ("PBSZ", "PROT"):
            if not self.secured:
                return Answer(503, f"{verb} needs AUTH TLS first", "syntax")
            if verb == "PBSZ":
                return Answer(200, "PBSZ=0")  # RFC 4217 8: TLS has no buffer size; always 0
            return self._prot(command.argument.strip().upper())
        if mode == "require" and not self.secured and verb in _LOGIN_VERBS:
            return Answer(530, "TLS required: this gateway accepts logins only after AUTH TLS", "tls_required")
        if transfer and self.policy.client_data == "require" and not self.client_private:
            # RFC 4217 9: a server that requires protected data answers 521 to a transfer under PROT C.
            return Answer(521, "Data connections must be encrypted: send PBSZ 0 and PROT P", "tls_required")
        return None

    def _prot(self, level: bytes) -> Decision:
        if level not in (b"C", b"P"):
            return Answer(536, "Only PROT C and PROT P are supported", "syntax")
        if level == b"C" and self.policy.client_data == "require":
            return Answer(534, "PROT C refused: this gateway requires encrypted data connections", "tls_required")
        if self.server_secured and self.policy.upstream_data == "follow":
            return Forward()  # the server's leg takes the same level; its answer decides both
        self.client_private = level == b"P"
        return Answer(200, f"Protection level set to {level.decode()}")

    def prot_accepted(self, argument: bytes) -> None:
        """The server accepted a forwarded PROT: both legs now use that level."""
        private = argument.strip().upper() == b"P"
        self.client_private = self.server_private = private

    def tls_started(self) -> None:
        self.starting = False
        self.secured = True
        self.client_private = False  # RFC 4217 9: PROT C until the client asks for P

    @property
    def offers_tls(self) -> bool:
        return self.policy.client_mode != "refuse"


def rewrite_feat(lines: list[bytes], *, offer_tls: bool) -> bytes:
    """The server's FEAT reply with its security features replaced by what the gateway offers the client.

    `lines` is the whole reply as received (first line, features, last line). A refusal (5xx) or an empty
    list gains our features when we offer TLS, since clients such as lftp decide on AUTH from FEAT.
    """
    first = parse_reply_line(lines[0]) if lines else None
    ours = list(TLS_FEATURES) if offer_tls else []
    if first is None or first.code is None or not 200 <= first.code < 300:
        if not ours:
            return b"".join(lines)
        return b"211-Features:\r\n" + b"".join(ours) + b"211 End\r\n"
    if len(lines) == 1:
        if not ours:
            return lines[0]
        return b"211-Features:\r\n" + b"".join(ours) + b"211 End\r\n"
    body = [line for line in lines[1:-1] if not _SECURITY_FEATURE.match(line)]
    return lines[0] + b"".join(body) + b"".join(ours) + lines[-1]


# ---- the gateway's own AUTH TLS toward the server ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendLine:
    data: bytes


@dataclass(frozen=True, slots=True)
class StartServerTls:
    """Order: switch the server's control connection to TLS, then report `tls_started()`."""


@dataclass(frozen=True, slots=True)
class UpstreamReady:
    """Negotiation over: `banner` goes to the channel as the server's first reply."""

    banner: bytes
    secured: bool
    private: bool


@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    reason: str


Step = SendLine | StartServerTls | UpstreamReady | UpstreamFailed


class ReplyReader:
    """Whole replies (multi-line joined) from a byte stream: (code, raw bytes)."""

    def __init__(self, max_line_bytes: int = 65536) -> None:
        self._framer = LineFramer(max_line_bytes)
        self._lines: list[bytes] = []
        self._code: int | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for line in self._framer.feed(data):
            if isinstance(line, Overlong):
                out.append((0, b""))  # unreadable: the caller fails
                continue
            parsed = parse_reply_line(line)
            self._lines.append(line)
            if self._code is None:
                if parsed.code is None:
                    out.append((0, b"".join(self._lines)))
                    self._lines = []
                elif parsed.more:
                    self._code = parsed.code
                else:
                    out.append((parsed.code, b"".join(self._lines)))
                    self._lines = []
            elif parsed.code == self._code and not parsed.more:
                out.append((self._code, b"".join(self._lines)))
                self._lines, self._code = [], None
        return out

    @property
    def pending(self) -> int:
        return self._framer.pending + sum(map(len, self._lines))


def _text(raw: bytes) -> str:
    line = raw.splitlines()[-1] if raw else b""
    return line.decode("utf-8", "replace").strip()[:200]


class UpstreamTls:
    """AUTH TLS, PBSZ 0 and PROT toward the server, before the client's session starts.

    mode: auto (only when FEAT lists AUTH TLS), require, implicit (TLS from the first byte); data: follow,
    private, clear. Feed each whole reply to `on_reply`; the first is the banner.
    """

    def __init__(self, mode: str, data: str) -> None:
        self.mode = mode
        self.data = data
        self.secured = mode == "implicit"
        self._state = "banner"
        self._banner = b""
        self._private = False

    def on_reply(self, code: int, raw: bytes) -> Step | None:
        state = self._state
        if state == "banner":
            if 100 <= code < 200:
                self._banner += raw  # 120 "ready in n minutes": kept, the 220 follows
                return None
            self._banner += raw
            if code != 220:
                return self._ready()  # the server refuses anyway; the client hears its own words
            if self.secured:
                return self._after_tls()
            if self.mode == "auto":
                self._state = "feat"
                return SendLine(b"FEAT\r\n")
            return self._auth()
        if state == "feat":
            offered = code == 211 and re.search(rb"^\s*AUTH\b[^\r\n]*\bTLS\b", raw, re.MULTILINE | re.IGNORECASE)
            return self._auth() if offered else self._ready()
        if state == "auth":
            if code == 234:
                self._state = "handshake"
                return StartServerTls()
            if self.mode == "auto":
                return self._ready()
            return UpstreamFailed(f"the FTP server refused AUTH TLS ({code} {_text(raw)})")
        if state == "pbsz":
            if not 200 <= code < 300:
                return UpstreamFailed(f"the FTP server refused PBSZ 0 ({code} {_text(raw)})")
            level = {"private": b"P", "clear": b"C"}.get(self.data)
            if level is None:
                return self._ready()
            self._state = "prot"
            self._private = level == b"P"
            return SendLine(b"PROT " + level + b"\r\n")
        if state == "prot":
            if not 200 <= code < 300:
                return UpstreamFailed(f"the FTP server refused PROT ({code} {_text(raw)})")
            return self._ready()
        return None

    def tls_started(self) -> Step:
        self.secured = True
        return self._after_tls()

    def _auth(self) -> Step:
        self._state = "auth"
        return SendLine(b"AUTH TLS\r\n")

    def _after_tls(self) -> Step:
        self._state = "pbsz"
        return SendLine(b"PBSZ 0\r\n")

    def _ready(self) -> Step:
        self._state = "done"
        if self.mode == "require" and not self.secured:
            return UpstreamFailed("the FTP server does not offer TLS (tls.upstream.mode is require)")
        return UpstreamReady(self._banner, self.secured, self._private)


def handshake_failed_reply(side: str, reason: str) -> bytes:
    if side == "server":
        return reply(421, f"Service not available: TLS to the FTP server failed ({reason}).")
    return reply(421, f"TLS handshake failed ({reason}).")
