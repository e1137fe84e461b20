"""One control connection pair: runs the pure ControlChannel over real sockets and carries out its actions.

Rules: the channel decides, the session only executes; every task it starts is a child it cancels on close;
every failure becomes an FTP reply, a log line and a metric, never a traceback to the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from alg.ftp import control as c
from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.tls import StartClientTls
from alg.ftp.wire import reply
from alg.gateway import peers, secure
from alg.gateway.advertise import Advertiser
from alg.gateway.datachannels import DataChannels, Transfer
from alg.gateway.frontdoor import Origin
from alg.gateway.guard import Guard
from alg.gateway.upstreamleg import UpstreamLeg
from alg.gateway.upstreams import Route
from alg.net.dataplane import PortPool
from alg.net.kernelpath import KernelPath
from alg.net.tls import describe
from alg.ops.defender import Offence
from alg.ops.logs import printable, redact
from alg.ops.metrics import Metrics

log = logging.getLogger("ftp_alg.session")
transfer_log = logging.getLogger("ftp_alg.transfer")

# An ABOR during a transfer still unanswered after this long: the gateway closes the data connection itself.
ABORT_GRACE_S = 1.0


@dataclass(slots=True)
class Timeouts:
    upstream_connect_s: float = 10.0
    login_s: float = 60.0
    idle_s: float = 900.0
    data_connect_s: float = 30.0
    data_idle_s: float = 300.0


@dataclass(slots=True)
class GatewayContext:
    """What all sessions of one gateway process share."""

    channel_settings: c.ChannelSettings
    timeouts: Timeouts
    metrics: Metrics
    public_pool: PortPool | None  # ports for listeners facing the public side
    internal_pool: PortPool | None  # ports for listeners facing the internal side (None: any free port)
    transparent: bool = False
    public_address: IPAddress | None = None  # announced instead of our own address on the public side
    public_address6: IPAddress | None = None  # the same, for IPv6 clients
    tls: secure.TlsRuntime = field(default_factory=secure.TlsRuntime)
    kernel_path: KernelPath | None = None  # data_path: kernel, where the kernel allows it
    advertiser: Advertiser | None = None  # split horizon and port offset; None: public_address alone
    guard: Guard | None = None  # the defender: scores hostile acts (alg.gateway.guard)


class Session(UpstreamLeg, DataChannels):
    def __init__(
        self,
        number: int,
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
        self.outcome = "error"
        self._closed = asyncio.Event()
        self._transfers: dict[int, Transfer] = {}
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
        self.log = logging.LoggerAdapter(log, {"session": number})
        peers.tune(writer, oob_inline=True)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> str:
        metrics = self.context.metrics
        via = f" via={self.origin.balancer}" if self.origin.balancer is not None else ""
        self.log.info("session start client=%s%s upstream=%s", self.client.address, via, self.upstream)
        try:
            if await self._connect_upstream():
                await self._serve()
        except asyncio.CancelledError:
            self.outcome = "shutdown"
            raise
        except Exception:  # the one place that catches everything: log it, answer, close
            self.log.exception("session failed")
            self.outcome = "error"
        finally:
            await self._teardown()
            metrics.session_ended(self.outcome)
            self.log.info(
                "session end outcome=%s tls_client=%s tls_server=%s", self.outcome, self.tls_client, self.tls_server
            )
        return self.outcome

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
            self.outcome = "tls_failed"
            if self.context.guard is not None:
                self.context.guard.offence(self.client.address.ip, Offence.TLS_GARBAGE)
            self.close("tls_failed")
            return False
        self.tls_client = describe(self.client.writer.get_extra_info("ssl_object"))
        self.log.info("tls client %s", self.tls_client)
        return True

    async def _switch_client_tls(self) -> None:
        if await self._start_client_tls() and self.channel is not None and not self._closed.is_set():
            # execute() even with no actions: it is what lets the client pump read again.
            self.execute(self.channel.client_tls_started())

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
        for transfer in self._transfers.values():
            if transfer.task is not None:
                transfer.task.cancel()
        tasks = [t.task for t in self._transfers.values() if t.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._transfers.clear()
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
        if not self._transfers and at_rest and not self._closed.is_set():
            peers.write(self.client.writer, reply(421, "Service shutting down."))
            self.close("shutdown")

    def end(self) -> None:
        """Ended by an administrator: a 421 to the client, then close (transfers in flight are cut)."""
        if not self._closed.is_set():
            peers.write(self.client.writer, reply(421, "Session ended by the administrator."))
            self.close("ended_by_admin")

    @property
    def last_activity(self) -> float:
        """time.monotonic() of the last whole command or the end of the last transfer."""
        return self._last_activity

    @property
    def transfers(self) -> list[Transfer]:
        return list(self._transfers.values())

    def close(self, outcome: str) -> None:
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
                    self.log.info("control connection lost side=%s error=%s", gone, error)
                    self.execute((channel.server_data if from_client else channel.client_data)(b""))
                    return
        except (ConnectionError, OSError) as error:
            self.log.info("control connection lost side=%s error=%s", "client" if from_client else "server", error)
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
            elif not self._transfers and now - self._last_activity > timeouts.idle_s:
                self._timeout(f"Idle timeout ({timeouts.idle_s:g} s): closing control connection.")

    def _timeout(self, text: str) -> None:
        self.log.info("timeout %s", text)
        self.context.metrics.refused("timeout")
        peers.write(self.client.writer, reply(421, text))
        self.close("timeout")

    # ---- actions ---------------------------------------------------------------------------------------------

    def execute(self, actions: list[c.Action]) -> None:
        """Carry out the channel's actions in order; answers to our own reports join the end of the queue.

        Replies to the client in a row go out in one write (a 150 and its 226 often come in one read): one
        segment and one system call fewer per transfer. They are written before any action with effects.
        """
        queue: deque[c.Action] = deque(actions)
        channel = self.channel
        assert channel is not None and self.server is not None
        metrics = self.context.metrics
        to_client: list[bytes] = []
        while queue:
            action = queue.popleft()
            if to_client and type(action) in _WRITE_FIRST:
                self._write_client(to_client)
            match action:
                case c.SendToClient(data):
                    to_client.append(data)
                case c.SendToServer(data, urgent):
                    # Over TLS an urgent byte would land inside a TLS record: ABOR goes as a plain line.
                    if urgent and self.server.writer.get_extra_info("ssl_object") is None:
                        then = b""  # the ABOR line behind the synch goes in the same segment
                        if queue and isinstance(queue[0], c.SendToServer) and not queue[0].urgent:
                            then = queue.popleft().data  # type: ignore[union-attr]
                        self._send_urgent(data, then)
                        self._arm_abort_timer()
                    else:
                        peers.write(self.server.writer, data)
                case c.ListenForClient() | c.ListenForServer():
                    queue.extend(self._open_data_endpoint(action))
                case StartClientTls():
                    # Now, before the loop runs again: the client cannot have seen our 234 yet, so what the
                    # transport holds is plaintext sent behind AUTH, and its ClientHello stays in the kernel
                    # for the TLS layer (read on, and the stream buffer would swallow it).
                    self.client.writer.transport.pause_reading()  # type: ignore[attr-defined]
                    self._tls_task = asyncio.create_task(self._switch_client_tls(), name=f"#{self.id} tls")
                case c.CloseDataEndpoint(ticket):
                    transfer = self._transfers.pop(ticket, None)
                    if transfer is not None and transfer.task is not None:
                        transfer.task.cancel()
                case c.CloseSession(reason):
                    self.log.info("closing: %s", reason)
                    if "overlong" in reason:
                        self.close("protocol_error")
                    elif self._quit:  # whichever side closed first after QUIT
                        self.close("quit")
                    else:
                        self.close("client_closed" if "client" in reason else "server_closed")
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
                case c.Refused(rule, verb, code, detail):
                    metrics.refused(rule)
                    if self.context.guard is not None:
                        self.context.guard.refused(self.client.address.ip, rule)
                    self.log.info("refused rule=%s verb=%s code=%d detail=%s", rule, verb, code, printable(detail))
                case c.LoggedIn(user):
                    self.log.info("logged in user=%s", printable(user))
                case c.LoginFailed(user):
                    if self.context.guard is not None:
                        self._login_delay = self.context.guard.login_failed(self.client.address.ip, user)
                case c.TransferRequested(ticket, verb, argument):
                    if ticket is not None and ticket in self._transfers:
                        self._transfers[ticket].verb = verb
                        self._transfers[ticket].argument = argument
                        self._count_opened(self._transfers[ticket])
                case c.TransferReplied(ticket, verb, code):
                    if ticket is not None and ticket in self._transfers:
                        self._transfers[ticket].reply_code = code
                        if (end := self._transfers[ticket].kernel_end) is not None:
                            self._write_client(to_client)
                            end()  # kernel path: the reply goes on now; the client reads data to its end
                            queue.extend(channel.data_finished(ticket))
        self._write_client(to_client)
        self.client.can_read.set() if channel.wants_client_data else self.client.can_read.clear()
        self.server.can_read.set() if channel.wants_server_data else self.server.can_read.clear()
        if self._draining:
            self.drain()  # the reply just relayed may have been the last one owed

    def _write_client(self, parts: list[bytes]) -> None:
        if parts:
            peers.write(self.client.writer, parts[0] if len(parts) == 1 else b"".join(parts))
            parts.clear()

    def _send_urgent(self, data: bytes, then: bytes = b"") -> None:
        """Write `data` with its last byte marked urgent (MSG_OOB), then `then` in the same TCP segment.

        BSD ftp sends IAC IP IAC, then DM alone as urgent data, then ABOR: three segments. Held back with
        MSG_MORE, the synch and the command arrive together, urgent pointer on DM, so a server that looks for
        the command when the urgent signal comes finds it there."""
        assert self.server is not None
        transport = self.server.writer.transport
        sock = self.server.writer.get_extra_info("socket")
        if sock is None or transport.get_write_buffer_size() > 0:
            peers.write(
                self.server.writer, data + then
            )  # the urgent mark cannot overtake queued bytes: send it plainly
            return
        # The transport owns the socket; a duplicate descriptor lets us pass flags it has no API for.
        sent = sent_then = 0
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as raw:
                sent = raw.send(data, socket.MSG_OOB | (socket.MSG_MORE if then else 0))
                if sent == len(data) and then:
                    sent_then = raw.send(then, socket.MSG_DONTWAIT)
        except OSError:
            pass
        rest = data[sent:] + then[sent_then:]
        if rest:
            peers.write(self.server.writer, rest)
        self.log.debug("sent urgent bytes=%d of %d, then %d of %d", sent, len(data), sent_then, len(then))

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
        actions = channel.abort_overdue()
        self._report(actions)
        if actions and channel.abort_unsettled and not self._closed.is_set():
            self._arm_abort_timer()

    def _report(self, actions: list[c.Action]) -> None:
        if actions and not self._closed.is_set():
            self.execute(actions)


# Actions with effects beyond bookkeeping: the client's replies queued before them are written first.
_WRITE_FIRST = frozenset({c.ListenForClient, c.ListenForServer, StartClientTls, c.CloseDataEndpoint, c.CloseSession})
