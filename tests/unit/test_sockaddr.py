"""Transparent mode's original destination: the struct sockaddr parser (pure) and the refusal rules."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.errors import PolicyDenied
from alg.ftp.addresses import HostPort
from alg.net.transparent import SO_ORIGINAL_DST, SOL_IP, SOL_IPV6, original_destination, parse_sockaddr


def sockaddr_in(ip: str, port: int) -> bytes:
    # What the kernel writes: family in host order, port in network order, address, zero padding.
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)


def sockaddr_in6(ip: str, port: int, flowinfo: int = 0, scope_id: int = 0) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!H", port)
        + struct.pack("!I", flowinfo)
        + socket.inet_pton(socket.AF_INET6, ip)
        + struct.pack("=I", scope_id)
    )


def test_sockaddr_in_as_the_kernel_returns_it() -> None:
    assert parse_sockaddr(sockaddr_in("203.0.113.20", 21)) == HostPort(IPv4Address("203.0.113.20"), 21)
    # Port bytes are big-endian whatever the host: 0xC350 is 50000, not 20675.
    assert parse_sockaddr(sockaddr_in("198.18.0.1", 50000)).port == 50000


def test_sockaddr_in6_ignores_flowinfo_and_scope() -> None:
    raw = sockaddr_in6("2001:db8::20", 2121, flowinfo=0xABCDE, scope_id=7)
    assert len(raw) == 28
    assert parse_sockaddr(raw) == HostPort(IPv6Address("2001:db8::20"), 2121)


def test_ipv4_mapped_comes_back_as_ipv4() -> None:
    assert parse_sockaddr(sockaddr_in6("::ffff:203.0.113.20", 21)) == HostPort(IPv4Address("203.0.113.20"), 21)


def test_python_socket_module_agrees_on_the_layout() -> None:
    # getsockname() of a real bound socket, re-encoded the kernel's way, parses back to the same address.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        ip, port = sock.getsockname()
    assert parse_sockaddr(sockaddr_in(ip, port)) == HostPort(IPv4Address(ip), port)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x02",
        sockaddr_in("203.0.113.20", 21)[:15],  # one byte short
        sockaddr_in6("2001:db8::1", 21)[:27],
        struct.pack("=H", socket.AF_UNIX) + bytes(14),
        struct.pack("=H", 0) + bytes(14),
    ],
    ids=["empty", "one-byte", "short-in", "short-in6", "af-unix", "af-unspec"],
)
def test_malformed_sockaddr_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_sockaddr(raw)


@given(st.integers(0, 2**32 - 1), st.integers(0, 65535), st.binary(min_size=8, max_size=8))
def test_ipv4_round_trip(address: int, port: int, padding: bytes) -> None:
    ip = IPv4Address(address)
    raw = sockaddr_in(str(ip), port)[:8] + padding  # the padding's content never matters
    assert parse_sockaddr(raw) == HostPort(ip, port)


@given(st.integers(0, 2**128 - 1), st.integers(0, 65535))
def test_ipv6_round_trip(address: int, port: int) -> None:
    ip = IPv6Address(address)
    expected = ip.ipv4_mapped or ip
    assert parse_sockaddr(sockaddr_in6(str(ip), port)) == HostPort(expected, port)


@given(st.binary(max_size=40))
def test_any_bytes_give_an_address_or_value_error(raw: bytes) -> None:
    try:
        result = parse_sockaddr(raw)
    except ValueError:
        return
    assert 0 <= result.port <= 65535


# ---- original_destination: the socket side ---------------------------------------------------------------------


class FakeSocket:
    """What the transport hands out: getsockname() and getsockopt(level, option, buflen)."""

    def __init__(self, local: tuple[str, int], answer: bytes | OSError) -> None:
        self.local = local
        self.answer = answer
        self.asked: list[tuple[int, int, int]] = []

    def getsockname(self) -> tuple[Any, ...]:
        return self.local

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.asked.append((level, option, size))
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


def test_redirected_ipv4_connection_gives_its_original_destination() -> None:
    sock = FakeSocket(("198.18.0.1", 2121), sockaddr_in("203.0.113.20", 21))
    assert original_destination(sock) == HostPort(ip_address("203.0.113.20"), 21)
    assert sock.asked == [(SOL_IP, SO_ORIGINAL_DST, 16)]


def test_ipv4_client_on_a_dual_stack_listener_is_asked_at_the_ipv4_level() -> None:
    sock = FakeSocket(("::ffff:198.18.0.1", 2121, 0, 0), sockaddr_in("203.0.113.20", 21))
    assert original_destination(sock) == HostPort(ip_address("203.0.113.20"), 21)
    assert sock.asked[0][0] == SOL_IP


def test_ipv6_connection_is_asked_with_ip6t_so_original_dst() -> None:
    sock = FakeSocket(("2001:db8::1", 2121, 0, 0), sockaddr_in6("2001:db8:1::20", 21))
    assert original_destination(sock) == HostPort(ip_address("2001:db8:1::20"), 21)
    assert sock.asked == [(SOL_IPV6, 80, 28)]


def test_dialled_directly_is_refused_with_421() -> None:
    # Without NAT, conntrack's original destination is the very address the client reached.
    sock = FakeSocket(("198.18.0.1", 2121), sockaddr_in("198.18.0.1", 2121))
    with pytest.raises(PolicyDenied) as denied:
        original_destination(sock)
    assert denied.value.reply_code == 421
    assert "redirected" in str(denied.value) and "198.18.0.1:2121 was dialled directly" in str(denied.value)


@pytest.mark.parametrize("answer", [OSError(2, "No such file or directory"), b"\x02\x00"])
def test_no_conntrack_entry_or_garbage_is_refused_with_421(answer: bytes | OSError) -> None:
    with pytest.raises(PolicyDenied) as denied:
        original_destination(FakeSocket(("198.18.0.1", 2121), answer))
    assert denied.value.reply_code == 421


def test_no_socket_is_refused() -> None:
    with pytest.raises(PolicyDenied):
        original_destination(None)


def test_real_untracked_loopback_connection_is_refused() -> None:
    # The real syscall: a loopback connection was never NATed (ENOENT, or ENOPROTOOPT without conntrack;
    # with conntrack tracking loopback, the original destination is the listener itself): 421 each way.
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname(), 2):
        accepted, _ = listener.accept()
        with accepted, pytest.raises(PolicyDenied) as denied:
            original_destination(accepted)
    assert denied.value.reply_code == 421
