"""upstream_data_mode end to end (issue 23): vsftpd refusing one data mode, real clients in the other one.

Topology: client 203.0.113.10 -> gateway 203.0.113.1 | 198.51.100.1 -> vsftpd 198.51.100.10, twice: on port 21
with `pasv_enable=NO` (a server whose firewall opens port 21 only), on port 2121 with `port_enable=NO` (a server
that may not connect out). A gateway with `upstream_data_mode: active` serves passive clients from the first,
one with `passive` serves active clients from the second, byte-exact; asked directly (from the gateway's
namespace, which can reach the servers), the same cells fail: the problem is real.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clients import Mode, curl_download, curl_upload, ftplib_run, lftp
from conftest import require_netns, require_server
from gateway import Gateway, random_file, sha256_file, start_reverse_gateway, wait_listening
from netns import Topology
from scenarios import ftplib_round_trip
from servers import FtpServer, start_server

pytestmark = pytest.mark.netns

SMALL = 1 << 20
BIG = 16 << 20


@dataclass
class Setup:
    topo: Topology
    no_pasv: FtpServer  # pasv_enable=NO
    no_port: FtpServer  # port_enable=NO
    active: Gateway  # upstream_data_mode active, toward no_pasv
    passive: Gateway  # upstream_data_mode passive, toward no_port
    per_upstream: Gateway  # top level follow; `upstreams:` entries with their own modes, by USER (per_user)
    files: Path


def start_per_upstream_gateway(topo: Topology, config: Path) -> Gateway:
    """Two upstreams, each with its own upstream_data_mode: anonymous goes to no_pasv, ftp to no_port."""
    config.write_text(
        "upstream_data_mode: follow\n"
        "upstreams:\n"
        "  - {address: 198.51.100.10:21, name: no_pasv, upstream_data_mode: active}\n"
        "  - {address: 198.51.100.10:2121, name: no_port, upstream_data_mode: passive}\n"
        "upstream_policy: per_user\n"
        "upstream_users: {anonymous: no_pasv, ftp: no_port}\n"
    )
    public = topo.public_addr
    args = ["run", "--config", config, "--listen", f"{public}:2103", "--public-address", str(public)]
    process = topo.start_gateway([*args, "--passive-ports", "50200-50299", "--log-level", "debug"])
    wait_listening(topo.gw, process, public, 2103)
    return Gateway(topo, process, public, 2103)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require_netns()
    require_server("vsftpd")
    files = tmp_path_factory.mktemp("data-modes")
    with Topology("reverse") as topo:
        no_pasv = start_server("vsftpd", topo.server, options={"pasv_enable": "NO"})
        no_port = start_server("vsftpd", topo.server, port=2121, options={"port_enable": "NO"})
        for name, size in (("empty.bin", 0), ("one.bin", 1), ("small.bin", SMALL), ("big.bin", BIG)):
            random_file(files / name, size)
            for server in (no_pasv, no_port):
                server.put_file(name, (files / name).read_bytes())
        gateways: list[Gateway] = []
        try:
            gateways.append(
                start_reverse_gateway(
                    topo, "--upstream-data-mode", "active", listen_port=2101, passive_ports="50000-50099"
                )
            )
            gateways.append(
                start_reverse_gateway(
                    topo,
                    "--upstream-data-mode",
                    "passive",
                    upstream="198.51.100.10:2121",
                    listen_port=2102,
                    passive_ports="50100-50199",
                )
            )
            gateways.append(start_per_upstream_gateway(topo, files / "per-upstream.yaml"))
            yield Setup(topo, no_pasv, no_port, gateways[0], gateways[1], gateways[2], files)
        finally:
            for gateway in gateways:
                gateway.stop()
            no_pasv.stop()
            no_port.stop()


@pytest.mark.parametrize("mode", ["pasv", "epsv"])
def test_a_passive_client_gets_files_from_a_server_refusing_pasv(setup: Setup, mode: Mode, tmp_path: Path) -> None:
    target = setup.no_pasv.target(setup.topo.public_addr, setup.active.port)
    local = tmp_path / "big.bin"
    result = curl_download(setup.topo.client, target, "big.bin", local, mode=mode).check()
    assert sha256_file(local) == sha256_file(setup.files / "big.bin")
    sent = result.sent()
    assert any(line.startswith(mode.upper()) for line in sent), sent  # the client did use its own mode
    assert "PORT" in setup.no_pasv.logs() or "EPRT" in setup.no_pasv.logs()  # and the server got active mode
    upload = tmp_path / "small.bin"
    upload.write_bytes((setup.files / "small.bin").read_bytes())
    curl_upload(setup.topo.client, target, upload, f"upload/curl-{mode}.bin", mode=mode).check()
    assert setup.no_pasv.sha256(f"upload/curl-{mode}.bin") == sha256_file(upload)


def test_ftplib_passive_round_trip_against_a_server_refusing_pasv(setup: Setup, tmp_path: Path) -> None:
    target = setup.no_pasv.target(setup.topo.public_addr, setup.active.port)
    ftplib_round_trip(setup.topo.client, target, setup.no_pasv, setup.files, "pasv", tmp_path)  # REST included


@pytest.mark.parametrize("mode", ["port", "eprt"])
def test_an_active_client_gets_files_from_a_server_refusing_port(setup: Setup, mode: Mode, tmp_path: Path) -> None:
    target = setup.no_port.target(setup.topo.public_addr, setup.passive.port)
    local = tmp_path / "big.bin"
    result = curl_download(setup.topo.client, target, "big.bin", local, mode=mode).check()
    assert sha256_file(local) == sha256_file(setup.files / "big.bin")
    assert any(line.startswith(mode.upper()) for line in result.sent()), result.sent()
    upload = tmp_path / "small.bin"
    upload.write_bytes((setup.files / "small.bin").read_bytes())
    curl_upload(setup.topo.client, target, upload, f"upload/curl-{mode}.bin", mode=mode).check()
    assert setup.no_port.sha256(f"upload/curl-{mode}.bin") == sha256_file(upload)


def test_ftplib_active_round_trip_against_a_server_refusing_port(setup: Setup, tmp_path: Path) -> None:
    target = setup.no_port.target(setup.topo.public_addr, setup.passive.port)
    ftplib_round_trip(setup.topo.client, target, setup.no_port, setup.files, "port", tmp_path)


@pytest.mark.parametrize(("server", "mode"), [("no_pasv", "pasv"), ("no_pasv", "epsv"), ("no_port", "port")])
def test_directly_the_same_cells_fail(setup: Setup, server: str, mode: Mode, tmp_path: Path) -> None:
    """Without the gateway (from its namespace, which reaches the servers), the server's refusal is real."""
    refusing: FtpServer = getattr(setup, server)
    result = curl_download(setup.topo.gw, refusing.target(), "small.bin", tmp_path / "small.bin", mode=mode)
    assert not result.ok, result
    assert not (tmp_path / "small.bin").exists() or sha256_file(tmp_path / "small.bin") != sha256_file(
        setup.files / "small.bin"
    )


