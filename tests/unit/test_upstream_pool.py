"""Upstream choice (round robin by weight, least sessions, per user), health rise/fall, failover order."""

from __future__ import annotations

from collections import Counter
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.ftp.addresses import HostPort
from alg.gateway.health import HealthState
from alg.gateway.upstreams import Route, Upstream, UpstreamPool
from alg.ops.config import settings_from_mapping
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
