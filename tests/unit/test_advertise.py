"""Split horizon and announced-port offset (which address a 227 names), and the scale-out settings."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from alg.errors import ConfigError
from alg.ftp.addresses import HostPort
from alg.gateway import advertise
from alg.gateway.advertise import Advertiser, local_ipv4_addresses, private_address_warning
from alg.gateway.server import Gateway
from alg.ops.config import settings_from_mapping

LISTENER = HostPort(ip_address("203.0.113.1"), 21)
DATA = HostPort(ip_address("203.0.113.1"), 50000)
LAN = ip_address("198.18.0.10")
INTERNET = ip_address("203.0.113.10")


def _advertiser(**settings: object) -> Advertiser:
    advertiser = Advertiser.from_settings(settings_from_mapping({"upstream": "198.51.100.10", **settings}))
    assert advertiser is not None
    return advertiser


def test_nothing_configured_leaves_the_session_rule() -> None:
    assert Advertiser.from_settings(settings_from_mapping({"upstream": "198.51.100.10"})) is None


def test_split_horizon_first_match_wins() -> None:
    advertiser = _advertiser(
        public_address="203.0.113.100",
        advertise=[
            {"clients": "198.18.0.0/24", "address": "198.51.100.1"},
            {"clients": ["198.18.0.0/16"], "address": "198.51.100.2"},
        ],
    )
    dialled = LISTENER.ip
    assert advertiser.announce(DATA, LAN, dialled, LISTENER) == HostPort(ip_address("198.51.100.1"), 50000)
    assert advertiser.address_for(ip_address("198.18.5.1"), dialled, LISTENER) == ip_address("198.51.100.2")
    assert advertiser.address_for(INTERNET, dialled, LISTENER) == ip_address("203.0.113.100")  # public_address


def test_local_names_the_address_the_client_dialled() -> None:
    advertiser = _advertiser(advertise=[{"address": "local"}])
    dialled = ip_address("203.0.113.7")  # e.g. the balancer's address from the PROXY header
    assert advertiser.announce(DATA, INTERNET, dialled, LISTENER).ip == dialled


def test_per_listener() -> None:
    advertiser = _advertiser(
        advertise=[
            {"listener": "203.0.113.1:21", "address": "203.0.113.201"},
            {"listener": "0.0.0.0:2121", "address": "203.0.113.202"},
        ]
    )
    assert advertiser.address_for(INTERNET, LISTENER.ip, LISTENER) == ip_address("203.0.113.201")
    other = HostPort(ip_address("203.0.113.2"), 2121)
    assert advertiser.address_for(INTERNET, other.ip, other) == ip_address("203.0.113.202")
    assert advertiser.address_for(INTERNET, other.ip, HostPort(other.ip, 21)) is None


def test_no_match_and_no_public_address_keeps_the_listener_address() -> None:
    advertiser = _advertiser(advertise=[{"clients": "198.18.0.0/24", "address": "198.51.100.1"}])
    assert advertiser.announce(DATA, INTERNET, LISTENER.ip, LISTENER) == DATA


def test_other_family_never_announced() -> None:
    advertiser = _advertiser(advertise=[{"address": "2001:db8::1"}])
    assert advertiser.announce(DATA, INTERNET, LISTENER.ip, LISTENER) == DATA
    v6 = HostPort(ip_address("2001:db8::2"), 50000)
    assert advertiser.announce(v6, ip_address("2001:db8::10"), v6.ip, v6).ip == ip_address("2001:db8::1")


def test_port_offset() -> None:
    advertiser = _advertiser(announced_port_offset=10000)
    assert advertiser.announce(DATA, INTERNET, LISTENER.ip, LISTENER) == HostPort(DATA.ip, 60000)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"upstream": "198.51.100.10", "upstreams": [{"address": "198.51.100.11"}]}, "not both"),
        ({"upstreams": [{"address": "198.51.100.11"}], "upstream_policy": "per_user"}, "upstream_users"),
        ({"upstreams": [{"address": "198.51.100.11"}], "upstream_users": {"x": "nope"}}, "no upstream named"),
        (
            {"upstreams": [{"address": "198.51.100.11", "name": "a"}, {"address": "198.51.100.12", "name": "a"}]},
            "share",
        ),
        ({"upstreams": [{"address": "198.51.100.11", "weight": 0}]}, "upstreams[0].weight"),
        ({"upstreams": [{"address": "198.51.100.11", "proxy_protocol": "v3"}]}, "upstreams[0].proxy_protocol"),
        ({"upstream": "198.51.100.10", "proxy_protocol": {"trusted": ["198.18.0.1/8"]}}, "proxy_protocol.trusted"),
        ({"upstream": "198.51.100.10", "proxy_protocol": {}}, "proxy_protocol.trusted"),
        ({"upstream": "198.51.100.10", "proxy_protocol": {"trusted": "198.18.0.1", "data_from": "x"}}, "data_from"),
        ({"upstream": "198.51.100.10", "advertise": [{"address": "0.0.0.0"}]}, "advertise[0].address"),
        ({"upstream": "198.51.100.10", "advertise": [{"clients": "x", "address": "local"}]}, "advertise[0].clients"),
        ({"upstream": "198.51.100.10", "announced_port_offset": 20000}, "announced_port_offset"),
        ({"mode": "transparent", "upstreams": [{"address": "198.51.100.11"}]}, "transparent"),
        ({"upstream": "198.51.100.10", "health_check": {"fall": 0}}, "health_check.fall"),
    ],
)
def test_settings_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        settings_from_mapping(settings)


def test_passive_range_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("upstream: 198.51.100.10\n")
    env = {**os.environ, "FTP_ALG_PASSIVE_PORTS": "61000-61099", "FTP_ALG_PUBLIC_ADDRESS": "203.0.113.7"}

    def check(*flags: str, **extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "alg.cli", "check", "--config", str(config), *flags]
        return subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True, timeout=60)

    done = check()
    assert done.returncode == 0 and "passive_ports=61000-61099" in done.stdout and "203.0.113.7" in done.stdout
    assert "passive_ports=62000-62009" in check("--passive-ports", "62000-62009").stdout  # the flag wins
    bad = check(FTP_ALG_PASSIVE_PORTS="20:21")
    assert bad.returncode == 2 and bad.stderr.startswith("ftp-alg: error: FTP_ALG_PASSIVE_PORTS (environment):")


def test_ipv6_clients_are_told_public_address6() -> None:
    """Issue 21 defect 3: with advertise rules or a port offset, IPv6 clients were told the listener's own
    address instead of public_address6."""
    v6_data = HostPort(ip_address("2001:db8::2"), 50000)
    v6_client, public6 = ip_address("2001:db8:1::10"), ip_address("2001:db8:ff::1")
    for extra in ({"advertise": [{"clients": "198.18.0.0/24", "address": "198.51.100.1"}]}, {}):
        advertiser = _advertiser(
            public_address="203.0.113.100", public_address6=str(public6), announced_port_offset=10, **extra
        )
        assert advertiser.announce(v6_data, v6_client, v6_data.ip, v6_data) == HostPort(public6, 50010)
        assert advertiser.announce(DATA, INTERNET, LISTENER.ip, LISTENER) == HostPort(
            ip_address("203.0.113.100"), 50010
        )


# ---- the start-up warning when 227 replies would name a private address (a container's own, say) ----

CONTAINER = [ip_address("127.0.0.1"), ip_address("172.17.0.2")]


@pytest.mark.parametrize(
    ("settings", "local", "named"),
    [
        ({"listen": "0.0.0.0:21"}, CONTAINER, "172.17.0.2"),  # the container default: 0.0.0.0, no public_address
        ({"listen": "10.0.0.5:2121"}, [], "10.0.0.5"),
        ({"listen": ["0.0.0.0:21", "[::]:21"], "announced_port_offset": 100}, CONTAINER, "172.17.0.2"),
        ({"listen": "0.0.0.0:21", "public_address": "203.0.113.7"}, CONTAINER, None),  # the admin said
        ({"listen": "0.0.0.0:21", "advertise": [{"address": "local"}]}, CONTAINER, None),
        ({"listen": "127.0.0.1:2121"}, CONTAINER, None),  # a loopback demo
        ({"listen": "0.0.0.0:21"}, [ip_address("127.0.0.1")], None),
        ({"listen": "0.0.0.0:21"}, [*CONTAINER, ip_address("203.0.113.1")], None),  # a public address too
        ({"listen": "203.0.113.1:21"}, CONTAINER, None),
    ],
)
def test_private_address_warning(settings: dict[str, object], local: list[IPv4Address], named: str | None) -> None:
    warning = private_address_warning(settings_from_mapping({"upstream": "198.51.100.10", **settings}), local)
    if named is None:
        assert warning is None
    else:
        assert warning is not None and f"will name {named}, a private address" in warning
        assert "set public_address (--public-address, FTP_ALG_PUBLIC_ADDRESS)" in warning


def test_transparent_mode_is_never_warned() -> None:
    settings = settings_from_mapping({"mode": "transparent", "listen": "0.0.0.0:2121"})
    assert private_address_warning(settings, CONTAINER) is None


def test_local_addresses_come_from_the_kernel() -> None:
    assert ip_address("127.0.0.1") in local_ipv4_addresses()


@pytest.mark.parametrize("local", [CONTAINER, [ip_address("127.0.0.1")]])
def test_the_gateway_logs_the_warning_once_at_start(
    local: list[IPv4Address], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Listening on 0.0.0.0 (a free port, nothing dialled) as in a container whose address is 172.17.0.2."""
    monkeypatch.setattr(advertise, "local_ipv4_addresses", lambda: local)
    settings = settings_from_mapping({"upstream": "198.51.100.10", "listen": "0.0.0.0:0"})

    async def main() -> None:
        gateway = Gateway(settings)
        with caplog.at_level(logging.WARNING, logger="ftp_alg.server"):
            await gateway.start()
        await gateway.stop(0)

    asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if "private address" in r.getMessage()]
    assert len(warnings) == (1 if len(local) > 1 else 0), warnings
