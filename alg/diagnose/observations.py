"""What the probe saw, as plain values: the one interface between the probing and the reasoning.

Rules: no I/O here; addresses are ipaddress objects; reply texts are already made printable (no CR/LF, no
control bytes, bounded) by the probe, so the reasoning and the report can quote them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal

from alg.ftp.addresses import HostPort, IPAddress

Mode = Literal["PASV", "EPSV", "PORT", "EPRT"]
MODES: tuple[Mode, ...] = ("PASV", "EPSV", "PORT", "EPRT")
PASSIVE_MODES: tuple[Mode, ...] = ("PASV", "EPSV")
EXTENDED_MODES: tuple[Mode, ...] = ("EPSV", "EPRT")

# Where the control check stopped; None when it got through login.
ControlStop = Literal["resolve", "connect", "banner", "tls", "login"]
# Why it stopped (or, for a data path, what connecting gave).
Failure = Literal[
    "refused",  # RST: nothing listens, or a firewall rejects
    "timeout",  # no answer within the wait: a firewall drops, or the host is down
    "unreachable",  # no route to the host (ICMP or a missing route)
    "reset",  # connected, then reset
    "closed",  # connected, then closed before a reply
    "no_reply",  # connected, no reply within the wait
    "rejected",  # a reply we cannot go on from (e.g. 421 instead of 220, 530 to PASS)
    "tls",  # the TLS handshake failed
    "unresolved",  # the host name does not resolve
]
TransferResult = Literal["ok", "upload_refused", "stalled", "mismatch", "failed"]
Via = Literal["announced", "control address", "listener"]
# What one data path gave.
PathResult = Literal[
    "listed",  # LIST went through: data arrived and the final reply was 2xx
    "refused",
    "timeout",
    "unreachable",
    "reset",
    "tls",  # the data connection opened but its TLS handshake failed
    "transfer_failed",  # connected, but LIST got a 4xx/5xx or the data stopped
    "server_refused",  # active: the server refused PORT/EPRT (5xx)
    "no_connection",  # active: the server accepted the address but no connection arrived
]


@dataclass(frozen=True)
class Control:
    """The control connection: connect, banner, (AUTH TLS), login, FEAT, SYST."""

    host: str  # as the user wrote it
    port: int
    user: str
    server: IPAddress | None = None  # the address we connected to (the control peer)
    client: IPAddress | None = None  # our own side of the control connection
    stopped_at: ControlStop | None = None
    failure: Failure | None = None
    detail: str = ""  # the reply or error where it stopped
    banner: str = ""
    login_reply: str = ""
    features: tuple[str, ...] = ()
    system: str = ""
    tls: bool = False  # the control connection is encrypted (AUTH TLS went through)

    @property
    def ok(self) -> bool:
        return self.stopped_at is None

    @property
    def offers_tls(self) -> bool:
        return any(feature.upper().startswith("AUTH") and "TLS" in feature.upper() for feature in self.features)


@dataclass(frozen=True)
class DataPath:
    """One way to a data connection: a passive address we dialled, or the listener we opened for active."""

    target: HostPort
    via: Via
    result: PathResult
    reply: str = ""  # the server's last reply for this path (e.g. "226 Directory send OK.")
    peer: IPAddress | None = None  # active: the address the server's connection came from
    lines: int = 0  # listing lines received


@dataclass(frozen=True)
class ModeCheck:
    """One data mode tried in its own control session: the mode command, its reply, each path tried."""

    mode: Mode
    protected: bool  # data under TLS (PROT P)
    reply: str  # the reply to PASV/EPSV/PORT/EPRT
    address: HostPort | None  # passive: what the 227/229 named; active: what we offered
    paths: tuple[DataPath, ...] = ()
    error: str = ""  # the session for this mode could not be set up (then no reply)
    stalled: bool = False  # that session stopped before login although the first one worked: the mode is unknown


@dataclass(frozen=True)
class Transfer:
    """The optional larger transfer (--size): STOR then RETR of the same bytes, through one mode."""

    mode: Mode
    size: int
    result: TransferResult
    moved: int = 0  # bytes that made it before it stopped
    detail: str = ""


@dataclass(frozen=True)
class Observations:
    control: Control
    modes: tuple[ModeCheck, ...] = ()
    # Passive modes again under TLS, when the user did not ask for TLS but FEAT lists AUTH TLS.
    tls_modes: tuple[ModeCheck, ...] = ()
    tls_skipped: str = ""  # why that TLS check did not run (e.g. the certificate is not trusted)
    transfer: Transfer | None = None
    wait_s: float = 5.0  # the bound on each network wait
    default_gateway: IPAddress | None = None  # this host's default route: the NAT box, for active fixes
    internal_address: IPAddress | None = None  # --internal-address: the server's address behind its NAT box
    folder: str = ""  # the URL's path, shown in the report's target
    out_of_time: bool = False  # the total time limit cut the checks short


# RFC 1918 (and RFC 4193 for IPv6): the addresses admins call "private". Not ipaddress.is_private, which also
# counts the documentation ranges and others that are not LAN addresses.
PRIVATE_NETS: tuple[IPv4Network | IPv6Network, ...] = (
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
    IPv6Network("fc00::/7"),
)
# Addresses no client can dial: this host, nowhere, link-local, carrier-grade NAT (RFC 6598), multicast.
UNROUTABLE_NETS: tuple[IPv4Network | IPv6Network, ...] = (
    IPv4Network("0.0.0.0/8"),
    IPv4Network("127.0.0.0/8"),
    IPv4Network("169.254.0.0/16"),
    IPv4Network("100.64.0.0/10"),
    IPv4Network("224.0.0.0/3"),
    IPv6Network("::/128"),
    IPv6Network("::1/128"),
    IPv6Network("fe80::/10"),
    IPv6Network("ff00::/8"),
)


def address_kind(ip: IPAddress) -> Literal["private", "unroutable", "public"]:
    """How an announced address reads to an admin: "private" (RFC 1918), "unroutable", or anything else."""
    nets = [net for net in PRIVATE_NETS if net.version == ip.version]
    if any(ip in net for net in nets):
        return "private"
    if any(ip in net for net in UNROUTABLE_NETS if net.version == ip.version):
        return "unroutable"
    return "public"


def same_host(a: IPAddress | None, b: IPAddress | None) -> bool:
    """Equal addresses, reading ::ffff:a.b.c.d as a.b.c.d."""
    if a is None or b is None:
        return False
    return _unmapped(a) == _unmapped(b)


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


__all__ = [
    "EXTENDED_MODES",
    "MODES",
    "PASSIVE_MODES",
    "Control",
    "DataPath",
    "HostPort",
    "IPAddress",
    "IPv4Address",
    "Mode",
    "ModeCheck",
    "Observations",
    "Transfer",
    "TransferResult",
    "Via",
    "address_kind",
    "same_host",
]
