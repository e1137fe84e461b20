"""Several upstream servers: which one a new session goes to, and connecting to it with failover.

Rules: choosing is pure (`UpstreamPool.candidates`: healthy upstreams in policy order, then the unhealthy ones as
a last resort); `Route.connect` tries them in that order, each upstream's addresses in order (its healthy ones
first), and moves on when a connect fails before the 220 banner. A per_user session is routed by its USER name
to its own upstream only: another server would not know that user. An upstream given by host name is resolved
at start (a name that does not resolve stops the start) and again every `resolve_interval_s`; while it does not
resolve it is unhealthy (its last addresses stay as a last resort). Sessions only ever see IP addresses.
Counts (sessions per upstream, connect failures, failed resolutions) go to the metrics as they happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from alg.errors import ConfigError
from alg.ftp.addresses import HostPort, IPAddress
from alg.gateway.health import Checked, HealthState
from alg.gateway.resolve import NamedAddress, NameNotResolved, Resolver, system_resolver
from alg.net import proxyproto
from alg.ops.banner import BannerError, read_banner
from alg.ops.config import Settings
from alg.ops.config_values import HostName
from alg.ops.logs import fields, printable
from alg.ops.metrics import Metrics

log = logging.getLogger("ftp_alg.upstreams")

READ_BYTES = 64 * 1024
POLICIES = ("round_robin", "least_sessions", "per_user")
RESOLVE_INTERVAL_S = 30.0  # an upstream name's addresses are looked up again this often
RESOLVE_TIMEOUT_S = 10.0  # a resolver silent this long (DNS servers down) counts as a name that does not resolve


@dataclass(slots=True, eq=False)
class Upstream:
    label: str
    address: HostPort  # the first address; a named upstream's placeholder (0.0.0.0) until it resolves
    weight: int = 1
    proxy_version: int | None = None  # PROXY protocol version sent before FTP, or None
    health: HealthState = field(default_factory=lambda: HealthState(rise=2, fall=3))
    sessions: int = 0  # sessions connected now
    current: int = 0  # smooth weighted round robin's running score
    name: HostName | None = None  # given by host name: resolved by the pool
    resolve_interval_s: float = RESOLVE_INTERVAL_S
    data_mode: str | None = None  # upstream_data_mode for this server; None: the gateway's
    endpoints: list[Checked] = field(default_factory=list)  # each address, with its own health checks
    unresolved: str | None = None  # why the name does not resolve now

    def __post_init__(self) -> None:
        if self.name is None and not self.endpoints:  # an address: one endpoint, sharing the upstream's health
            self.endpoints = [Checked(self.label, self.address, self.health, self.proxy_version)]

    def ordered(self) -> list[Checked]:
        """Its addresses to try: the healthy ones in resolver order, then the others."""
        return sorted(self.endpoints, key=lambda endpoint: not endpoint.state.healthy)


class UpstreamPool:
    """The upstreams of one gateway process and the policy that spreads sessions over them."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        policy: str = "round_robin",
        users: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        if not upstreams:
            raise ValueError("an upstream pool needs at least one upstream")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        self.upstreams = list(upstreams)
        self.policy = policy
        self._by_label = {upstream.label: upstream for upstream in self.upstreams}
        self.users = dict(users or {})
        self.metrics = metrics
        self.resolver = resolver
        self._resolving: list[asyncio.Task[None]] = []
        if metrics is not None:
            metrics.declare_upstreams([upstream.label for upstream in self.upstreams])
            for upstream in self.upstreams:
                metrics.upstream_healthy.labels(upstream.label).set(1 if upstream.health.healthy else 0)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> UpstreamPool:
        servers = settings.upstream_servers
        check = settings.health_check
        rise, fall = (check.rise, check.fall) if check is not None else (2, 3)
        upstreams = []
        for server in servers:
            named: HostName | None = None
            address = server.address
            if isinstance(address, HostName):  # a placeholder until the name resolves (pool.start())
                named, address = address, HostPort(IPv4Address(0), address.port)
            upstreams.append(
                Upstream(
                    label=server.label,
                    address=address,
                    weight=server.weight,
                    proxy_version={"v1": 1, "v2": 2}.get(server.proxy_protocol or ""),
                    health=HealthState(rise=rise, fall=fall, healthy=named is None),
                    name=named,
                    resolve_interval_s=server.resolve_interval_s,
                    data_mode=server.upstream_data_mode,
                )
            )
        return cls(
            upstreams,
            policy=settings.upstream_policy,
            users=settings.upstream_users,
            metrics=metrics,
        )

    @property
    def routes_by_user(self) -> bool:
        return self.policy == "per_user"

    def healthy_reason(self) -> str | None:
        """None when some upstream passes its health checks, else why not (for /readyz)."""
        if any(upstream.health.healthy for upstream in self.upstreams):
            return None
        return "no upstream is healthy: " + ", ".join(upstream.label for upstream in self.upstreams)

    def candidates(self, user: str | None = None) -> list[Upstream]:
        """The upstreams to try, best first: one chosen by the policy, then the other healthy ones, then the
        unhealthy ones (the checks may lag behind a server that just came back). A mapped user gets only its own."""
        if user is not None and self.routes_by_user and user in self.users:
            return [self._by_label[self.users[user]]]
        healthy = [upstream for upstream in self.upstreams if upstream.health.healthy]
        resting = [upstream for upstream in self.upstreams if not upstream.health.healthy]
        if not healthy:
            return resting
        if self.policy == "least_sessions":
            least = min(upstream.sessions / upstream.weight for upstream in healthy)
            first = _smooth_weighted([u for u in healthy if u.sessions / u.weight == least])
        else:
            first = _smooth_weighted(healthy)
        return [first, *(upstream for upstream in healthy if upstream is not first), *resting]

    def health_targets(self) -> list[Checked]:
        """Every address of every upstream, as the health checker probes them (read again each round: a name's
        addresses change)."""
        return [endpoint for upstream in self.upstreams for endpoint in upstream.endpoints]

    def health_changed(self, checked: Checked) -> None:
        upstream = self._by_label.get(checked.label)
        if upstream is not None:
            self._settle(upstream)

    def _settle(self, upstream: Upstream) -> None:
        """A named upstream is healthy while it resolves and one of its addresses passes its checks."""
        if upstream.name is not None:
            usable = any(endpoint.state.healthy for endpoint in upstream.endpoints)
            upstream.health.healthy = upstream.unresolved is None and usable
        if self.metrics is not None:
            self.metrics.upstream_healthy.labels(upstream.label).set(1 if upstream.health.healthy else 0)

    # --- host names ---

    async def start(self, *, strict: bool = True) -> None:
        """Resolve every upstream name (strict: ConfigError naming the one that does not; else it is unhealthy
        until it resolves), then keep them fresh."""
        for upstream in self.upstreams:
            if upstream.name is not None:
                try:
                    await self.resolve(upstream, strict=strict)
                except NameNotResolved as error:
                    hint = "give a name this host resolves (/etc/hosts, DNS) or an IP address"
                    raise ConfigError(f"{error}; {hint}", key="upstream") from None
        for upstream in self.upstreams:
            if upstream.name is not None:
                task = asyncio.create_task(self._keep_resolving(upstream), name=f"resolve {upstream.label}")
                self._resolving.append(task)

    def adopt(self, before: UpstreamPool) -> None:
        """After a reload: an upstream kept (same label and name) starts from what the old pool knew, its
        addresses and their health, so new sessions need not wait for a lookup."""
        known = {(upstream.label, upstream.name): upstream for upstream in before.upstreams}
        for upstream in self.upstreams:
            found = known.get((upstream.label, upstream.name))
            if found is None:
                continue
            upstream.health.healthy, upstream.health.streak = found.health.healthy, found.health.streak
            if upstream.name is not None:
                upstream.endpoints, upstream.address, upstream.unresolved = (
                    list(found.endpoints),
                    found.address,
                    found.unresolved,
                )
            self._settle(upstream)

    async def stop(self) -> None:
        for task in self._resolving:
            task.cancel()
        for task in self._resolving:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._resolving = []

    async def _keep_resolving(self, upstream: Upstream) -> None:
        while True:
            await asyncio.sleep(upstream.resolve_interval_s)
            try:
                await self.resolve(upstream)
            except Exception:  # a bug here must not end every later lookup
                log.exception("upstream resolution failed", extra=fields(upstream=upstream.label))

    async def resolve(self, upstream: Upstream, *, strict: bool = False) -> None:
        """Look a named upstream up once: its addresses follow the answer (an address kept keeps its health);
        no answer makes it unhealthy (counted each time, logged once per change), or raises NameNotResolved
        (strict). A resolver that does not answer within RESOLVE_TIMEOUT_S counts as no answer."""
        assert upstream.name is not None
        try:
            found = await _lookup_with_timeout(self.resolver, upstream.name)
        except NameNotResolved as error:
            if strict:
                raise
            if self.metrics is not None:
                self.metrics.upstream_resolve_failures.labels(upstream.label).inc()
            if upstream.unresolved is None:
                log.warning("upstream name does not resolve", extra=fields(upstream=upstream.label, reason=str(error)))
            upstream.unresolved = str(error)
            self._settle(upstream)
            return
        addresses: list[HostPort] = [NamedAddress.of(ip, upstream.name.port, upstream.name.name) for ip in found]
        kept = {endpoint.address: endpoint for endpoint in upstream.endpoints}
        if upstream.unresolved is not None or list(kept) != addresses:
            shown = ",".join(str(a) for a in addresses)
            log.info("upstream resolved", extra=fields(upstream=upstream.label, addresses=shown))
        rise, fall = upstream.health.rise, upstream.health.fall
        upstream.endpoints = [
            kept.get(address) or Checked(upstream.label, address, HealthState(rise, fall), upstream.proxy_version)
            for address in addresses
        ]
        upstream.address = addresses[0]
        upstream.unresolved = None
        self._settle(upstream)


