"""Several upstream servers: which one a new session goes to, and connecting to it with failover.

Rules: choosing is pure (`UpstreamPool.candidates`: healthy upstreams in policy order, then the unhealthy ones as
a last resort); `Route.connect` tries them in that order and moves on when a connect fails before the 220
banner. A per_user session is routed by its USER name to its own upstream only: another server would not know
that user. Counts (sessions per upstream, connect failures) go to the metrics as they happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from alg.ftp.addresses import HostPort
from alg.gateway.health import Checked, HealthState
from alg.net import proxyproto
from alg.ops.banner import BannerError, read_banner
from alg.ops.logs import printable
from alg.ops.metrics import Metrics

log = logging.getLogger("ftp_alg.upstreams")

READ_BYTES = 64 * 1024
POLICIES = ("round_robin", "least_sessions", "per_user")


@dataclass(slots=True, eq=False)
class Upstream:
    label: str
    address: HostPort
    weight: int = 1
    proxy_version: int | None = None  # PROXY protocol version sent before FTP, or None
    health: HealthState = field(default_factory=lambda: HealthState(rise=2, fall=3))
    sessions: int = 0  # sessions connected now
    current: int = 0  # smooth weighted round robin's running score


class UpstreamPool:
    """The upstreams of one gateway process and the policy that spreads sessions over them."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        policy: str = "round_robin",
        users: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
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
        if metrics is not None:
            metrics.declare_upstreams([upstream.label for upstream in self.upstreams])
            for upstream in self.upstreams:
                metrics.upstream_healthy.labels(upstream.label).set(1 if upstream.health.healthy else 0)

    @classmethod
    def from_settings(cls, settings: object, metrics: Metrics | None = None) -> UpstreamPool:
        servers = getattr(settings, "upstream_servers", ())
        check = getattr(settings, "health_check", None)
        rise, fall = (check.rise, check.fall) if check is not None else (2, 3)
        upstreams = [
            Upstream(
                label=server.label,
                address=server.address,
                weight=server.weight,
                proxy_version={"v1": 1, "v2": 2}.get(server.proxy_protocol or ""),
                health=HealthState(rise=rise, fall=fall),
            )
            for server in servers
        ]
        return cls(
            upstreams,
            policy=getattr(settings, "upstream_policy", "round_robin"),
            users=getattr(settings, "upstream_users", {}),
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
        return [
            Checked(upstream.label, upstream.address, upstream.health, upstream.proxy_version)
            for upstream in self.upstreams
        ]

    def health_changed(self, checked: Checked) -> None:
        if self.metrics is not None:
            self.metrics.upstream_healthy.labels(checked.label).set(1 if checked.state.healthy else 0)


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
    """No upstream greeted: the text names each one and why."""


@dataclass(slots=True)
class Route:
    """Where one session goes: the upstreams to try in order, and the login to replay (per_user)."""

    pool: UpstreamPool
    candidates: list[Upstream]
    replay: bytes | None = None  # the client's USER line, already answered by our own greeting
    chosen: Upstream | None = None

    @property
    def first(self) -> HostPort:
        return self.candidates[0].address

    async def connect(
        self, client: HostPort, dialled: HostPort, timeout_s: float, *, greet: bool = True
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """Connect to the first upstream that greets (reader, writer, its banner); with a single candidate and
        nothing to replay, the banner is left to the session, which passes it on as before. greet=False: fail
        over on the TCP connect only, and leave the banner to the caller (who must read it after TLS, say)."""
        read_greeting = greet and (len(self.candidates) > 1 or self.replay is not None)
        reasons = []
        for upstream in self.candidates:
            try:
                async with asyncio.timeout(timeout_s):
                    reader, writer, banner = await _dial(upstream, client, dialled, read_greeting)
            except (OSError, TimeoutError, BannerError) as error:
                if len(self.candidates) == 1 and not isinstance(error, BannerError):
                    self._count_failure(upstream, error)
                    raise  # one upstream: the session words its 421 from the error itself, as always
                why = "timed out" if isinstance(error, TimeoutError) else (getattr(error, "strerror", None) or error)
                reasons.append(f"{upstream.label}: {why}")
                self._count_failure(upstream, why)
                continue
            if upstream is not self.candidates[0]:
                log.info("failed over upstream=%s tried=%d", upstream.label, len(reasons))
            self.chosen = upstream
            upstream.sessions += 1
            if self.pool.metrics is not None:
                self.pool.metrics.upstream_sessions.labels(upstream.label).inc()
                self.pool.metrics.upstream_sessions_active.labels(upstream.label).inc()
            return reader, writer, banner
        raise UpstreamsUnavailable("; ".join(reasons))

    def _count_failure(self, upstream: Upstream, why: object) -> None:
        log.warning("upstream connect failed upstream=%s error=%s", upstream.label, printable(str(why)))
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
    upstream: Upstream, client: HostPort, dialled: HostPort, read_greeting: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection(str(upstream.address.ip), upstream.address.port, limit=READ_BYTES)
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
