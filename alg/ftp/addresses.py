"""Data-connection addresses in FTP lines: PORT, EPRT, 227 and 229, parsed from and formatted to bytes.

Rules: bytes in, values out; grammar first (regex fullmatch on ASCII), range checks second; every failure is
our ClientProtocolError (client lines) or ServerProtocolError (server replies), never ValueError.
Numbers are ASCII decimal digits only, leading zeros allowed, at most 3 digits a byte and 5 a port; port 0
is refused everywhere. The format_* functions raise ValueError for values we would never send (an IPv6
address in PORT/227, a port outside 1-65535): that is our bug, not the peer's. An IPv4-mapped address in
EPRT |2| (::ffff:203.0.113.1) is returned as the IPv4Address, so policy sees one form of each host.

LPRT, LPSV and 228 (RFC 1639) are not parsed here: the control channel refuses them with 502, so clients fall
back to EPRT/EPSV or PORT/PASV, which RFC 2428 and RFC 959 cover.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from alg.errors import ClientProtocolError, ServerProtocolError

IPAddress = IPv4Address | IPv6Address


class HostPort(NamedTuple):
    ip: IPAddress
    port: int

    def __str__(self) -> str:
        if isinstance(self.ip, IPv6Address):
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


_BYTE = rb"([0-9]{1,3})"
_SIX_NUMBERS = rb",".join([_BYTE] * 6)
# RFC 959 PORT argument: h1,h2,h3,h4,p1,p2.
_PORT_ARGUMENT = re.compile(_SIX_NUMBERS)
# RFC 1123 4.1.2.6: the 227 text is free-form; scan for six numbers that are whole words and not part of a
# longer comma-separated run, so "1,2,3,4,5,6,7", "1000,2,3,4,5,6", "1,2,3,4,5,1_0" are not an address.
_SIX_NUMBERS_IN_TEXT = re.compile(rb"(?<![0-9A-Za-z_])(?<![0-9],)" + _SIX_NUMBERS + rb"(?![0-9A-Za-z_])(?!,[0-9])")
# RFC 2428 section 3: "(<d><d><d><tcp-port><d>)"; the four delimiters are the same printable ASCII byte.
_EPSV_PORT_IN_TEXT = re.compile(rb"\((?P<d>[\x21-\x7e])(?P=d)(?P=d)(?P<port>[0-9]{1,5})(?P=d)\)")

# RFC 2428 section 2: "<d><net-prt><d><net-addr><d><tcp-port><d>"; split on d, then each field is matched
# alone, so a field can never contain the delimiter.
_EPRT_ENCLOSED = re.compile(rb"(?P<d>[\x21-\x7e])(?P<fields>.*)(?P=d)", re.DOTALL)
_NET_PRT = re.compile(rb"[0-9]{1,5}")
_DOTTED_QUAD = re.compile(rb"\.".join([_BYTE] * 4))
# Hex digits, colons and dots (an embedded IPv4 tail), 45 bytes at most; "%zone" never matches.
_IPV6_TEXT = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
_TCP_PORT = re.compile(rb"[0-9]{1,5}")

_NET_PRT_IPV4 = 1
_NET_PRT_IPV6 = 2
_MAX_PORT = 65535

_PASSIVE_REPLY = b"227 Entering Passive Mode (%s).\r\n"
_EXTENDED_PASSIVE_REPLY = b"229 Entering Extended Passive Mode (|||%d|)\r\n"


def parse_port(argument: bytes) -> HostPort:
    """The address in a PORT argument "h1,h2,h3,h4,p1,p2" (RFC 959 4.1.2); surrounding spaces are ignored."""
    match = _PORT_ARGUMENT.fullmatch(argument.strip(b" "))
    if match is None:
        raise ClientProtocolError("PORT argument is not six comma-separated numbers", reply_code=501)
    try:
        return _host_port(match.groups())
    except _OutOfRange as error:
        raise ClientProtocolError(f"PORT {error}", reply_code=501) from None


def format_port(addr: HostPort) -> bytes:
    """The PORT argument (and 227 numbers) for an IPv4 address: b"203,0,113,1,195,80"."""
    if not isinstance(addr.ip, IPv4Address):
        raise ValueError(f"PORT and 227 carry IPv4 only, not {addr.ip}")
    _check_port(addr.port)
    numbers = (*addr.ip.packed, addr.port >> 8, addr.port & 0xFF)
    return b",".join(b"%d" % n for n in numbers)


def parse_eprt(argument: bytes) -> HostPort:
    """The address in an EPRT argument "<d><net-prt><d><net-addr><d><tcp-port><d>" (RFC 2428 section 2).

    The delimiter is any printable ASCII byte and may not appear inside a field. An IPv4-mapped IPv6 address
    (|2|::ffff:203.0.113.1|) is returned as the IPv4Address, so that policy sees one form of each host.
    An unknown net-prt raises with reply code 522, as RFC 2428 asks; anything else malformed with 501.
    """
    enclosed = _EPRT_ENCLOSED.fullmatch(argument.strip(b" "))
    if enclosed is None:
        raise ClientProtocolError("EPRT argument is not enclosed in one printable delimiter", reply_code=501)
    fields = enclosed["fields"].split(enclosed["d"])
    if len(fields) != 3:
        raise ClientProtocolError("EPRT argument does not have three fields", reply_code=501)
    net_prt, net_addr, tcp_port = fields
    if _NET_PRT.fullmatch(net_prt) is None:
        raise ClientProtocolError("EPRT network protocol is not a number", reply_code=501)
    protocol = int(net_prt)
    if protocol == _NET_PRT_IPV4:
        ip: IPAddress = _parse_eprt_ipv4(net_addr)
    elif protocol == _NET_PRT_IPV6:
        ip = _parse_eprt_ipv6(net_addr)
    else:
        raise ClientProtocolError(f"EPRT network protocol {protocol} not supported, use (1,2)", reply_code=522)
    if _TCP_PORT.fullmatch(tcp_port) is None or not 0 < int(tcp_port) <= _MAX_PORT:
        raise ClientProtocolError("EPRT port is not a number in 1-65535", reply_code=501)
    return HostPort(ip, int(tcp_port))


def format_eprt(addr: HostPort) -> bytes:
    """The EPRT argument: b"|1|203.0.113.1|50000|" or b"|2|2001:db8::1|50000|"."""
    _check_port(addr.port)
    net_prt = _NET_PRT_IPV4 if isinstance(addr.ip, IPv4Address) else _NET_PRT_IPV6
    return b"|%d|%s|%d|" % (net_prt, str(addr.ip).encode("ascii"), addr.port)


def find_227(line: bytes) -> tuple[HostPort, int, int]:
    """The address in a 227 reply line, and the start and end offsets in `line` of its six numbers.

    RFC 1123 4.1.2.6: the text around the numbers is free-form ("(h,h,h,h,p,p).", "=h,h,h,h,p,p", bare), so
    the first run of exactly six comma-separated numbers after the reply code is taken. The offsets let the
    caller splice in other numbers and keep the server's text.
    """
    if not line.startswith(b"227"):
        raise ServerProtocolError("not a 227 reply", reply_code=425)
    match = _SIX_NUMBERS_IN_TEXT.search(line, 3)
    if match is None:
        raise ServerProtocolError("227 reply has no six comma-separated numbers", reply_code=425)
    try:
        public = _host_port(match.groups())
    except _OutOfRange as error:
        raise ServerProtocolError(f"227 {error}", reply_code=425) from None
    return public, match.start(), match.end()


def passive_addresses_in(reply_text: bytes) -> int:
    """How many runs of six numbers (227) or (|||port|) (229) a whole reply holds: a multi-line reply that names
    more than one is ambiguous, and is not followed."""
    return len(_SIX_NUMBERS_IN_TEXT.findall(reply_text, 3)) + len(_EPSV_PORT_IN_TEXT.findall(reply_text, 3))


def rewrite_227(line: bytes, public: HostPort) -> bytes:
    """The 227 line with its six numbers replaced by `public`, the rest of the server's text kept."""
    _, start, end = find_227(line)
    return line[:start] + format_port(public) + line[end:]


