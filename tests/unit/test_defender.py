"""The defender's pure core: scores in a window, bans that grow on repeat, the allowlist, per-user slowdown."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from alg.errors import ConfigError
from alg.ops.config import settings_from_mapping
from alg.ops.config_sections import DefenderSettings
from alg.ops.defender import Ban, Defender, Offence

GUESSER = ip_address("203.0.113.7")
OTHER = ip_address("203.0.113.8")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(**values: object) -> tuple[Defender, FakeClock]:
    clock = FakeClock()
    return Defender(DefenderSettings(enabled=True, **values), clock=clock), clock  # type: ignore[arg-type]


def fail_logins(defender: Defender, ip: object, count: int) -> list[Ban]:
    return [ban for _ in range(count) if (ban := defender.record(ip, Offence.LOGIN_FAILED)) is not None]  # type: ignore[arg-type]


def test_five_failed_logins_ban_with_the_defaults() -> None:
    defender, clock = make()
    assert fail_logins(defender, GUESSER, 4) == []
    assert defender.score(GUESSER) == 8
    assert defender.banned(GUESSER) is None
    (ban,) = fail_logins(defender, GUESSER, 1)
    assert ban == Ban("203.0.113.7/32", clock.now, clock.now + 900, 1, Offence.LOGIN_FAILED)
    assert defender.banned(GUESSER) == ban
    assert defender.banned(OTHER) is None
    assert defender.bans() == [ban]


def test_points_outside_the_window_are_forgotten() -> None:
    defender, clock = make()
    fail_logins(defender, GUESSER, 4)
    clock.now += 601
    assert defender.score(GUESSER) == 0
    assert fail_logins(defender, GUESSER, 4) == []
    assert defender.banned(GUESSER) is None


def test_each_act_weighs_its_score() -> None:
    defender, _ = make()
    assert defender.record(GUESSER, Offence.BOUNCE) is None
    ban = defender.record(GUESSER, Offence.PORT_THEFT)
    assert ban is not None and ban.reason is Offence.PORT_THEFT
    for _ in range(9):
        assert defender.record(OTHER, Offence.OVER_LIMIT) is None
    assert defender.record(OTHER, Offence.OVER_LIMIT) is not None


def test_a_ban_ends_and_repeats_grow_to_the_maximum() -> None:
    defender, clock = make(ban_s=100.0, ban_growth=3.0, max_ban_s=1000.0)
    durations = []
    for repeat in range(1, 5):
        (ban,) = fail_logins(defender, GUESSER, 5)
        assert ban.repeat == repeat
        durations.append(ban.until - ban.since)
        clock.now = ban.until
        assert defender.banned(GUESSER) is None
        assert defender.expire() == [ban]
    assert durations == [100, 300, 900, 1000]


def test_repeats_are_forgotten_after_the_memory() -> None:
    defender, clock = make(repeat_memory_s=3600.0)
    (first,) = fail_logins(defender, GUESSER, 5)
    clock.now = first.until + 3601
    defender.expire()
    (again,) = fail_logins(defender, GUESSER, 5)
    assert again.repeat == 1 and again.until - again.since == 900


def test_acts_while_banned_do_not_lengthen_the_ban() -> None:
    defender, clock = make()
    (ban,) = fail_logins(defender, GUESSER, 5)
    clock.now += 10
    assert fail_logins(defender, GUESSER, 20) == []
    assert defender.banned(GUESSER) == ban


def test_ipv6_clients_are_their_64() -> None:
    defender, _ = make()
    for host in range(1, 6):
        defender.record(ip_address(f"2001:db8:1:2::{host}"), Offence.LOGIN_FAILED)
    ban = defender.banned(ip_address("2001:db8:1:2:ffff::9"))
    assert ban is not None and ban.client == "2001:db8:1:2::/64"
    assert defender.banned(ip_address("2001:db8:1:3::1")) is None


def test_an_ipv4_client_on_a_dual_stack_listener_is_its_ipv4_address() -> None:
    defender, _ = make()
    fail_logins(defender, ip_address("::ffff:203.0.113.7"), 5)
    assert defender.banned(GUESSER) is not None


def test_the_allowlist_is_never_banned() -> None:
    defender, _ = make(allowlist=["203.0.113.0/28", "2001:db8::/32"])
    assert fail_logins(defender, GUESSER, 50) == []
    assert defender.banned(GUESSER) is None
    assert defender.record(ip_address("2001:db8::1"), Offence.BOUNCE) is None
    assert fail_logins(defender, ip_address("203.0.113.77"), 5) != []


def test_off_scores_nothing() -> None:
    defender = Defender(DefenderSettings())
    assert fail_logins(defender, GUESSER, 50) == []
    assert defender.banned(GUESSER) is None
    assert defender.login_failed("alice") == 0.0


def test_unban_by_address_or_network() -> None:
    defender, _ = make()
    (ban,) = fail_logins(defender, GUESSER, 5)
    assert defender.unban("203.0.113.9") is None
    assert defender.unban("not an address") is None
    assert defender.unban("203.0.113.7") == ban
    assert defender.banned(GUESSER) is None
    fail_logins(defender, ip_address("2001:db8::1"), 5)
    assert defender.unban("2001:db8::/64") is not None
    assert defender.bans() == []


def test_an_unbanned_client_starts_from_zero_but_its_next_ban_is_longer() -> None:
    defender, _ = make()
    fail_logins(defender, GUESSER, 5)
    defender.unban("203.0.113.7")
    assert defender.score(GUESSER) == 0
    assert fail_logins(defender, GUESSER, 4) == []
    (again,) = fail_logins(defender, GUESSER, 1)
    assert again.repeat == 2 and again.until - again.since == 1800


def test_adopt_keeps_the_longer_ban() -> None:
    defender, clock = make()
    short = Ban("203.0.113.7/32", clock.now, clock.now + 100, 1, Offence.BOUNCE)
    long = Ban("203.0.113.7/32", clock.now, clock.now + 500, 2, Offence.BOUNCE)
    assert defender.adopt(long)
    assert not defender.adopt(short)
    assert defender.banned(GUESSER) == long


def test_a_user_under_attack_is_slowed_never_blocked() -> None:
    defender, clock = make(user_failures=3, user_delay_s=1.5)
    delays = [defender.login_failed("alice") for _ in range(4)]
    assert delays == [0.0, 0.0, 1.5, 1.5]
    assert defender.login_failed("bob") == 0.0
    clock.now += 601
    defender.expire()
    assert defender.user_delay("alice") == 0.0


def test_settings_keys_and_errors() -> None:
    settings = settings_from_mapping(
        {"upstream": "198.51.100.10", "defender": {"enabled": True, "threshold": 3, "allowlist": "198.18.0.0/24"}}
    )
    assert settings.defender.enabled and settings.defender.threshold == 3
    assert str(settings.defender.allowlist[0]) == "198.18.0.0/24"
    assert not settings_from_mapping({"upstream": "198.51.100.10"}).defender.enabled
    assert settings_from_mapping({"upstream": "198.51.100.10"}, defender=True).defender.enabled
    with pytest.raises(ConfigError, match="max_ban_s"):
        settings_from_mapping({"upstream": "198.51.100.10", "defender": {"ban_s": 100, "max_ban_s": 10}})
    with pytest.raises(ConfigError, match="store"):
        settings_from_mapping({"upstream": "198.51.100.10", "defender": {"store": "memcached://x"}})


def test_an_empty_allowlist_is_no_network_and_every_act_has_a_score() -> None:
    for empty in ([], None):
        defender = settings_from_mapping({"upstream": "198.51.100.10", "defender": {"allowlist": empty}}).defender
        assert defender.allowlist == ()
    with pytest.raises(ConfigError, match="allowlist"):
        settings_from_mapping({"upstream": "198.51.100.10", "defender": {"allowlist": [5]}})
    defender = Defender(DefenderSettings(enabled=True))
    assert {offence: defender.points(offence) for offence in Offence} == {
        Offence.LOGIN_FAILED: 2,
        Offence.REFUSED_COMMAND: 1,
        Offence.BOUNCE: 5,
        Offence.PORT_THEFT: 5,
        Offence.TLS_GARBAGE: 3,
        Offence.OVERLONG_LINE: 3,
        Offence.OVER_LIMIT: 1,
    }
