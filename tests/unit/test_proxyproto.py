"""PROXY protocol v1/v2: parsed byte by byte, refused with a reason, written back the same."""

from __future__ import annotations

import struct
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.ftp.addresses import HostPort
from alg.net.proxyproto import (
    V1_MAX_BYTES,
    V2_MAX_PAYLOAD_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    encode_v1,
    encode_v2,
    looks_like_header,
    parse_header,
)

CLIENT = HostPort(ip_address("198.18.0.10"), 40000)
DIALLED = HostPort(ip_address("203.0.113.1"), 21)
CLIENT6 = HostPort(ip_address("2001:db8::10"), 40000)
DIALLED6 = HostPort(ip_address("2001:db8::1"), 21)


def _whole(data: bytes) -> ProxyHeader:
    """Feed `data` one byte more each time: every strict prefix asks for more, the whole gives the header."""
    for end in range(len(data)):
        needed = parse_header(data[:end])
        assert isinstance(needed, int) and needed >= 1, (end, needed)
        assert end + needed <= len(data)  # never asks past the header's end
    header = parse_header(data + b"USER anonymous\r\n")
    assert isinstance(header, ProxyHeader)
    assert header.length == len(data)
    return header


def test_v1_tcp4_byte_by_byte() -> None:
    header = _whole(b"PROXY TCP4 198.18.0.10 203.0.113.1 40000 21\r\n")
    assert (header.version, header.client, header.destination) == (1, CLIENT, DIALLED)


def test_v1_tcp6() -> None:
    header = _whole(b"PROXY TCP6 2001:db8::10 2001:db8::1 40000 21\r\n")
    assert (header.client, header.destination) == (CLIENT6, DIALLED6)


def test_v1_unknown_has_no_client() -> None:
    assert _whole(b"PROXY UNKNOWN\r\n").client is None
    assert _whole(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").client is None


def test_v1_longest_line_fits() -> None:
    line = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    assert len(line) <= V1_MAX_BYTES
    assert _whole(line).client == HostPort(ip_address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 65535)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 198.18.0.10 203.0.113.1 40000 21\n",  # bare LF
        b"PROXY TCP4 198.18.0.10 203.0.113.1 40000\r\n",  # a field missing
        b"PROXY TCP4 198.18.0.10  203.0.113.1 40000 21\r\n",  # two spaces
        b"PROXY TCP4 198.18.0.256 203.0.113.1 40000 21\r\n",  # not an address
        b"PROXY TCP4 2001:db8::1 203.0.113.1 40000 21\r\n",  # wrong family
        b"PROXY TCP6 198.18.0.10 203.0.113.1 40000 21\r\n",
        b"PROXY TCP4 198.18.0.10 203.0.113.1 65536 21\r\n",  # port out of range
        b"PROXY TCP4 198.18.0.10 203.0.113.1 040000 21\r\n",  # leading zero
        b"PROXY TCP4 198.18.0.10 203.0.113.1 +4000 21\r\n",
        b"PROXY UDP4 198.18.0.10 203.0.113.1 40000 21\r\n",
        b"PROXY tcp4 198.18.0.10 203.0.113.1 40000 21\r\n",
    ],
)
def test_v1_malformed(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_header(line)
    assert caught.value.reason == "malformed"


def test_v1_without_end_is_oversized_at_the_limit() -> None:
    data = b"PROXY TCP4 " + b"1" * (V1_MAX_BYTES - 11)
    assert parse_header(data[:-1]) == 1
    with pytest.raises(ProxyHeaderError) as caught:
        parse_header(data)
    assert caught.value.reason == "oversized"


@pytest.mark.parametrize("data", [b"USER anonymous\r\n", b"PROXZ", b"\r\n\r\n\x01", b"220 hello\r\n", b"P R"])
def test_not_a_header_is_missing(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_header(data)
    assert caught.value.reason == "missing"


def _v2(command: int, family: int, payload: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) + payload


def test_v2_inet_byte_by_byte() -> None:
    payload = CLIENT.ip.packed + DIALLED.ip.packed + struct.pack("!HH", 40000, 21)
    header = _whole(_v2(1, 0x11, payload))
    assert (header.version, header.client, header.destination) == (2, CLIENT, DIALLED)


def test_v2_inet6() -> None:
    payload = CLIENT6.ip.packed + DIALLED6.ip.packed + struct.pack("!HH", 40000, 21)
    assert _whole(_v2(1, 0x21, payload)).client == CLIENT6


def test_v2_tlvs_are_skipped() -> None:
    tlvs = bytes([0x01, 0x00, 0x02]) + b"h2" + bytes([0x05, 0x00, 0x04]) + b"uid1"  # ALPN, UNIQUE_ID
    payload = CLIENT.ip.packed + DIALLED.ip.packed + struct.pack("!HH", 40000, 21) + tlvs
    header = _whole(_v2(1, 0x11, payload))
    assert header.client == CLIENT and header.length == 16 + len(payload)


def test_v2_local_uses_the_connection() -> None:
    # HAProxy's own health checks: LOCAL, and whatever address block follows is ignored.
    assert _whole(_v2(0, 0x00, b"")).client is None
    assert _whole(_v2(0, 0x11, b"\x00" * 12)).client is None


def test_v2_unspec_and_unix_have_no_client() -> None:
    assert _whole(_v2(1, 0x00, b"")).client is None
    assert _whole(_v2(1, 0x31, b"\x00" * 216)).client is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (V2_SIGNATURE + bytes([0x11, 0x11, 0, 12]) + b"\x00" * 12, "malformed"),  # version 1 in a v2 header
        (V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]) + b"\x00" * 12, "malformed"),  # command 2
        (V2_SIGNATURE + bytes([0x21, 0x12, 0, 12]) + b"\x00" * 12, "malformed"),  # datagram
        (V2_SIGNATURE + bytes([0x21, 0x41, 0, 12]) + b"\x00" * 12, "malformed"),  # family 4
        (V2_SIGNATURE + bytes([0x21, 0x11, 0, 8]) + b"\x00" * 8, "malformed"),  # too short for INET
        (V2_SIGNATURE + bytes([0x21, 0x21, 0, 12]) + b"\x00" * 12, "malformed"),  # too short for INET6
        (V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", V2_MAX_PAYLOAD_BYTES + 1), "oversized"),
        (V2_SIGNATURE[:7] + b"X", "missing"),
    ],
)
def test_v2_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_header(data)
    assert caught.value.reason == reason