def find_229(line: bytes) -> tuple[int, int, int]:
    """The port in a 229 reply line "(<d><d><d><port><d>)" (RFC 2428 section 3), and its digits' offsets."""
    if not line.startswith(b"229"):
        raise ServerProtocolError("not a 229 reply", reply_code=425)
    match = _EPSV_PORT_IN_TEXT.search(line, 3)
    if match is None:
        raise ServerProtocolError("229 reply has no (|||port|)", reply_code=425)
    port = int(match["port"])
    if not 0 < port <= _MAX_PORT:
        raise ServerProtocolError(f"229 port {port} is outside 1-65535", reply_code=425)
    return port, match.start("port"), match.end("port")


def rewrite_229(line: bytes, port: int) -> bytes:
    """The 229 line with its port replaced, delimiters and the rest of the server's text kept."""
    _check_port(port)
    _, start, end = find_229(line)
    return line[:start] + b"%d" % port + line[end:]


def format_227(public: HostPort) -> bytes:
    """Our own 227 reply, for when the gateway answers PASV itself."""
    return _PASSIVE_REPLY % format_port(public)


def format_229(port: int) -> bytes:
    """Our own 229 reply, for when the gateway answers EPSV itself."""
    _check_port(port)
    return _EXTENDED_PASSIVE_REPLY % port


class _OutOfRange(Exception):
    """Numbers that passed the grammar but not the range check; the callers say whose fault it is."""


def _host_port(numbers: tuple[bytes, ...]) -> HostPort:
    """h1,h2,h3,h4,p1,p2 as matched by _SIX_NUMBERS (ASCII digits only), range-checked."""
    values = [int(n) for n in numbers]
    for value in values:
        if value > 0xFF:
            raise _OutOfRange(f"number {value} is outside 0-255")
    port = values[4] << 8 | values[5]
    if port == 0:
        raise _OutOfRange("port 0 is not a port")
    return HostPort(IPv4Address(bytes(values[:4])), port)


def _parse_eprt_ipv4(net_addr: bytes) -> IPv4Address:
    # Dotted decimal; leading zeros are read as decimal ("010" is 10), never as octal as inet_aton would.
    match = _DOTTED_QUAD.fullmatch(net_addr)
    if match is None or any(int(n) > 0xFF for n in match.groups()):
        raise ClientProtocolError("EPRT address is not a dotted IPv4 address", reply_code=501)
    return IPv4Address(bytes(int(n) for n in match.groups()))


def _parse_eprt_ipv6(net_addr: bytes) -> IPAddress:
    if _IPV6_TEXT.fullmatch(net_addr) is None:
        raise ClientProtocolError("EPRT address is not an IPv6 address", reply_code=501)
    try:
        ip = IPv6Address(net_addr.decode("ascii"))
    except ValueError:
        raise ClientProtocolError("EPRT address is not an IPv6 address", reply_code=501) from None
    return ip if ip.ipv4_mapped is None else ip.ipv4_mapped


def _check_port(port: int) -> None:
    if not 0 < port <= _MAX_PORT:
        raise ValueError(f"port {port} is outside 1-65535")
