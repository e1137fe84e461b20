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
from typing import Any

from alg.errors import DataChannelError
from alg.ftp import control as c
from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.wire import reply
from alg.gateway.advertise import Advertiser
from alg.gateway.frontdoor import Origin
from alg.gateway.upstreams import Route
from alg.net.dataplane import PortPool, RelayResult, accept_from, connect_from, open_listener, peer_ip, relay
from alg.ops.logs import printable, redact
from alg.ops.metrics import ByteCounts, Metrics

log = logging.getLogger("ftp_alg.session")
transfer_log = logging.getLogger("ftp_alg.transfer")

READ_BYTES = 64 * 1024

# Why a data connection ended before any byte moved, as the client's 426 says it.
_FAILURE_TEXT = {
    "accept_timeout": "nobody connected to the data port in time",
    "connect_failed": "the other end of the data connection could not be reached",
    "connect_timeout": "the other end of the data connection did not answer in time",
}


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
    advertiser: Advertiser | None = None  # split horizon and port offset; None: public_address alone


@dataclass(slots=True)
class _Transfer:
    mode: str
    verb: str | None = None
    argument: bytes = b""
    reply_code: int | None = None
    task: asyncio.Task[None] | None = None
    connected: bool = False  # both legs up: counted in data_channels_opened once its verb is known
    counted: bool = False
    started: float = 0.0  # wall clock, once bytes may move (the live-sessions view shows it)
    moved: ByteCounts | None = None  # (download, upload) so far, while relaying


@dataclass(slots=True)
class _Peer:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: HostPort  # the other end
    ours: HostPort  # our end of this connection
    can_read: asyncio.Event = field(default_factory=asyncio.Event)


def _ends(writer: asyncio.StreamWriter) -> tuple[HostPort, HostPort]:
    peer = writer.get_extra_info("peername")
    ours = writer.get_extra_info("sockname")
    return HostPort(peer_ip(peer), peer[1]), HostPort(peer_ip(ours), ours[1])


