"""The gateway process: listeners, the session registry, limits, signals and graceful shutdown.

Rules: a connection over a limit gets a 421 and is closed before any upstream is contacted; shutdown stops
accepting first, gives running sessions a grace period, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from ipaddress import IPv4Address
from typing import Any

from alg import __version__
from alg.errors import ConfigError, PolicyDenied
from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.control import ChannelSettings
from alg.ftp.reasons import Refusal, SessionOutcome
from alg.ftp.wire import reply
from alg.gateway import advertise, forward, kerneldata, secure
from alg.gateway.advertise import Advertiser
from alg.gateway.frontdoor import FrontTls, Origin, ProxyRefused, read_user, receive_origin
from alg.gateway.guard import guard_for
from alg.gateway.health import HealthChecker
from alg.gateway.implicit import ImplicitListeners
from alg.gateway.peers import hostport
from alg.gateway.reload import Bundle, Failed, Inbox, Reloader, tls_of
from alg.gateway.resolve import Resolver, system_resolver
from alg.gateway.secure import TlsRuntime, runtime_from_settings
from alg.gateway.session import GatewayContext, Session, Timeouts
from alg.gateway.upstreams import Route, UpstreamPool
from alg.gateway.workers import port_slice
from alg.net.dataplane import PortPool
from alg.net.kernelpath import SETTLE_MAX_S
from alg.net.listeners import listening_socket
from alg.net.relay import relay_mode
from alg.net.transparent import original_destination
from alg.ops.admin import session_id
from alg.ops.config import HealthCheck, Settings
from alg.ops.config_check import lookup_user
from alg.ops.defender import Offence
from alg.ops.forward_allow import Allowlist
from alg.ops.logs import fields
from alg.ops.metrics import Metrics
from alg.ops.proxy_users import ProxyUsers
from alg.ops.rules import Policy, is_own_address

log = logging.getLogger("ftp_alg.server")

MAX_BACKLOG_REFUSALS = 4096  # at shutdown; a listen backlog holds at most 1024 here


def channel_settings(settings: Settings, policy: Policy | None, tls: TlsRuntime) -> ChannelSettings:
    limits = settings.limits
    return ChannelSettings(
        max_line_bytes=limits.max_line_bytes,
        max_pipelined_commands=limits.max_pipelined_commands,
        max_data_channels=limits.max_data_channels_per_session,
        passive_target=settings.passive_target,
        upstream_data_mode=settings.upstream_data_mode,
        port_address_mismatch=settings.port_address_mismatch,
        # The policy object, not its current rules: a reload reaches running sessions at their next command.
        check_command=policy.check_command if policy is not None else None,
        allow_data_peer=policy.allows_data_peer if policy is not None else None,
        tls=tls.policy,
    )


def session_timeouts(settings: Settings) -> Timeouts:
    timeouts = settings.timeouts
    return Timeouts(
        upstream_connect_s=timeouts.upstream_connect_s,
        login_s=timeouts.login_s,
        idle_s=timeouts.idle_s,
        data_connect_s=timeouts.data_connect_s,
        data_idle_s=timeouts.data_idle_s,
    )


def context_from_settings(
    settings: Settings,
    metrics: Metrics,
    policy: Policy | None = None,
    worker: int = 0,
    tls: TlsRuntime | None = None,
) -> GatewayContext:
    """What the sessions of worker `worker` (of settings.workers) share; it owns a slice of each port range."""
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
        channel_settings=channel_settings(settings, policy, tls),
        timeouts=session_timeouts(settings),
        metrics=metrics,
        public_pool=public_pool,
        internal_pool=internal_pool,
        transparent=settings.mode == "transparent",
        public_address=settings.public_address,
        public_address6=settings.public_address6,
        tls=tls,
        advertiser=Advertiser.from_settings(settings),
        upstream_data_sources=settings.upstream_data_sources,
    )


NAMED_AT_LOGIN = HostPort(IPv4Address(0), 0)  # forward mode: the upstream until the login names it


def proxy_users_of(settings: Settings) -> ProxyUsers | None:
    """Forward mode's proxy logins, read from forward.users_file (None: no proxy login)."""
    path = settings.forward.users_file
    return None if path is None or settings.mode != "forward" else ProxyUsers.read(path)


