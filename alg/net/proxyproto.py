"""The PROXY protocol (HAProxy's, versions 1 and 2): parse the header a balancer puts before a connection's
bytes, and write one toward an upstream.

Rules: pure, no I/O; `parse_header` takes the bytes seen so far and answers with the header, the number of
bytes still needed at least, or a ProxyHeaderError naming why (`missing`, `malformed`, `oversized`). Version 2
TLVs are skipped; a v2 LOCAL command (a balancer's own health check) and v1 UNKNOWN carry no client address.
Spec: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from alg.ftp.addresses import HostPort, IPAddress

V1_PREFIX = b"PROXY "
V1_MAX_BYTES = 107  # spec 2.1: the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_BYTES = 16  # signature, version/command, family/protocol, length
# Addresses take at most 216 bytes (AF_UNIX); TLVs (ALPN, authority, SSL, unique id) rarely pass a few hundred.
V2_MAX_PAYLOAD_BYTES = 2048

# spec 2.1: "PROXY TCP4 src dst sport dport\r\n", single spaces, ports without sign.
_V1 = re.compile(rb"PROXY (TCP4|TCP6) ([0-9A-Fa-f.:]{2,45}) ([0-9A-Fa-f.:]{2,45}) ([0-9]{1,5}) ([0-9]{1,5})\r\n")
_V1_UNKNOWN = re.compile(rb"PROXY UNKNOWN(?: [\x21-\x7e ]*)?\r\n")

_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY protocol header: `reason` is missing, malformed or oversized."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. `client` is None when the header names no client (v2 LOCAL, v1 UNKNOWN, AF_UNSPEC,
    AF_UNIX): the connection's own addresses apply then. `destination` is the address the client dialled."""

    version: int
    client: HostPort | None
    destination: HostPort | None
    length: int  # bytes the header took; what follows belongs to the connection


def parse_header(data: bytes) -> ProxyHeader | int:
    """The header at the start of `data`, or how many more bytes are needed at least; ProxyHeaderError when
    `data` cannot start a valid header."""
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    if not data:
        return 1
    raise ProxyHeaderError("no PROXY protocol header", reason="missing")


def _parse_v1(data: bytes) -> ProxyHeader | int:
    head = data[: len(V1_PREFIX)]
    if head != V1_PREFIX[: len(head)]:
        raise ProxyHeaderError("no PROXY protocol header", reason="missing")
    end = data.find(b"\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_BYTES} bytes", reason="oversized")
        return 1 if len(data) >= len(V1_PREFIX) else len(V1_PREFIX) - len(data)
    line = data[: end + 1]
    if _V1_UNKNOWN.fullmatch(line):
        return ProxyHeader(1, None, None, len(line))
    match = _V1.fullmatch(line)
    if match is None:
        raise ProxyHeaderError(f"malformed PROXY v1 line {line[:60]!r}", reason="malformed")
    family, *texts = match.groups()
    want: type[IPv4Address] | type[IPv6Address] = IPv4Address if family == b"TCP4" else IPv6Address
    try:
        source, destination = (want(text.decode("ascii")) for text in texts[:2])
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 addresses are not {family.decode()}", reason="malformed") from None
    if any(text.startswith(b"0") and len(text) > 1 for text in texts[2:]):
        raise ProxyHeaderError("PROXY v1 port with a leading zero", reason="malformed")
    ports = [int(text) for text in texts[2:]]
    if any(port > 65535 for port in ports):
        raise ProxyHeaderError("PROXY v1 port out of range", reason="malformed")
    return ProxyHeader(1, HostPort(source, ports[0]), HostPort(destination, ports[1]), len(line))


def _parse_v2(data: bytes) -> ProxyHeader | int:
    head = data[: len(V2_SIGNATURE)]
    if head != V2_SIGNATURE[: len(head)]:
        raise ProxyHeaderError("no PROXY protocol header", reason="missing")
    if len(data) < V2_FIXED_BYTES:
        return V2_FIXED_BYTES - len(data)
    version, command = data[12] >> 4, data[12] & 0x0F
    family, protocol = data[13] >> 4, data[13] & 0x0F
    length = int.from_bytes(data[14:16], "big")
    if version != 2 or command > 1:
        raise ProxyHeaderError(f"PROXY v2: version {version} command {command} unknown", reason="malformed")
    if length > V2_MAX_PAYLOAD_BYTES:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes (limit {V2_MAX_PAYLOAD_BYTES})", reason="oversized")
    total = V2_FIXED_BYTES + length
    if len(data) < total:
        return total - len(data)
    payload = data[V2_FIXED_BYTES:total]
    if command == 0:  # LOCAL: the balancer's own connection; the receiver "must use the real connection endpoints"
        return ProxyHeader(2, None, None, total)
    if family in (0, 3):  # AF_UNSPEC, AF_UNIX: nothing to use as a client address
        return ProxyHeader(2, None, None, total)
    if protocol != 1:
        raise ProxyHeaderError(f"PROXY v2: transport {protocol} is not a stream", reason="malformed")
    if family not in (1, 2):
        raise ProxyHeaderError(f"PROXY v2: address family {family} unknown", reason="malformed")
    layout = _V2_INET if family == 1 else _V2_INET6
    if length < layout.size:  # the rest, if any, is TLVs: skipped
        raise ProxyHeaderError(f"PROXY v2: {length} bytes cannot hold the addresses", reason="malformed")
    source, destination, source_port, destination_port = layout.unpack_from(payload)
    source_ip, destination_ip = ip_address(source), ip_address(destination)  # 4 or 16 packed bytes
    return ProxyHeader(2, HostPort(source_ip, source_port), HostPort(destination_ip, destination_port), total)


# --- writing a header toward an upstream ---


def _same_family(a: IPAddress, b: IPAddress) -> tuple[IPAddress, IPAddress]:
    # Both addresses of a header share one family; an IPv4 one joins IPv6 as ::ffff:a.b.c.d.
    if type(a) is type(b):
        return a, b
    mapped = [ip if isinstance(ip, IPv6Address) else ip_address(f"::ffff:{ip}") for ip in (a, b)]
    return mapped[0], mapped[1]


def encode_v1(client: HostPort | None, destination: HostPort | None) -> bytes:
    """A v1 line; `PROXY UNKNOWN` when there is no client (a health check)."""
    if client is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    source_ip, destination_ip = _same_family(client.ip, destination.ip)
    family = "TCP4" if isinstance(source_ip, IPv4Address) else "TCP6"
    return f"PROXY {family} {source_ip} {destination_ip} {client.port} {destination.port}\r\n".encode("ascii")


def encode_v2(client: HostPort | None, destination: HostPort | None) -> bytes:
    """A v2 header without TLVs; the LOCAL command when there is no client (a health check)."""
    if client is None or destination is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    source_ip, destination_ip = _same_family(client.ip, destination.ip)
    if isinstance(source_ip, IPv4Address):
        family, layout = 0x11, _V2_INET
    else:
        family, layout = 0x21, _V2_INET6
    payload = layout.pack(source_ip.packed, destination_ip.packed, client.port, destination.port)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(payload)) + payload


def encode(version: int, client: HostPort | None, destination: HostPort | None) -> bytes:
    return encode_v1(client, destination) if version == 1 else encode_v2(client, destination)


def looks_like_header(data: bytes) -> bool:
    """Whether `data` (a connection's first bytes) begins like a PROXY header: from an untrusted peer, refused.
    No FTP command starts so (PROXY is no verb; no client sends NUL)."""
    return data.startswith(b"PROXY") or data.startswith(V2_SIGNATURE[:5])
