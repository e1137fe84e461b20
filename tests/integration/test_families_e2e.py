"""Reverse mode across address families: IPv4 and IPv6 clients in front of IPv4, IPv6 and dual-stack servers.

Topology (one for the module): client 203.0.113.10 + 2001:db8:1::10 -> gateway 203.0.113.1 + 2001:db8:1::1 |
198.51.100.1 + 2001:db8:2::1 -> servers on 198.51.100.10 / 2001:db8:2::10. One gateway per upstream, each
listening on [::] with --dual-stack (IPv4 clients arrive IPv4-mapped). The servers:
  vsftpd4     IPv4 only                             (IPv6 clients: EPSV/EPRT upstream, IPv4 addresses)
  vsftpd6     IPv6 only (listen_ipv6)               (IPv4 clients: PASV/PORT become EPSV/EPRT)
  proftpd     dual-stack, reached over IPv6
  pure-ftpd   dual-stack, reached over IPv4
  rfc959      pyftpdlib without EPSV/EPRT, IPv4     (IPv6 clients: EPSV/EPRT become PASV/PORT after a 500)
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clients import curl_download, curl_upload, ftplib_run, lftp
from conftest import require_netns, require_server
from gateway import random_file, sha256_file, wait_listening
from netns import Topology
from servers import FtpServer, FtpTarget, start_server

pytestmark = pytest.mark.netns

# name: (kind, family the server listens on, family the gateway reaches it by, port, passive ports)
SERVERS = {
    "vsftpd4": ("vsftpd", "ipv4", 4, 21, (30000, 30019)),
    "vsftpd6": ("vsftpd", "ipv6", 6, 2121, (30020, 30039)),
    "proftpd": ("proftpd", "dual", 6, 2122, (30040, 30059)),
    "pure-ftpd": ("pure-ftpd", "dual", 4, 2123, (30060, 30079)),
    "rfc959": ("pyftpdlib-rfc959", "ipv4", 4, 2124, (30080, 30099)),
}
GATEWAY_PORTS = {name: 2200 + i for i, name in enumerate(SERVERS)}
METRICS_PORTS = {name: 9200 + i for i, name in enumerate(SERVERS)}
PUBLIC4 = "203.0.113.1"
PUBLIC6 = "2001:db8:1::1"
SIZE = 300_001


def build(topo: Topology) -> None:
    client = topo.add_host("client", {"eth0": ["203.0.113.10/24", "2001:db8:1::10/64"]}, ipv6=True)
    gw = topo.add_host(
        "gw", {"pub": ["203.0.113.1/24", "2001:db8:1::1/64"], "int": ["198.51.100.1/24", "2001:db8:2::1/64"]}, ipv6=True
    )
    server = topo.add_host("server", {"eth0": ["198.51.100.10/24", "2001:db8:2::10/64"]}, ipv6=True)
    topo.link(gw, "pub", client, "eth0")
    topo.link(gw, "int", server, "eth0")


@dataclass
class World:
    topo: Topology
    servers: dict[str, FtpServer]
    files: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_netns()
    for kind, *_ in SERVERS.values():
        require_server(kind)
    files = tmp_path_factory.mktemp("families")
    random_file(files / "data.bin", SIZE)
    with Topology("families", builder=build) as topo:
        servers: dict[str, FtpServer] = {}
        for name, (kind, family, reach, port, passive) in SERVERS.items():
            server = start_server(kind, topo.server, port=port, pasv_ports=passive, family=family)
            servers[name] = server
            server.put_file("data.bin", (files / "data.bin").read_bytes())
            upstream = topo.server.addr6 if reach == 6 else topo.server.addr
            host = f"[{upstream}]" if reach == 6 else str(upstream)
            listen = GATEWAY_PORTS[name]
            first = 50000 + 100 * list(SERVERS).index(name)
            process = topo.start_gateway(
                [
                    "run",
                    "--listen",
                    f"[::]:{listen}",
                    "--dual-stack",
                    "--upstream",
                    f"{host}:{port}",
                    "--public-address",
                    PUBLIC4,
                    "--public-address6",
                    PUBLIC6,
                    "--passive-ports",
                    f"{first}-{first + 99}",
                    "--metrics-listen",
                    f"127.0.0.1:{METRICS_PORTS[name]}",
                    "--log-level",
                    "debug",
                ]
            )
            wait_listening(topo.gw, process, ipaddress.ip_address("::"), listen)
        yield World(topo, servers, files)
        for server in servers.values():
            server.stop()


def target(world: World, name: str, family: int) -> FtpTarget:
    address = "2001:db8:1::1" if family == 6 else PUBLIC4
    return world.servers[name].target(address, GATEWAY_PORTS[name])


def metrics(world: World, name: str) -> dict[str, float]:
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORTS[name]}/metrics').read().decode())"
    text = world.topo.gw.run([sys.executable, "-c", fetch], check=True).stdout
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def translations(world: World, name: str, client_verb: str, server_verb: str) -> float:
    key = f'ftp_alg_verb_translations_total{{from="{client_verb}",to="{server_verb}"}}'
    return metrics(world, name)[key]


# Modes each client family can ask for: curl always uses EPSV/EPRT over IPv6 (RFC 2428 is the only form there).
CASES = [(name, 4, mode) for name in SERVERS for mode in ("pasv", "epsv", "port", "eprt")] + [
    (name, 6, mode) for name in SERVERS for mode in ("epsv", "eprt")
]


@pytest.mark.parametrize(("name", "family", "mode"), CASES, ids=[f"{n}-v{f}-{m}" for n, f, m in CASES])
def test_curl_download_and_upload_across_families(
    world: World, name: str, family: int, mode: str, tmp_path: Path
) -> None:
    client = world.topo.client
    where = target(world, name, family)
    dest = tmp_path / "got.bin"
    down = curl_download(client, where, "data.bin", dest, mode=mode)  # type: ignore[arg-type]
    assert down.ok, f"{down}\n{world.topo.logs()[-6000:]}"
    assert sha256_file(dest) == sha256_file(world.files / "data.bin")
    asked = {"pasv": "PASV", "epsv": "EPSV", "port": "PORT", "eprt": "EPRT"}[mode]
    sent = [line.split(" ")[0] for line in down.sent()]
    assert asked in sent, sent  # the client got the reply its own command asked for: no fallback
    expected_reply = {"PASV": "227", "EPSV": "229"}.get(asked)
    if expected_reply is not None:
        assert any(line.startswith(expected_reply) for line in down.received()), down.received()
        passive = [line for line in down.received() if line.startswith(("227", "229"))]
        assert passive and all("198,51,100" not in line for line in passive), passive
    remote = f"upload/{name}-v{family}-{mode}.bin"
    up = curl_upload(client, where, world.files / "data.bin", remote, mode=mode)  # type: ignore[arg-type]
    assert up.ok, f"{up}\n{world.topo.logs()[-6000:]}"
    assert world.servers[name].sha256(remote) == sha256_file(world.files / "data.bin")


def test_the_gateway_bridged_what_the_servers_could_not_do(world: World) -> None:
    """After the matrix: each translation was counted where (and only where) a server needed it."""
    # IPv4 clients' PASV/PORT toward IPv6 upstreams (vsftpd6, proftpd reached over IPv6).
    for name in ("vsftpd6", "proftpd"):
        assert translations(world, name, "PASV", "EPSV") >= 2, name
        assert translations(world, name, "PORT", "EPRT") >= 2, name
    # EPSV/EPRT toward the server that knows only RFC 959.
    assert translations(world, "rfc959", "EPSV", "PASV") >= 4
    assert translations(world, "rfc959", "EPRT", "PORT") >= 4
    # Servers that speak every form the client used got it unchanged.
    for name in ("vsftpd4", "pure-ftpd"):
        assert all(translations(world, name, a, b) == 0 for a, b in (("EPSV", "PASV"), ("PASV", "EPSV"))), name


def test_lftp_and_ftplib_over_ipv6_in_front_of_a_server_without_epsv(world: World, tmp_path: Path) -> None:
    client = world.topo.client
    where = target(world, "rfc959", 6)
    dest = tmp_path / "lftp.bin"
    done = lftp(client, where, [f"get data.bin -o {dest}", "ls"], mode="epsv")
    assert done.ok, f"{done}\n{world.topo.logs()[-6000:]}"
    assert sha256_file(dest) == sha256_file(world.files / "data.bin")
    for mode in ("epsv", "eprt"):
        got = tmp_path / f"ftplib-{mode}.bin"
        run = ftplib_run(
            client, where, [("retr", "data.bin", got), ("stor", got, f"upload/ftplib-{mode}.bin")], mode=mode
        )  # type: ignore[arg-type]
        assert run.ok and run.data and run.data["ok"], f"{run}\n{world.topo.logs()[-6000:]}"
        assert sha256_file(got) == sha256_file(world.files / "data.bin")
        assert world.servers["rfc959"].sha256(f"upload/ftplib-{mode}.bin") == sha256_file(got)


RAW_SESSION = r"""
import json, socket, sys
spec = json.load(sys.stdin)
sock = socket.create_connection((spec["host"], spec["port"]), timeout=10)
f = sock.makefile("rb")
def reply():
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
    return line.decode().strip()