def own_addresses(settings: Settings) -> list[IPAddress]:
    """Addresses a redirected connection must not loop back to: the listeners' and the public ones."""
    own = [address.ip for address in settings.listen]
    own.extend(public for public in (settings.public_address, settings.public_address6) if public is not None)
    return own


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, worker: int = 0) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.policy = Policy(settings.rules, own_addresses=own_addresses(settings))  # ConfigError: a bad rule file
        self.tls = runtime_from_settings(settings.tls)
        self._update_certificate_expiry()
        self.context = context_from_settings(settings, self.metrics, self.policy, worker, self.tls)
        self.worker = worker
        # The defender: its scores and bans live as long as the process; a reload reconfigures it (apply).
        self.guard = guard_for(settings.defender, self.metrics, worker, settings.workers)
        self.context.guard = self.guard
        self.sessions: dict[str, Session] = {}
        self.ready = asyncio.Event()
        self.addresses: list[HostPort] = []
        self.implicit = ImplicitListeners(self)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_client: Counter[IPAddress] = Counter()
        self._next_id = 1
        self._stopping = asyncio.Event()
        self._empty = asyncio.Event()
        self.upstreams: UpstreamPool | None = None
        self.health: HealthChecker | None = None
        self._setup_upstreams(settings)
        self.resolver: Resolver = system_resolver
        self.proxy_users = proxy_users_of(settings)  # ConfigError: a users file that cannot be read

    def _setup_upstreams(self, settings: Settings) -> None:
        """Reverse mode: the upstream pool; health checks when configured or when there are several upstreams."""
        self.upstreams, self.health = None, None
        servers = settings.upstream_servers
        if self.context.transparent or not servers:
            return
        self.upstreams = UpstreamPool.from_settings(settings, self.metrics)
        check = settings.health_check
        if check is None and len(servers) > 1:
            check = HealthCheck()
        if check is not None:
            self.health = HealthChecker(
                self.upstreams.health_targets,
                interval_s=check.interval_s,
                timeout_s=check.timeout_s,
                on_change=self.upstreams.health_changed,
            )

    def upstream_health(self) -> str | None:
        """For /readyz: None when an upstream passes its health checks; 'unchecked' when none are configured
        (and every upstream name resolves: one that does not makes its upstream unhealthy)."""
        if self.upstreams is None:
            return "unchecked"
        reason = self.upstreams.healthy_reason()
        return "unchecked" if self.health is None and reason is None else reason

    def probe_address(self) -> HostPort | None:
        """The upstream /readyz probes when there are no health checks: the first, its name resolved."""
        return None if self.upstreams is None else self.upstreams.upstreams[0].address

    async def start(self) -> None:
        if self.upstreams is not None:
            await self.upstreams.start()  # ConfigError: an upstream name that does not resolve
        if self.settings.data_path == "kernel":
            self.context.kernel_path = kerneldata.open_path(self.worker, self.settings.workers, self.settings.user)
        for address in self.settings.listen:
            if self.settings.dual_stack and address.ip.version == 6:
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
        private = advertise.private_address_warning(self.settings, advertise.local_ipv4_addresses())
        if private is not None and self.worker == 0:  # once for the gateway, not once per worker
            log.warning(private)
        if self.settings.mode == "forward" and not self.settings.forward.allow and self.worker == 0:
            log.warning("forward mode with an empty forward.allow: every destination is refused until one is listed")
        self.implicit.start(self.settings.tls.client.implicit_listen, reuse_port=self.settings.workers > 1)
        if self.health is not None:
            self.health.start()
        self.guard.start()
        log.info(
            "listening on %s",
            ", ".join(map(str, self.addresses)),
            extra=fields(
                mode=self.settings.mode,
                relay=relay_mode(),
                data_path="relay"
                if self.context.kernel_path is None
                else f"kernel table=inet {self.context.kernel_path.table}",
                version=__version__,
            ),
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
        if self.settings.mode == "forward":
            return NAMED_AT_LOGIN
        return None  # reverse mode always has a pool: no upstream at all

    def reload(self, load: Callable[[], Settings] | None = None) -> None:
        """SIGHUP in a gateway that reads its own files: `load` gives the settings again (None: the running
        ones, with their files read again)."""
        self.apply(Reloader(self.settings, load or (lambda: self.settings)).read())

    def apply(self, message: Bundle | Failed) -> None:
        """A reload (alg.gateway.reload): new sessions get the new settings, running ones keep theirs; a
        failed one is counted, and everything stays as it was."""
        if isinstance(message, Failed):
            self.metrics.reloads.labels("failed").inc()
            return
        settings = message.settings
        try:  # everything built first: a failure here leaves the gateway exactly as it was
            tls = tls_of(message)
            fresh = Policy(settings.rules, message.rules, own_addresses=own_addresses(settings))
            users = proxy_users_of(settings)
            context = dataclasses.replace(
                self.context,
                channel_settings=channel_settings(settings, self.policy, tls),
                timeouts=session_timeouts(settings),
                public_address=settings.public_address,
                public_address6=settings.public_address6,
                tls=tls,
                advertiser=Advertiser.from_settings(settings),
                upstream_data_sources=settings.upstream_data_sources,
            )
        except Exception as error:  # ConfigError, or a value the code did not expect: the reload is refused
            traceback = not isinstance(error, ConfigError)
            log.error("reload failed, keeping the running settings: %s", error, exc_info=traceback)
            self.metrics.reloads.labels("failed").inc()
            return
        self.policy.adopt(fresh)
        self.tls, self.context = tls, context
        self.proxy_users = users
        self._replace_upstreams(settings)
        logging.getLogger().setLevel(settings.log.level.upper())
        self.settings = settings
        self._update_certificate_expiry(message.cert)
        self.guard.reconfigure(settings.defender)  # its scores and bans stay
        self.metrics.reloads.labels("ok").inc()
        reloaded = fields(
            rule_files=len(settings.rules),
            command_rules=len(message.rules.commands),
            upstreams=len(settings.upstream_servers),
            tls_client=tls.client_mode,
        )
        log.info("settings reloaded", extra=reloaded)

    def _replace_upstreams(self, settings: Settings) -> None:
        """A new upstream pool and health checker; sessions routed by the old pool release it when they end.
        An upstream kept (same name and address) keeps what its checks found: a dead one stays skipped."""
        old, before = self.health, self.upstreams
        self._setup_upstreams(settings)
        if before is not None and self.upstreams is not None:
            self.upstreams.adopt(before)
        if self.ready.is_set():  # before start nothing runs yet: nothing to stop, start() starts the new pool
            self._background(self._swap_pools(before, old), "upstreams (replaced)")

    async def _swap_pools(self, before: UpstreamPool | None, old: HealthChecker | None) -> None:
        """The replaced pool stops looking names up and its checks end; the new one starts looking (a name
        that no longer resolves leaves its upstream unhealthy, as at run time, instead of failing the reload)."""
        if old is not None:
            await old.stop()
        if before is not None:
            await before.stop()
        if self.upstreams is not None:
            await self.upstreams.start(strict=False)

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self.health is not None and self.ready.is_set():
            self.health.start()

    def _update_certificate_expiry(self, pem: bytes | None = None) -> None:
        if self.tls.certificate is None:
            return
        from alg.ops import tlsfiles  # cryptography: loaded only when a certificate is configured

        with contextlib.suppress(Exception):
            if pem is None:
                pem = self.tls.certificate.cert.read_bytes()
            self.metrics.certificate_expiry.set(tlsfiles.expiry_of(pem))

    async def accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        implicit_tls: bool = False,
        origin: Origin | None = None,
    ) -> None:
        """A new control connection; `origin` when it was read already (implicit FTPS: before the handshake)."""
        if writer.get_extra_info("peername") is None:  # reset before we looked (uvloop then has no address)
            self.metrics.session_ended(SessionOutcome.CLIENT_CLOSED)
            writer.close()
            return
        if origin is None:
            try:
                origin, reader = await receive_origin(reader, writer, self.settings.proxy_protocol, self.metrics)
            except ProxyRefused as refused:
                self.proxy_refused(refused)
                writer.close()
                return
        client = origin.client.ip  # behind a balancer, the header's client: rules and limits apply to it
        upstream = await self._admit(writer, client)
        if upstream is None:
            return
        route, secured = None, implicit_tls
        if self.upstreams is not None or self.settings.mode == "forward":
            if self.upstreams is not None:
                route, secured = await self._route(reader, writer, client, secured=implicit_tls)
            else:
                route, secured = await self._forward_route(reader, writer, client, secured=implicit_tls)
            if route is None:
                writer.close()
                return
            upstream = route.first
        number = session_id(self.worker, self._next_id)  # unique in the whole gateway, whatever the worker
        self._next_id += 1
        session = Session(
            number, self.context, reader, writer, upstream, client_secured=secured, origin=origin, route=route
        )
        await self._run(session, client, route)

    async def _admit(self, writer: asyncio.StreamWriter, client: IPAddress) -> HostPort | None:
        """The upstream for a new connection from `client`; None once it was refused with 421 (rules, limits,
        shutdown, no upstream), before any upstream is contacted."""
        if not self.policy.allows_client(client):
            await self._refuse_by_policy(writer, client, self.policy.client_refusal_text)
            return None
        if self.guard.refuses(client) is not None:
            await self._refuse_banned(writer, client)
            return None
        refusal = self._limit_refusal(client)
        try:
            upstream = self.upstream_for(writer)
        except PolicyDenied as denied:
            await self._refuse_by_policy(writer, client, str(denied))
            return None
        if refusal is None and upstream is None:
            refusal = "No FTP server to connect you to."
        if refusal is not None or upstream is None:
            self.metrics.refused(Refusal.LIMIT)
            self.metrics.session_ended(SessionOutcome.REFUSED_LIMIT)
            log.info("connection refused", extra=fields(client=client, reason=refusal))
            await _refuse(writer, refusal or "Refused.")
            return None
        if self.context.transparent:
            try:
                self.policy.check_destination(upstream.ip)
            except PolicyDenied as denied:
                await self._refuse_by_policy(writer, client, str(denied))
                return None
        return upstream

    def _limit_refusal(self, client: IPAddress) -> str | None:
        limits = self.settings.limits
        if self._stopping.is_set():
            return "Service shutting down."
        if len(self.sessions) >= limits.max_sessions:
            return f"Too many connections ({limits.max_sessions}); try again later."
        if self._per_client[client] >= limits.max_sessions_per_client:
            self.guard.offence(client, Offence.OVER_LIMIT)
            return f"Too many connections from your address ({limits.max_sessions_per_client})."
        return None

    async def _run(self, session: Session, client: IPAddress, route: Route | None) -> None:
        """Run a session, counted in the registry and the limits while it lasts."""
        self.sessions[session.id] = session
        self._empty.clear()
        self._per_client[client] += 1
        self.metrics.sessions_active.inc()
        try:
            await session.run()
        finally:
            del self.sessions[session.id]
            if route is not None:
                route.release()
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]
            self.metrics.sessions_active.dec()
            if not self.sessions:
                self._empty.set()

    async def _route(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: IPAddress, *, secured: bool
    ) -> tuple[Route | None, bool]:
        """The upstreams this session tries, in order, and whether the client's control connection is TLS now;
        per_user: after our own greeting and the client's USER (None when it never came), which an FTPS
        client sends after AUTH TLS, answered here."""
        assert self.upstreams is not None
        if not self.upstreams.routes_by_user:
            return Route(self.upstreams, self.upstreams.candidates()), secured
        front_tls = self._front_tls(reader, writer, client, secured)
        login = await read_user(reader, writer, self.settings.timeouts.login_s, front_tls)
        if login is None:
            self.metrics.session_ended(SessionOutcome.CLIENT_CLOSED)
            return None, secured
        return Route(self.upstreams, self.upstreams.candidates(login.user), replay=login.line), login.secured

    def _front_tls(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: IPAddress, secured: bool
    ) -> FrontTls | None:
        """AUTH TLS answered before USER (per_user, forward), when client TLS is on."""
        certificate = self.tls.certificate
        if self.tls.client_mode == "refuse" or certificate is None:
            return None
        context = certificate.context  # the session's data connections resume against this one

        async def start() -> bool:
            if await secure.client_handshake(reader, writer, self.tls, context, self.metrics, log):
                return True
            self.guard.offence(client, Offence.TLS_GARBAGE)  # as a session's own AUTH TLS would
            return False

        return FrontTls(required=self.tls.client_mode == "require", start=start, secured=secured)

    async def _forward_route(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: IPAddress, *, secured: bool
    ) -> tuple[Route | None, bool]:
        """Forward mode: the server the login names, once it passed forward.allow (None: refused or gone)."""
        settings = self.settings.forward
        front_tls = self._front_tls(reader, writer, client, secured)
        asked = await forward.read_login(reader, writer, self.settings.timeouts.login_s, front_tls, self.proxy_users)
        if asked is None:
            self.metrics.session_ended(SessionOutcome.CLIENT_CLOSED)
            return None, secured
        if isinstance(asked, forward.Refused):
            await self._refuse_forward(writer, asked, client, "")
            return None, secured
        destination = asked.destination
        found = await forward.resolve(destination, self.resolver, settings.resolve_timeout_s)
        if isinstance(found, forward.Refused):
            refused: forward.Refused | None = found
        else:
            refused = forward.check(destination, found, Allowlist(settings.allow), self._loops)
        if refused is not None:
            await self._refuse_forward(writer, refused, client, str(destination))
            return None, secured
        assert isinstance(found, list)
        log.info("forward", extra=fields(client=client, destination=destination, proxy_user=asked.proxy_user or "-"))
        return forward.route_to(destination, found, forward.replay_line(destination)), asked.secured

    def _loops(self, ip: IPAddress, port: int) -> bool:
        """Forward mode: `ip`:`port` is one of our own listeners."""
        ports = {address.port for address in (*self.addresses, *self.settings.tls.client.implicit_listen)}
        return port in ports and (ip in self.policy.own_addresses or is_own_address(ip))

    async def _refuse_forward(
        self, writer: asyncio.StreamWriter, refused: forward.Refused, client: IPAddress, destination: str
    ) -> None:
        forward.refuse(writer, refused, client, destination)
        if refused.guessed:
            self.guard.offence(client, Offence.LOGIN_FAILED)
        self.metrics.refused(refused.reason)
        self.metrics.session_ended(SessionOutcome.REFUSED_FORWARD)
        with contextlib.suppress(Exception):
            await writer.drain()

    def proxy_refused(self, refused: ProxyRefused) -> None:
        self.metrics.proxy_refused(refused.reason)
        self.metrics.session_ended(SessionOutcome.REFUSED_ACL)
        log.warning("proxy protocol refused", extra=fields(reason=refused.reason, detail=str(refused)))

    async def _refuse_by_policy(self, writer: asyncio.StreamWriter, client: IPAddress, text: str) -> None:
        """421 and close, before any upstream is contacted (rules: clients, destinations)."""
        self.metrics.refused(Refusal.ACL)
        self.metrics.session_ended(SessionOutcome.REFUSED_ACL)
        log.info("connection refused", extra=fields(client=client, reason="acl", text=text))
        await _refuse(writer, text)

    async def _refuse_banned(self, writer: asyncio.StreamWriter, client: IPAddress) -> None:
        """421 and close, before any upstream is contacted: the defender banned this client."""
        self.metrics.session_ended(SessionOutcome.REFUSED_BANNED)
        log.info("connection refused", extra=fields(client=client, reason="banned"))
        await _refuse(writer, "Service not available: too many failed or refused attempts from your address.")

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
        if self.upstreams is not None:
            await self.upstreams.stop()
        for session in list(self.sessions.values()):
            session.drain()  # idle sessions close now, the others when their transfers end
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._empty.wait()
        for session in list(self.sessions.values()):
            session.close(SessionOutcome.SHUTDOWN)
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
                self.metrics.refused(Refusal.LIMIT)
                self.metrics.session_ended(SessionOutcome.REFUSED_LIMIT)

    def close_kernel_path(self) -> None:
        """Delete our nftables table; connections already established keep flowing (conntrack)."""
        if self.context.kernel_path is not None:
            self.context.kernel_path.close()
            self.context.kernel_path = None