async def _lookup_with_timeout(resolver: Resolver, name: HostName) -> list[IPAddress]:
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            return await resolver(name.name, name.port)
    except TimeoutError:
        raise NameNotResolved(f"{name.name} does not resolve (no answer within {RESOLVE_TIMEOUT_S:g} s)") from None


def _smooth_weighted(upstreams: Sequence[Upstream]) -> Upstream:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a, never five a's in a row."""
    total = 0
    best: Upstream | None = None
    for upstream in upstreams:
        upstream.current += upstream.weight
        total += upstream.weight
        if best is None or upstream.current > best.current:
            best = upstream
    assert best is not None
    best.current -= total
    return best


class UpstreamsUnavailable(OSError):
    """No upstream greeted: the text names each one and why (for logs); `strerror` says it without a name or an
    address, fit for a client's reply."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.strerror = "no FTP server answered"


@dataclass(slots=True)
class Route:
    """Where one session goes: the upstreams to try in order, and the login to replay (per_user)."""

    pool: UpstreamPool
    candidates: list[Upstream]
    replay: bytes | None = None  # the client's USER line, already answered by our own greeting
    chosen: Upstream | None = None
    connected: HostPort | None = None  # the address of `chosen` that answered

    @property
    def first(self) -> HostPort:
        return self.candidates[0].address

    async def connect(
        self, client: HostPort, dialled: HostPort, timeout_s: float, *, greet: bool = True
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """Connect to the first upstream address that greets (reader, writer, its banner); with a single address
        and nothing to replay, the banner is left to the session, which passes it on as before. greet=False: fail
        over on the TCP connect only, and leave the banner to the caller (who must read it after TLS, say)."""
        tries = [(upstream, endpoint.address) for upstream in self.candidates for endpoint in upstream.ordered()]
        read_greeting = greet and (len(tries) > 1 or self.replay is not None)
        reasons = [f"{u.label}: {u.unresolved}" for u in self.candidates if u.unresolved and not u.endpoints]
        for upstream, address in tries:
            try:
                async with asyncio.timeout(timeout_s):
                    reader, writer, banner = await _dial(upstream, address, client, dialled, read_greeting)
            except (OSError, TimeoutError, BannerError) as error:
                if len(tries) == 1 and not reasons and not isinstance(error, BannerError):
                    self._count_failure(upstream, address, error)
                    raise  # one address: the session words its 421 from the error itself, as always
                why = "timed out" if isinstance(error, TimeoutError) else (getattr(error, "strerror", None) or error)
                reasons.append(f"{upstream.label} {address}: {why}")
                self._count_failure(upstream, address, why)
                continue
            if reasons:
                log.info("failed over", extra=fields(upstream=upstream.label, address=address, tried=len(reasons)))
            self.chosen, self.connected = upstream, address
            upstream.sessions += 1
            if self.pool.metrics is not None:
                self.pool.metrics.upstream_sessions.labels(upstream.label).inc()
                self.pool.metrics.upstream_sessions_active.labels(upstream.label).inc()
            return reader, writer, banner
        raise UpstreamsUnavailable("; ".join(reasons))

    def _count_failure(self, upstream: Upstream, address: HostPort, why: object) -> None:
        error = printable(str(why))
        log.warning("upstream connect failed", extra=fields(upstream=upstream.label, address=address, error=error))
        if self.pool.metrics is not None:
            self.pool.metrics.upstream_connect_failures.labels(upstream.label).inc()

    def release(self) -> None:
        """The session ended: one fewer on its upstream."""
        if self.chosen is not None:
            self.chosen.sessions -= 1
            if self.pool.metrics is not None:
                self.pool.metrics.upstream_sessions_active.labels(self.chosen.label).dec()
            self.chosen = None


async def _dial(
    upstream: Upstream, address: HostPort, client: HostPort, dialled: HostPort, read_greeting: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection(str(address.ip), address.port, limit=READ_BYTES)
    try:
        if upstream.proxy_version is not None:
            writer.write(proxyproto.encode(upstream.proxy_version, client, dialled))
        banner = await read_banner(reader) if read_greeting else b""
    except BaseException:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        raise
    return reader, writer, banner
