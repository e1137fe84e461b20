"""Transparent mode: where a redirected connection was going before the firewall sent it to us.

Rules: the kernel's answer (a struct sockaddr) is parsed by a pure function from bytes; a connection that was
not redirected (its original destination is the address it reached, or conntrack knows nothing of it) is
refused with a PolicyDenied (421), never connected to ourselves.

Why nftables `redirect` (DNAT to the gateway) and not TPROXY: with REDIRECT the accepted socket's local address
is ours, so the data listeners bind ordinary local addresses, conntrack keeps the original destination for
SO_ORIGINAL_DST, and the one rule in deploy/nftables/ is all it takes. TPROXY keeps the server's address as the
socket's local address, which needs IP_TRANSPARENT on every listener (CAP_NET_ADMIN for the process's life), a
fwmark policy route (`ip rule` + a `local` route table) and a second tproxy rule for each data port; it pays off
only where the gateway must not be the connection's visible endpoint, which FTP through a NAT box never needs.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from alg.errors import PolicyDenied
from alg.ftp.addresses import HostPort
from alg.ftp.reasons import Refusal
from alg.net.dataplane import peer_ip

# linux/netfilter_ipv4.h SO_ORIGINAL_DST and linux/netfilter_ipv6/ip6_tables.h IP6T_SO_ORIGINAL_DST: both 80,
# asked at level SOL_IP (0) and SOL_IPV6 (41) respectively.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
SOL_IP = 0
SOL_IPV6 = 41

# struct sockaddr_in: family (host order), port (network order), 4 address bytes, 8 bytes of padding.
_SOCKADDR_IN = struct.Struct("=H2s4s8x")
# struct sockaddr_in6: family (host order), port (network order), flowinfo, 16 address bytes, scope id.
_SOCKADDR_IN6 = struct.Struct("=H2s4x16s4x")


def parse_sockaddr(raw: bytes) -> HostPort:
    """The address and port in a struct sockaddr_in or sockaddr_in6 as the kernel returns it.

    An IPv4-mapped IPv6 address comes back as IPv4 (a dual-stack listener's view of an IPv4 client).
    Raises ValueError for anything else (a short buffer, another family)."""
    if len(raw) < 2:
        raise ValueError(f"sockaddr too short: {len(raw)} bytes")
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET:
        if len(raw) < _SOCKADDR_IN.size:
            raise ValueError(f"sockaddr_in too short: {len(raw)} of {_SOCKADDR_IN.size} bytes")
        _, port, address, *_ = _SOCKADDR_IN.unpack_from(raw)
        return HostPort(IPv4Address(address), int.from_bytes(port, "big"))
    if family == socket.AF_INET6:
        if len(raw) < _SOCKADDR_IN6.size:
            raise ValueError(f"sockaddr_in6 too short: {len(raw)} of {_SOCKADDR_IN6.size} bytes")
        _, port, address = _SOCKADDR_IN6.unpack_from(raw)
        ip = IPv6Address(address)
        return HostPort(ip.ipv4_mapped or ip, int.from_bytes(port, "big"))
    raise ValueError(f"sockaddr of unknown family {family}")


def _not_redirected(detail: str) -> PolicyDenied:
    return PolicyDenied(
        "This gateway only relays FTP connections redirected to it by the firewall (transparent mode); "
        f"connect to the FTP server's own address instead ({detail}).",
        reason=Refusal.ACL,
        reply_code=421,
    )


def original_destination(sock: Any) -> HostPort:
    """Where the client meant to connect, from conntrack (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).

    `sock` is a socket or uvloop's pseudo-socket (both pass getsockopt through). Raises PolicyDenied (421)
    when the connection was not redirected."""
    if sock is None:
        raise _not_redirected("no socket to ask")
    ours = peer_ip(sock.getsockname())
    here = HostPort(ours, sock.getsockname()[1])
    # An IPv4 client on a dual-stack listener is still an IPv4 flow to conntrack: ask at the IPv4 level.
    if isinstance(ours, IPv4Address):
        level, option, size = SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN.size
    else:
        level, option, size = SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6.size
    try:
        original = parse_sockaddr(sock.getsockopt(level, option, size))
    except OSError as error:  # ENOENT: conntrack has no entry (not tracked, or no NAT at all)
        raise _not_redirected(f"no original destination: {error.strerror or error}") from None
    except ValueError as error:
        raise _not_redirected(str(error)) from None
    if original == here:
        raise _not_redirected(f"{here} was dialled directly")
    return original
