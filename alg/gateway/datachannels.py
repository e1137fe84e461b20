"""The data connections of a session: endpoints opened for the control channel's tickets, both legs connected
(and made TLS where PROT P asked for it), relayed, counted and logged.

Rules: one task per data connection, a child of its session; whatever happens, it reports to the channel
exactly once (data_finished or data_endpoint_failed), closes its sockets and frees its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from alg.errors import DataChannelError
from alg.ftp import control as c
from alg.ftp.addresses import HostPort, IPAddress
from alg.gateway import kerneldata, secure
from alg.net.dataplane import RelayResult, accept_from, connect_from, open_listener, relay
from alg.net.tls import Leg, TlsTruncated, relay_legs
from alg.ops.defender import Offence
from alg.ops.logs import printable
from alg.ops.metrics import ByteCounts

if TYPE_CHECKING:
    from alg.gateway.frontdoor import Origin
    from alg.gateway.peers import Peer
    from alg.gateway.session import GatewayContext, Session

transfer_log = logging.getLogger("ftp_alg.transfer")

# How long a TLS server leg is read and drained after its client leg broke (_linger).
LINGER_S = 2.0

# Why a data connection ended before any byte moved, as the client's 426 says it.
_FAILURE_TEXT = {
    "accept_timeout": "nobody connected to the data port in time",
    "connect_failed": "the other end of the data connection could not be reached",
    "connect_timeout": "the other end of the data connection did not answer in time",
    "tls_truncated": "the FTP server's TLS data stream ended without close_notify (truncated)",
}


@dataclass(slots=True)
class Transfer:
    mode: str
    verb: str | None = None
    argument: bytes = b""
    reply_code: int | None = None
    task: asyncio.Task[None] | None = None
    connected: bool = False  # both legs up: counted in data_channels_opened once its verb is known
    counted: bool = False
    client_tls: bool = False  # PROT P on the client's leg
    server_tls: bool = False
    kernel_end: Callable[[], None] | None = None  # carried by the kernel: called at the transfer's final reply
    started: float = 0.0  # wall clock, once bytes may move (the live-sessions view shows it)
    moved: ByteCounts | None = None  # (download, upload) so far, while relaying


class DataChannels:
    """Session's data-connection half (a mixin: it shares the session's state)."""

    id: int
    context: GatewayContext
    client: Peer
    server: Peer | None
    channel: c.ControlChannel | None
    upstream: HostPort
    origin: Origin
    log: logging.LoggerAdapter[logging.Logger]
    _transfers: dict[int, Transfer]
    _closed: asyncio.Event
    _draining: bool
    _last_activity: float
    _client_context: ssl.SSLContext | None

    def _report(self, actions: list[c.Action]) -> None:
        raise NotImplementedError

    def drain(self) -> None:
        raise NotImplementedError

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
        if listener.address.ip.version == 6 and context.public_address6 is not None:
            public = context.public_address6
        if facing_public and context.advertiser is not None:
            client_ip, dialled = self.client.address.ip, self.origin.dialled.ip
            announced = context.advertiser.announce(listener.address, client_ip, dialled, self.client.ours)
        elif facing_public and public is not None and type(public) is type(listener.address.ip):
            announced = HostPort(public, listener.address.port)
        if lan_passive:
            announced = HostPort(self.server.address.ip, listener.address.port)
        transfer = Transfer(
            mode="passive" if passive else "active", client_tls=action.client_tls, server_tls=action.server_tls
        )
        self._transfers[action.ticket] = transfer
        dialled = self.server.address.ip if lan_passive else listen_on
        session = cast("Session", self)  # the mixin is always a Session's half
        if kerneldata.start(session, action.ticket, listener, expected, dialled, action.then_connect, source, transfer):
            return channel.data_endpoint_ready(action.ticket, announced)  # mapped before it is announced
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
                metrics.pool_used(name, pool.in_use)

    async def _data_connection(
        self,
        ticket: int,
        listener: Any,
        expected: IPAddress,
        target: HostPort,
        source: IPAddress,
        transfer: Transfer,
        announce: HostPort | None = None,
    ) -> None:
        """One data connection. Passive (`announce` given): connect to the server's passive port first, then
        announce our port to the client. Active: accept the server first, then connect to the client."""
        metrics = self.context.metrics
        timeouts = self.context.timeouts
        accepted: socket.socket | None = None
        connected: socket.socket | None = None
        failure: str | None = None
        failure_text: str | None = None  # for the client's 426, when the reason's stock text will not do
        moved: tuple[int, int] | None = None  # (download, upload) once a relay ran
        started = 0.0

        def stranger(ip: IPAddress) -> None:
            metrics.refused("port_theft")
            if self.context.guard is not None:
                self.context.guard.offence(ip, Offence.PORT_THEFT)
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
            legs = None
            if transfer.client_tls or transfer.server_tls:
                try:
                    legs = await self._secure_legs(transfer, accepted, connected)
                except secure.DataTlsFailed as error:
                    failure, failure_text = error.reason, str(error)
                    if error.reason == "tls_session_reuse":
                        metrics.refused("tls_session_reuse")
                    return
            transfer.connected = True
            if transfer.verb is not None:  # else counted when the client's RETR/STOR/LIST arrives
                self._count_opened(transfer)
            metrics.data_protected(transfer.client_tls, transfer.server_tls)
            metrics.data_active.inc()
            first, second = (accepted, connected)
            counts = RelayResult()
            transfer.moved, transfer.started = _byte_counts(counts, transfer.mode), time.time()
            token = metrics.relay_started(transfer.moved)
            started = time.monotonic()

            def first_eof() -> None:
                self._report(self.channel.data_finished(ticket) if self.channel else [])

            try:
                idle = timeouts.data_idle_s
                if legs is None:  # plain on both legs: the zero-copy relay
                    await relay(first, second, idle_timeout_s=idle, on_first_eof=first_eof, result=counts)
                else:
                    await relay_legs(*legs, idle_timeout_s=idle, on_first_eof=first_eof, result=counts)
            except TimeoutError:
                failure = "idle_timeout"
            except TlsTruncated:
                failure = "tls_truncated"
            except (ConnectionError, OSError, ssl.SSLError):
                failure = "reset"
                if transfer.server_tls:
                    await _linger(connected if transfer.mode == "passive" else accepted)
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
                if failure is not None and (moved is None or failure == "tls_truncated"):
                    # No byte was relayed, or the server's TLS stream was cut: the transfer cannot have
                    # completed, whatever the server answers.
                    text = failure_text or _FAILURE_TEXT.get(failure, failure)
                    self._report(self.channel.data_endpoint_failed(ticket, text))
                else:
                    self._report(self.channel.data_finished(ticket))
            if self._draining and not self._transfers:
                self.drain()

    async def _secure_legs(
        self, transfer: Transfer, accepted: socket.socket, connected: socket.socket
    ) -> tuple[Leg, Leg]:
        """TLS on the legs that PROT P asked for; in relay order (the accepted socket first)."""
        assert self.server is not None
        passive = transfer.mode == "passive"
        client_sock, server_sock = (accepted, connected) if passive else (connected, accepted)
        ssl_object = self.server.writer.get_extra_info("ssl_object")
        # Read now, not at the control handshake: a TLS 1.3 ticket arrives after it (DESIGN.md, TLS).
        session = ssl_object.session if ssl_object is not None else None
        client_leg, server_leg = await secure.wrap_data_legs(
            client_sock,
            server_sock,
            client_tls=transfer.client_tls,
            server_tls=transfer.server_tls,
            runtime=self.context.tls,
            client_context=self._client_context,
            server_session=session,
            upstream=self.upstream,
            metrics=self.context.metrics,
            timeout_s=self.context.timeouts.data_connect_s,
        )
        return (client_leg, server_leg) if passive else (server_leg, client_leg)

    def _count_opened(self, transfer: Transfer, *, final: bool = False) -> None:
        """One count per data connection, by mode and by the direction its command gives (else `unknown`)."""
        if transfer.connected and not transfer.counted and (transfer.verb is not None or final):
            transfer.counted = True
            self.context.metrics.data_channel_opened(transfer.mode, transfer.verb)

    def _account(self, transfer: Transfer, moved: tuple[int, int], seconds: float, outcome: str) -> None:
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


def _byte_counts(result: RelayResult, mode: str) -> ByteCounts:
    """(download, upload) of a running relay: passive, `a` is the client's leg; active, `a` is the server's."""
    if mode == "active":
        return lambda: (result.to_b, result.to_a)
    return lambda: (result.to_a, result.to_b)


async def _linger(sock: socket.socket | None) -> None:
    """A TLS server leg whose client leg broke: our end closes with a FIN and what the server still sends is read
    and dropped until it ends its own (it stops once it reads the ABOR), bounded by LINGER_S. Closed at once
    with its data unread, the socket would answer with a reset, which proftpd's mod_tls takes for a fatal broken
    pipe and ends the whole session on."""
    if sock is None:
        return
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError, TimeoutError):
        sock.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER_S):
            while await loop.sock_recv(sock, 256 * 1024):
                pass