def test_each_upstream_entry_has_its_own_data_mode(setup: Setup, tmp_path: Path) -> None:
    """One gateway, top level follow: the entry for the server refusing PASV says active, the other passive."""
    via = setup.topo.public_addr, setup.per_upstream.port
    local = tmp_path / "pasv.bin"
    curl_download(setup.topo.client, setup.no_pasv.target(*via), "small.bin", local, mode="pasv").check()
    assert sha256_file(local) == sha256_file(setup.files / "small.bin")
    target = setup.no_port.target(*via)
    target = type(target)(target.addr, target.port, "ftp", target.password)  # per_user: ftp goes to no_port
    local = tmp_path / "port.bin"
    curl_download(setup.topo.client, target, "small.bin", local, mode="port").check()
    assert sha256_file(local) == sha256_file(setup.files / "small.bin")


def test_the_kernel_data_path_relays_what_it_cannot_map(setup: Setup, tmp_path: Path) -> None:
    """data_path kernel: a crossed transfer is relayed (one NAT mapping joins an accepted and a connected leg),
    and the debug log says so."""
    setup.topo.gw.sysctl("net.ipv4.ip_forward", 1)
    gateway = start_reverse_gateway(
        setup.topo,
        "--upstream-data-mode",
        "active",
        "--data-path",
        "kernel",
        listen_port=2104,
        passive_ports="50300-50399",
    )
    try:
        assert "data_path=kernel" in gateway.log()
        local = tmp_path / "big.bin"
        target = setup.no_pasv.target(setup.topo.public_addr, gateway.port)
        curl_download(setup.topo.client, target, "big.bin", local, mode="pasv").check()
        assert sha256_file(local) == sha256_file(setup.files / "big.bin")
        assert "upstream_data_mode: relaying this transfer" in gateway.log()
    finally:
        gateway.stop()


@pytest.mark.parametrize(("which", "mode"), [("active", "pasv"), ("passive", "port")])
def test_abor_of_a_crossed_transfer_keeps_the_session(setup: Setup, which: str, mode: Mode, tmp_path: Path) -> None:
    """ABOR mid-download (ftplib: 64 KiB read, data closed, ABOR), then NOOP and a whole RETR in the session."""
    server = setup.no_pasv if which == "active" else setup.no_port
    gateway = setup.active if which == "active" else setup.passive
    result = ftplib_run(
        setup.topo.client,
        server.target(setup.topo.public_addr, gateway.port),
        [("abor_retr", "big.bin"), ("cmd", "NOOP"), ("retr", "small.bin", tmp_path / "after.bin")],
        mode=mode,
        timeout_s=40,
        io_timeout_s=15,
    )
    assert result.ok, str(result)
    assert result.data is not None
    abor = result.data["results"][0]
    assert abor["received"] > 0 and {"225", "226"} & set(abor["codes"]), abor
    assert result.data["results"][1]["reply"].startswith("200"), result.data
    assert sha256_file(tmp_path / "after.bin") == sha256_file(setup.files / "small.bin")


@pytest.mark.parametrize(("which", "mode"), [("active", "pasv"), ("active", "epsv"), ("passive", "port")])
def test_lftp_ls_get_put_in_the_other_mode_toward_the_server(
    setup: Setup, which: str, mode: Mode, tmp_path: Path
) -> None:
    server = setup.no_pasv if which == "active" else setup.no_port
    gateway = setup.active if which == "active" else setup.passive
    got = tmp_path / "small.bin"
    remote = f"upload/lftp-{which}-{mode}.bin"
    result = lftp(
        setup.topo.client,
        server.target(setup.topo.public_addr, gateway.port),
        ["ls", f"get small.bin -o {got}", f"put {setup.files / 'one.bin'} -o {remote}"],
        mode=mode,
    ).check()
    assert "small.bin" in result.stdout, result
    assert sha256_file(got) == sha256_file(setup.files / "small.bin")
    assert server.sha256(remote) == sha256_file(setup.files / "one.bin")
