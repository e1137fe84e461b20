"""Implicit FTPS listeners (TLS from the first byte, port 990 by convention): accept, read a trusted balancer's
PROXY header (it comes in clear, before the ClientHello), do the TLS handshake, then hand the connection to the
gateway as any listener would.

Rules: the handshake runs on the bare socket, so that no byte of the ClientHello can land in a plain stream's
buffer; failures and timeouts are counted like the AUTH TLS ones; nothing here outlives stop().
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from typing import Protocol

from alg.ftp.addresses import HostPort
from alg.ftp.reasons import Refusal
from alg.gateway.frontdoor import Origin, ProxyRefused, receive_origin_before_tls
from alg.gateway.guard import Guard
from alg.gateway.peers import hostport
from alg.gateway.secure import TlsRuntime
from alg.net.listeners import listening_socket
from alg.net.tls import reason_of
from alg.ops.config import Settings
from alg.ops.defender import Offence
from alg.ops.logs import fields
from alg.ops.metrics import Metrics

log = logging.getLogger("ftp_alg.server")


class Gateway(Protocol):
    """What the listeners hand their connections to (alg.gateway.server.Gateway fits): this module does not
    import the server, which starts it."""

    settings: Settings
    metrics: Metrics
    tls: TlsRuntime
    guard: Guard  # the defender: a failed handshake is TLS garbage

    @property
    def stopping(self) -> bool: ...

    def proxy_refused(self, refused: ProxyRefused) -> None: ...

    async def accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        implicit_tls: bool = False,
        origin: Origin | None = None,
    ) -> None: ...


class ImplicitListeners:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.addresses: list[HostPort] = []
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, addresses: Iterable[HostPort], *, reuse_port: bool) -> None:
        for address in addresses:
            listener = listening_socket(address, reuse_port=reuse_port)
            self._sockets.append(listener)
            self.addresses.append(hostport(listener.getsockname()))
            task = asyncio.create_task(self._accept(listener), name=f"implicit {address}")
            self._tasks.add(task)
        if self.addresses:
            log.info("listening for implicit FTPS on %s", ", ".join(map(str, self.addresses)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for listener in self._sockets:
            listener.close()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        handshakes: set[asyncio.Task[None]] = set()
        try:
            while True:
                conn, _ = await loop.sock_accept(listener)
                task = asyncio.create_task(self._handshake(conn))
                handshakes.add(task)
                task.add_done_callback(handshakes.discard)
        finally:
            for task in handshakes:
                task.cancel()

    async def _handshake(self, conn: socket.socket) -> None:
        gateway = self._gateway
        certificate = gateway.tls.certificate
        if certificate is None or gateway.stopping:
            conn.close()
            return
        try:
            origin = await receive_origin_before_tls(conn, gateway.settings.proxy_protocol, gateway.metrics)
        except (ProxyRefused, OSError) as refused:
            if isinstance(refused, ProxyRefused):
                gateway.proxy_refused(refused)
            conn.close()
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            # asyncio.timeout: ssl_handshake_timeout ends in ConnectionAbortedError, counted as "failed".
            async with asyncio.timeout(gateway.tls.handshake_timeout_s):
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn, ssl=certificate.context)
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            outcome = "timeout" if isinstance(error, TimeoutError) else "failed"
            gateway.metrics.tls_handshake("client", "control", outcome)
            gateway.metrics.refused(Refusal.TLS_HANDSHAKE)
            gateway.guard.offence(origin.client.ip, Offence.TLS_GARBAGE)
            log.info("implicit tls handshake %s", outcome, extra=fields(reason=reason_of(error)))
            conn.close()
            return
        gateway.metrics.tls_handshake("client", "control", "ok")
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await gateway.accept(reader, writer, implicit_tls=True, origin=origin)
