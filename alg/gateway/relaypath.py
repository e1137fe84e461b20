"""The relay data path: a data connection's two legs connected (passive: the server's first, then our port is
announced; active: the server accepted first), made TLS where PROT P asked for it, and relayed by the gateway.

Rules: one job per carry(); it fills `ended`, closes its sockets and its listener whatever happens, and speaks to
the data channels only through TransferEvents. The error boundary and the finish are the data channels'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.channelstate import DOWNLOAD_VERBS
from alg.ftp.reasons import DataFailure, Refusal
from alg.gateway import secure
from alg.gateway.context import GatewayContext
from alg.gateway.transfer import Cross, DataJob, Ended, Transfer, TransferEvents
from alg.net.dataplane import Listener, RelayResult, accept_from, connect_from, relay
from alg.net.delivery import DeliveryWatch
from alg.net.tls import Leg, TlsTruncated, relay_legs
from alg.ops.logs import fields
from alg.ops.metrics import ByteCounts

# How long a TLS server leg is read and drained after its client leg broke (_linger).
LINGER_S = 2.0


@dataclass(slots=True, frozen=True)
class DataTls:
    """What making a session's data legs TLS needs from its control connections."""

    client_context: ssl.SSLContext | None  # the client-facing context the session started with
    server_session: Callable[[], ssl.SSLSession | None]  # the upstream control session, to resume
    upstream: HostPort


