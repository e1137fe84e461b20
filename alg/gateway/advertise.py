"""Which address and port a 227/229 names to a client: split horizon, per listener, or the address it dialled.

Rules: pure. Advertise rules are tried in order, the first whose client networks hold the client (and whose
listener, if given, is the one the connection arrived on) wins; without a match, `public_address`, else the
data listener's own address. The port is the data listener's plus the announced offset (a balancer that
publishes port P as P + offset).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alg.ftp.addresses import HostPort, IPAddress


@dataclass(frozen=True, slots=True)
class Advertiser:
    rules: Sequence[Any]  # alg.ops.config.AdvertiseRule: clients, listener, address ("local" or an IP)
    public_address: IPAddress | None = None
    port_offset: int = 0

    @classmethod
    def from_settings(cls, settings: Any) -> Advertiser | None:
        """None when nothing but public_address is set: the session's own rule then applies, unchanged."""
        rules = tuple(getattr(settings, "advertise", ()))
        offset = getattr(settings, "announced_port_offset", 0)
        if not rules and not offset:
            return None
        return cls(rules, settings.public_address, offset)

    def address_for(self, client: IPAddress, dialled: IPAddress, listener: HostPort) -> IPAddress | None:
        """The address to announce to `client`, who dialled `dialled` and arrived on our `listener`."""
        for rule in self.rules:
            if rule.listener is not None and not _same_listener(rule.listener, listener):
                continue
            if any(client in network for network in rule.clients if network.version == client.version):
                return dialled if rule.address == "local" else rule.address
        return self.public_address

    def announce(self, data: HostPort, client: IPAddress, dialled: IPAddress, listener: HostPort) -> HostPort:
        """What a 227/229 names for the data listener `data`."""
        ip = self.address_for(client, dialled, listener)
        if ip is None or ip.version != data.ip.version:
            ip = data.ip  # a 227 cannot name another family; the data listener's own address then
        return HostPort(ip, data.port + self.port_offset)


def _same_listener(configured: HostPort, arrived: HostPort) -> bool:
    # A listener on 0.0.0.0:21 takes connections to every local address: it matches by port.
    return configured.port == arrived.port and (configured.ip.is_unspecified or configured.ip == arrived.ip)
