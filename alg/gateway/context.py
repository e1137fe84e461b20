"""What the sessions of one gateway process share: its timeouts, port pools, TLS runtime, metrics and addresses.

Rules: plain records, built once per worker (alg.gateway.server) and read by sessions and data channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from alg.ftp import control as c
from alg.ftp.addresses import IPAddress
from alg.gateway import secure
from alg.gateway.advertise import Advertiser
from alg.gateway.guard import Guard
from alg.net.dataplane import PortPool
from alg.net.kernelpath import KernelPath
from alg.ops.metrics import Metrics


@dataclass(slots=True)
class Timeouts:
    upstream_connect_s: float = 10.0
    login_s: float = 60.0
    idle_s: float = 900.0
    data_connect_s: float = 30.0
    data_idle_s: float = 300.0


@dataclass(slots=True)
class GatewayContext:
    """What all sessions of one gateway process share."""

    channel_settings: c.ChannelSettings
    timeouts: Timeouts
    metrics: Metrics
    public_pool: PortPool | None  # ports for listeners facing the public side
    internal_pool: PortPool | None  # ports for listeners facing the internal side (None: any free port)
    transparent: bool = False
    public_address: IPAddress | None = None  # announced instead of our own address on the public side
    public_address6: IPAddress | None = None  # the same, for IPv6 clients
    tls: secure.TlsRuntime = field(default_factory=secure.TlsRuntime)
    kernel_path: KernelPath | None = None  # data_path: kernel, where the kernel allows it
    advertiser: Advertiser | None = None  # split horizon and port offset; None: public_address alone
    guard: Guard | None = None  # the defender: scores hostile acts (alg.gateway.guard)
    # upstream_data_sources: where else a server's active-mode data connections may come from
    upstream_data_sources: tuple[IPv4Network | IPv6Network, ...] = ()