class RelayPath:
    def __init__(self, context: GatewayContext, tls: DataTls, log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.context = context
        self.tls = tls
        self.log = log

    async def carry(self, job: DataJob, events: TransferEvents, ended: Ended) -> None:
        """Passive: connect to the server's passive port first, then announce our port to the
        client, so a port the server re-announces cannot receive another session's late connection, and the
        client's data flows at once. Active: accept the server first, then connect to the client."""
        accepted: socket.socket | None = None
        connected: socket.socket | None = None
        try:
            if job.cross is not None:
                await self._carry_crossed(job, job.cross, events, ended)
                return
            if job.transfer.mode == "passive":
                connected = await self._connect(job, ended)
                if connected is None:
                    return
                events.announce(job)
            accepted = await self._accept(job, events, ended)
            if accepted is None:
                return
            events.connected(job)
            if connected is None:
                connected = await self._connect(job, ended)
                if connected is None:
                    return
            await self._relay(job, events, ended, accepted, connected)
        finally:
            if job.listener is not None:
                job.listener.close()
            events.pools_changed()
            for sock in (accepted, connected):
                if sock is not None:
                    sock.close()

    async def _carry_crossed(self, job: DataJob, cross: Cross, events: TransferEvents, ended: Ended) -> None:
        """upstream_data_mode. ListenForBoth: the client's and the server's connections accepted, in whichever
        order they come (a client may send RETR before it connects). ConnectBoth: the server's passive port
        first, then (the client's 200 announced) the client's PORT address. Relayed as the client's mode is."""
        socks: list[socket.socket] = []
        try:
            if cross.server_listener is not None:
                server_listener = cross.server_listener
                try:
                    client, server = await self._accept_both(job, server_listener, events, ended, socks)
                finally:
                    server_listener.close()
                if client is None or server is None:
                    return
                events.connected(job)
                await self._relay(job, events, ended, client, server)  # as passive: the client's leg accepted
                return
            server = await self._connect(job, ended)
            if server is None:
                return
            socks.append(server)
            events.announce(job)
            assert cross.client_target is not None
            client_job = replace(job, target=cross.client_target, source=cross.client_source or job.source)
            client = await self._connect(client_job, ended, timed=False)  # one setup time per transfer
            if client is None:
                return
            socks.append(client)
            events.connected(job)
            await self._relay(job, events, ended, server, client)  # as active: the server's leg first
        finally:
            for sock in socks:
                sock.close()

    async def _accept_both(
        self, job: DataJob, server_listener: Listener, events: TransferEvents, ended: Ended, socks: list[socket.socket]
    ) -> tuple[socket.socket | None, socket.socket | None]:
        expected = job.cross.server_expected if job.cross is not None else None
        server_job = replace(job, listener=server_listener, expected=expected or job.target.ip, from_server=True)
        client_task = asyncio.ensure_future(self._accept(job, events, ended))
        server_task = asyncio.ensure_future(self._accept(server_job, events, ended))
        try:
            await asyncio.gather(client_task, server_task)
        finally:
            for task in (client_task, server_task):
                task.cancel()
            results = await asyncio.gather(client_task, server_task, return_exceptions=True)
            socks.extend(sock for sock in results if isinstance(sock, socket.socket))
        client, server = results
        return (
            client if isinstance(client, socket.socket) else None,
            server if isinstance(server, socket.socket) else None,
        )

    async def _connect(self, job: DataJob, ended: Ended, *, timed: bool = True) -> socket.socket | None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.context.timeouts.data_connect_s):
                sock = await connect_from(job.source, job.target)
        except TimeoutError:
            ended.failure = DataFailure.CONNECT_TIMEOUT
            return None
        except OSError as error:
            self.log.warning("data connect failed", extra=fields(ticket=job.ticket, target=job.target, error=error))
            ended.failure = DataFailure.CONNECT_FAILED
            return None
        if timed:
            self.context.metrics.data_setup_seconds.observe(time.monotonic() - started)
        return sock

    async def _accept(self, job: DataJob, events: TransferEvents, ended: Ended) -> socket.socket | None:
        assert job.listener is not None  # a ConnectBoth's job accepts nothing
        sources = job.sources if job.from_server else ()

        def stranger(ip: IPAddress) -> None:
            events.stranger(job, ip)
            if job.from_server and job.transfer.verb is not None:
                # The transfer command is out: this is the server's one connection, from another address of
                # its own most likely; it will not connect again, so no use waiting for the timeout. (Before
                # the command, a stranger is only refused: someone on the internal network racing the server.)
                raise _Stranger(ip)

        try:
            async with asyncio.timeout(self.context.timeouts.data_connect_s):
                return await accept_from(job.listener, job.expected, stranger, also=sources)
        except TimeoutError:
            ended.failure = DataFailure.ACCEPT_TIMEOUT
            return None
        except _Stranger as refused:
            ended.failure = DataFailure.UNEXPECTED_SOURCE
            ended.text = (
                f"the FTP server's data connection came from {refused.ip}, not {job.expected}"
                " (the gateway's upstream_data_sources setting lists the addresses it may use)"
            )
            return None
        finally:
            job.listener.close()
            events.pools_changed()

    async def _relay(
        self, job: DataJob, events: TransferEvents, ended: Ended, accepted: socket.socket, connected: socket.socket
    ) -> None:
        transfer, metrics = job.transfer, self.context.metrics
        legs = None
        if transfer.client_tls or transfer.server_tls:
            try:
                legs = await self._secure_legs(transfer, accepted, connected)
            except secure.DataTlsFailed as error:
                ended.failure, ended.text = error.reason, str(error)
                if error.reason is DataFailure.TLS_SESSION_REUSE:
                    metrics.refused(Refusal.TLS_SESSION_REUSE)
                return
        events.relaying(job)
        metrics.data_protected(transfer.client_tls, transfer.server_tls)
        counts = RelayResult()
        transfer.moved, transfer.started = _byte_counts(counts, transfer.mode), time.time()
        token = metrics.relay_started(transfer.moved)
        metrics.data_active.inc()
        started = time.monotonic()
        watch = DeliveryWatch(lambda: events.delivered(job))

        def eof(forward: bool) -> None:
            # Only the end of the transfer's own direction completes it (a download: the server's data has
            # reached the client, and the client acknowledged it); a client that closes its side of a
            # download early, or drops it with bytes still in our send buffer, has not received it.
            if _carries(transfer, forward=forward):
                watch.sent(connected if forward else accepted)
            else:
                watch.look_again()  # a receiver closes after it has read (and acknowledged) everything

        try:
            idle = self.context.timeouts.data_idle_s
            if legs is None:  # plain on both legs: the zero-copy relay
                await relay(accepted, connected, idle_timeout_s=idle, on_eof=eof, result=counts)
            else:
                await relay_legs(*legs, idle_timeout_s=idle, on_eof=eof, result=counts)
            if not watch.settle():
                # Both sides ended, but the receiver never acknowledged the last bytes.
                ended.failure = DataFailure.RESET
        except TimeoutError:
            ended.failure = DataFailure.IDLE_TIMEOUT
        except TlsTruncated:
            ended.failure = DataFailure.TLS_TRUNCATED
        except (ConnectionError, OSError, ssl.SSLError):
            ended.failure = DataFailure.RESET
            if transfer.server_tls:
                transfer.lingering = True
                await _linger(connected if transfer.mode == "passive" else accepted)
        except asyncio.CancelledError:
            ended.failure = DataFailure.ABORTED  # ABOR, or the session closing under a running transfer
            if transfer.server_tls:
                # Cut (an ABOR the server left unanswered): the server's TLS leg still ends with a FIN and is
                # drained, never a reset, which proftpd's mod_tls takes for a fatal error (_linger).
                await _linger(connected if transfer.mode == "passive" else accepted)
            raise
        finally:
            watch.stop()
            metrics.data_active.dec()
            ended.moved, ended.seconds = metrics.relay_finished(token), time.monotonic() - started

    async def _secure_legs(
        self, transfer: Transfer, accepted: socket.socket, connected: socket.socket
    ) -> tuple[Leg, Leg]:
        """TLS on the legs that PROT P asked for; in relay order (the accepted socket first)."""
        passive = transfer.mode == "passive"
        client_sock, server_sock = (accepted, connected) if passive else (connected, accepted)
        client_leg, server_leg = await secure.wrap_data_legs(
            client_sock,
            server_sock,
            client_tls=transfer.client_tls,
            server_tls=transfer.server_tls,
            runtime=self.context.tls,
            client_context=self.tls.client_context,
            # Read now, not at the control handshake: a TLS 1.3 ticket arrives after it (docs/architecture.md).
            server_session=self.tls.server_session(),
            upstream=self.tls.upstream,
            metrics=self.context.metrics,
            timeout_s=self.context.timeouts.data_connect_s,
        )
        return (client_leg, server_leg) if passive else (server_leg, client_leg)


class _Stranger(Exception):
    def __init__(self, ip: IPAddress) -> None:
        super().__init__(str(ip))
        self.ip = ip


def _carries(transfer: Transfer, *, forward: bool) -> bool:
    """Does the relay's `forward` direction (accepted socket to connected one) carry the transfer's data?"""
    if transfer.verb is None:
        return True  # no command seen yet: whichever end comes first
    download = transfer.verb in DOWNLOAD_VERBS
    server_accepted = transfer.mode == "active"  # active: the server's leg is the accepted one
    return forward == (download == server_accepted)


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
