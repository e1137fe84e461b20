"""The FTPS tests' shared world: one reverse topology per test module, with every TLS daemon running at once.

client 203.0.113.10 ─ gw 203.0.113.1 | 198.51.100.1 ─ server 198.51.100.10, which runs
  vsftpd    :21   FTPS only, require_ssl_reuse=YES        passive 30000-30019
  proftpd   :2121 mod_tls, TLSRequired on                 passive 30100-30119
  pure-ftpd :2122 -Y 2 (TLS sessions only)                passive 30200-30219
  plain     :2123 vsftpd without TLS                      passive 30300-30319
Sharing one topology and one set of daemons keeps the matrix fast; each test writes under its own names.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway import Gateway, start_reverse_gateway
from netns import Topology
from pki import CertFiles, Pki
from servers import FtpServer, start_server

TLS_KINDS = ("vsftpd", "proftpd", "pure-ftpd")
PORTS = {"vsftpd": 21, "proftpd": 2121, "pure-ftpd": 2122, "plain": 2123}
PASV = {"vsftpd": (30000, 30019), "proftpd": (30100, 30119), "pure-ftpd": (30200, 30219), "plain": (30300, 30319)}
ABOR_FILE, ABOR_SIZE = "abor.bin", 24 * 1024 * 1024  # more than the path's buffers hold: ABOR lands mid-transfer


@dataclass
class FtpsWorld:
    topo: Topology
    pki: Pki
    servers: dict[str, FtpServer]
    abor_sha256: str = ""
    gateways: list[Gateway] = field(default_factory=list)
    setups: dict[str, int] = field(default_factory=dict)  # a test module's named gateways -> their ports
    ports: dict[str, int] = field(default_factory=lambda: dict(PORTS))

    def add_server(
        self, name: str, kind: str, port: int, pasv_ports: tuple[int, int], tls: CertFiles | None
    ) -> FtpServer:
        """Another daemon in the server namespace (e.g. one with a bad certificate), stopped with the world."""
        server = start_server(kind, self.topo.server, port=port, pasv_ports=pasv_ports, tls=tls)
        self.servers[name], self.ports[name] = server, port
        return server

    _next_port: int = 2200
    _next_passive: int = 51000

    def gateway(
        self, upstream: str, *flags: str, tls_both: bool = True, config: dict[str, Any] | None = None
    ) -> tuple[Gateway, int]:
        """A gateway in front of the daemon `upstream` (a key of PORTS) on its own port and passive range.

        tls_both: client TLS required with the gateway's certificate, upstream TLS required and verified
        against the test CA (the upstream's name is its address, which its certificate carries). Returns the
        gateway and its port; stopped with the world. `config`: YAML settings (for what has no flag)."""
        port, first = self._next_port, self._next_passive
        self._next_port += 1
        self._next_passive += 100
        tls_flags: list[str] = []
        if tls_both:
            tls_flags = [*self.client_tls_flags(), *self.upstream_tls_flags()]
        if config is not None:
            path = self.topo.workdir / f"gateway-{port}.yaml"
            path.write_text(yaml.safe_dump(config))
            tls_flags += ["--config", str(path)]
        gateway = start_reverse_gateway(
            self.topo,
            *tls_flags,
            *flags,
            upstream=f"198.51.100.10:{self.ports[upstream]}",
            listen_port=port,
            passive_ports=f"{first}-{first + 99}",
        )
        self.gateways.append(gateway)
        return gateway, port

    def client_tls_flags(self, mode: str = "require") -> list[str]:
        return ["--tls-client", mode, "--tls-cert", str(self.pki.gateway.cert), "--tls-key", str(self.pki.gateway.key)]

    def upstream_tls_flags(self, mode: str = "require", ca_file: Path | None = None) -> list[str]:
        return ["--tls-upstream", mode, "--tls-upstream-ca-file", str(ca_file or self.pki.ca_file)]

    def close(self, failed: bool) -> None:
        for gateway in self.gateways:
            if failed:
                print(gateway.log()[-6000:])
            gateway.stop()
        for server in self.servers.values():
            if failed:
                print(server.logs()[-6000:])
            server.stop()


def build_world(pki: Pki, request: pytest.FixtureRequest, *, abor_file: bool = True) -> Iterator[FtpsWorld]:
    """Yield a world with all four daemons started; tears everything down after, printing the daemons' and
    gateways' logs when a test of the module failed."""
    from conftest import require_netns, require_server

    require_netns()
    for kind in TLS_KINDS:
        require_server(kind)
    failed_before = request.session.testsfailed
    with Topology("reverse") as topo:
        world = FtpsWorld(topo, pki, {})
        try:
            for name in (*TLS_KINDS, "plain"):
                kind = "vsftpd" if name == "plain" else name
                world.add_server(name, kind, PORTS[name], PASV[name], None if name == "plain" else pki.upstream)
            if abor_file:
                payload = random.Random(ABOR_SIZE).randbytes(ABOR_SIZE)
                world.abor_sha256 = hashlib.sha256(payload).hexdigest()
                for server in world.servers.values():
                    server.put_file(ABOR_FILE, payload)
            yield world
        finally:
            world.close(request.session.testsfailed > failed_before)
