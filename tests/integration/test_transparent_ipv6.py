"""Transparent mode over IPv6: a LAN client behind the NAT box reaches an IPv6 server, through ftp-alg.

Topology: lan 2001:db8:18::10 (default via ::1) -> gw 2001:db8:18::1 | 2001:db8:113::1 (forwarding, NAT66
masquerade as the IPv4 layout does) -> server 2001:db8:113::20 (vsftpd, listen_ipv6). The gateway namespace
gets the shipped rule set deploy/nftables/ftp-alg-transparent.nft unchanged but for its defines: its inet
table redirects IPv6 tcp/21 to ftp-alg on [2001:db8:18::1]:2121 as well, ftp-alg finds the server with
IP6T_SO_ORIGINAL_DST, and EPSV data connections to the server on ftp-alg's ports are redirected to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clients import curl_download, curl_upload, ftplib_run
from conftest import require_netns, require_server
from gateway import random_file, sha256_file, wait_listening
from netns import Topology
from servers import FtpServer, start_server

pytestmark = pytest.mark.netns

GATEWAY_PORT = 2121
PASSIVE_PORTS = "50000-50099"
RULESET = Path(__file__).resolve().parents[2] / "deploy" / "nftables" / "ftp-alg-transparent.nft"
SIZE = 2_000_003


def build(topo: Topology) -> None:
    lan = topo.add_host("lan", {"eth0": ["198.18.0.10/24", "2001:db8:18::10/64"]}, ipv6=True)
    gw = topo.add_host(
        "gw",
        {"lan": ["198.18.0.1/24", "2001:db8:18::1/64"], "pub": ["203.0.113.1/24", "2001:db8:113::1/64"]},
        ipv6=True,
    )
    server = topo.add_host("server", {"eth0": ["203.0.113.20/24", "2001:db8:113::20/64"]}, ipv6=True)
    topo.link(gw, "lan", lan, "eth0")
    topo.link(gw, "pub", server, "eth0")
    lan.ip("-6", "route", "add", "default", "via", "2001:db8:18::1")
    gw.sysctl("net.ipv6.conf.all.forwarding", 1)
    gw.nft("""
table ip6 falg_nat6 {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "pub" ip6 saddr 2001:db8:18::/64 masquerade
    }
}
""")


@dataclass
class Setup:
    topo: Topology
    server: FtpServer
    files: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require_netns()
    require_server("vsftpd")
    files = tmp_path_factory.mktemp("transparent6")
    random_file(files / "data.bin", SIZE)
    with Topology("transparent6", builder=build) as topo:
        server = start_server("vsftpd", topo.server, family="ipv6")
        server.put_file("data.bin", (files / "data.bin").read_bytes())
        process = topo.start_gateway(
            [
                "run",
                "--mode",
                "transparent",
                "--listen",
                f"[2001:db8:18::1]:{GATEWAY_PORT}",
                "--listen",
                f"198.18.0.1:{GATEWAY_PORT}",
                "--passive-ports",
                PASSIVE_PORTS,
                "--log-level",
                "debug",
            ]
        )
        wait_listening(topo.gw, process, topo.gw.iface_addr6("lan"), GATEWAY_PORT)
        values = {"LAN_IF": '"lan"', "WAN_IF": '"pub"', "ALG_PORT": str(GATEWAY_PORT), "DATA_PORTS": PASSIVE_PORTS}
        text = RULESET.read_text()
        for name, value in values.items():
            text, count = re.subn(rf"^define {name} = \S+", f"define {name} = {value}", text, flags=re.M)
            assert count == 1, name
        topo.gw.nft(text)
        try:
            yield Setup(topo, server, files)
        finally:
            server.stop()


@pytest.mark.parametrize("mode", ["epsv", "eprt"])
def test_curl_through_the_redirect(setup: Setup, mode: str, tmp_path: Path) -> None:
    target = setup.server.target()  # the server's own address: the redirect sends it to ftp-alg
    assert target.addr.version == 6
    dest = tmp_path / "got.bin"
    down = curl_download(setup.topo.client, target, "data.bin", dest, mode=mode)  # type: ignore[arg-type]
    assert down.ok, f"{down}\n{setup.topo.logs()[-5000:]}"
    assert sha256_file(dest) == sha256_file(setup.files / "data.bin")
    remote = f"upload/curl-{mode}.bin"
    up = curl_upload(setup.topo.client, target, setup.files / "data.bin", remote, mode=mode)  # type: ignore[arg-type]
    assert up.ok, f"{up}\n{setup.topo.logs()[-5000:]}"
    assert setup.server.sha256(remote) == sha256_file(setup.files / "data.bin")
    gateway_log = setup.topo.logs()
    # The session went through ftp-alg, which found the server from the redirected connection.
    assert "upstream=[2001:db8:113::20]:21" in gateway_log
    if mode == "eprt":
        # vsftpd saw ftp-alg's address in EPRT, never the LAN client's.
        server_log = setup.server.logs()
        assert "EPRT |2|2001:db8:113::1|" in server_log and "2001:db8:18::10|" not in server_log


@pytest.mark.parametrize("mode", ["epsv", "eprt"])
def test_ftplib_through_the_redirect(setup: Setup, mode: str, tmp_path: Path) -> None:
    got = tmp_path / "ftplib.bin"
    run = ftplib_run(
        setup.topo.client,
        setup.server.target(),
        [("retr", "data.bin", got), ("stor", got, f"upload/ftplib-{mode}.bin")],
        mode=mode,  # type: ignore[arg-type]
    )
    assert run.ok and run.data and run.data["ok"], f"{run}\n{setup.topo.logs()[-5000:]}"
    assert sha256_file(got) == sha256_file(setup.files / "data.bin")
    assert setup.server.sha256(f"upload/ftplib-{mode}.bin") == sha256_file(got)
