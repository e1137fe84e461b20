"""The data-channel half of the control channel: PASV/EPSV and PORT/EPRT negotiated, tickets for the data
endpoints the session opens, the translated verb retried once (RFC 6384), a transfer's final reply held until
its data has drained.

Rules: pure, as the rest of ControlChannel (its part, sharing the channel's ChannelState); a 227/229 is acted
on only as the final reply to an outstanding PASV/EPSV (a multi-line one read whole, answered with our own
single line); an address that a reply cannot carry is
refused, never written wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from alg.errors import FtpProtocolError, PolicyDenied
from alg.ftp import addresses, wire
from alg.ftp.actions import (
    Action,
    CloseDataEndpoint,
    ConnectBoth,
    ListenForBoth,
    ListenForClient,
    ListenForServer,
    Refused,
    Rewrote,
    SendToClient,
    SendToServer,
    TransferReplied,
    Translated,
)
from alg.ftp.addresses import HostPort
from alg.ftp.channelstate import DOWNLOAD_VERBS, PROBING, TRANSFER_VERBS, ChannelState, Pending, Ticket
from alg.ftp.reasons import Refusal
from alg.ftp.wire import Command, reply


class DataNegotiation:
    """The control channel's data-connection half. It shares the channel's `ChannelState` and keeps its own
    failed transfers, ticket numbers and EPSV ALL; `run` and `answer_locally` are the channel's engine (a line
    released or a reply of ours queued in its turn)."""

    def __init__(
        self,
        state: ChannelState,
        *,
        run: Callable[[], list[Action]],
        answer_locally: Callable[[bytes], list[Action]],
    ) -> None:
        self.state = state
        self._run = run
        self._answer_locally = answer_locally
        self.failed: dict[int, bytes] = {}  # ticket -> our 426, for a transfer whose data connection broke
        self._next_ticket = 1
        self._epsv_all = False

    # ---- facts from the session ----------------------------------------------------------------------------

    def data_endpoint_ready(self, ticket: int, public: HostPort, internal: HostPort | None = None) -> list[Action]:
        record = self.state.tickets.get(ticket)
        if record is None or record.ready or self.state.closed:
            return []
        record.ready = True
        out: list[Action] = []
        if record.passive and record.verb == "PASV" and not isinstance(public.ip, IPv4Address):
            # Not expressible in a 227: refused in its place, never a wrong address.
            record.ready = False
            return [CloseDataEndpoint(ticket), *self.data_endpoint_failed(ticket, f"{public.ip} is not IPv4")]
        if record.cross:
            return self._cross_ready(ticket, record, public, internal or public) + self._run()
        if record.passive:
            # A multi-line reply gets our own single line: its other lines may name the internal side.
            one_line = record.line.count(b"\n") <= 1
            if record.verb == "PASV":
                same = record.sent == "PASV" and one_line
                after = addresses.rewrite_227(record.line, public) if same else addresses.format_227(public)
                out.append(Rewrote("pasv", record.line, after))
            else:
                same = record.sent == "EPSV" and one_line
                after = addresses.rewrite_229(record.line, public.port) if same else addresses.format_229(public.port)
                out.append(Rewrote("epsv", record.line, after))
            out.append(SendToClient(after))
            self.state.armed = ticket
            self.state.server_side.waiting_for = None
        else:
            record.public = public
            verb = self.state.features.verb_for_server(record.verb)
            if verb == "PORT" and not isinstance(public.ip, IPv4Address):
                verb = "EPRT"
            after = self._active_line(verb, public)
            out.append(Rewrote(verb.lower(), record.line, after))
            if verb != record.verb:
                out.append(Translated(record.verb, verb))
            out.append(SendToServer(after))
            probe = self.state.features.may_refuse(verb)
            self.state.pending.append(Pending(record.verb, ticket=ticket, sent=verb, probe=probe))
            self.state.armed = ticket
            self.state.client_side.waiting_for = PROBING if probe else None
        return out + self._run()

    def data_endpoint_failed(self, ticket: int, reason: str) -> list[Action]:
        record = self.state.tickets.pop(ticket, None)
        if record is None or self.state.closed:
            return []
        if record.ready:
            # Already announced, maybe in use: a transfer whose data connection broke is not reported as
            # complete, whatever the server says (it may have written everything into the gateway's buffers).
            if self.state.armed == ticket:
                self.state.armed = None
            aborted = reply(426, f"Connection closed; transfer aborted: {reason}.")
            if self.state.server_side.waiting_for == ticket and self.state.held_reply is not None:
                self.state.held_reply = aborted
            elif any(entry.ticket == ticket and entry.verb in TRANSFER_VERBS for entry in self.state.pending):
                self.failed[ticket] = aborted  # bounded: one per transfer command still owed a reply
            return self._finished(ticket)
        refusal = reply(425, f"Can't open data connection: {reason}.")
        out: list[Action] = [Refused(Refusal.DATA_ENDPOINT, record.verb, 425, reason)]
        if record.passive != record.cross:
            # The server's 227/229 (a PASV of ours, for a client's PORT) is replaced by our refusal, in its place
            # in the reply order.
            out.append(SendToClient(refusal))
            self.state.server_side.waiting_for = None
            if self.state.client_side.waiting_for == ticket:
                self.state.client_side.waiting_for = None
        else:
            self.state.client_side.waiting_for = None
            out.extend(self._answer_locally(refusal))
        return out + self._run()

    def data_connected(self, ticket: int) -> list[Action]:
        record = self.state.tickets.get(ticket)
        if record is not None:
            record.connected = True
        return []

    def data_finished(self, ticket: int) -> list[Action]:
        """The data connection ended, or at least one direction delivered its end of file."""
        record = self.state.tickets.pop(ticket, None)
        if record is None or self.state.closed:
            return []
        if self.state.armed == ticket:
            self.state.armed = None
        return self._finished(ticket)

    @property
    def open_tickets(self) -> frozenset[int]:
        return frozenset(self.state.tickets)

    @staticmethod
    def _active_line(verb: str, public: HostPort) -> bytes:
        argument = addresses.format_port(public) if verb == "PORT" else addresses.format_eprt(public)
        return verb.encode() + b" " + argument + b"\r\n"

    def _finished(self, ticket: int) -> list[Action]:
        if self.state.server_side.waiting_for == ticket and self.state.held_reply is not None:
            held, self.state.held_reply = self.state.held_reply, None
            self.state.server_side.waiting_for = None
            return [SendToClient(held), *self._run()]
        return []

    def _new_ticket(self, passive: bool, line: bytes, verb: str) -> tuple[int, list[Action]]:
        out: list[Action] = []
        # A new PASV/PORT replaces an endpoint that no transfer has used.
        for number, record in list(self.state.tickets.items()):
            if not record.connected and number == self.state.armed:
                del self.state.tickets[number]
                out.append(CloseDataEndpoint(number))
                self.state.armed = None
        ticket = self._next_ticket
        self._next_ticket += 1
        self.state.tickets[ticket] = Ticket(passive=passive, line=line, verb=verb)
        return ticket, out

    # ---- client commands ---------------------------------------------------------------------------------------

    def _check_data_limit(self) -> None:
        if len(self.state.tickets) >= self.state.settings.max_data_channels:
            limit = self.state.settings.max_data_channels
            raise PolicyDenied(f"Too many data connections open (limit {limit})", reason=Refusal.LIMIT, reply_code=425)

    def active(self, command: Command) -> list[Action]:
        if self._epsv_all:
            raise PolicyDenied(
                "After EPSV ALL only EPSV may open data connections", reason=Refusal.SYNTAX, reply_code=503
            )
        if command.verb == "PORT":
            target = addresses.parse_port(command.argument)
        else:
            target = addresses.parse_eprt(command.argument)
        if target.ip != self.state.client.ip and self.state.settings.port_address_mismatch == "rewrite":
            target = HostPort(self.state.client.ip, target.port)
        if target.ip != self.state.client.ip:
            raise PolicyDenied(
                f"{command.verb} refused: it names {target.ip}, but your connection comes from {self.state.client.ip}"
                " (the client announced a LAN or third-party address; use passive mode)",
                reason=Refusal.BOUNCE,
                reply_code=504,
            )
        if target.port < (lowest := self.state.settings.min_active_port):
            raise PolicyDenied(
                f"{command.verb} refused: port {target.port} is privileged (below {lowest})",
                reason=Refusal.BOUNCE,
                reply_code=504,
            )
        self._check_data_limit()
        ticket, out = self._new_ticket(passive=False, line=command.raw, verb=command.verb)
        self.state.client_side.waiting_for = ticket
        if self.state.settings.upstream_data_mode == "passive":
            return out + self._cross_active(ticket, target)
        out.append(ListenForServer(ticket, target, self.state.tls.client_private, self.state.tls.server_private))
        return out

    def passive(self, command: Command) -> list[Action]:
        argument = command.argument.strip().upper()
        if command.verb == "EPSV" and argument == b"ALL":
            # RFC 2428 section 4: from now on only EPSV; the server enforces it too.
            self._epsv_all = True
            if self.state.settings.upstream_data_mode == "active":
                return self._answer_locally(reply(200, "EPSV ALL command successful."))  # the server gets EPRT
            self.state.pending.append(Pending("EPSV ALL"))
            return [SendToServer(command.raw)]
        if command.verb == "PASV" and self._epsv_all:
            raise PolicyDenied(
                "After EPSV ALL only EPSV may open data connections", reason=Refusal.SYNTAX, reply_code=503
            )
        raw = command.raw
        if command.verb == "EPSV" and argument:
            family = b"2" if isinstance(self.state.client.ip, IPv6Address) else b"1"
            if argument != family:
                raise PolicyDenied(
                    f"Network protocol not supported, use ({family.decode()})", reason=Refusal.SYNTAX, reply_code=522
                )
            raw = b"EPSV\r\n"  # the server side has its own family; let the server pick
        if command.verb == "PASV" and isinstance(self.state.client.ip, IPv6Address):
            raise PolicyDenied("PASV cannot carry an IPv6 address; use EPSV", reason=Refusal.SYNTAX, reply_code=425)
        self._check_data_limit()
        if self.state.settings.upstream_data_mode == "active":
            return self._cross_passive(command)
        sent = self.state.features.verb_for_server(command.verb)
        out: list[Action] = []
        if sent != command.verb:
            raw = sent.encode() + b"\r\n"
            out.append(Translated(command.verb, sent))
        probe = self.state.features.may_refuse(sent)
        self.state.pending.append(Pending(command.verb, sent=sent, probe=probe))
        if probe:
            self.state.client_side.waiting_for = PROBING
        return [*out, SendToServer(raw)]

    # ---- the client's mode served by the other one toward the server (upstream_data_mode) -------------------------

    def _cross_passive(self, command: Command) -> list[Action]:
        """A client's PASV/EPSV, the server in active mode: both endpoints opened before the server hears of it."""
        ticket, out = self._new_ticket(passive=True, line=command.raw, verb=command.verb)
        self.state.tickets[ticket].cross = True
        self.state.client_side.waiting_for = ticket  # its next command goes after our PORT
        tls = self.state.tls
        return [*out, ListenForBoth(ticket, tls.client_private, tls.server_private)]

    def _cross_active(self, ticket: int, target: HostPort) -> list[Action]:
        """A client's PORT/EPRT, the server in passive mode: PASV toward an IPv4 server, EPSV toward IPv6."""
        record = self.state.tickets[ticket]
        record.cross, record.client_end = True, target
        sent = self.state.features.verb_for_server("PASV")
        self.state.pending.append(Pending(record.verb, ticket=ticket, sent=sent))
        return [Translated(record.verb, sent), SendToServer(sent.encode() + b"\r\n")]

    def _cross_ready(self, ticket: int, record: Ticket, public: HostPort, internal: HostPort) -> list[Action]:
        self.state.armed = ticket
        self.state.client_side.waiting_for = None
        if not record.passive:
            # The server's leg is connected: the client's PORT gets its 200 in the place of the server's 227.
            self.state.server_side.waiting_for = None
            return [SendToClient(reply(200, f"{record.verb} command successful."))]
        # The server is told of our internal endpoint; the client's 227/229 waits for the server's 200.
        record.client_end, record.public = public, internal
        verb = self.state.features.verb_for_server("PORT")
        if verb == "PORT" and not isinstance(internal.ip, IPv4Address):
            verb = "EPRT"
        after = self._active_line(verb, internal)
        self.state.pending.append(Pending(record.verb, ticket=ticket, sent=verb))
        return [Translated(record.verb, verb), Rewrote(verb.lower(), record.line, after), SendToServer(after)]

    @staticmethod
    def crossed(entry: Pending) -> bool:
        """Was the client's data command sent to the server in the other mode (upstream_data_mode)?"""
        return bool(entry.sent) and (entry.verb in _PASSIVE) != (entry.sent in _PASSIVE)

    def cross_reply(self, entry: Pending, code: int, line: bytes) -> list[Action]:
        """The server's answer to a crossed data command, answered to the client in its own command's form."""
        ticket = entry.ticket if entry.ticket is not None else -1
        record = self.state.tickets.get(ticket)
        gone = "the data endpoint closed before the FTP server answered"
        if record is None or record.client_end is None:
            return self._cross_refused(entry, ticket, gone)
        if entry.verb in _PASSIVE:
            if not 200 <= code < 300:
                return self._cross_refused(entry, ticket, f"the FTP server refused {entry.sent} ({code})")
            if entry.verb == "PASV":
                after = addresses.format_227(record.client_end)
            else:
                after = addresses.format_229(record.client_end.port)
            return [Rewrote(entry.verb.lower(), line, after), SendToClient(after)]
        target, out = self._server_passive_address(entry.sent, code, line)
        if target is None:
            return out + self._cross_refused(entry, ticket, "the FTP server's passive reply was not understood")
        self.state.server_side.waiting_for = ticket
        tls = self.state.tls
        return [*out, ConnectBoth(ticket, target, record.client_end, tls.client_private, tls.server_private)]

    def _cross_refused(self, entry: Pending, ticket: int, detail: str) -> list[Action]:
        out: list[Action] = [Refused(Refusal.SERVER_REPLY, entry.sent, 425, detail)]
        if self.state.tickets.pop(ticket, None) is not None:
            out.append(CloseDataEndpoint(ticket))
        if self.state.armed == ticket:
            self.state.armed = None
        if self.state.client_side.waiting_for == ticket:
            self.state.client_side.waiting_for = None
        return [*out, SendToClient(reply(425, f"Can't open data connection: {detail}."))]

    # ---- ABOR --------------------------------------------------------------------------------------------------

    def abort(self, running: bool) -> list[Action]:
        """ABOR as servers are written for, whatever the client sent (RFC 959 4.1.3, RFC 854): IAC IP, then the
        synch IAC DM with the urgent mark on DM, then the command. ftplib marks its newline urgent and a plain
        ABOR marks nothing: vsftpd, proftpd and pure-ftpd answer either with 500 or miss it during a transfer.
        With no transfer running (none owed a reply with its data connection still open) the server reads
        commands as usual, and a plain ABOR is what it answers: pure-ftpd answers a synch when idle with nothing."""
        if not self.state.urgent_abort or not running:
            return [SendToServer(wire.ABORT_COMMAND)]
        # One urgent send for the whole synch (its last byte, DM, marked), ABOR straight behind it in the same
        # segment (alg.gateway.session): a server that looks for the command on the urgent signal finds it.
        return [
            SendToServer(wire.ABORT_BEFORE_URGENT + wire.ABORT_URGENT, urgent=True),
            SendToServer(wire.ABORT_COMMAND),
        ]

    def abort_overdue(self) -> list[Action]:
        """The session's timer: an ABOR sent during a transfer is still unanswered. The server may have written
        the whole rest of the file into the buffers between it and the client and now waits for its data peer
        to close before it replies (proftpd); the gateway ends the data connection, as the ABOR asked. Once
        the transfer is answered and the ABOR is not, the server may have been idle when the synch came, and
        pure-ftpd then ignores synch and ABOR alike: a NOOP of ours tells (its 200 first: no answer comes)."""
        owed = self.owed()
        if self.state.closed or not any(entry.verb == "ABOR" for entry in owed):
            return []
        if owed[0].verb == "ABOR":
            return self.fence_abor()
        transfer = owed[0]
        if len(owed) == 2 and transfer.verb in DOWNLOAD_VERBS and (transfer.ticket is None or transfer.ended):
            # A tick ago the gateway ended the data connection and the server has still answered neither:
            # pure-ftpd, its data peer gone before it wrote (the kernel data path), answers nothing.
            return self.fence_abor(unanswered=transfer)
        out: list[Action] = []
        for entry in owed:
            if entry.verb == "ABOR":
                break
            # Even a ticket already reported finished (the server's end of file): the relay may still be
            # delivering the buffered rest to the client, and the server waits for that connection to close.
            # Downloads only: an upload's data connection closed by us would read as its complete end.
            if entry.verb in DOWNLOAD_VERBS and entry.ticket is not None and not entry.ended:
                entry.ended = True
                self.state.tickets.pop(entry.ticket, None)
                if self.state.armed == entry.ticket:
                    self.state.armed = None
                out.append(CloseDataEndpoint(entry.ticket))
        return out

    def owed(self) -> list[Pending]:
        """The entries still waiting for a reply of the server's (not the gateway's own, queued in turn)."""
        return [entry for entry in self.state.pending if entry.local_reply is None]

    def fence_abor(self, unanswered: Pending | None = None) -> list[Action]:
        """The transfer is answered, the ABOR is not, and nothing follows it: a NOOP of ours goes right behind.
        A server that was idle when the synch came may ignore synch and ABOR alike (pure-ftpd): the NOOP's 200
        then comes first and the gateway answers the ABOR itself (control.py), at once, while the client still
        waits for it; a server that answers the ABOR answers our NOOP after it, and that 200 is swallowed."""
        owed = [entry for entry in self.owed() if entry is not unanswered]
        if self.state.closed or len(owed) != 1 or owed[0].verb != "ABOR" or owed[0].fence:
            return []  # a later command's reply tells already, or the NOOP is on its way
        owed[0].fence = True
        self.state.pending.append(Pending("NOOP", fence=True))
        return [SendToServer(b"NOOP\r\n")]

    def settle_before_abor_reply(self, code: int) -> list[Action] | None:
        """A server reply that cannot answer the ABOR-related entries at the front of the queue: they are settled
        (taken off, with the replies the client gets from the gateway for them) and the reply is paired again
        (None: it is the front entry's own)."""
        owed = self.owed()
        front = self.state.pending[0] if self.state.pending and self.state.pending[0].local_reply is None else None
        if front is None:
            return None
        if front.verb in TRANSFER_VERBS and code == 200 and _fenced(owed, 1):
            # Our NOOP's 200 (a transfer never gets one) and neither the transfer nor its ABOR was answered:
            # the client gets both replies from us, as RFC 959 4.1.3 orders them.
            self.state.pending.popleft()
            if self.state.armed == front.ticket:
                self.state.armed = None
            aborted = reply(426, "Transfer aborted: the FTP server did not answer it.")
            return [TransferReplied(front.ticket, front.verb, 426), SendToClient(aborted)]
        if front.verb == "ABOR" and _not_for_abor(code) and len(owed) > 1:
            # RFC 959 answers ABOR with 225/226 (or an error); a 2xx/3xx of another kind is the next command's.
            # The server answered the transfer and ABOR with one reply (pure-ftpd's single 226), or ignored an
            # ABOR that came when it was idle; the pairing moves on instead of shifting by one. If it is our NOOP
            # being answered, the client still waits for the ABOR's reply and gets a 226 from us (RFC 959 4.1.3);
            # a client that already sent its next command would take a late 226 for that command's reply.
            self.state.pending.popleft()
            if _fenced(owed, 0):
                return [SendToClient(reply(226, "ABOR done: the transfer had already ended."))]
            return []
        return None

    @property
    def abort_unsettled(self) -> bool:
        """An ABOR is owed a reply and the gateway has not yet sent its NOOP after it: the timer runs on."""
        return not self.state.closed and any(entry.verb == "ABOR" and not entry.fence for entry in self.owed())

    # ---- server replies ----------------------------------------------------------------------------------------

    def retry(self, entry: Pending, verb: str) -> list[Action]:
        """The server does not know EPSV/EPRT: the same request in the RFC 959 form, in the same place."""
        if entry.sent in ("PORT", "EPRT"):
            record = self.state.tickets.get(entry.ticket) if entry.ticket is not None else None
            if record is None or record.public is None or not isinstance(record.public.ip, IPv4Address):
                detail = "Can't open data connection: the FTP server knows neither EPRT nor an IPv4 PORT for us"
                return [Refused(Refusal.UNSUPPORTED, entry.verb, 425, detail), SendToClient(reply(425, detail))]
            line = self._active_line(verb, record.public)
        else:
            line = verb.encode() + b"\r\n"
        self.state.pending.appendleft(
            Pending(entry.verb, ticket=entry.ticket, argument=entry.argument, sent=verb, probe=True)
        )
        self.state.client_side.waiting_for = PROBING  # still: the retry's reply comes before the client's next lines
        out: list[Action] = [SendToServer(line)]
        if verb != entry.verb:
            out.insert(0, Translated(entry.verb, verb))
        return out

    def transfer_reply(self, ticket: int, code: int, line: bytes) -> list[Action]:
        if self.state.armed == ticket:
            self.state.armed = None  # one transfer per PASV/PORT
        failed = self.failed.pop(ticket, None)
        aborted = any(entry.verb == "ABOR" for entry in self.state.pending)
        if failed is not None and code < 300 and not aborted:
            return [SendToClient(failed)]
        # With an ABOR behind it, the client asked for the cut: the transfer's reply and the ABOR's pass as the
        # server sends them (proftpd: 226 then 426, or 426 then 226); our 426 in the 226's place would give
        # the client two 426s and no 226 for its ABOR (RFC 959 4.1.3).
        record = self.state.tickets.get(ticket)
        if record is None:
            return [SendToClient(line)]
        if code < 300 and not aborted:
            # Success means the data moved; the server may report it before we accepted or relayed the data
            # connection, so the 226 waits until our relay has delivered it (bounded by the data timeouts).
            self.state.held_reply = line
            self.state.server_side.waiting_for = ticket
            return []
        if not record.connected or aborted:
            # Aborted (a 426, or a 226 that crossed the ABOR: the client reads no more data either way): the
            # gateway ends the data connection on both legs. proftpd sends the ABOR's 226 only once its data peer
            # has closed, and tnftp closes only after that 226: directly they wait ~10 s.
            del self.state.tickets[ticket]
            return [CloseDataEndpoint(ticket), SendToClient(line)]
        return [SendToClient(line)]

    def passive_reply(self, verb: str, code: int, line: bytes, *, client_verb: str) -> list[Action]:
        """`verb` is what the server got, `client_verb` what the client sent (and the form of its reply)."""
        target, out = self._server_passive_address(verb, code, line)
        if target is None:
            unusable = reply(425, "Can't open data connection: the FTP server's passive reply was not understood.")
            return [*out, SendToClient(unusable)]
        ticket, closed = self._new_ticket(passive=True, line=line, verb=client_verb)
        self.state.tickets[ticket].sent = verb
        out.extend(closed)
        self.state.server_side.waiting_for = ticket
        out.append(ListenForClient(ticket, target, self.state.tls.client_private, self.state.tls.server_private))
        return out

    def _server_passive_address(self, verb: str, code: int, line: bytes) -> tuple[HostPort | None, list[Action]]:
        """Where to connect for the server's 227/229 (None: unusable), and what was refused on the way."""
        # A multi-line reply is read whole: its numbers may stand in any of its lines (curl and ftplib accept it).
        if (verb, code) not in (("PASV", 227), ("EPSV", 229)):
            return None, [Refused(Refusal.SERVER_REPLY, verb, 425, "unusable passive reply")]
        if addresses.passive_addresses_in(line) > 1:  # which one would the client have taken? neither
            return None, [Refused(Refusal.SERVER_REPLY, verb, 425, "passive reply names more than one address")]
        try:
            if code == 227:
                announced, _, _ = addresses.find_227(line)
            else:
                port, _, _ = addresses.find_229(line)
                announced = HostPort(self.state.server.ip, port)
        except FtpProtocolError as error:
            return None, [Refused(Refusal.SERVER_REPLY, verb, 425, str(error))]
        target = announced
        out: list[Action] = []
        if self.state.settings.passive_target == "upstream":
            # The server's idea of its own address is often private (NAT): use the host we reached it at.
            target = HostPort(self.state.server.ip, announced.port)
        elif announced.ip != self.state.server.ip:
            check = self.state.settings.allow_data_peer
            if check is None or not check(announced.ip, self.state.server.ip):
                # RFC 2577: a reply naming a third party is not followed; the upstream host is used instead.
                target = HostPort(self.state.server.ip, announced.port)
                detail = f"the server announced third-party address {announced.ip}; using {self.state.server.ip}"
                out.append(Refused(Refusal.BOUNCE, verb, 0, detail))
        return target, out


_PASSIVE = ("PASV", "EPSV")


def _fenced(owed: list[Pending], abor_at: int) -> bool:
    """The owed replies are, from the front, `abor_at` transfers, the ABOR, and our NOOP after it."""
    if len(owed) < abor_at + 2:
        return False
    abor, noop = owed[abor_at], owed[abor_at + 1]
    return abor.verb == "ABOR" and abor.fence and noop.verb == "NOOP" and noop.fence


def _not_for_abor(code: int) -> bool:
    """A final reply ABOR never gets (RFC 959 5.4: 225, 226, 421, 500, 501, 502; servers add 4xx/5xx)."""
    return 200 <= code < 400 and code not in (225, 226)
