"""The control channel of one session, as a pure state machine: bytes in from either side, actions out.

Rules: replies reach the client in the order of the commands that caused them, ours included; a line that needs a
data endpoint is held (with everything behind it) until the session reports the endpoint ready or failed; a
227/229 is acted on only as the single-line final reply to an outstanding PASV/EPSV; no I/O, no clocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from alg.errors import FtpProtocolError, PolicyDenied
from alg.ftp import tls
from alg.ftp.actions import (
    Action,
    CloseDataEndpoint,
    CloseSession,
    CommandReceived,
    ListenForClient,
    ListenForServer,
    LoggedIn,
    LoginFailed,
    Refused,
    Rewrote,
    SendToClient,
    SendToServer,
    StartClientTls,
    TransferReplied,
    TransferRequested,
    Translated,
)
from alg.ftp.addresses import HostPort
from alg.ftp.channelstate import PROBING, TRANSFER_VERBS, Pending, Side, Ticket
from alg.ftp.datanegotiation import DataNegotiation
from alg.ftp.families import ServerFeatures
from alg.ftp.tls import TlsPolicy
from alg.ftp.wire import Command, LineFramer, Overlong, TelnetFilter, parse_command, parse_reply_line, reply

# The channel's callers name the actions through this module (they live in alg.ftp.actions).
__all__ = [
    "TRANSFER_VERBS",
    "UNSUPPORTED",
    "Action",
    "ChannelSettings",
    "CloseDataEndpoint",
    "CloseSession",
    "CommandReceived",
    "ControlChannel",
    "ListenForClient",
    "ListenForServer",
    "LoggedIn",
    "LoginFailed",
    "Refused",
    "Rewrote",
    "SendToClient",
    "SendToServer",
    "StartClientTls",
    "TransferReplied",
    "TransferRequested",
    "Translated",
]

# ---- settings ----------------------------------------------------------------------------------------------

# Commands whose replies would carry addresses we do not translate (RFC 1639 LPRT/LPSV, SPSV, pure-ftpd's P@SW)
# or that the gateway cannot take part in (RFC 2228 ADAT): refused so clients fall back. AUTH, PBSZ, PROT and
# CCC are decided by alg.ftp.tls.
UNSUPPORTED = {
    "LPRT": "LPRT is not supported by the gateway; use EPRT or PORT",
    "LPSV": "LPSV is not supported by the gateway; use EPSV or PASV",
    "SPSV": "SPSV is not supported by the gateway; use EPSV or PASV",
    "P@SW": "P@SW is not supported by the gateway; use EPSV or PASV",
    "ADAT": "ADAT is not supported by the gateway",
}

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
    port_address_mismatch: str = "refuse"  # or "rewrite": use the control client's address instead
    min_active_port: int = 1024
    check_command: CommandCheck | None = None
    # passive_target "advertised": may a 227 name another host than the upstream? (default: never)
    allow_data_peer: DataPeerCheck | None = None
    tls: TlsPolicy = field(default_factory=TlsPolicy)


class ControlChannel(DataNegotiation):
    """One FTP control connection pair, seen from the gateway.

    `client` is the control client's address and `server` the upstream's, as the gateway sees them.
    """

    def __init__(
        self,
        client: HostPort,
        server: HostPort,
        settings: ChannelSettings | None = None,
        *,
        client_secured: bool = False,
        server_secured: bool = False,
        server_private: bool = False,
    ) -> None:
        self.settings = settings or ChannelSettings()
        # Implicit FTPS (client_secured) and the gateway's own AUTH TLS upstream are decided before the channel.
        self.tls = tls.ClientTls(
            self.settings.tls, secured=client_secured, server_secured=server_secured, server_private=server_private
        )
        self._tls_ordered = False  # StartClientTls sent, handshake not reported yet
        self.client = client
        self.server = server
        self.user: str | None = None
        self.logged_in = False
        self.closed = False
        self.client_lines = 0  # complete lines received: activity that a byte-a-minute client cannot fake
        self._client = Side(LineFramer(self.settings.max_line_bytes, telnet=TelnetFilter()))
        self.features = ServerFeatures(server_ipv6=isinstance(server.ip, IPv6Address))
        # Toward the server, ABOR goes with the Telnet synch as urgent data; inside TLS there is no urgent data
        # (the mark would point into a record), so a TLS control leg gets a plain ABOR line.
        self.urgent_abort = not server_secured
        self._server = Side(LineFramer(self.settings.max_server_line_bytes))
        # The banner is the reply to connecting.
        self._pending: deque[Pending] = deque([Pending("<connect>")])
        self._multiline: int | None = None  # code of the multi-line reply in progress
        self._suppress_multiline = False
        self._kept: list[bytes] | None = None  # lines of a transfer's multi-line final reply, kept together
        self._kept_bytes = 0
        self._feat: list[bytes] | None = None  # a multi-line FEAT reply, rewritten once complete
        self._held_reply: bytes | None = None  # a transfer's final reply waiting for its data to drain
        self._failed: dict[int, bytes] = {}  # ticket -> our 426, for a transfer whose data connection broke
        self._tickets: dict[int, Ticket] = {}
        self._next_ticket = 1
        self._armed: int | None = None  # the ticket the next transfer command will use
        self._epsv_all = False
        self._said_goodbye = False  # the server's last final reply was 221 or 421

    # ---- facts from the session ----------------------------------------------------------------------------

    def client_data(self, data: bytes) -> list[Action]:
        if self.closed:
            return []
        if not data:
            return self._close("the client closed the control connection")
        if self._tls_ordered:
            # Bytes after our 234 and before the handshake are plaintext someone injected (CVE-2011-0411 class):
            # never executed.
            return [Refused("tls_plaintext", "AUTH", 0, f"{len(data)} plaintext bytes before the TLS handshake")]
        lines = self._client.framer.feed(data)
        self.client_lines += len(lines)
        self._client.backlog.extend(lines)
        return self._run()

    def server_data(self, data: bytes) -> list[Action]:
        if self.closed:
            return []
        if not data:
            out: list[Action] = []
            if any(entry.verb in TRANSFER_VERBS for entry in self._pending):
                out.append(SendToClient(reply(426, "Connection closed; transfer aborted: the FTP server went away.")))
            if not self._said_goodbye:
                out.append(SendToClient(reply(421, "The FTP server closed the connection.")))
            return out + self._close("the server closed the control connection")
        self._server.backlog.extend(self._server.framer.feed(data))
        return self._run()

    def client_tls_started(self) -> list[Action]:
        """The client's TLS handshake after our 234 is done: its commands are read again."""
        if self.closed:
            return []
        self._tls_ordered = False
        self.tls.tls_started()
        return self._run()

    @property
    def wants_client_data(self) -> bool:
        """False while client lines are held: the session stops reading, which bounds the backlog."""
        return not self._client.backlog and not self.closed and not self.tls.starting

    @property
    def wants_server_data(self) -> bool:
        return not self._server.backlog and not self.closed

    @property
    def at_rest(self) -> bool:
        """Between commands: no reply owed or held, no client line waiting, no data endpoint open. A 421 sent
        now (graceful shutdown) cuts no transfer and overtakes no reply."""
        return not (self._pending or self._client.backlog or self._tickets or self._held_reply is not None)

    # ---- the engine ------------------------------------------------------------------------------------------

    def _run(self) -> list[Action]:
        out: list[Action] = []
        progressed = True
        while progressed and not self.closed:
            progressed = False
            while self._server.backlog and self._server.waiting_for is None and not self.closed:
                probing = self._client.waiting_for == PROBING
                out.extend(self._server_line(self._server.backlog.popleft()))
                if self._server.waiting_for is None:
                    out.extend(self._flush_local_replies())  # ours come before the next server reply
                progressed = True
                if probing and self._client.waiting_for is None:
                    break  # the client lines held behind the probe go before the server's next reply
            while (
                self._client.backlog
                and self._client.waiting_for is None
                and len(self._pending) < self.settings.max_pipelined_commands
                and not self.closed
                and not self.tls.starting
            ):
                out.extend(self._client_line(self._client.backlog.popleft()))
                progressed = True
            if self._server.waiting_for is None:
                flushed = self._flush_local_replies()
                progressed = progressed or bool(flushed)
                out.extend(flushed)
        return out

    def _close(self, reason: str) -> list[Action]:
        self.closed = True
        out: list[Action] = [CloseDataEndpoint(t) for t in self._tickets]
        self._tickets.clear()
        out.append(CloseSession(reason))
        return out

    def _answer_locally(self, line: bytes, *, start_tls: bool = False) -> list[Action]:
        """Our own reply, queued behind the replies still owed for earlier commands."""
        if not self._pending and self._server.waiting_for is None:
            return [SendToClient(line), *(self._order_client_tls() if start_tls else [])]
        self._pending.append(Pending("<local>", local_reply=line, start_tls=start_tls))
        return []

    def _flush_local_replies(self) -> list[Action]:
        out: list[Action] = []
        while self._pending and self._pending[0].local_reply is not None:
            entry = self._pending.popleft()
            out.append(SendToClient(entry.local_reply or b""))
            if entry.start_tls:
                out.extend(self._order_client_tls())
        return out

    def _order_client_tls(self) -> list[Action]:
        """After the 234: lines the client sent behind AUTH were plaintext and are dropped, never executed."""
        self._tls_ordered = True
        dropped = len(self._client.backlog) + (1 if self._client.framer.pending else 0)
        self._client.backlog.clear()
        self._client.framer = LineFramer(self.settings.max_line_bytes)
        out: list[Action] = [StartClientTls()]
        if dropped:
            out.append(Refused("tls_plaintext", "AUTH", 0, f"{dropped} plaintext line(s) after AUTH TLS dropped"))
        return out

    def _refuse(self, verb: str, code: int, rule: str, detail: str) -> list[Action]:
        return [Refused(rule, verb, code, detail), *self._answer_locally(reply(code, detail))]

    # ---- client lines ------------------------------------------------------------------------------------------

    def _client_line(self, line: bytes | Overlong) -> list[Action]:
        if isinstance(line, Overlong):
            limit = self.settings.max_line_bytes
            return self._refuse("<overlong>", 500, "line-length", f"Command line too long (limit {limit} bytes)")
        command = parse_command(line)
        if command is None:
            return self._refuse("<syntax>", 500, "syntax", "Syntax error, command unrecognized")
        out: list[Action] = [CommandReceived(command.verb, command.raw)]
        try:
            if self.settings.check_command is not None:
                self.settings.check_command(command)
            out.extend(self._dispatch(command))
        except PolicyDenied as denied:
            out.extend(self._refuse(command.verb, denied.reply_code, denied.rule, str(denied)))
        except FtpProtocolError as error:
            out.extend(self._refuse(command.verb, error.reply_code, "syntax", str(error)))
        return out

    def _dispatch(self, command: Command) -> list[Action]:
        verb = command.verb
        decision = self.tls.decide(command, transfer=verb in TRANSFER_VERBS)
        if isinstance(decision, tls.Answer):
            if decision.rule is not None:
                return self._refuse(verb, decision.code, decision.rule, decision.text)
            return self._answer_locally(reply(decision.code, decision.text))
        if isinstance(decision, tls.StartTls):
            self.tls.starting = True
            return self._answer_locally(reply(234, "Proceed with TLS negotiation"), start_tls=True)
        if verb in UNSUPPORTED:
            return self._refuse(verb, 502, "unsupported", UNSUPPORTED[verb])
        if verb in ("PORT", "EPRT"):
            return self._active(command)
        if verb in ("PASV", "EPSV"):
            return self._passive(command)
        if verb == "USER":
            self.user = command.argument.decode("utf-8", "replace")[:128]
            self.logged_in = False
        elif verb == "REIN":
            self.logged_in = False
        if verb == "ABOR":
            running = any(
                entry.verb in TRANSFER_VERBS and (entry.ticket is None or entry.ticket in self._tickets)
                for entry in self._pending
            )
            self._pending.append(Pending(verb))
            return self._abort(running)
        out: list[Action] = []
        ticket = None
        if verb in TRANSFER_VERBS:
            ticket = self._armed
            out.append(TransferRequested(ticket, verb, command.argument))
        self._pending.append(Pending(verb, ticket=ticket, argument=command.argument))
        out.append(SendToServer(command.raw))
        return out

    # ---- server lines ------------------------------------------------------------------------------------------

    def _server_line(self, line: bytes | Overlong) -> list[Action]:
        if isinstance(line, Overlong):
            out: list[Action] = [SendToClient(reply(421, "The FTP server sent an unreadable reply; closing."))]
            return out + self._close("the server sent an overlong line")
        parsed = parse_reply_line(line)
        if self._pending and self._pending[0].verb == "FEAT" and self._pending[0].local_reply is None:
            self.features.feat_line(line)
        if self._multiline is not None:
            if parsed.code != self._multiline or parsed.more:
                return self._continuation(line)
            self._multiline = None
            suppressed, self._suppress_multiline = self._suppress_multiline, False
            if self._kept is not None:
                line, self._kept, self._kept_bytes = b"".join(self._kept) + line, None, 0
            if self._feat is not None:
                line = tls.rewrite_feat([*self._feat, line], offer_tls=self.tls.offers_tls)
                self._feat = None
            if parsed.code < 200 and not suppressed:
                return [SendToClient(line)]  # a multi-line preliminary reply (pure-ftpd's 150-) ends
            return self._final_reply(parsed.code, line, single_line=False)
        if parsed.code is None:
            return [SendToClient(line)]  # not a reply line: passed on, acted on never
        if parsed.more:
            self._multiline = parsed.code
            front = self._pending[0] if self._pending else None
            verb = front.verb if front is not None else ""
            if parsed.code in (227, 229) and verb in ("PASV", "EPSV"):
                self._suppress_multiline = True  # it may name the internal address; never forwarded
                return []
            if verb == "FEAT":
                self._feat = [line]  # the features the client sees are the gateway's (alg.ftp.tls)
                return []
            live_transfer = front is not None and verb in TRANSFER_VERBS and front.ticket in self._tickets
            if 200 <= parsed.code < 300 and live_transfer:
                # A transfer's final reply may not reach the client before its data (pure-ftpd: "226-Options"),
                # so the whole reply is kept until its last line decides.
                self._kept = [line]
                return []
            return [SendToClient(line)]
        if parsed.code < 200:
            return [SendToClient(line)]
        if self._pending and self._pending[0].verb == "FEAT":
            line = tls.rewrite_feat([line], offer_tls=self.tls.offers_tls)
        return self._final_reply(parsed.code, line, single_line=True)

    def _continuation(self, line: bytes) -> list[Action]:
        if self._suppress_multiline:
            return []
        if self._feat is not None:
            if len(self._feat) < 256:  # bounded; a longer list is not a feature list
                self._feat.append(line)
                return []
            feat, self._feat = self._feat, None
            return [SendToClient(b"".join(feat) + line)]
        if self._kept is None:
            return [SendToClient(line)]
        self._kept.append(line)
        self._kept_bytes += len(line)
        if self._kept_bytes > self.settings.max_server_line_bytes:
            # Too long to keep: pass it on; only its last line will wait for the data.
            kept, self._kept, self._kept_bytes = self._kept, None, 0
            return [SendToClient(b"".join(kept))]
        return []

    def _final_reply(self, code: int, line: bytes, *, single_line: bool) -> list[Action]:
        front = self._pending[0] if self._pending and self._pending[0].local_reply is None else None
        settled = self._settle_before_abor_reply(code)
        if settled is not None:  # entries the reply cannot belong to, answered or dropped: pair it again
            return [*settled, *self._flush_local_replies(), *self._final_reply(code, line, single_line=single_line)]
        if code in (227, 229) and (front is None or front.verb not in ("PASV", "EPSV")):
            # Out of turn (a server's extra reply after ABOR shifts the pairing): it may name the internal
            # address, so it is never passed on as it is.
            detail = "the FTP server sent a passive reply out of turn"
            line = reply(425, f"Can't open data connection: {detail}.")
            refused: list[Action] = [Refused("server-reply", front.verb if front else "", 425, detail)]
            return refused + self._final_reply(425, line, single_line=True)
        if not self._pending or self._pending[0].local_reply is not None:
            self._said_goodbye = code in (221, 421)
            return [SendToClient(line)]  # unsolicited (a 421 on idle, say): passed on, acted on never
        entry = self._pending.popleft()
        verb = entry.verb
        self._said_goodbye = code in (221, 421)
        if entry.fence and verb == "NOOP":
            return []  # our own NOOP after an ABOR (abort_overdue): its reply is ours
        if entry.sent:
            if entry.probe and self._client.waiting_for == PROBING:
                self._client.waiting_for = None  # the probe's answer is in (one probe at a time)
            retry = self.features.learn_refusal(entry.sent, code)
            if retry is not None:
                return self._retry(entry, retry)
            self.features.learn_success(entry.sent, code)
        elif verb == "FEAT":
            self.features.feat_done(code)
        if verb in ("PASV", "EPSV") and code in (227, 229):
            return self._passive_reply(entry.sent or verb, code, line, single_line, client_verb=verb)
        out: list[Action] = []
        if verb in ("PORT", "EPRT") and code >= 300 and entry.ticket is not None:
            if self._tickets.pop(entry.ticket, None) is not None:
                out.append(CloseDataEndpoint(entry.ticket))
            if self._armed == entry.ticket:
                self._armed = None
        elif verb == "PROT" and 200 <= code < 300:
            self.tls.prot_accepted(entry.argument)
        elif verb in ("USER", "PASS") and code == 230:
            self.logged_in = True
            out.append(LoggedIn(self.user or ""))
        elif verb in ("USER", "PASS") and code == 530:
            out.append(LoginFailed(self.user or ""))
        elif verb in TRANSFER_VERBS:
            out.append(TransferReplied(entry.ticket, verb, code))
            out.extend(self._fence_abor())
            if entry.ticket is not None:
                return out + self._transfer_reply(entry.ticket, code, line)
        out.append(SendToClient(line))
        return out