replies = [reply()]
for command in spec["commands"]:
    sock.sendall(command.encode() + b"\r\n")
    replies.append(reply())
print(json.dumps(replies))
"""


def raw(world: World, name: str, family: int, commands: list[str]) -> list[str]:
    where = target(world, name, family)
    spec = {
        "host": str(where.addr),
        "port": where.port,
        "commands": [f"USER {where.user}", f"PASS {where.password}", *commands],
    }
    done = world.topo.client.run([sys.executable, "-c", RAW_SESSION], input=json.dumps(spec), timeout=30)
    assert done.returncode == 0, done.stderr
    replies: list[str] = json.loads(done.stdout)
    return replies[3:]


def test_pasv_from_an_ipv6_client_is_refused_and_the_session_goes_on(world: World) -> None:
    for name in ("vsftpd4", "rfc959"):
        pasv, noop = raw(world, name, 6, ["PASV", "NOOP"])
        assert pasv.startswith("425 ") and "EPSV" in pasv, pasv
        assert noop.startswith("200"), noop


def test_epsv_with_the_wrong_family_gets_522(world: World) -> None:
    (answer,) = raw(world, "vsftpd4", 6, ["EPSV 1"])
    assert answer.startswith("522 "), answer


def test_an_ipv4_client_of_a_dual_stack_listener_is_logged_as_ipv4(world: World) -> None:
    (noop,) = raw(world, "vsftpd4", 4, ["NOOP"])
    assert noop.startswith("200"), noop
    gateway_logs = world.topo.logs()
    assert "client=203.0.113.10:" in gateway_logs
    assert "::ffff:" not in gateway_logs


def test_the_kernel_data_path_over_ipv6(world: World, tmp_path: Path) -> None:
    """data_path kernel with IPv6 on both legs: the kernel carries EPSV and EPRT data (NAT66 mappings in ftp-alg's
    own table), byte-exact both ways; an IPv4 client of the same gateway crosses families and is relayed."""
    topo, server = world.topo, world.servers["vsftpd6"]
    topo.gw.sysctl("net.ipv6.conf.all.forwarding", 1)
    port, metrics_port = 2290, 9290
    process = topo.start_gateway(
        [
            "run",
            "--listen",
            f"[::]:{port}",
            "--dual-stack",
            "--upstream",
            f"[{topo.server.addr6}]:2121",
            "--public-address",
            PUBLIC4,
            "--public-address6",
            PUBLIC6,
            "--passive-ports",
            "50900-50949",
            "--active-ports",
            "40900-40949",
            "--data-path",
            "kernel",
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
            "--log-level",
            "debug",
        ]
    )
    try:
        wait_listening(topo.gw, process, ipaddress.ip_address("::"), port)
        assert "data_path=kernel table=inet ftp_alg_data" in process.log(), process.log()[-3000:]
        data = world.files / "data.bin"
        for family, mode in ((6, "epsv"), (6, "eprt"), (4, "pasv")):
            where = server.target(PUBLIC6 if family == 6 else PUBLIC4, port)
            dest = tmp_path / f"kernel-v{family}-{mode}.bin"
            down = curl_download(topo.client, where, "data.bin", dest, mode=mode)  # type: ignore[arg-type]
            assert down.ok, f"{down}\n{process.log()[-6000:]}"
            assert sha256_file(dest) == sha256_file(data)
            remote = f"upload/kernel-v{family}-{mode}.bin"
            up = curl_upload(topo.client, where, data, remote, mode=mode)  # type: ignore[arg-type]
            assert up.ok, f"{up}\n{process.log()[-6000:]}"
            assert server.sha256(remote) == sha256_file(data)
    finally:
        process.stop()
        topo.gw.sysctl("net.ipv6.conf.all.forwarding", 0)
    # A transfer's line comes once its counters settled; the graceful stop waits for that.
    carried = process.log().count("kernel data ticket=")
    assert carried == 4, f"{carried} transfers in the kernel, expected the 4 over IPv6\n{process.log()[-6000:]}"
    listing = topo.gw.run(["nft", "list", "tables"], check=True).stdout
    assert "ftp_alg_data" not in listing, "ftp-alg left its table behind"
