"""upstream_data_mode toward IPv6 servers (issue 23 item 1): EPRT and EPSV on the server's leg, IPv4 and IPv6
clients in front, in the topology of test_families_e2e (client 203.0.113.10 + 2001:db8:1::10, gateway
203.0.113.1 + 2001:db8:1::1 | 2001:db8:2::1, servers on 2001:db8:2::10). vsftpd listens on IPv6 only, once
refusing PASV/EPSV (served by `active`: EPRT toward it) and once refusing PORT/EPRT (served by `passive`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clients import Mode, curl_download
from conftest import require_netns, require_server
from gateway import random_file, sha256_file, wait_listening
from netns import Topology
from servers import FtpServer, start_server
from test_families_e2e import PUBLIC4, PUBLIC6, build

pytestmark = pytest.mark.netns

# name: (vsftpd option refusing one mode, server port, upstream_data_mode, gateway port, passive ports)
SETUPS = {
    "no_pasv": ("pasv_enable", 2131, "active", 2231, "50000-50099"),
    "no_port": ("port_enable", 2132, "passive", 2232, "50100-50199"),
}


@dataclass
class World:
    topo: Topology
    servers: dict[str, FtpServer]
    files: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_netns()
    require_server("vsftpd")
    files = tmp_path_factory.mktemp("data-modes-ipv6")
    random_file(files / "data.bin", 300_001)
    with Topology("families", builder=build) as topo:
        servers: dict[str, FtpServer] = {}
        try:
            for name, (option, port, data_mode, listen, passive) in SETUPS.items():
                server = start_server("vsftpd", topo.server, port=port, family="ipv6", options={option: "NO"})
                servers[name] = server
                server.put_file("data.bin", (files / "data.bin").read_bytes())
                args = ["run", "--listen", f"[::]:{listen}", "--dual-stack", "--upstream", f"[{server.addr}]:{port}"]
                args += ["--public-address", PUBLIC4, "--public-address6", PUBLIC6, "--passive-ports", passive]
                process = topo.start_gateway([*args, "--upstream-data-mode", data_mode, "--log-level", "debug"])
                wait_listening(topo.gw, process, ipaddress.ip_address("::"), listen)
            yield World(topo, servers, files)
        finally:
            for server in servers.values():
                server.stop()


CASES = [("no_pasv", 4, "pasv"), ("no_pasv", 6, "epsv"), ("no_port", 4, "port"), ("no_port", 6, "eprt")]


@pytest.mark.parametrize(("name", "family", "mode"), CASES)
def test_an_ipv6_server_refusing_one_mode_serves_the_other_through_the_gateway(
    world: World, name: str, family: int, mode: Mode, tmp_path: Path
) -> None:
    address = PUBLIC6 if family == 6 else PUBLIC4
    target = world.servers[name].target(address, SETUPS[name][3])
    local = tmp_path / "data.bin"
    curl_download(world.topo.client, target, "data.bin", local, mode=mode).check()
    assert sha256_file(local) == sha256_file(world.files / "data.bin")
    sent_to_server = world.servers[name].logs()
    assert ("EPRT" if name == "no_pasv" else "EPSV") in sent_to_server
