"""Upstream host names to addresses, for the upstream pool.

Rules: a resolver is `async (name, port) -> [addresses]`, in the order the system prefers them, each address
once; a name that does not resolve raises NameNotResolved with the resolver's words. The system resolver
reads /etc/hosts and DNS through getaddrinfo, as every other program on the host does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from ipaddress import ip_address

from alg.ftp.addresses import HostPort, IPAddress

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


class NamedAddress(HostPort):
    """An upstream address found by looking up `server_name`: equal to its HostPort everywhere, and what TLS toward
    it checks the server's certificate against (alg.gateway.secure.upstream_name), as it would be without us."""

    server_name: str

    @classmethod
    def of(cls, ip: IPAddress, port: int, server_name: str) -> NamedAddress:
        address = cls(ip, port)
        address.server_name = server_name
        return address


class NameNotResolved(OSError):
    """The name has no address now (unknown, no record of a usable family, or the resolver failed)."""


async def system_resolver(name: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise NameNotResolved(f"{name} does not resolve ({error.strerror or error})") from None
    addresses: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ip_address(str(sockaddr[0]).partition("%")[0])  # a link-local's %zone is not ours to use
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise NameNotResolved(f"{name} does not resolve (no IPv4 or IPv6 address)")
    return addresses
