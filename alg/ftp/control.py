"""The control channel of one session, as a pure state machine: bytes in from either side, actions out.

Rules: replies reach the client in the order of the commands that caused them, ours included; a line that needs a
data endpoint is held (with everything behind it) until the session reports the endpoint ready or failed; a
227/229 is acted on only as the final reply to an outstanding PASV/EPSV; no I/O, no clocks.

Commands sent during a transfer (RFC 959 4.1.3: STAT, ABOR, QUIT; servers answer more) are answered as the
server answers them. Once a transfer has had its 1xx, its own final reply is one of TRANSFER_DONE (RFC 959 5.4:
226, 250, 425, 426, 451, 551, 552, and 421/450/452); any other final reply that comes while later commands are
owed answers the first of them, and reaches the client at once, before the transfer's. Measured directly
(tests/integration/test_conformance.py; proftpd, pure-ftpd and vsftpd also under TLS): proftpd and pyftpdlib
answer STAT (multi-line 211), NOOP, QUIT and REIN during a download at once (proftpd during an upload only as
data arrives) and send the 226 when the data is done; pure-ftpd answers them "500 Unknown command" at once
(QUIT: "426 ABORT" for the transfer, then a 226 of its own); vsftpd reads no command before the transfer's 226
and answers in order after it. ABOR keeps its own pairing (datanegotiation.py); a 221 means the server leaves:
nothing of ours follows it.
"""

from __future__ import annotations

import re
from collections import deque
from ipaddress import IPv6Address