def test_v2_truncated_asks_for_the_rest() -> None:
    full = _v2(1, 0x11, CLIENT.ip.packed + DIALLED.ip.packed + struct.pack("!HH", 40000, 21))
    assert parse_header(full[:16]) == 12
    assert parse_header(full[:20]) == 8
    assert parse_header(b"") == 1


@given(
    st.sampled_from([(CLIENT, DIALLED), (CLIENT6, DIALLED6), (CLIENT, DIALLED6)]),
    st.integers(0, 65535),
    st.sampled_from([encode_v1, encode_v2]),
)
def test_encode_then_parse(ends: tuple[HostPort, HostPort], port: int, encode: object) -> None:
    client, destination = HostPort(ends[0].ip, port), ends[1]
    assert callable(encode)
    header = parse_header(encode(client, destination))
    assert isinstance(header, ProxyHeader)
    assert header.client is not None and header.destination is not None
    # Mixed families travel as IPv4-mapped IPv6.
    got = header.client.ip.ipv4_mapped or header.client.ip if header.client.ip.version == 6 else header.client.ip
    assert (got, header.client.port) == (client.ip, port)


def test_encode_without_client_is_local_or_unknown() -> None:
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"
    local = parse_header(encode_v2(None, None))
    assert isinstance(local, ProxyHeader) and local.client is None


@given(st.binary(max_size=300))
def test_any_bytes_give_a_header_a_count_or_our_error(data: bytes) -> None:
    try:
        result = parse_header(data)
    except ProxyHeaderError as error:
        assert error.reason in ("missing", "malformed", "oversized")
        return
    assert isinstance(result, ProxyHeader | int)


def test_looks_like_header() -> None:
    assert looks_like_header(b"PROXY TCP4 ")
    assert looks_like_header(V2_SIGNATURE)
    assert not looks_like_header(b"USER anonymous\r\n")
    assert not looks_like_header(b"\r\n")