async def _refuse(writer: asyncio.StreamWriter, text: str) -> None:
    with contextlib.suppress(Exception):
        writer.write(reply(421, text))
        await writer.drain()
        writer.close()


def drop_privileges(user: str) -> None:
    """Become `user` (and its primary group) for good; called after every privileged port is bound."""
    entry = lookup_user(user)  # ConfigError, in the words `check` uses
    if os.geteuid() == entry.pw_uid:
        return
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("running as", extra=fields(user=user, uid=entry.pw_uid, gid=entry.pw_gid))


async def serve(
    settings: Settings, worker: int = 0, *, load: Callable[[], Settings] | None = None, inbox: int | None = None
) -> None:
    """Run the gateway until SIGINT or SIGTERM, then shut down gracefully. SIGHUP reloads: `load` reads the
    settings again (None: the same settings, with their files read again); with `inbox`, the parent process
    does that and sends what it read there, and SIGHUP is the parent's (alg.gateway.reload)."""
    with _worker_field(worker):
        await _serve(settings, worker, load, inbox)


@contextlib.contextmanager
def _worker_field(worker: int) -> Iterator[None]:
    """Every log record of this process carries worker=N; a session's also carry session=WORKER-NUMBER."""
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.worker = worker
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


async def _serve(settings: Settings, worker: int, load: Callable[[], Settings] | None, inbox: int | None) -> None:
    from alg.gateway.registry import SessionsView
    from alg.ops.http import start_http_listeners

    gateway = Gateway(settings, worker=worker)
    await gateway.start()
    http_listeners = await start_http_listeners(settings, gateway, SessionsView(gateway.sessions), worker)
    if settings.user is not None:
        drop_privileges(settings.user)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if inbox is None:
        loop.add_signal_handler(signal.SIGHUP, gateway.reload, load)
    else:
        loop.add_signal_handler(signal.SIGHUP, log.debug, "SIGHUP ignored: the parent process reloads")
        _receive_reloads(loop, inbox, gateway)
    try:
        await stop.wait()
        grace_s = gateway.settings.timeouts.shutdown_grace_s  # as reloaded
        log.info("shutting down (grace %s s)", grace_s)
        await gateway.stop(grace_s)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if inbox is not None:
            loop.remove_reader(inbox)
        gateway.close_kernel_path()
        for listener in http_listeners:
            listener.close()


def _receive_reloads(loop: asyncio.AbstractEventLoop, inbox: int, gateway: Gateway) -> None:
    """Apply each reload the parent sends on the pipe `inbox`; stop reading when the parent is gone."""
    received = Inbox()

    def readable() -> None:
        try:
            data = os.read(inbox, 1 << 16)
            messages = received.feed(data) if data else []
        except (OSError, ValueError) as error:
            log.error("reload channel broken: %s", error)
            data = b""
            messages = []
        if not data:
            loop.remove_reader(inbox)
        for message in messages:
            gateway.apply(message)

    loop.add_reader(inbox, readable)
