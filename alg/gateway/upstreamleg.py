"""The upstream half of a session: connect (through the route's failover, or to the one upstream), TLS toward
the server (implicit, or AUTH TLS as its FEAT allows), the banner, and a per_user login replayed there.

Rules: a mixin sharing the Session's state; whatever fails becomes one 421 to the client, a log line and the
session's outcome, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from alg.ftp import control as c
from alg.ftp.addresses import HostPort
from alg.ftp.reasons import SessionOutcome
from alg.ftp.wire import reply
from alg.gateway import peers, secure
from alg.net.tls import describe, reason_of
from alg.ops.logs import printable

if TYPE_CHECKING:
    from alg.gateway.frontdoor import Origin
    from alg.gateway.session import GatewayContext
    from alg.gateway.upstreams import Route


class UpstreamLeg:
    """Session's upstream half (a mixin: the state is the session's)."""

    context: GatewayContext
    upstream: HostPort
    route: Route | None
    origin: Origin
    client: peers.Peer
    server: peers.Peer | None
    channel: c.ControlChannel | None
    client_secured: bool
    tls_server: str
    outcome: SessionOutcome
    log: logging.LoggerAdapter[logging.Logger]

    def execute(self, actions: list[c.Action]) -> None:
        raise NotImplementedError

    async def _connect_upstream(self) -> bool:
        started = time.monotonic()
        tls = self.context.tls
        implicit = tls.upstream_mode == "implicit"
        banner = b""
        try:
            if self.route is not None:  # each try bounded by upstream_connect_s, failing over to the next
                connect = self.route.connect(
                    self.client.address,
                    self.origin.dialled,
                    self.context.timeouts.upstream_connect_s,
                    greet=tls.upstream_mode == "off",  # under TLS the banner is read by the negotiation
                )
                reader, writer, banner = await connect
                self.upstream = self.route.chosen.address if self.route.chosen else self.upstream
            else:
                async with asyncio.timeout(self.context.timeouts.upstream_connect_s):
                    reader, writer = await asyncio.open_connection(
                        str(self.upstream.ip), self.upstream.port, limit=peers.READ_BYTES
                    )
            if implicit:
                await secure.start_upstream_tls(writer, tls, self.upstream, self.context.metrics)
        except secure.UpstreamTlsFailed as error:
            return await self._upstream_tls_failed(str(error))
        except (OSError, TimeoutError) as error:
            why = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
            self.log.warning("upstream unreachable upstream=%s error=%s", self.upstream, printable(why))
            text = f"Service not available: the FTP server {self.upstream} cannot be reached ({why})."
            peers.write(self.client.writer, reply(421, text))
            with contextlib.suppress(OSError, ConnectionError):
                await self.client.writer.drain()
            self.outcome = SessionOutcome.UPSTREAM_UNREACHABLE
            return False
        self.context.metrics.upstream_connect_seconds.observe(time.monotonic() - started)
        peers.tune(writer, oob_inline=False)
        address, ours = peers.ends(writer)
        self.server = peers.Peer(reader, writer, address, ours)
        ready = None
        if tls.upstream_mode != "off":
            try:
                ready = await secure.negotiate_upstream(
                    reader, writer, tls, self.upstream, self.context.metrics, self.context.timeouts.upstream_connect_s
                )
            except (secure.UpstreamTlsFailed, OSError, TimeoutError) as error:
                why = str(error) if isinstance(error, secure.UpstreamTlsFailed) else reason_of(error)
                return await self._upstream_tls_failed(why)
            if ready.secured:
                self.tls_server = describe(writer.get_extra_info("ssl_object"))
                self.log.info("tls upstream %s", self.tls_server)
        self.channel = c.ControlChannel(
            self.client.address,
            address,
            self.context.channel_settings,
            client_secured=self.client_secured,
            server_secured=ready is not None and ready.secured,
            server_private=ready is not None and ready.private,
        )
        if ready is not None:
            banner = ready.banner
        if banner:  # read by the route (to know the upstream is alive) or by the TLS negotiation
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

    async def _upstream_tls_failed(self, why: str) -> bool:
        self.log.warning("upstream tls failed upstream=%s reason=%s", self.upstream, printable(why))
        peers.write(self.client.writer, reply(421, f"Service not available: TLS to the FTP server failed ({why})."))
        with contextlib.suppress(OSError, ConnectionError):
            await self.client.writer.drain()
        self.outcome = SessionOutcome.TLS_FAILED
        return False
