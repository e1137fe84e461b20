"""One control connection pair: runs the pure ControlChannel over real sockets and carries out its actions.

Rules: the channel decides, the session only executes; every task it starts is a child it cancels on close;
every failure becomes an FTP reply, a log line and a metric, never a traceback to the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections import deque

from alg.ftp import control as c
from alg.ftp.addresses import HostPort
from alg.ftp.reasons import Refusal, SessionOutcome
from alg.ftp.tls import StartClientTls
from alg.ftp.wire import reply
from alg.gateway import peers, secure, upstreamleg
from alg.gateway.context import GatewayContext, Timeouts
from alg.gateway.datachannels import DataChannels, Ends
from alg.gateway.frontdoor import Origin
from alg.gateway.relaypath import DataTls
from alg.gateway.transfer import Transfer
from alg.gateway.upstreams import Route
from alg.net.tls import describe
from alg.ops.defender import Offence
from alg.ops.logs import SessionLog, fields, printable, redact

__all__ = ["GatewayContext", "Session", "Timeouts"]  # the context's home is alg.gateway.context

log = logging.getLogger("ftp_alg.session")

# An ABOR during a transfer still unanswered after this long: the gateway closes the data connection itself.
ABORT_GRACE_S = 1.0


class Session:
    """The pumps of both control connections and the executor of the channel's actions; it *has* its data
    channels (self.data) and gets its upstream from alg.gateway.upstreamleg.connect()."""

    def __init__(
        self,
        number: str,
        context: GatewayContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: HostPort,
        *,
        client_secured: bool = False,
        origin: Origin | None = None,
        route: Route | None = None,
    ) -> None:
        self.id = number
        # The client's control connection is TLS already: implicit FTPS, or AUTH TLS before per_user's USER.
        self.client_secured = client_secured
        self.started = time.time()  # wall clock, for the live-sessions view (alg.gateway.registry)
        self.context = context
        self.upstream = upstream
        self.route = route  # several upstreams: tried in order; None: `upstream` alone
        address, ours = peers.ends(writer)
        # Behind a balancer (PROXY protocol) the client is the header's; our own end stays the socket's.
        self.origin = origin or Origin(address, ours, address.ip)
        address = self.origin.client
        self.client = peers.Peer(reader, writer, address, ours)
        self.server: peers.Peer | None = None
        self.channel: c.ControlChannel | None = None
        self.outcome = SessionOutcome.ERROR
        self._closed = asyncio.Event()
        self.data: DataChannels | None = None  # once the upstream is connected
        self._last_activity = time.monotonic()
        self._draining = False
        self._quit = False  # the client said QUIT: the server closing next is the normal end
        self._login_delay = 0.0  # the defender slows the next try on a user name under attack
        # The client-facing TLS context this session started with: its data connections resume against it,
        # even after SIGHUP loaded a new certificate for later sessions.
        certificate = context.tls.certificate
        self._client_context = certificate.context if certificate is not None else None
        self._tls_task: asyncio.Task[None] | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self.tls_client = "-"  # negotiated version/cipher, for the session's log line
        self.tls_server = "-"
        if client_secured:  # the listener or the front door did the handshake (alg.gateway.server)
            ssl_object = writer.get_extra_info("ssl_object")
            self._client_context = ssl_object.context
            self.tls_client = describe(ssl_object)
        self.log = SessionLog(log, {"session": number})
        peers.tune(writer, oob_inline=True)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> str:
        metrics = self.context.metrics
        via = {"via": self.origin.balancer} if self.origin.balancer is not None else {}
        self.log.info("session start", extra=fields(client=self.client.address, **via, upstream=self.upstream))
        try:
            if await self._connect_upstream():
                await self._serve()
        except asyncio.CancelledError:
            self.outcome = SessionOutcome.SHUTDOWN
            raise
        except Exception:  # the one place that catches everything: log it, answer, close
            self._internal_error("session failed")
        finally:
            await self._teardown()
            metrics.session_ended(self.outcome)
            ended = fields(outcome=self.outcome, tls_client=self.tls_client, tls_server=self.tls_server)
            self.log.info("session end", extra=ended)
        return self.outcome

    def _internal_error(self, what: str) -> None:
        """A bug caught at a task's boundary: its traceback logged once, counted, a 421 to the client, closed."""
        self.log.exception(what, extra=fields(reason="internal_error"))
        self.context.metrics.internal_error("session")
        peers.write(self.client.writer, reply(421, "Service not available: the gateway failed (internal error)."))
        self.outcome = SessionOutcome.ERROR
        self._closed.set()

    async def _connect_upstream(self) -> bool:
        try:
            upstream = await upstreamleg.connect(self.context, self.upstream, self.route, self.origin, self.log)
        except upstreamleg.UpstreamFailed as failed:
            peers.write(self.client.writer, reply(421, str(failed)))
            with contextlib.suppress(OSError, ConnectionError):
                await self.client.writer.drain()
            self.outcome = failed.outcome
            return False
        self.upstream, self.server, self.tls_server = upstream.address, upstream.peer, upstream.tls
        settings = self.context.channel_settings
        chosen = self.route.chosen if self.route is not None else None
        if chosen is not None and chosen.data_mode is not None:  # this upstream's own upstream_data_mode
            settings = dataclasses.replace(settings, upstream_data_mode=chosen.data_mode)
        self.channel = c.ControlChannel(
            self.client.address,
            upstream.peer.address,
            settings,
            client_secured=self.client_secured,
            server_secured=upstream.secured,
            server_private=upstream.private,
            server_side=upstream.peer.ours,
        )
        self.data = self._data_channels(self.channel, upstream.peer)
        if upstream.banner:  # read by the route (to know the upstream is alive) or by the TLS negotiation
            self._greeted(upstream.banner)
        return True

    def _data_channels(self, channel: c.ControlChannel, server: peers.Peer) -> DataChannels:
        origin = self.origin
        ends = Ends(
            self.client.address, self.client.ours, origin.data_peer, origin.dialled.ip, server.address, server.ours
        )
        tls = DataTls(self._client_context, self._server_tls_session, self.upstream)
        return DataChannels(
            self.context, channel, ends, tls, self.log, session=self.id, report=self._report, at_rest=self._at_rest
        )

    def _server_tls_session(self) -> ssl.SSLSession | None:
        """The upstream control connection's TLS session, for its data connections to resume."""
        assert self.server is not None
        ssl_object = self.server.writer.get_extra_info("ssl_object")
        return ssl_object.session if ssl_object is not None else None

    def _at_rest(self) -> None:
        """A transfer ended. The idle timeout counts afresh from here, as servers' own do: a transfer longer than
        idle_s must not get the session closed the moment it ends."""
        self._last_activity = time.monotonic()
        if self._draining and not self._busy:
            self.drain()

    def _greeted(self, banner: bytes) -> None:
        """The upstream's banner, already read: to the client, or (per_user) held while the USER is replayed."""
        assert self.channel is not None
        actions = self.channel.server_data(banner)
        if self.route is not None and self.route.replay is not None:
            # The client had our own greeting and sent USER; the upstream's greeting goes no further.
            actions = self.channel.client_data(self.route.replay)
        self.execute(actions)

    async def _start_client_tls(self) -> bool:
        """The client's control connection becomes TLS: at once (implicit), or after our 234 (AUTH TLS)."""
        if self._client_context is None or not await secure.client_handshake(
            self.client.reader,
            self.client.writer,
            self.context.tls,
            self._client_context,
            self.context.metrics,
            self.log,
        ):
            self.outcome = SessionOutcome.TLS_FAILED
            if self.context.guard is not None:
                self.context.guard.offence(self.client.address.ip, Offence.TLS_GARBAGE)
            self.close(SessionOutcome.TLS_FAILED)
            return False
        self.tls_client = describe(self.client.writer.get_extra_info("ssl_object"))
        self.log.info("tls client", extra=fields(tls=self.tls_client))
        return True

    async def _switch_client_tls(self) -> None:
        try:
            if await self._start_client_tls() and self.channel is not None and not self._closed.is_set():
                # execute() even with no actions: it is what lets the client pump read again.
                self.execute(self.channel.client_tls_started())
        except Exception:
            self._internal_error("client tls failed")

    async def _serve(self) -> None:
        assert self.server is not None
        self.client.can_read.set()
        self.server.can_read.set()
        async with asyncio.TaskGroup() as tasks:
            pumps = [
                tasks.create_task(self._pump(self.client, from_client=True), name=f"#{self.id} client"),
                tasks.create_task(self._pump(self.server, from_client=False), name=f"#{self.id} server"),
                tasks.create_task(self._watch_timeouts(), name=f"#{self.id} timeouts"),
            ]
            await self._closed.wait()
            for task in pumps:
                task.cancel()

    async def _teardown(self) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        if self._tls_task is not None:
            self._tls_task.cancel()
            await asyncio.gather(self._tls_task, return_exceptions=True)
        if self.data is not None:
            await self.data.stop()
        for peer in (self.client, self.server):
            if peer is None:
                continue
            with contextlib.suppress(Exception):
                peer.writer.close()
        for peer in (self.client, self.server):
            if peer is None:
                continue
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await peer.writer.wait_closed()

    def drain(self) -> None:
        """Close once no transfer is running and no reply is owed (graceful shutdown): a transfer's 226 reaches
        the client before our 421."""
        self._draining = True
        at_rest = self.channel is None or self.channel.at_rest
        if not self._busy and at_rest and not self._closed.is_set():
            peers.write(self.client.writer, reply(421, "Service shutting down."))
            self.close(SessionOutcome.SHUTDOWN)

    def end(self) -> None:
        """Ended by an administrator: a 421 to the client, then close (transfers in flight are cut)."""
        if not self._closed.is_set():
            peers.write(self.client.writer, reply(421, "Session ended by the administrator."))
            self.close(SessionOutcome.ENDED_BY_ADMIN)

    @property
    def last_activity(self) -> float:
        """time.monotonic() of the last whole command or the end of the last transfer."""
        return self._last_activity

    @property
    def transfers(self) -> list[Transfer]:
        return list(self.data.transfers.values()) if self.data is not None else []

    @property
    def _busy(self) -> bool:
        return self.data is not None and self.data.busy

    def close(self, outcome: SessionOutcome) -> None:
        if not self._closed.is_set():
            self.outcome = outcome
            self._closed.set()

    # ---- control pumps ---------------------------------------------------------------------------------------

    async def _pump(self, peer: peers.Peer, *, from_client: bool) -> None:
        channel = self.channel
        assert channel is not None and self.server is not None
        other = self.server if from_client else self.client
        feed = channel.client_data if from_client else channel.server_data
        try:
            while not self._closed.is_set():
                await peer.can_read.wait()
                data = await peer.reader.read(peers.READ_BYTES)
                if from_client and self._login_delay > 0:  # after a failed login for a user under attack
                    delay, self._login_delay = self._login_delay, 0.0
                    await asyncio.sleep(delay)
                lines = channel.client_lines
                self.execute(feed(data))
                if channel.client_lines != lines:
                    # Only whole commands count: a byte a minute with no newline does not keep a session.
                    self._last_activity = time.monotonic()
                if not data:
                    return
                try:
                    await other.writer.drain()
                except (ConnectionError, OSError) as error:
                    # The other side is gone, not this one: its end of stream is what the channel must hear.
                    gone = "server" if from_client else "client"
                    self.log.info("control connection lost", extra=fields(side=gone, error=error))
                    self.execute((channel.server_data if from_client else channel.client_data)(b""))
                    return
        except (ConnectionError, OSError) as error:
            self.log.info(
                "control connection lost", extra=fields(side="client" if from_client else "server", error=error)
            )
            self.execute(feed(b""))

    async def _watch_timeouts(self) -> None:
        timeouts = self.context.timeouts
        started = time.monotonic()
        while not self._closed.is_set():
            await asyncio.sleep(1.0)
            channel = self.channel
            assert channel is not None
            now = time.monotonic()
            if not channel.logged_in and now - started > timeouts.login_s:
                self._timeout(f"Login timeout ({timeouts.login_s:g} s): closing control connection.")
            elif not self._busy and now - self._last_activity > timeouts.idle_s:
                self._timeout(f"Idle timeout ({timeouts.idle_s:g} s): closing control connection.")

    def _timeout(self, text: str) -> None:
        self.log.info("timeout", extra=fields(reason=text))
        self.context.metrics.refused(Refusal.TIMEOUT)
        peers.write(self.client.writer, reply(421, text))
        self.close(SessionOutcome.TIMEOUT)

    # ---- actions ---------------------------------------------------------------------------------------------

    def execute(self, actions: list[c.Action]) -> None:
        """Carry out the channel's actions in order; answers to our own reports join the end of the queue.

        Replies to the client in a row go out in one write (a 150 and its 226 often come in one read): one
        segment and one system call fewer per transfer. They are written before any action with effects.
        """
        channel, data = self.channel, self.data
        assert channel is not None and self.server is not None and data is not None
        queue: deque[c.Action] = deque(actions)
        to_client: list[bytes] = []
        to_server: list[tuple[bytes, bool]] = []
        while queue:
            action = queue.popleft()
            if to_client and type(action) in _WRITE_FIRST:
                self._write_client(to_client)
            if to_server and not isinstance(action, c.SendToServer):
                self._write_server(to_server)
            match action:
                case c.SendToClient(line):
                    to_client.append(line)
                case c.SendToServer(line, urgent):
                    to_server.append((line, urgent))
                case c.ListenForClient() | c.ListenForServer() | c.ListenForBoth() | c.ConnectBoth():
                    queue.extend(data.open(action))
                case c.TransferRequested(ticket, verb, argument):
                    data.requested(ticket, verb, argument)
                case c.TransferReplied(ticket, _, code):
                    if ticket is not None and data.replied(ticket, code):  # the kernel path: the reply goes on now
                        self._write_client(to_client)
                        queue.extend(channel.data_finished(ticket))
                case _:
                    self._carry_out(action)
        self._write_server(to_server)
        self._write_client(to_client)
        if channel.abort_unsettled and self._abort_timer is None and data.running:
            # An ABOR during a transfer: whether the server answers it is checked after ABORT_GRACE_S, whatever
            # the control leg toward it (over TLS no urgent data goes, but the server may still not answer).
            self._arm_abort_timer()
        self.client.can_read.set() if channel.wants_client_data else self.client.can_read.clear()
        self.server.can_read.set() if channel.wants_server_data else self.server.can_read.clear()
        if self._draining:
            self.drain()  # the reply just relayed may have been the last one owed

    def _write_server(self, parts: list[tuple[bytes, bool]]) -> None:
        """Writes to the server in a row go out together: the synch (urgent) and the ABOR line behind it in one
        segment, so a server that looks for the command when the urgent signal comes finds it there."""
        assert self.server is not None
        urgent, rest = peers.join_writes(parts)
        parts.clear()
        # Over TLS an urgent byte would land inside a TLS record: ABOR goes as a plain line.
        if urgent and self.server.writer.get_extra_info("ssl_object") is None:
            sent, sent_then = peers.write_urgent(self.server.writer, urgent, rest)
            self.log.debug("sent urgent", extra=fields(bytes=sent, of=len(urgent), then=sent_then, then_of=len(rest)))
        else:
            peers.write(self.server.writer, urgent + rest)

    def _carry_out(self, action: c.Action) -> None:
        """The actions that are neither bytes to send nor data endpoints."""
        match action:
            case StartClientTls():
                # Now, before the loop runs again: the client cannot have seen our 234 yet, so what the
                # transport holds is plaintext sent behind AUTH, and its ClientHello stays in the kernel
                # for the TLS layer (read on, and the stream buffer would swallow it).
                self.client.writer.transport.pause_reading()  # type: ignore[attr-defined]
                self._tls_task = asyncio.create_task(self._switch_client_tls(), name=f"#{self.id} tls")
            case c.CloseDataEndpoint(ticket):
                assert self.data is not None
                self.data.close(ticket)
            case c.CloseSession(reason, detail):
                self.log.info("closing", extra=fields(reason=reason, detail=detail))
                # After QUIT, whichever side closed first ended it normally.
                quit_ = self._quit and reason is not SessionOutcome.PROTOCOL_ERROR
                self.close(SessionOutcome.QUIT if quit_ else reason)
            case _:
                self._note(action)

    def _note(self, action: c.Action) -> None:
        """Facts for metrics and logs."""
        metrics = self.context.metrics
        match action:
            case c.CommandReceived(verb, line):
                metrics.command(verb)
                if self.log.isEnabledFor(logging.DEBUG):
                    self.log.debug("command %s", printable(redact(line)))
                self._quit = self._quit or verb == "QUIT"
            case c.Rewrote(kind, before, after):
                metrics.rewrote(kind)
                if self.log.isEnabledFor(logging.DEBUG):
                    self.log.debug("rewrite %s: %s -> %s", kind, printable(before), printable(after))
            case c.Translated(client_verb, server_verb):
                metrics.verb_translations.labels(client_verb, server_verb).inc()
                self.log.debug("translated %s -> %s", client_verb, server_verb)
            case c.Refused(reason, verb, code, detail, rule):
                metrics.refused(reason)
                if self.context.guard is not None:
                    self.context.guard.refused(self.client.address.ip, reason)
                refused = fields(rule=rule or reason, verb=verb, code=code, detail=printable(detail))
                self.log.info("refused", extra=refused)
            case c.LoggedIn(user):
                self.log.info("logged in", extra=fields(user=printable(user)))
            case c.LoginFailed(user):
                if self.context.guard is not None:
                    # The next read from the client waits this long: a user name under attack gets slow logins.
                    self._login_delay = self.context.guard.login_failed(self.client.address.ip, user)

    def _write_client(self, parts: list[bytes]) -> None:
        if parts:
            peers.write(self.client.writer, parts[0] if len(parts) == 1 else b"".join(parts))
            parts.clear()

    def _arm_abort_timer(self) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        self._abort_timer = asyncio.get_running_loop().call_later(ABORT_GRACE_S, self._abort_overdue)

    def _abort_overdue(self) -> None:
        """Every ABORT_GRACE_S while an ABOR stays unanswered and each tick did something (ended the data
        connection, then sent the NOOP after the ABOR): at most a few ticks."""
        self._abort_timer = None
        channel = self.channel
        if channel is None or self._closed.is_set():
            return
        try:
            actions = channel.abort_overdue()
            self._report(actions)
        except Exception:  # a timer callback: nobody above it would log or count the error
            self._internal_error("abort timer failed")
            return
        if actions and channel.abort_unsettled and not self._closed.is_set():
            self._arm_abort_timer()

    def _report(self, actions: list[c.Action]) -> None:
        if actions and not self._closed.is_set():
            self.execute(actions)


# Actions with effects beyond bookkeeping: the client's replies queued before them are written first.
_WRITE_FIRST = frozenset(
    {c.ListenForClient, c.ListenForServer, c.ListenForBoth, c.ConnectBoth, StartClientTls, c.CloseDataEndpoint}
    | {c.CloseSession}
)