from alg.errors import FtpProtocolError, PolicyDenied
from alg.ftp import ownaddress, tls
from alg.ftp.actions import (
    Action,
    CloseDataEndpoint,
    CloseSession,
    CommandReceived,
    ConnectBoth,
    ListenForBoth,
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
from alg.ftp.channelstate import (
    PROBING,
    TRANSFER_DONE,
    TRANSFER_VERBS,
    ChannelSettings,
    ChannelState,
    Pending,
    Side,
    Ticket,
)
from alg.ftp.datanegotiation import DataNegotiation
from alg.ftp.families import ServerFeatures
from alg.ftp.multiline import Handling, MultilineReply
from alg.ftp.reasons import Refusal, SessionOutcome
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
    "ConnectBoth",
    "ControlChannel",
    "ListenForBoth",
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

# Commands whose replies the pairing of a reply during a transfer never takes out of turn (their own logic pairs
# them: ABOR in datanegotiation.py, the data verbs by their tickets, FEAT by its rewrite).
_IN_TURN_ONLY = TRANSFER_VERBS | {"ABOR", "PASV", "EPSV", "PORT", "EPRT", "EPSV ALL", "FEAT"}

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


class ControlChannel:
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
        server_side: HostPort | None = None,
    ) -> None:
        self.settings = settings or ChannelSettings()
        # Implicit FTPS (client_secured) and the gateway's own AUTH TLS upstream are decided before the channel.
        self.tls = tls.ClientTls(
            self.settings.tls, secured=client_secured, server_secured=server_secured, server_private=server_private
        )
        self._tls_ordered = False  # StartClientTls sent, handshake not reported yet
        self.client = client
        self.server = server
        # The gateway's own end toward the server (the shell knows it): named in the server's STAT, never shown.
        self._own_address: re.Pattern[bytes] | None = None
        if server_side is not None and server_side.ip != client.ip:
            self._own_address = ownaddress.address_pattern(server_side.ip)
        self.user: str | None = None
        self.logged_in = False
        self.client_lines = 0  # complete lines received: activity that a byte-a-minute client cannot fake
        self.features = ServerFeatures(server_ipv6=isinstance(server.ip, IPv6Address))
        self.state = ChannelState(
            self.settings,
            client,
            server,
            self.tls,
            self.features,
            client_side=Side(LineFramer(self.settings.max_line_bytes, telnet=TelnetFilter())),
            server_side=Side(LineFramer(self.settings.max_server_line_bytes)),
            urgent_abort=not server_secured,
        )
        self.data = DataNegotiation(self.state, run=self._run, answer_locally=self._answer_locally)
        self._multiline = MultilineReply(self.settings.max_server_line_bytes)
        self._said_goodbye = False  # the server said 221 or 421: it is leaving
        self._server_gone = False  # its end of stream came while a transfer's reply waited for the data

    # ---- the data half's facts and state, under the channel's names ------------------------------------------

    def data_endpoint_ready(self, ticket: int, public: HostPort, internal: HostPort | None = None) -> list[Action]:
        """`internal`: a ListenForBoth's endpoint for the server, `public` the one for the client."""
        return self.data.data_endpoint_ready(ticket, public, internal)

    def data_endpoint_failed(self, ticket: int, reason: str) -> list[Action]:
        return self.data.data_endpoint_failed(ticket, reason)

    def data_connected(self, ticket: int) -> list[Action]:
        return self.data.data_connected(ticket)

    def data_finished(self, ticket: int) -> list[Action]:
        return self.data.data_finished(ticket)

    def abort_overdue(self) -> list[Action]:
        return self.data.abort_overdue()

    @property
    def abort_unsettled(self) -> bool:
        return self.data.abort_unsettled

    @property
    def open_tickets(self) -> frozenset[int]:
        return self.data.open_tickets

    @property
    def closed(self) -> bool:
        return self.state.closed

    @property
    def urgent_abort(self) -> bool:
        return self.state.urgent_abort

    @urgent_abort.setter
    def urgent_abort(self, value: bool) -> None:
        self.state.urgent_abort = value

    # White-box views of the state, under the names the property tests read (test_fuzz bounds its size).
    @property
    def _pending(self) -> deque[Pending]:
        return self.state.pending

    @property
    def _failed(self) -> dict[int, bytes]:
        return self.data.failed

    @property
    def _client(self) -> Side:
        return self.state.client_side

    @property
    def _server(self) -> Side:
        return self.state.server_side

    @property
    def _tickets(self) -> dict[int, Ticket]:
        return self.state.tickets

    @property
    def _held_reply(self) -> bytes | None:
        return self.state.held_reply

    # ---- facts from the session ----------------------------------------------------------------------------

    def client_data(self, data: bytes) -> list[Action]:
        if self.closed:
            return []
        if not data:
            return self._close(SessionOutcome.CLIENT_CLOSED, "the client closed the control connection")
        if self._tls_ordered:
            # Bytes after our 234 and before the handshake are plaintext someone injected (CVE-2011-0411 class):
            # never executed.
            return [Refused(Refusal.TLS_PLAINTEXT, "AUTH", 0, f"{len(data)} plaintext bytes before the TLS handshake")]
        lines = self.state.client_side.framer.feed(data)
        self.client_lines += len(lines)
        self.state.client_side.backlog.extend(lines)
        return self._run()

    def server_data(self, data: bytes) -> list[Action]:
        if self.closed:
            return []
        if not data:
            if self.state.held_reply is not None:
                # pyftpdlib after a QUIT during a transfer: 221, the 226, then it closes, while the gateway may
                # still be delivering the data; the 226 goes once the data has, then the session closes (_run).
                self._server_gone = True
                return []
            return self._server_closed()
        self.state.server_side.backlog.extend(self.state.server_side.framer.feed(data))
        return self._run()

    def _server_closed(self) -> list[Action]:
        out: list[Action] = []
        if not self._said_goodbye and any(entry.verb in TRANSFER_VERBS for entry in self.state.pending):
            out.append(SendToClient(reply(426, "Connection closed; transfer aborted: the FTP server went away.")))
        if not self._said_goodbye:
            out.append(SendToClient(reply(421, "The FTP server closed the connection.")))
        return out + self._close(SessionOutcome.SERVER_CLOSED, "the server closed the control connection")

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
        return not self.state.client_side.backlog and not self.closed and not self.tls.starting

    @property
    def wants_server_data(self) -> bool:
        return not self.state.server_side.backlog and not self.closed

    @property
    def at_rest(self) -> bool:
        """Between commands: no reply owed or held, no client line waiting, no data endpoint open. A 421 sent
        now (graceful shutdown) cuts no transfer and overtakes no reply."""
        return not (
            self.state.pending
            or self.state.client_side.backlog
            or self.state.tickets
            or self.state.held_reply is not None
        )

    # ---- the engine ------------------------------------------------------------------------------------------

    def _run(self) -> list[Action]:
        out: list[Action] = []
        progressed = True
        while progressed and not self.closed:
            progressed = False
            while self.state.server_side.backlog and self.state.server_side.waiting_for is None and not self.closed:
                probing = self.state.client_side.waiting_for == PROBING
                out.extend(self._server_line(self.state.server_side.backlog.popleft()))
                if self.state.server_side.waiting_for is None:
                    out.extend(self._flush_local_replies())  # ours come before the next server reply
                progressed = True
                if probing and self.state.client_side.waiting_for is None:
                    break  # the client lines held behind the probe go before the server's next reply
            while (
                self.state.client_side.backlog
                and self.state.client_side.waiting_for is None
                and len(self.state.pending) < self.settings.max_pipelined_commands
                and not self.closed
                and not self.tls.starting
            ):
                out.extend(self._client_line(self.state.client_side.backlog.popleft()))
                progressed = True
            if self.state.server_side.waiting_for is None:
                flushed = self._flush_local_replies()
                progressed = progressed or bool(flushed)
                out.extend(flushed)
        if self._server_gone and self.state.server_side.waiting_for is None and not self.closed:
            out.extend(self._server_closed())  # its last replies are out
        return out

    def _close(self, reason: SessionOutcome, detail: str) -> list[Action]:
        self.state.closed = True
        out: list[Action] = [CloseDataEndpoint(t) for t in self.state.tickets]
        self.state.tickets.clear()
        out.append(CloseSession(reason, detail))
        return out

    def _answer_locally(self, line: bytes, *, start_tls: bool = False) -> list[Action]:
        """Our own reply, queued behind the replies still owed for earlier commands."""
        if not self.state.pending and self.state.server_side.waiting_for is None:
            return [SendToClient(line), *(self._order_client_tls() if start_tls else [])]
        self.state.pending.append(Pending("<local>", local_reply=line, start_tls=start_tls))
        return []

    def _flush_local_replies(self) -> list[Action]:
        out: list[Action] = []
        while self.state.pending and self.state.pending[0].local_reply is not None:
            entry = self.state.pending.popleft()
            out.append(SendToClient(entry.local_reply or b""))
            if entry.start_tls:
                out.extend(self._order_client_tls())
        return out

    def _order_client_tls(self) -> list[Action]:
        """After the 234: lines the client sent behind AUTH were plaintext and are dropped, never executed."""
        self._tls_ordered = True
        dropped = len(self.state.client_side.backlog) + (1 if self.state.client_side.framer.pending else 0)
        self.state.client_side.backlog.clear()
        self.state.client_side.framer = LineFramer(self.settings.max_line_bytes)
        out: list[Action] = [StartClientTls()]
        if dropped:
            out.append(Refused(Refusal.TLS_PLAINTEXT, "AUTH", 0, f"{dropped} plaintext line(s) after AUTH TLS dropped"))
        return out

    def _refuse(self, verb: str, code: int, reason: Refusal, detail: str, rule: str = "") -> list[Action]:
        return [Refused(reason, verb, code, detail, rule), *self._answer_locally(reply(code, detail))]

    # ---- client lines ------------------------------------------------------------------------------------------

    def _client_line(self, line: bytes | Overlong) -> list[Action]:
        if isinstance(line, Overlong):
            limit = self.settings.max_line_bytes
            return self._refuse("<overlong>", 500, Refusal.LINE_LENGTH, f"Command line too long (limit {limit} bytes)")
        command = parse_command(line)
        if command is None:
            return self._refuse("<syntax>", 500, Refusal.SYNTAX, "Syntax error, command unrecognized")
        out: list[Action] = [CommandReceived(command.verb, command.raw)]
        try:
            if self.settings.check_command is not None:
                self.settings.check_command(command)
            out.extend(self._dispatch(command))
        except PolicyDenied as denied:
            out.extend(self._refuse(command.verb, denied.reply_code, denied.reason, str(denied), denied.rule))
        except FtpProtocolError as error:
            out.extend(self._refuse(command.verb, error.reply_code, Refusal.SYNTAX, str(error)))
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
            return self._refuse(verb, 502, Refusal.UNSUPPORTED, UNSUPPORTED[verb])
        if verb in ("PORT", "EPRT", "PASV", "EPSV"):
            return self._data_command(command)
        resets = verb == "REIN" or (verb == "USER" and self.logged_in)
        if verb == "USER":
            self.user = command.argument.decode("utf-8", "replace")[:128]
        if verb == "ABOR":
            running = any(
                entry.verb in TRANSFER_VERBS and (entry.ticket is None or entry.ticket in self.state.tickets)
                for entry in self.state.pending
            )
            self.state.pending.append(Pending(verb))
            return self.data.abort(running)
        out: list[Action] = []
        if isinstance(decision, tls.Forward) and self.tls.upstream_stale:
            out.extend(self._own_commands([b"PBSZ 0\r\n"]))  # the server forgot it; ours was answered here
            self.tls.upstream_stale = False
        ticket = None
        if verb in TRANSFER_VERBS:
            ticket = self.state.armed
            out.append(TransferRequested(ticket, verb, command.argument))
        self.state.pending.append(Pending(verb, ticket=ticket, argument=command.argument, resets=resets))
        out.append(SendToServer(command.raw))
        return out

    def _data_command(self, command: Command) -> list[Action]:
        """PASV/EPSV/PORT/EPRT; first, if the server forgot PBSZ/PROT (REIN, a new USER), the gateway's own PBSZ 0
        and PROT at the level its server leg uses, queued in front of the data command's reply."""
        before = len(self.state.pending)
        active = command.verb in ("PORT", "EPRT")
        out = self.data.active(command) if active else self.data.passive(command)  # raises before any change
        if not self.tls.upstream_stale or command.argument.strip().upper() == b"ALL":
            return out
        self.tls.upstream_stale = False
        level = b"P" if self.tls.server_private else b"C"
        own = [Pending(verb, own=True) for verb in ("PBSZ", "PROT")]
        for offset, entry in enumerate(own):
            self.state.pending.insert(before + offset, entry)
        return [SendToServer(b"PBSZ 0\r\n"), SendToServer(b"PROT " + level + b"\r\n"), *out]

    def _own_commands(self, lines: list[bytes]) -> list[Action]:
        for line in lines:
            self.state.pending.append(Pending(line.split()[0].decode(), own=True))
        return [SendToServer(line) for line in lines]

    def _own_reply(self, entry: Pending, code: int) -> list[Action]:
        """The reply to a PBSZ/PROT of the gateway's own: never the client's. A refused PROT would leave the server's
        data connections at another level than the gateway's leg: the session ends, as when it starts (tls.py)."""
        if entry.verb != "PROT" or 200 <= code < 300:
            return []
        detail = f"the FTP server refused PROT after REIN or a new login ({code})"
        refused: list[Action] = [Refused(Refusal.SERVER_REPLY, "PROT", 421, detail)]
        closing = [
            SendToClient(reply(421, f"Service not available: {detail}.")),
            *self._close(SessionOutcome.TLS_FAILED, detail),
        ]
        return refused + closing

    def _login_reply(self, entry: Pending, code: int) -> list[Action]:
        """USER/PASS/REIN answered: the login state follows the server's, and so does its TLS state (tls.py)."""
        accepted = 200 <= code < 300 if entry.verb == "REIN" else code in (230, 331)
        if entry.verb != "PASS" and accepted:
            self.logged_in = False
            if entry.resets:
                self.tls.session_reset(rein=entry.verb == "REIN")
        if entry.verb in ("USER", "PASS") and code == 230:
            self.logged_in = True
            return [LoggedIn(self.user or "")]
        if entry.verb in ("USER", "PASS") and code == 530:
            return [LoginFailed(self.user or "")]  # a wrong password, or a name refused outright (the defender)
        return []

    # ---- server lines ------------------------------------------------------------------------------------------

    def _server_line(self, line: bytes | Overlong) -> list[Action]:
        if isinstance(line, Overlong):
            out: list[Action] = [SendToClient(reply(421, "The FTP server sent an unreadable reply; closing."))]
            return out + self._close(SessionOutcome.PROTOCOL_ERROR, "the server sent an overlong line")
        if self._own_address is not None and self._status_owed():
            line = ownaddress.hide_own_address(line, self._own_address, self.client.ip)
        parsed = parse_reply_line(line)
        if self.state.pending and self.state.pending[0].verb == "FEAT" and self.state.pending[0].local_reply is None:
            self.features.feat_line(line)
        if self._multiline.code is not None:
            if parsed.code != self._multiline.code or parsed.more:
                return _to_client(self._multiline.continuation(line))
            handling, lines = self._multiline.end(line)
            if handling is Handling.FEAT:
                line = tls.rewrite_feat(lines, offer_tls=self.tls.offers_tls)
            elif handling in (Handling.KEEP, Handling.SUPPRESS):
                line = b"".join(lines)
            if parsed.code < 200 and handling is not Handling.SUPPRESS:
                return self._preliminary(line)  # a multi-line preliminary reply (pure-ftpd's 150-) ends
            return self._final_reply(parsed.code, line)
        if parsed.code is None:
            return [SendToClient(line)]  # not a reply line: passed on, acted on never
        if parsed.more:
            return _to_client(self._multiline.start(parsed.code, line, self._handling(parsed.code)))
        if parsed.code < 200:
            return self._preliminary(line)
        if self.state.pending and self.state.pending[0].verb == "FEAT":
            line = tls.rewrite_feat([line], offer_tls=self.tls.offers_tls)
        return self._final_reply(parsed.code, line)

    def _status_owed(self) -> bool:
        """A STAT without argument (the connection's status, RFC 959 4.1.3) is owed its reply from the server."""
        return any(
            entry.verb == "STAT" and not entry.argument.strip() and entry.local_reply is None
            for entry in self.state.pending
        )

    def _handling(self, code: int) -> Handling:
        """What a multi-line reply's continuation lines get, decided at its first line."""
        front = self.state.pending[0] if self.state.pending else None
        verb = front.verb if front is not None else ""
        if code in (227, 229) and front is not None and (front.sent or verb) in ("PASV", "EPSV"):
            return Handling.SUPPRESS  # it may name the internal address; never forwarded
        if verb == "FEAT":
            return Handling.FEAT  # the features the client sees are the gateway's (alg.ftp.tls)
        live_transfer = front is not None and verb in TRANSFER_VERBS and front.ticket in self.state.tickets
        its_own = code in TRANSFER_DONE or len(self.data.owed()) < 2  # not a later command's
        if 200 <= code < 300 and live_transfer and its_own:
            # A transfer's final reply may not reach the client before its data (pure-ftpd: "226-Options"),
            # so the whole reply is kept until its last line decides.
            return Handling.KEEP
        return Handling.PASS

    def _answered_during_transfer(self, code: int) -> Pending | None:
        """The entry a final reply answers when it is not the running transfer's own (module docstring): the
        command right behind the transfer, taken out of the queue; None: the usual front entry."""
        pending = self.state.pending
        if len(pending) < 2 or code in TRANSFER_DONE:
            return None
        transfer, later = pending[0], pending[1]
        if not transfer.started or later.local_reply is not None or later.fence or later.own:
            return None
        if later.verb in _IN_TURN_ONLY:
            return None
        del pending[1]
        return later

    def _preliminary(self, line: bytes) -> list[Action]:
        """A 1xx: the transfer at the front is now running (its final reply is one of TRANSFER_DONE)."""
        front = self.state.pending[0] if self.state.pending else None
        if front is not None and front.verb in TRANSFER_VERBS and front.local_reply is None:
            front.started = True
        return [SendToClient(line)]

    def _final_reply(self, code: int, line: bytes) -> list[Action]:
        front = self.state.pending[0] if self.state.pending and self.state.pending[0].local_reply is None else None
        settled = self.data.settle_before_abor_reply(code)
        if settled is not None:  # entries the reply cannot belong to, answered or dropped: pair it again
            return [*settled, *self._flush_local_replies(), *self._final_reply(code, line)]
        if code in (227, 229) and (front is None or (front.sent or front.verb) not in ("PASV", "EPSV")):
            # Out of turn (a server's extra reply after ABOR shifts the pairing): it may name the internal
            # address, so it is never passed on as it is.
            detail = "the FTP server sent a passive reply out of turn"
            line = reply(425, f"Can't open data connection: {detail}.")
            refused: list[Action] = [Refused(Refusal.SERVER_REPLY, front.verb if front else "", 425, detail)]
            return refused + self._final_reply(425, line)
        if not self.state.pending or self.state.pending[0].local_reply is not None:
            self._said_goodbye = self._said_goodbye or code in (221, 421)
            return [SendToClient(line)]  # unsolicited (a 421 on idle, say): passed on, acted on never
        entry = self._answered_during_transfer(code) or self.state.pending.popleft()
        verb = entry.verb
        self._said_goodbye = self._said_goodbye or code in (221, 421)
        if entry.fence and verb == "NOOP":
            return []  # our own NOOP after an ABOR (abort_overdue): its reply is ours
        if entry.own:
            return self._own_reply(entry, code)
        if entry.sent:
            if entry.probe and self.state.client_side.waiting_for == PROBING:
                self.state.client_side.waiting_for = None  # the probe's answer is in (one probe at a time)
            retry = self.features.learn_refusal(entry.sent, code)
            if retry is not None:
                return self.data.retry(entry, retry)
            self.features.learn_success(entry.sent, code)
        elif verb == "FEAT":
            self.features.feat_done(code)
        if self.data.crossed(entry):
            return self.data.cross_reply(entry, code, line)
        if verb in ("PASV", "EPSV") and code in (227, 229):
            return self.data.passive_reply(entry.sent or verb, code, line, client_verb=verb)
        return self._answer(entry, code, line)

    def _answer(self, entry: Pending, code: int, line: bytes) -> list[Action]:
        """A reply paired with the client's command it answers: what it changes (data endpoints, protection,
        login, a transfer's end), then the line to the client."""
        verb = entry.verb
        out: list[Action] = []
        if verb in ("PORT", "EPRT") and code >= 300 and entry.ticket is not None:
            if self.state.tickets.pop(entry.ticket, None) is not None:
                out.append(CloseDataEndpoint(entry.ticket))
            if self.state.armed == entry.ticket:
                self.state.armed = None
        elif verb == "PROT" and 200 <= code < 300:
            self.tls.prot_accepted(entry.argument)
        elif verb in ("USER", "PASS", "REIN"):
            out.extend(self._login_reply(entry, code))
        elif verb in TRANSFER_VERBS:
            out.append(TransferReplied(entry.ticket, verb, code))
            out.extend(self.data.fence_abor())
            if entry.ticket is not None:
                return out + self.data.transfer_reply(entry.ticket, code, line)
        out.append(SendToClient(line))
        return out


def _to_client(data: bytes) -> list[Action]:
    return [SendToClient(data)] if data else []
