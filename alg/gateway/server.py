"""The gateway process: listeners, the session registry, limits, signals and graceful shutdown.

Rules: a connection over a limit gets a 421 and is closed before any upstream is contacted; shutdown stops
accepting first, gives running sessions a grace period, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections import Counter
from typing import Any

from alg.errors import ConfigError, PolicyDenied
from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.control import ChannelSettings
from alg.ftp.wire import reply
from alg.gateway import kerneldata, secure
from alg.gateway.advertise import Advertiser
from alg.gateway.frontdoor import FrontTls, Origin, ProxyRefused, read_user, receive_origin
from alg.gateway.guard import guard_for
from alg.gateway.health import HealthChecker
from alg.gateway.implicit import ImplicitListeners
from alg.gateway.peers import hostport
from alg.gateway.secure import TlsRuntime, runtime_from_settings
from alg.gateway.session import GatewayContext, Session, Timeouts
from alg.gateway.upstreams import Route, UpstreamPool
from alg.gateway.workers import port_slice
from alg.net.dataplane import PortPool
from alg.net.kernelpath import SETTLE_MAX_S
from alg.net.listeners import listening_socket
from alg.net.relay import relay_mode
from alg.net.transparent import original_destination
from alg.ops.defender import Offence
from alg.ops.metrics import Metrics
from alg.ops.rules import Policy

log = logging.getLogger("ftp_alg.server")

MAX_BACKLOG_REFUSALS = 4096  # at shutdown; a listen backlog holds at most 1024 here


def context_from_settings(
    settings: Any, metrics: Metrics, policy: Policy | None = None, worker: int = 0, tls: TlsRuntime | None = None
) -> GatewayContext:
    """What the sessions of worker `worker` (of settings.workers) share; it owns a slice of each port range."""
    limits, timeouts = settings.limits, settings.timeouts
    workers = settings.workers
    public_pool = PortPool(port_slice(settings.passive_ports.first, settings.passive_ports.last, worker, workers))
    internal_pool = None
    if settings.active_ports is not None:
        internal_pool = PortPool(port_slice(settings.active_ports.first, settings.active_ports.last, worker, workers))
    metrics.pool_size.labels("public").set(public_pool.size)
    if internal_pool is not None:
        metrics.pool_size.labels("internal").set(internal_pool.size)
    tls = tls or TlsRuntime()
    return GatewayContext(
        channel_settings=ChannelSettings(
            max_line_bytes=limits.max_line_bytes,
            max_pipelined_commands=limits.max_pipelined_commands,
            max_data_channels=limits.max_data_channels_per_session,
            passive_target=settings.passive_target,
            port_address_mismatch=settings.port_address_mismatch,
            # The policy object, not its current rules: a reload reaches running sessions at their next command.
            check_command=policy.check_command if policy is not None else None,
            allow_data_peer=policy.allows_data_peer if policy is not None else None,
            tls=tls.policy,
        ),
        timeouts=Timeouts(
            upstream_connect_s=timeouts.upstream_connect_s,
            login_s=timeouts.login_s,
            idle_s=timeouts.idle_s,
            data_connect_s=timeouts.data_connect_s,
            data_idle_s=timeouts.data_idle_s,
        ),
        metrics=metrics,
        public_pool=public_pool,
        internal_pool=internal_pool,
        transparent=settings.mode == "transparent",
        public_address=settings.public_address,
        public_address6=getattr(settings, "public_address6", None),
        tls=tls,
        advertiser=Advertiser.from_settings(settings),
    )


class Gateway:
    def __init__(self, settings: Any, metrics: Metrics | None = None, worker: int = 0) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        own = [address.ip for address in settings.listen]
        for public in (settings.public_address, getattr(settings, "public_address6", None)):
            if public is not None:
                own.append(public)
        self.policy = Policy(settings.rules, own_addresses=own)  # ConfigError if a rule file is bad
        tls_settings = getattr(settings, "tls", None)
        self.tls = runtime_from_settings(tls_settings) if tls_settings is not None else TlsRuntime()
        self._update_certificate_expiry()
        self.context = context_from_settings(settings, self.metrics, self.policy, worker, self.tls)
        self.worker = worker
        # The defender: bans outlive reloads, as the Gateway does (alg.gateway.guard).
        self.guard = guard_for(getattr(settings, "defender", None), self.metrics, worker, settings.workers)
        self.context.guard = self.guard
        self.sessions: dict[int, Session] = {}
        self.ready = asyncio.Event()
        self.addresses: list[HostPort] = []
        self.implicit = ImplicitListeners(self)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[str]] = set()
        self._per_client: Counter[IPAddress] = Counter()
        self._next_id = 1
        self._stopping = asyncio.Event()
        self._empty = asyncio.Event()
        self.upstreams: UpstreamPool | None = None
        self.health: HealthChecker | None = None
        self._setup_upstreams(settings)

    def _setup_upstreams(self, settings: Any) -> None:
        """Reverse mode: the upstream pool; health checks when configured or when there are several upstreams."""
        servers = getattr(settings, "upstream_servers", ())
        if self.context.transparent or not servers:
            return
        self.upstreams = UpstreamPool.from_settings(settings, self.metrics)
        check = getattr(settings, "health_check", None)
        if check is None and len(servers) > 1:
            from alg.ops.config import HealthCheck

            check = HealthCheck()
        if check is not None:
            self.health = HealthChecker(
                self.upstreams.health_targets(),
                interval_s=check.interval_s,
                timeout_s=check.timeout_s,
                on_change=self.upstreams.health_changed,
            )

    def upstream_health(self) -> str | None:
        """For /readyz: None when an upstream passes its health checks; 'unchecked' when none are configured."""
        if self.health is None or self.upstreams is None:
            return "unchecked"
        return self.upstreams.healthy_reason()

    async def start(self) -> None:
        if getattr(self.settings, "data_path", "relay") == "kernel":
            self.context.kernel_path = kerneldata.open_path(self.worker, self.settings.workers, self.settings.user)
        for address in self.settings.listen:
            if getattr(self.settings, "dual_stack", False) and address.ip.version == 6:
                sock = listening_socket(address, reuse_port=self.settings.workers > 1, dual_stack=True)
                server = await asyncio.start_server(self.accept, sock=sock, limit=64 * 1024)
            else:
                server = await asyncio.start_server(
                    self.accept,
                    host=str(address.ip),
                    port=address.port,
                    reuse_address=True,
                    reuse_port=self.settings.workers > 1 or None,
                    backlog=1024,
                    limit=64 * 1024,
                )
            self._servers.append(server)
            for sock in server.sockets:
                self.addresses.append(hostport(sock.getsockname()))
        tls_settings = getattr(self.settings, "tls", None)
        if tls_settings is not None:
            self.implicit.start(tls_settings.client.implicit_listen, reuse_port=self.settings.workers > 1)
        if self.health is not None:
            self.health.start()
        self.guard.start()
        log.info(
            "listening on %s mode=%s relay=%s data_path=%s",
            ", ".join(map(str, self.addresses)),
            self.settings.mode,
            relay_mode(),
            "relay" if self.context.kernel_path is None else f"kernel table=inet {self.context.kernel_path.table}",
        )
        self.ready.set()

    @property
    def stopping(self) -> bool:
        """Shutdown has begun: no new sessions (readiness answers 503)."""
        return self._stopping.is_set()

    def upstream_for(self, writer: asyncio.StreamWriter) -> HostPort | None:
        """Reverse mode: the configured server. Transparent mode: the redirected connection's original
        destination (PolicyDenied, 421, when it was not redirected)."""
        if self.context.transparent:
            return original_destination(writer.get_extra_info("socket"))
        if self.upstreams is not None:
            return self.upstreams.upstreams[0].address  # the route decides; this names it until then
        upstream: HostPort | None = self.settings.upstream
        return upstream

    def reload(self) -> None:
        """SIGHUP: rules and the TLS certificate read again; a bad file keeps the old one (and says why).
        The defender's scores and bans stay: they live as long as the process."""
        self.policy.reload()
        if self.guard.enabled:
            log.info("reload: the defender keeps its %d bans", len(self.guard.bans()))
        if self.tls.certificate is not None:
            self.tls.certificate.reload()
            self._update_certificate_expiry()

    def _update_certificate_expiry(self) -> None:
        if self.tls.certificate is None:
            return
        from alg.ops.tlsfiles import expiry_timestamp  # cryptography: loaded only when a certificate is configured

        with contextlib.suppress(Exception):
            self.metrics.certificate_expiry.set(expiry_timestamp(self.tls.certificate.cert))

    async def accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        implicit_tls: bool = False,
        origin: Origin | None = None,
    ) -> None:
        """A new control connection; `origin` when it was read already (implicit FTPS: before the handshake)."""
        peername = writer.get_extra_info("peername")
        if peername is None:  # reset before we looked (uvloop then has no address): nothing to answer
            self.metrics.session_ended("client_closed")
            writer.close()
            return
        if origin is None:
            try:
                origin, reader = await receive_origin(
                    reader, writer, getattr(self.settings, "proxy_protocol", None), self.metrics
                )
            except ProxyRefused as refused:
                self.proxy_refused(refused)
                writer.close()
                return
        client = origin.client.ip  # behind a balancer, the header's client: rules and limits apply to it
        if not self.policy.allows_client(client):
            await self._refuse_by_policy(writer, client, self.policy.client_refusal_text)
            return
        if self.guard.refuses(client) is not None:
            await self._refuse_banned(writer, client)
            return
        limits = self.settings.limits
        refusal = None
        if self._stopping.is_set():
            refusal = "Service shutting down."
        elif len(self.sessions) >= limits.max_sessions:
            refusal = f"Too many connections ({limits.max_sessions}); try again later."
        elif self._per_client[client] >= limits.max_sessions_per_client:
            refusal = f"Too many connections from your address ({limits.max_sessions_per_client})."
            self.guard.offence(client, Offence.OVER_LIMIT)
        try:
            upstream = self.upstream_for(writer)
        except PolicyDenied as denied:
            await self._refuse_by_policy(writer, client, str(denied))
            return
        if refusal is None and upstream is None:
            refusal = "No FTP server to connect you to."
        if refusal is not None or upstream is None:
            self.metrics.refused("limit")
            self.metrics.session_ended("refused_limit")
            log.info("connection refused client=%s reason=%s", client, refusal)
            with contextlib.suppress(Exception):
                writer.write(reply(421, refusal or "Refused."))
                await writer.drain()
                writer.close()
            return
        if self.context.transparent:
            try:
                self.policy.check_destination(upstream.ip)
            except PolicyDenied as denied:
                await self._refuse_by_policy(writer, client, str(denied))
                return
        route = None
        secured = implicit_tls
        if self.upstreams is not None:
            route, secured = await self._route(reader, writer, secured=implicit_tls)
            if route is None:
                self.metrics.session_ended("client_closed")
                writer.close()
                return
            upstream = route.first
        number = self._next_id
        self._next_id += 1
        session = Session(
            number, self.context, reader, writer, upstream, client_secured=secured, origin=origin, route=route
        )
        self.sessions[number] = session
        self._empty.clear()
        self._per_client[client] += 1
        self.metrics.sessions_active.inc()
        try:
            await session.run()
        finally:
            del self.sessions[number]
            if route is not None:
                route.release()
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]
            self.metrics.sessions_active.dec()
            if not self.sessions:
                self._empty.set()

    async def _route(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, secured: bool
    ) -> tuple[Route | None, bool]:
        """The upstreams this session tries, in order, and whether the client's control connection is TLS now;
        per_user: after our own greeting and the client's USER (None when it never came), which an FTPS
        client sends after AUTH TLS, answered here."""
        assert self.upstreams is not None
        if not self.upstreams.routes_by_user:
            return Route(self.upstreams, self.upstreams.candidates()), secured
        front_tls = None
        certificate = self.tls.certificate
        if self.tls.client_mode != "refuse" and certificate is not None:
            context = certificate.context  # the session's data connections resume against this one

            async def start() -> bool:
                return await secure.client_handshake(reader, writer, self.tls, context, self.metrics, log)

            front_tls = FrontTls(required=self.tls.client_mode == "require", start=start, secured=secured)
        login = await read_user(reader, writer, self.settings.timeouts.login_s, front_tls)
        if login is None:
            return None, secured
        return Route(self.upstreams, self.upstreams.candidates(login.user), replay=login.line), login.secured

    def proxy_refused(self, refused: ProxyRefused) -> None:
        self.metrics.proxy_refused(refused.reason)
        self.metrics.session_ended("refused_acl")
        log.warning("proxy protocol refused reason=%s detail=%s", refused.reason, refused)

    async def _refuse_by_policy(self, writer: asyncio.StreamWriter, client: IPAddress, text: str) -> None:
        """421 and close, before any upstream is contacted (rules: clients, destinations)."""
        self.metrics.refused("acl")
        self.metrics.session_ended("refused_acl")
        log.info("connection refused client=%s reason=acl text=%s", client, text)
        with contextlib.suppress(Exception):
            writer.write(reply(421, text))
            await writer.drain()
            writer.close()

    async def _refuse_banned(self, writer: asyncio.StreamWriter, client: IPAddress) -> None:
        """421 and close, before any upstream is contacted: the defender banned this client."""
        self.metrics.session_ended("refused_acl")
        log.info("connection refused client=%s reason=banned", client)
        with contextlib.suppress(Exception):
            writer.write(reply(421, "Service not available: too many failed or refused attempts from your address."))
            await writer.drain()
            writer.close()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let sessions finish for up to grace_s, then close the rest."""
        self._stopping.set()
        for server in self._servers:
            for sock in server.sockets:
                self._refuse_backlog(sock.fileno())
            server.close()
        await self.implicit.stop()
        if self.health is not None:
            await self.health.stop()
        for session in list(self.sessions.values()):
            session.drain()  # idle sessions close now, the others when their transfers end
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._empty.wait()
        for session in list(self.sessions.values()):
            session.close("shutdown")
        for server in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await server.wait_closed()
        kernel = self.context.kernel_path
        if kernel is not None and kernel.tasks:  # ended transfers whose counters are still being read
            await asyncio.wait(list(kernel.tasks), timeout=SETTLE_MAX_S + 1)
        self.close_kernel_path()
        await self.guard.stop()  # last: sessions in their grace period still score and share

    def _refuse_backlog(self, fd: int) -> None:
        """421 to the connections the kernel completed that nobody accepted yet: closing the listener would
        reset them, and a balancer that already handed them on cannot send them elsewhere."""
        listener = socket.socket(fileno=os.dup(fd))
        listener.setblocking(False)
        with listener:
            for _ in range(MAX_BACKLOG_REFUSALS):
                try:
                    conn, _ = listener.accept()
                except OSError:  # BlockingIOError: the backlog is empty
                    return
                with conn, contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(reply(421, "Service shutting down."))
                self.metrics.refused("limit")
                self.metrics.session_ended("refused_limit")

    def close_kernel_path(self) -> None:
        """Delete our nftables table; connections already established keep flowing (conntrack)."""
        if self.context.kernel_path is not None:
            self.context.kernel_path.close()
            self.context.kernel_path = None


def drop_privileges(user: str) -> None:
    """Become `user` (and its primary group) for good; called after every privileged port is bound."""
    import os
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"no such user {user!r}", key="user") from None
    if os.geteuid() != 0:
        if os.geteuid() == entry.pw_uid:
            return
        raise ConfigError(f"cannot switch to {user!r}: not started as root", key="user")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("running as user=%s uid=%d gid=%d", user, entry.pw_uid, entry.pw_gid)


async def serve(settings: Any, worker: int = 0) -> None:
    """Run the gateway until SIGINT or SIGTERM, then shut down gracefully."""
    from alg.gateway.registry import SessionsView
    from alg.ops.http import start_http_listeners

    gateway = Gateway(settings, worker=worker)
    await gateway.start()
    http_listeners = await start_http_listeners(settings, gateway, SessionsView(gateway.sessions))
    if settings.user is not None:
        drop_privileges(settings.user)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload)  # keeps the old rules or certificate if a file is bad
    try:
        await stop.wait()
        log.info("shutting down (grace %s s)", settings.timeouts.shutdown_grace_s)
        await gateway.stop(settings.timeouts.shutdown_grace_s)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        gateway.close_kernel_path()
        for listener in http_listeners:
            listener.close()
