"""Upstream choice (round robin by weight, least sessions, per user), health rise/fall, failover order."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.errors import ConfigError
from alg.ftp.addresses import HostPort, IPAddress
from alg.gateway import upstreams
from alg.gateway.health import HealthChecker, HealthState
from alg.gateway.resolve import NameNotResolved
from alg.gateway.secure import TlsRuntime, upstream_name
from alg.gateway.upstreams import Route, Upstream, UpstreamPool, UpstreamsUnavailable
from alg.ops.config import settings_from_mapping
from alg.ops.config_values import HostName
from alg.ops.metrics import Metrics


def _pool(*weights: int, policy: str = "round_robin", users: dict[str, str] | None = None) -> UpstreamPool:
    upstreams = [
        Upstream(chr(ord("a") + i), HostPort(ip_address(f"198.51.100.{10 + i}"), 21), weight=w)
        for i, w in enumerate(weights)
    ]
    return UpstreamPool(upstreams, policy=policy, users=users)


def _firsts(pool: UpstreamPool, n: int, user: str | None = None) -> list[str]:
    return [pool.candidates(user)[0].label for _ in range(n)]


def test_round_robin_alternates() -> None:
    assert _firsts(_pool(1, 1), 4) == ["a", "b", "a", "b"]


def test_weights_are_smooth() -> None:
    # nginx's example: 5,1,1 spreads b and c between the a's.
    assert _firsts(_pool(5, 1, 1), 7) == ["a", "a", "b", "a", "c", "a", "a"]


@given(st.lists(st.integers(1, 20), min_size=1, max_size=5))
def test_weights_give_exact_shares_over_a_cycle(weights: list[int]) -> None:
    pool = _pool(*weights)
    shares = Counter(_firsts(pool, sum(weights)))
    assert [shares[chr(ord("a") + i)] for i in range(len(weights))] == weights


def test_candidates_list_every_other_healthy_upstream_for_failover() -> None:
    pool = _pool(1, 1, 1)
    first = pool.candidates()
    assert [u.label for u in first] == ["a", "b", "c"]
    assert [u.label for u in pool.candidates()] == ["b", "a", "c"]


def test_unhealthy_upstreams_are_skipped_then_last_resort() -> None:
    pool = _pool(1, 1, 1)
    pool.upstreams[1].health.healthy = False
    assert {pool.candidates()[0].label for _ in range(6)} == {"a", "c"}
    assert pool.candidates()[-1].label == "b"  # tried only when every healthy one failed
    for upstream in pool.upstreams:
        upstream.health.healthy = False
    assert pool.healthy_reason() is not None and "no upstream is healthy" in pool.healthy_reason()  # type: ignore[operator]
    assert len(pool.candidates()) == 3


def test_least_sessions_prefers_the_emptiest_by_weight() -> None:
    pool = _pool(1, 2, policy="least_sessions")
    pool.upstreams[0].sessions, pool.upstreams[1].sessions = 1, 1
    assert _firsts(pool, 3) == ["b", "b", "b"]  # 1/2 < 1/1
    pool.upstreams[1].sessions = 4
    assert _firsts(pool, 2) == ["a", "a"]


def test_least_sessions_ties_go_round() -> None:
    assert _firsts(_pool(1, 1, policy="least_sessions"), 4) == ["a", "b", "a", "b"]


def test_per_user_maps_a_user_to_its_upstream_only() -> None:
    pool = _pool(1, 1, policy="per_user", users={"alice": "b"})
    assert [u.label for u in pool.candidates("alice")] == ["b"]
    pool.upstreams[1].health.healthy = False  # still b: another server would not know alice
    assert [u.label for u in pool.candidates("alice")] == ["b"]
    assert _firsts(pool, 2, "bob") == ["a", "a"]  # unmapped users: round robin among the healthy


def test_route_counts_sessions_per_upstream() -> None:
    metrics = Metrics()
    pool = _pool(1, 1)
    pool.metrics = metrics
    metrics.declare_upstreams(["a", "b"])
    route = Route(pool, pool.candidates())
    route.chosen = pool.upstreams[0]
    pool.upstreams[0].sessions = 1
    route.release()
    assert pool.upstreams[0].sessions == 0 and route.chosen is None
    route.release()  # twice is harmless
    assert pool.upstreams[0].sessions == 0


@pytest.mark.parametrize(
    ("results", "healthy"),
    [
        ([False, False], True),  # fall 3: two failures are not enough
        ([False, False, False], False),
        ([False, False, True, False, False], True),  # a success resets the count
        ([False] * 3 + [True], False),  # rise 2
        ([False] * 3 + [True, True], True),
        ([False] * 3 + [True, False, True], False),
    ],
)
def test_health_rise_and_fall(results: list[bool], healthy: bool) -> None:
    state = HealthState(rise=2, fall=3)
    for ok in results:
        state.record(ok)
    assert state.healthy is healthy


def test_health_record_reports_transitions_only() -> None:
    state = HealthState(rise=1, fall=1)
    assert [state.record(ok) for ok in (True, False, False, True, True)] == [False, True, False, True, False]


def test_pool_from_settings_keeps_a_single_upstream_flag_working() -> None:
    settings = settings_from_mapping({"upstream": "198.51.100.10:2121"})
    pool = UpstreamPool.from_settings(settings)
    assert [(u.label, u.address.port, u.proxy_version) for u in pool.upstreams] == [("198.51.100.10:2121", 2121, None)]


def test_pool_from_settings() -> None:
    settings = settings_from_mapping(
        {
            "upstreams": [
                {"address": "198.51.100.10", "name": "a", "weight": 3, "proxy_protocol": "v2"},
                {"address": "198.51.100.11", "name": "b", "proxy_protocol": "v1"},
            ],
            "upstream_policy": "per_user",
            "upstream_users": {"alice": "b"},
            "health_check": {"rise": 1, "fall": 5},
        }
    )
    pool = UpstreamPool.from_settings(settings, Metrics())
    assert [(u.label, u.weight, u.proxy_version) for u in pool.upstreams] == [("a", 3, 2), ("b", 1, 1)]
    assert pool.upstreams[0].health.fall == 5 and pool.routes_by_user
    assert [u.label for u in pool.candidates("alice")] == ["b"]


# ---- upstreams given by host name: resolved by the pool, every address tried, unhealthy while unresolved ----


class Names:
    """A resolver the test edits, as an admin edits a hosts file or a DNS zone."""

    def __init__(self, names: dict[str, list[str]] | None = None) -> None:
        self.names = {name: [ip_address(a) for a in addresses] for name, addresses in (names or {}).items()}
        self.lookups = 0

    async def __call__(self, name: str, port: int) -> list[IPAddress]:
        self.lookups += 1
        if not self.names.get(name):
            raise NameNotResolved(f"{name} does not resolve (Name or service not known)")
        return list(self.names[name])


def _named_pool(names: Names, *entries: dict[str, object], metrics: Metrics | None = None) -> UpstreamPool:
    settings = settings_from_mapping({"upstreams": list(entries)})
    pool = UpstreamPool.from_settings(settings, metrics)
    pool.resolver = names
    return pool


def test_config_takes_host_names_for_upstreams() -> None:
    settings = settings_from_mapping({"upstream": "FTP.Internal.example."})
    assert settings.upstream == HostName("ftp.internal.example", 21)
    settings = settings_from_mapping({"upstreams": [{"address": "ftp-a:2121", "resolve_interval_s": 0.5}]})
    assert settings.upstreams[0].address == HostName("ftp-a", 2121) and settings.upstreams[0].label == "ftp-a:2121"


def test_a_name_that_does_not_resolve_stops_the_start() -> None:
    pool = _named_pool(Names(), {"address": "ftp.internal.example"})
    with pytest.raises(
        ConfigError, match=r"^upstream: ftp.internal.example does not resolve \(Name or service not known\); give"
    ):
        asyncio.run(pool.start())


def test_a_name_gives_every_address_in_order_and_sessions_only_see_addresses() -> None:
    names = Names({"ftp.internal.example": ["198.51.100.10", "198.51.100.11"]})
    pool = _named_pool(names, {"address": "ftp.internal.example:2121", "name": "web"})

    async def main() -> None:
        await pool.start()
        await pool.stop()

    asyncio.run(main())
    (upstream,) = pool.upstreams
    assert [str(e.address) for e in upstream.ordered()] == ["198.51.100.10:2121", "198.51.100.11:2121"]
    assert upstream.address == HostPort(ip_address("198.51.100.10"), 2121) and upstream.health.healthy
    assert [str(t.address) for t in pool.health_targets()] == ["198.51.100.10:2121", "198.51.100.11:2121"]
    upstream.endpoints[0].state.healthy = False  # its health check failed: the other address first
    assert [str(e.address) for e in upstream.ordered()] == ["198.51.100.11:2121", "198.51.100.10:2121"]


def test_a_name_that_stops_resolving_is_unhealthy_counted_logged_once_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    names = Names({"ftp-a": ["198.51.100.10"]})
    pool = _named_pool(names, {"address": "ftp-a", "name": "a"}, metrics=metrics)
    (upstream,) = pool.upstreams

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("ftp_alg_upstream_healthy", {"upstream": "a"})

    def failures() -> float | None:
        return metrics.registry.get_sample_value("ftp_alg_upstream_resolve_failures_total", {"upstream": "a"})

    async def main() -> None:
        await pool.start()
        assert gauge() == 1 and pool.healthy_reason() is None
        names.names["ftp-a"] = []
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ftp_alg.upstreams"):
            await pool.resolve(upstream)
            await pool.resolve(upstream)
            assert gauge() == 0 and failures() == 2 and not upstream.health.healthy
            assert pool.healthy_reason() == "no upstream is healthy: a"
            assert [str(e.address) for e in upstream.ordered()] == ["198.51.100.10:21"]  # kept as a last resort
            names.names["ftp-a"] = [ip_address("198.51.100.12")]
            await pool.resolve(upstream)
        assert gauge() == 1 and upstream.health.healthy
        assert upstream.address == HostPort(ip_address("198.51.100.12"), 21)

    asyncio.run(main())
    assert [(r.getMessage(), getattr(r, "fields", None)) for r in caplog.records] == [
        (
            "upstream name does not resolve",
            {"upstream": "a", "reason": "ftp-a does not resolve (Name or service not known)"},
        ),
        ("upstream resolved", {"upstream": "a", "addresses": "198.51.100.12:21"}),
    ]


def test_names_are_looked_up_again_at_their_interval() -> None:
    names = Names({"ftp-a": ["198.51.100.10"]})
    pool = _named_pool(names, {"address": "ftp-a", "resolve_interval_s": 0.01})

    async def main() -> None:
        await pool.start()
        names.names["ftp-a"] = [ip_address("198.51.100.11")]
        async with asyncio.timeout(5):
            while pool.upstreams[0].address.ip != ip_address("198.51.100.11"):
                await asyncio.sleep(0.01)
        await pool.stop()

    asyncio.run(main())
    assert names.lookups >= 2


def test_a_named_upstream_turns_healthy_again_when_one_address_passes_its_checks() -> None:
    names = Names({"ftp-a": ["198.51.100.10", "198.51.100.11"]})
    pool = _named_pool(names, {"address": "ftp-a", "name": "a"})
    (upstream,) = pool.upstreams
    asyncio.run(pool.start())
    first, second = upstream.endpoints
    first.state.healthy = False
    pool.health_changed(first)
    assert upstream.health.healthy  # the other address still passes
    second.state.healthy = False
    pool.health_changed(second)
    assert not upstream.health.healthy
    first.state.healthy = True
    pool.health_changed(first)
    assert upstream.health.healthy


def test_connect_tries_each_address_of_a_name_in_order() -> None:
    """Over loopback: the name's first address refuses, the second greets; the session gets the second."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> tuple[str, bytes]:
        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        names = Names({"ftp-a": ["127.0.0.2", "127.0.0.1"]})  # nothing listens on 127.0.0.2
        pool = _named_pool(names, {"address": f"ftp-a:{port}", "name": "a"})
        await pool.start()
        route = Route(pool, pool.candidates())
        here = HostPort(ip_address("127.0.0.1"), 1)
        _, writer, banner = await route.connect(here, here, 5)
        writer.close()
        server.close()
        await server.wait_closed()
        assert route.chosen is pool.upstreams[0]
        assert route.connected is not None
        # TLS toward it checks the certificate against the name, as a client dialling the name would.
        assert upstream_name(TlsRuntime(), route.connected) == "ftp-a"
        assert upstream_name(TlsRuntime(upstream_server_name="other.test"), route.connected) == "other.test"
        return str(route.connected), banner

    connected, banner = asyncio.run(main())
    assert connected.startswith("127.0.0.1:") and banner == b"220 ready\r\n"