class Session:
    def __init__(
        self,
        number: int,
        context: GatewayContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: HostPort,
        origin: Origin | None = None,
        route: Route | None = None,
    ) -> None:
        self.id = number
        self.started = time.time()  # wall clock, for the live-sessions view (alg.gateway.registry)
        self.context = context
        self.upstream = upstream
        self.route = route  # several upstreams: tried in order; None: `upstream` alone
        address, ours = _ends(writer)
        # Behind a balancer (PROXY protocol) the client is the header's; our own end stays the socket's.
        self.origin = origin or Origin(address, ours, address.ip)
        address = self.origin.client
        self.client = _Peer(reader, writer, address, ours)
        self.server: _Peer | None = None
        self.channel: c.ControlChannel | None = None
        self.outcome = "error"
        self._closed = asyncio.Event()
        self._transfers: dict[int, _Transfer] = {}
        self._last_activity = time.monotonic()
        self._draining = False
        self._quit = False  # the client said QUIT: the server closing next is the normal end
        self.log = logging.LoggerAdapter(log, {"session": number})
        _tune(writer, oob_inline=True)

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
            self.log.info("session end outcome=%s", self.outcome)
        return self.outcome

    async def _connect_upstream(self) -> bool:
        started = time.monotonic()
        banner = b""
        try:
            if self.route is not None:  # each try bounded by upstream_connect_s, failing over to the next
                connect = self.route.connect(
                    self.client.address, self.origin.dialled, self.context.timeouts.upstream_connect_s
                )
                reader, writer, banner = await connect
                self.upstream = self.route.chosen.address if self.route.chosen else self.upstream
            else:
                async with asyncio.timeout(self.context.timeouts.upstream_connect_s):
                    reader, writer = await asyncio.open_connection(
                        str(self.upstream.ip), self.upstream.port, limit=READ_BYTES
                    )
        except (OSError, TimeoutError) as error:
            why = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
            self.log.warning("upstream unreachable upstream=%s error=%s", self.upstream, printable(why))
            text = f"Service not available: the FTP server {self.upstream} cannot be reached ({why})."
            _write(self.client.writer, reply(421, text))
            with contextlib.suppress(OSError, ConnectionError):
                await self.client.writer.drain()
            self.outcome = "upstream_unreachable"
            return False
        self.context.metrics.upstream_connect_seconds.observe(time.monotonic() - started)
        _tune(writer, oob_inline=False)
        address, ours = _ends(writer)
        self.server = _Peer(reader, writer, address, ours)
        self.channel = c.ControlChannel(self.client.address, address, self.context.channel_settings)
        if banner:  # read by the route to know the upstream is alive
            self._greeted(banner)
        return True

    def _greeted(self, banner: bytes) -> None:
        """The upstream's banner, already read: to the client, or (per_user) held while the USER is replayed."""
        assert self.channel is not None
        actions = self.channel.server_data(banner)
        if self.route is not None and self.route.replay is not None:
            # The client had our own greeting and sent USER; the upstream's greeting goes no further.
            actions = self.channel.client_data(self.route.replay)
        self.execute(actions)

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
            _write(self.client.writer, reply(421, "Service shutting down."))
            self.close("shutdown")

    def end(self) -> None:
        """Ended by an administrator: a 421 to the client, then close (transfers in flight are cut)."""
        if not self._closed.is_set():
            _write(self.client.writer, reply(421, "Session ended by the administrator."))
            self.close("ended_by_admin")

    @property
    def last_activity(self) -> float:
        """time.monotonic() of the last whole command or the end of the last transfer."""
        return self._last_activity

    @property
    def transfers(self) -> list[_Transfer]:
        return list(self._transfers.values())

    def close(self, outcome: str) -> None:
        if not self._closed.is_set():
            self.outcome = outcome
            self._closed.set()

    # ---- control pumps ---------------------------------------------------------------------------------------

    async def _pump(self, peer: _Peer, *, from_client: bool) -> None:
        channel = self.channel
        assert channel is not None and self.server is not None
        other = self.server if from_client else self.client
        feed = channel.client_data if from_client else channel.server_data
        try:
            while not self._closed.is_set():
                await peer.can_read.wait()
                data = await peer.reader.read(READ_BYTES)
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
        _write(self.client.writer, reply(421, text))
        self.close("timeout")

    # ---- actions ---------------------------------------------------------------------------------------------

    def execute(self, actions: list[c.Action]) -> None:
        """Carry out the channel's actions in order; answers to our own reports join the end of the queue."""
        queue: deque[c.Action] = deque(actions)
        channel = self.channel
        assert channel is not None and self.server is not None
        metrics = self.context.metrics
        while queue:
            action = queue.popleft()
            match action:
                case c.SendToClient(data):
                    _write(self.client.writer, data)
                case c.SendToServer(data, urgent):
                    if urgent:
                        self._send_urgent(data)
                    else:
                        _write(self.server.writer, data)
                case c.ListenForClient() | c.ListenForServer():
                    queue.extend(self._open_data_endpoint(action))
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
                    metrics.rewrites.labels(kind).inc()
                    if self.log.isEnabledFor(logging.DEBUG):
                        self.log.debug("rewrite %s: %s -> %s", kind, printable(before), printable(after))
                case c.Refused(rule, verb, code, detail):
                    metrics.refused(rule)
                    self.log.info("refused rule=%s verb=%s code=%d detail=%s", rule, verb, code, printable(detail))
                case c.LoggedIn(user):
                    self.log.info("logged in user=%s", printable(user))
                case c.TransferRequested(ticket, verb, argument):
                    if ticket is not None and ticket in self._transfers:
                        self._transfers[ticket].verb = verb
                        self._transfers[ticket].argument = argument
                        self._count_opened(self._transfers[ticket])
                case c.TransferReplied(ticket, verb, code):
                    if ticket is not None and ticket in self._transfers:
                        self._transfers[ticket].reply_code = code
        self.client.can_read.set() if channel.wants_client_data else self.client.can_read.clear()
        self.server.can_read.set() if channel.wants_server_data else self.server.can_read.clear()
        if self._draining:
            self.drain()  # the reply just relayed may have been the last one owed

    def _send_urgent(self, data: bytes) -> None:
        """Write `data` with its last byte marked urgent (MSG_OOB), as ftplib and BSD ftp send ABOR."""
        assert self.server is not None
        transport = self.server.writer.transport
        sock = self.server.writer.get_extra_info("socket")
        if sock is None or transport.get_write_buffer_size() > 0:
            _write(self.server.writer, data)  # the urgent mark cannot overtake queued bytes: send it plainly
            return
        # The transport owns the socket; a duplicate descriptor lets us pass a flag it has no API for.
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as raw:
                sent = raw.send(data, socket.MSG_OOB)
        except OSError:
            sent = 0
        if sent < len(data):
            _write(self.server.writer, data[sent:])
        self.log.debug("sent urgent bytes=%d of %d", sent, len(data))

    # ---- data connections ------------------------------------------------------------------------------------

    def _open_data_endpoint(self, action: c.ListenForClient | c.ListenForServer) -> list[c.Action]:
        channel = self.channel
        assert channel is not None and self.server is not None
        context = self.context
        passive = isinstance(action, c.ListenForClient)
        # The listener sits on the side the expected peer talks to us on; the other leg leaves from our
        # address on the other side, so each peer sees data come from the address it already knows.
        if passive:
            listen_on, expected, source = self.client.ours.ip, self.origin.data_peer, self.server.ours.ip
            facing_public = not context.transparent
        else:
            listen_on, expected, source = self.server.ours.ip, self.server.address.ip, self.client.ours.ip
            facing_public = context.transparent
        pool = context.public_pool if facing_public else context.internal_pool
        lan_passive = passive and context.transparent
        if lan_passive:
            # The LAN client dials the server's own address (a 229 names no address; curl and FileZilla ignore
            # a 227 address that differs) and the firewall redirects that port range to us (deploy/nftables):
            # the listener needs a known range, and the 227 names the server, as if there were no gateway.
            pool = context.internal_pool or context.public_pool
        try:
            listener = open_listener(listen_on, pool)
        except DataChannelError as error:
            context.metrics.data_failure(error.reason)
            self.log.warning("data endpoint failed ticket=%d reason=%s", action.ticket, error)
            return channel.data_endpoint_failed(action.ticket, str(error))
        self._update_pools()
        announced = listener.address
        public = context.public_address
        if facing_public and context.advertiser is not None:
            client_ip, dialled = self.client.address.ip, self.origin.dialled.ip
            announced = context.advertiser.announce(listener.address, client_ip, dialled, self.client.ours)
        elif facing_public and public is not None and type(public) is type(listener.address.ip):
            announced = HostPort(public, listener.address.port)
        if lan_passive:
            announced = HostPort(self.server.address.ip, listener.address.port)
        transfer = _Transfer(mode="passive" if passive else "active")
        self._transfers[action.ticket] = transfer
        transfer.task = asyncio.create_task(
            self._data_connection(
                action.ticket, listener, expected, action.then_connect, source, transfer, announced if passive else None
            ),
            name=f"#{self.id} data {action.ticket}",
        )
        if passive:
            return []  # announced once the server's leg is connected (_data_connection)
        return channel.data_endpoint_ready(action.ticket, announced)

    def _update_pools(self) -> None:
        metrics = self.context.metrics
        for name, pool in (("public", self.context.public_pool), ("internal", self.context.internal_pool)):
            if pool is not None:
                metrics.pool_in_use.labels(name).set(pool.in_use)

    async def _data_connection(
        self,
        ticket: int,
        listener: Any,
        expected: IPAddress,
        target: HostPort,
        source: IPAddress,
        transfer: _Transfer,
        announce: HostPort | None = None,
    ) -> None:
        """One data connection. Passive (`announce` given): connect to the server's passive port first, then
        announce our port to the client. Active: accept the server first, then connect to the client."""
        metrics = self.context.metrics
        timeouts = self.context.timeouts
        accepted: socket.socket | None = None
        connected: socket.socket | None = None
        failure: str | None = None
        moved: tuple[int, int] | None = None  # (download, upload) once a relay ran
        started = 0.0

        def stranger(ip: IPAddress) -> None:
            metrics.refused("port_theft")
            self.log.warning("data port theft attempt ticket=%d from=%s expected=%s", ticket, ip, expected)

        async def connect_other_leg() -> socket.socket | None:
            nonlocal failure
            started = time.monotonic()
            try:
                async with asyncio.timeout(timeouts.data_connect_s):
                    sock = await connect_from(source, target)
            except TimeoutError:
                failure = "connect_timeout"
                return None
            except OSError as error:
                self.log.warning("data connect failed ticket=%d target=%s error=%s", ticket, target, error)
                failure = "connect_failed"
                return None
            metrics.data_setup_seconds.observe(time.monotonic() - started)
            return sock

        try:
            if announce is not None:
                # Passive: the server's passive port is taken before the client hears of ours. All sessions reach
                # the server from one address, so a port the server re-announces could otherwise receive another
                # session's late data connection; and the client's data then flows at once.
                connected = await connect_other_leg()
                if connected is None:
                    listener.close()
                    self._update_pools()
                    return
                self._report(self.channel.data_endpoint_ready(ticket, announce) if self.channel else [])
            try:
                async with asyncio.timeout(timeouts.data_connect_s):
                    accepted = await accept_from(listener, expected, stranger)
            except TimeoutError:
                failure = "accept_timeout"
                return
            finally:
                listener.close()
                self._update_pools()
            self._report(self.channel.data_connected(ticket) if self.channel else [])
            if connected is None:
                connected = await connect_other_leg()
                if connected is None:
                    return
            transfer.connected = True
            if transfer.verb is not None:  # else counted when the client's RETR/STOR/LIST arrives
                self._count_opened(transfer)
            metrics.data_active.inc()
            first, second = (accepted, connected)
            counts = RelayResult()
            transfer.moved, transfer.started = _byte_counts(counts, transfer.mode), time.time()
            token = metrics.relay_started(transfer.moved)
            started = time.monotonic()
            try:
                await relay(
                    first,
                    second,
                    idle_timeout_s=timeouts.data_idle_s,
                    on_first_eof=lambda: self._report(self.channel.data_finished(ticket) if self.channel else []),
                    result=counts,
                )
            except TimeoutError:
                failure = "idle_timeout"
            except (ConnectionError, OSError):
                failure = "reset"
            except asyncio.CancelledError:
                failure = "aborted"  # ABOR, or the session closing under a running transfer
                raise
            finally:
                metrics.data_active.dec()
                moved = metrics.relay_finished(token)
        finally:
            for sock in (accepted, connected):
                if sock is not None:
                    sock.close()
            if failure is not None:
                metrics.data_failure(failure)
                self.log.info("data connection failed ticket=%d reason=%s", ticket, failure)
            if transfer.connected:
                self._count_opened(transfer, final=True)
            if moved is not None:
                self._account(transfer, moved, time.monotonic() - started, failure or "complete")
            self._transfers.pop(ticket, None)
            # The idle timeout counts afresh from the end of a transfer, as servers' own do: a transfer longer
            # than idle_s must not get the session closed the moment it ends.
            self._last_activity = time.monotonic()
            if self.channel is not None and not self._closed.is_set():
                if failure is not None and moved is None:
                    # No byte was relayed: the transfer cannot have completed, whatever the server answers.
                    self._report(self.channel.data_endpoint_failed(ticket, _FAILURE_TEXT.get(failure, failure)))
                else:
                    self._report(self.channel.data_finished(ticket))
            if self._draining and not self._transfers:
                self.drain()

    def _count_opened(self, transfer: _Transfer, *, final: bool = False) -> None:
        """One count per data connection, by mode and by the direction its command gives (else `unknown`)."""
        if transfer.connected and not transfer.counted and (transfer.verb is not None or final):
            transfer.counted = True
            self.context.metrics.data_channel_opened(transfer.mode, transfer.verb)

    def _account(self, transfer: _Transfer, moved: tuple[int, int], seconds: float, outcome: str) -> None:
        """The transfer log's record (xferlog's fields, as key=value or JSON), and the duration histogram."""
        download, upload = moved
        if outcome == "complete":
            self.context.metrics.transfer_seconds.observe(seconds)
        channel = self.channel
        transfer_log.info(
            "transfer",
            extra={
                "session": self.id,
                "client": str(self.client.address.ip),
                "user": printable(channel.user or "-") if channel else "-",
                "command": transfer.verb or "-",
                "path": printable(transfer.argument) or "-",
                "bytes": download + upload,
                "bytes_download": download,
                "bytes_upload": upload,
                "seconds": round(seconds, 3),
                "mode": transfer.mode,
                "outcome": outcome,
            },
        )

    def _report(self, actions: list[c.Action]) -> None:
        if actions and not self._closed.is_set():
            self.execute(actions)


def _byte_counts(result: RelayResult, mode: str) -> ByteCounts:
    """(download, upload) of a running relay: passive, `a` is the client's leg; active, `a` is the server's."""
    if mode == "active":
        return lambda: (result.to_b, result.to_a)
    return lambda: (result.to_a, result.to_b)


def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Queue bytes for a peer; a peer already gone takes none (uvloop raises RuntimeError where asyncio drops them)."""
    if not writer.transport.is_closing():
        writer.write(data)


def _tune(writer: asyncio.StreamWriter, *, oob_inline: bool) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if oob_inline:
            # Clients send ABOR's Telnet sync as TCP urgent data (RFC 959 4.1.3); keep it in the stream.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
