"""Forward mode's destination parsing and allowlist, without sockets."""

from __future__ import annotations

import re
from ipaddress import ip_address

import pytest

from alg.errors import ConfigError
from alg.ftp.reasons import Refusal
from alg.gateway.forward import check
from alg.ops.config import load_config
from alg.ops.forward_allow import Allowlist, Destination, internal, parse_allow_entry, parse_destination


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("test@vs.ftp.test", Destination("test", "vs.ftp.test", 21)),
        ("test@VS.Ftp.Test.:2121", Destination("test", "vs.ftp.test", 2121)),
        ("me@example.org@ftp.example.org", Destination("me@example.org", "ftp.example.org", 21)),
        ("anonymous@198.51.100.10:21", Destination("anonymous", "198.51.100.10", 21)),
        ("u@[2001:db8::10]:990", Destination("u", "2001:db8::10", 990)),
        ("u@2001:db8::10", Destination("u", "2001:db8::10", 21)),
        ("  u@host  ", Destination("u", "host", 21)),
    ],
)
def test_a_login_names_its_destination(argument: str, expected: Destination) -> None:
    assert parse_destination(argument) == expected


@pytest.mark.parametrize(
    ("argument", "words"),
    [
        ("test", "USER user@host"),
        ("@host", "USER user@host"),
        ("test@", "USER user@host"),
        ("u@host:0", "port"),
        ("u@host:65536", "port"),
        ("u@host:ftp", "port"),
        ("u@bad_name!", "host name"),
        ("u@-lead.example", "host name"),
        ("u@[2001:db8::1", "[IPv6]:port"),
        ("u@" + "a" * 64 + ".example", "host name"),
    ],
)
def test_a_bad_destination_is_refused_in_words(argument: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_destination(argument)


def test_entries_are_parsed() -> None:
    net = parse_allow_entry("198.51.100.0/24:21")
    assert str(net) == "198.51.100.0/24:21" and net.holds(ip_address("198.51.100.7"))
    assert str(parse_allow_entry("198.51.100.10")) == "198.51.100.10/32:21"
    assert str(parse_allow_entry("[2001:db8::/32]:21,990")) == "[2001:db8::/32]:21,990"
    assert str(parse_allow_entry("*.Example.org:990,21")) == "*.example.org:21,990"
    assert parse_allow_entry("ftp.example.org:21").pattern == "ftp.example.org"


@pytest.mark.parametrize(
    "text", ["198.51.100.0/24:0", "host:ftp", "2001:db8::/32:21", "[2001:db8::/32", "a.*.org:21", "bad name:21", ""]
)
def test_bad_entries_are_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"198\.51\.100\.0/24|PORT|ports|IPv6"):
        parse_allow_entry(text)


def _allow(*entries: str) -> Allowlist:
    return Allowlist(tuple(parse_allow_entry(entry) for entry in entries))


def _ips(*texts: str) -> list:  # type: ignore[type-arg]
    return [ip_address(text) for text in texts]


def test_nothing_is_allowed_by_default() -> None:
    assert not Allowlist().allowed(parse_destination("u@8.8.8.8"), _ips("8.8.8.8"))


def test_a_network_entry_allows_its_addresses_at_its_ports_only() -> None:
    allow = _allow("198.51.100.0/24:21,2121")
    assert allow.allowed(parse_destination("u@198.51.100.10"), _ips("198.51.100.10"))
    assert allow.allowed(parse_destination("u@any.name:2121"), _ips("198.51.100.11"))
    assert not allow.allowed(parse_destination("u@198.51.100.10:22"), _ips("198.51.100.10"))
    assert not allow.allowed(parse_destination("u@198.51.101.10"), _ips("198.51.101.10"))
    assert not allow.allowed(parse_destination("u@2001:db8::1"), _ips("2001:db8::1"))  # family


def test_every_resolved_address_must_pass() -> None:
    allow = _allow("198.51.100.10/32:21")
    destination = parse_destination("u@both.ftp.test")
    assert allow.first_refused(destination, _ips("198.51.100.10", "198.51.100.12")) == ip_address("198.51.100.12")
    assert not allow.allowed(destination, _ips("198.51.100.10", "198.51.100.12"))
    assert not allow.allowed(destination, [])  # nothing resolved: nothing to reach


def test_a_name_entry_vouches_for_public_addresses_only() -> None:
    allow = _allow("ftp.example.org:21", "*.example.net:21,990")
    public = _ips("8.8.8.8", "2606:4700::1111")
    assert allow.allowed(parse_destination("u@ftp.example.org"), public)
    assert allow.allowed(parse_destination("u@a.b.example.net:990"), public)
    assert not allow.allowed(parse_destination("u@example.net"), public)  # *. is below the domain only
    assert not allow.allowed(parse_destination("u@ftp.example.org:990"), public)
    assert not allow.allowed(parse_destination("u@other.example.org"), public)
    # The same name made to point inside: refused, whatever the name entry says.
    inside_addresses = ("10.1.2.3", "127.0.0.1", "169.254.169.254", "198.51.100.10", "100.64.0.1", "::1", "fd00::1")
    for inside in (*inside_addresses, "::ffff:10.0.0.1", "64:ff9b::10.0.0.1", "64:ff9b:1::1"):
        assert not allow.allowed(parse_destination("u@ftp.example.org"), _ips(inside)), inside
    # An IP literal is for network entries to allow, not name entries.
    assert not allow.allowed(parse_destination("u@8.8.8.8"), _ips("8.8.8.8"))


def test_a_network_entry_reaches_inside_even_by_name() -> None:
    allow = _allow("198.51.100.0/24:21", "*.ftp.test:21")
    assert allow.allowed(parse_destination("test@vs.ftp.test"), _ips("198.51.100.10"))
    assert not allow.allowed(parse_destination("test@evil.ftp.test"), _ips("198.18.0.1"))


def test_internal_addresses() -> None:
    assert internal(ip_address("198.51.100.1")) and internal(ip_address("224.0.0.1"))
    assert not internal(ip_address("8.8.8.8")) and not internal(ip_address("64:ff9b::8.8.8.8"))


def test_forward_settings_from_flags_and_file() -> None:
    settings = load_config(
        None, mode="forward", listen=["127.0.0.1:2100"], forward_allow=["198.51.100.0/24:21", "*.ftp.test:21,990"]
    )
    assert [str(entry) for entry in settings.forward.allow] == ["198.51.100.0/24:21", "*.ftp.test:21,990"]
    assert settings.forward.users_file is None
    assert load_config(None, mode="forward").forward.allow == ()  # nothing allowed by default


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ({"forward_allow": ["bad name:21"]}, "--forward-allow: 'bad name:21': expected a network"),
        ({"upstream": "198.51.100.10"}, "--upstream: not allowed in forward mode"),
    ],
)
def test_bad_forward_settings_are_one_line_errors(flags: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, mode="forward", **flags)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_the_gateways_own_listeners_are_never_a_destination() -> None:
    allow = _allow("198.51.100.0/24:21")
    destination = parse_destination("u@198.51.100.1")
    ours = {(ip_address("198.51.100.1"), 21)}
    refused = check(destination, _ips("198.51.100.1"), allow, lambda ip, port: (ip, port) in ours)
    assert refused is not None and refused.reason == Refusal.FORWARD_NOT_ALLOWED
    assert refused.text == "Access to 198.51.100.1:21 is not allowed by this proxy."
    assert check(destination, _ips("198.51.100.2"), allow, lambda ip, port: (ip, port) in ours) is None