def test_no_upstream_answering_is_worded_for_clients_without_addresses_or_names() -> None:
    """The session's 421 takes strerror: the upstreams' names and addresses stay in the log (str)."""
    names = Names({"ftp-a": ["127.0.0.2"]})
    pool = _named_pool(names, {"address": "ftp-a:2", "name": "a"}, {"address": "127.0.0.3:2", "name": "b"})

    async def main() -> UpstreamsUnavailable:
        await pool.start()
        here = HostPort(ip_address("127.0.0.1"), 1)
        with pytest.raises(UpstreamsUnavailable) as caught:
            await Route(pool, pool.candidates()).connect(here, here, 5)
        return caught.value

    error = asyncio.run(main())
    assert error.strerror == "no FTP server answered"
    assert str(error).startswith("a 127.0.0.2:2: ") and "; b 127.0.0.3:2: " in str(error)


def test_each_address_of_a_name_is_health_checked() -> None:
    """Over loopback: the name's first address is dead, the second greets; after one round (fall 1) the dead one
    is out and tried last, and the upstream stays healthy on the other."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> UpstreamPool:
        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = _named_pool(Names({"ftp-a": ["127.0.0.2", "127.0.0.1"]}), {"address": f"ftp-a:{port}", "name": "a"})
        await pool.start()
        for endpoint in pool.upstreams[0].endpoints:
            endpoint.state.fall = 1
        checker = HealthChecker(pool.health_targets, interval_s=60, timeout_s=5, on_change=pool.health_changed)
        await checker.check_once()
        server.close()
        await server.wait_closed()
        return pool

    pool = asyncio.run(main())
    (upstream,) = pool.upstreams
    dead, alive = upstream.endpoints
    assert str(dead.address).startswith("127.0.0.2:") and not dead.state.healthy
    assert dead.last_reason is not None and "cannot connect" in dead.last_reason
    assert alive.state.healthy and upstream.health.healthy
    assert upstream.ordered() == [alive, dead]


def test_a_resolver_that_never_answers_is_a_name_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstreams, "RESOLVE_TIMEOUT_S", 0.05)

    async def silent(name: str, port: int) -> list[IPAddress]:
        await asyncio.Event().wait()  # DNS servers down: no answer, ever
        return []

    pool = _named_pool(Names(), {"address": "ftp-a"})
    pool.resolver = silent
    with pytest.raises(ConfigError, match=r"ftp-a does not resolve \(no answer within 0.05 s\)"):
        asyncio.run(pool.start())


def test_each_upstream_may_have_its_own_data_mode() -> None:
    settings = settings_from_mapping(
        {
            "upstream_data_mode": "passive",
            "upstreams": [
                {"address": "198.51.100.10", "name": "a", "upstream_data_mode": "active"},
                {"address": "198.51.100.11", "name": "b"},
            ],
        }
    )
    pool = UpstreamPool.from_settings(settings)
    assert [(u.label, u.data_mode) for u in pool.upstreams] == [("a", "active"), ("b", None)]  # None: the top level
    with pytest.raises(ConfigError, match="upstream_data_mode"):
        settings_from_mapping({"upstreams": [{"address": "198.51.100.10", "upstream_data_mode": "sideways"}]})
