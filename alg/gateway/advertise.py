"""Which address and port a 227/229 names to a client: split horizon, per listener, or the address it dialled.

Rules: pure. Advertise rules are tried in order, the first whose client networks hold the client (and whose
listener, if given, is the one the connection arrived on) wins; without a match, `public_address` (for IPv6
clients `public_address6`, when set), else the data listener's own address. The port is the data listener's
plus the announced offset (a balancer that publishes port P as P + offset).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_network
from pathlib import Path

from alg.ftp.addresses import HostPort, IPAddress
from alg.ops.config import Settings
from alg.ops.config_sections import AdvertiseRule


@dataclass(frozen=True, slots=True)
class Advertiser:
    rules: Sequence[AdvertiseRule]
    public_address: IPAddress | None = None
    port_offset: int = 0
    public_address6: IPAddress | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Advertiser | None:
        """None when nothing but public_address is set: the session's own rule then applies, unchanged."""
        if not settings.advertise and not settings.announced_port_offset:
            return None
        return cls(
            settings.advertise, settings.public_address, settings.announced_port_offset, settings.public_address6
        )

    def public(self, version: int) -> IPAddress | None:
        """The configured public address for clients of IP `version`."""
        if version == 6 and self.public_address6 is not None:
            return self.public_address6
        return self.public_address

    def address_for(self, client: IPAddress, dialled: IPAddress, listener: HostPort) -> IPAddress | None:
        """The address to announce to `client`, who dialled `dialled` and arrived on our `listener`."""
        for rule in self.rules:
            if rule.listener is not None and not _same_listener(rule.listener, listener):
                continue
            if any(client in network for network in rule.clients if network.version == client.version):
                return dialled if rule.address == "local" else rule.address
        return self.public(dialled.version)

    def announce(self, data: HostPort, client: IPAddress, dialled: IPAddress, listener: HostPort) -> HostPort:
        """What a 227/229 names for the data listener `data`."""
        ip = self.address_for(client, dialled, listener)
        if ip is None or ip.version != data.ip.version:
            ip = self.public(data.ip.version)
        if ip is None or ip.version != data.ip.version:
            ip = data.ip  # a 227 cannot name another family; the data listener's own address then
        return HostPort(ip, data.port + self.port_offset)


def _same_listener(configured: HostPort, arrived: HostPort) -> bool:
    # A listener on 0.0.0.0:21 takes connections to every local address: it matches by port.
    return configured.port == arrived.port and (configured.ip.is_unspecified or configured.ip == arrived.ip)


# Addresses a client on the internet cannot reach: RFC 1918, shared address space (RFC 6598), link-local.
PRIVATE_NETWORKS = tuple(
    ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
)
FIB_TRIE = Path("/proc/net/fib_trie")


def private_address_warning(settings: Settings, local_ipv4: Sequence[IPv4Address]) -> str | None:
    """The start-up warning for a gateway whose IPv4 227 replies would name only private addresses (a container's
    own address, say) with nothing configured to name another; None when they would not, or the admin chose.
    `local_ipv4`: this host's addresses, which a listener on 0.0.0.0 announces. Loopback alone stays quiet."""
    if settings.mode != "reverse" or settings.advertise or settings.public_address is not None:
        return None
    announced: set[IPv4Address] = set()
    for listen in settings.listen:
        if isinstance(listen.ip, IPv4Address):
            announced.update(local_ipv4 if listen.ip.is_unspecified else [listen.ip])
    announced = {ip for ip in announced if not ip.is_loopback}
    if not announced or not all(any(ip in net for net in PRIVATE_NETWORKS) for ip in announced):
        return None
    names = ", ".join(map(str, sorted(announced)))
    return (
        f"passive replies (227) will name {names}, a private address that clients outside this network cannot "
        "reach: set public_address (--public-address, FTP_ALG_PUBLIC_ADDRESS) to the address clients connect to, "
        "unless this gateway serves only its own LAN"
    )


def local_ipv4_addresses() -> list[IPv4Address]:
    """This host's IPv4 addresses (of its network namespace), from the kernel's local routing table."""
    try:
        lines = FIB_TRIE.read_text().splitlines()
    except OSError:
        return []
    found: list[IPv4Address] = []
    for previous, line in itertools.pairwise(lines):
        if line.strip() == "/32 host LOCAL" and "|--" in previous:
            address = IPv4Address(previous.split("|--", 1)[1].strip())
            if address not in found:
                found.append(address)
    return found
