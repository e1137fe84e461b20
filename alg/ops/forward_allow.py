"""Forward mode's pure parts: the destination a login names (`USER user@host[:port]`) and the allowlist it must pass.

Rules: nothing is allowed unless an entry allows it. The check runs after the name is resolved and looks at
EVERY address: an address passes when a CIDR entry holds it with the port, or when a name entry matches the
name the client gave, with the port, and the address is public (a name entry never vouches for a private,
loopback, link-local or reserved address: a name cannot be made to point inside). An IP literal from the
client is matched by CIDR entries only. No I/O here: resolving is the caller's (alg.gateway.forward).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address, ip_network

from alg.ftp.addresses import IPAddress

DEFAULT_PORT = 21
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_PATTERN = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")
MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a forward-mode login goes: the user to log in as there, the host as the client wrote it, the port."""

    user: str
    host: str  # a name (lower case) or an IP literal
    port: int

    @property
    def literal(self) -> IPAddress | None:
        try:
            return ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_destination(argument: str) -> Destination:
    """`user@host`, `user@host:port`, `user@[v6]:port` (the last @ separates: a user name may hold one);
    ValueError with the words for a 530 otherwise."""
    user, at, where = argument.strip().rpartition("@")
    if not at or not user or not where:
        raise ValueError("Log in as USER user@host[:port] to name the FTP server.")
    host, port = _host_port(where)
    if ip_literal(host) is None and (len(host) > MAX_NAME or not _NAME.fullmatch(host)):
        raise ValueError("The server name is not a valid host name.")
    return Destination(user, host.rstrip(".").lower(), port)


def _host_port(where: str) -> tuple[str, int]:
    if where.startswith("["):
        host, bracket, rest = where[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("The server address is not valid: write [IPv6]:port.")
        return host, _port(rest[1:]) if rest else DEFAULT_PORT
    if where.count(":") > 1:  # a bare IPv6 address, no port
        return where, DEFAULT_PORT
    host, colon, port = where.partition(":")
    return host, _port(port) if colon else DEFAULT_PORT


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError("The server port must be a number from 1 to 65535.")
    return int(text)


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One `forward.allow` entry: a network or a name pattern (`ftp.example.org`, `*.example.org`), and ports."""

    ports: frozenset[int]
    network: IPv4Network | IPv6Network | None = None
    pattern: str | None = None  # lower case; "*.example.org" matches names below example.org, not itself

    def __str__(self) -> str:
        where = str(self.network) if self.network is not None else str(self.pattern)
        if self.network is not None and self.network.version == 6:
            where = f"[{where}]"
        return f"{where}:{','.join(map(str, sorted(self.ports)))}"

    def holds(self, address: IPAddress) -> bool:
        return self.network is not None and self.network.version == address.version and address in self.network

    def names(self, name: str) -> bool:
        if self.pattern is None:
            return False
        if self.pattern.startswith("*."):
            return name.endswith(self.pattern[1:])
        return name == self.pattern


def parse_allow_entry(text: str) -> AllowEntry:
    """`198.51.100.0/24:21`, `[2001:db8::/32]:21`, `ftp.example.org:21`, `*.example.org:21,990`; no port: 21.
    ValueError naming what is wrong otherwise."""
    text = text.strip()
    if text.startswith("["):
        where, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 network as [NETWORK]:PORTS")
        ports_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 network in brackets, [NETWORK]:PORTS")
    else:
        where, _, ports_text = text.partition(":")
    ports = _ports(text, ports_text) if ports_text else frozenset({DEFAULT_PORT})
    try:
        return AllowEntry(ports, network=ip_network(where, strict=False))
    except ValueError:
        pass
    if not _PATTERN.fullmatch(where) or len(where) > MAX_NAME:
        raise ValueError(f"{text!r}: expected a network (198.51.100.0/24), a name or *.domain, then :PORT[,PORT]")
    return AllowEntry(ports, pattern=where.lower())


def _ports(text: str, ports_text: str) -> frozenset[int]:
    ports = set()
    for part in ports_text.split(","):
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise ValueError(f"{text!r}: ports are numbers from 1 to 65535, separated by commas")
        ports.add(int(part))
    return frozenset(ports)


NAT64 = ip_network("64:ff9b::/96")  # the well-known prefix: a NAT64 gateway carries these to the IPv4 inside
NAT64_LOCAL = ip_network("64:ff9b:1::/48")


def internal(address: IPAddress) -> bool:
    """Not an address of the public internet: a name entry does not vouch for it. An IPv4-mapped or NAT64
    address is judged by the IPv4 address it carries."""
    if address.version == 6:
        if address in NAT64_LOCAL:
            return True
        if address in NAT64:
            address = IPv4Address(int(address) & 0xFFFFFFFF)
        elif address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


@dataclass(frozen=True, slots=True)
class Allowlist:
    entries: tuple[AllowEntry, ...] = ()

    def first_refused(self, destination: Destination, addresses: Sequence[IPAddress]) -> IPAddress | None:
        """The first address that may not be reached at the destination's port (for the log), or None."""
        return next((a for a in addresses if not self._address_allowed(destination, a)), None)

    def allowed(self, destination: Destination, addresses: Sequence[IPAddress]) -> bool:
        """Every address may be reached (and there is one at all)."""
        return bool(addresses) and self.first_refused(destination, addresses) is None

    def _address_allowed(self, destination: Destination, address: IPAddress) -> bool:
        port = destination.port
        named = destination.literal is None
        for entry in self.entries:
            if port not in entry.ports:
                continue
            if entry.holds(address):
                return True
            if named and entry.names(destination.host) and not internal(address):
                return True
        return False
