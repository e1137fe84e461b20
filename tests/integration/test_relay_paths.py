"""The data path end to end: both relays (splice and asyncio) carry real transfers, and two workers share the
control port and split the passive range, each data connection reaching the worker that announced it.

client 203.0.113.10 -> ftp-alg 203.0.113.1:21 -> vsftpd 198.51.100.10:21 (reverse topology).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import curl_download, curl_upload, ftplib_run
from netns import ManagedProcess, Topology
from servers import FtpServer, sha256_file

pytestmark = pytest.mark.netns

_PASV_PORT = re.compile(r"227 .*\((?:\d+,){4}(\d+),(\d+)\)")


def _start_gateway(
    topo: Topology, upstream: FtpServer, *, extra: str = "", env: dict[str, str] | None = None
) -> ManagedProcess:
    config = topo.workdir / "gateway.yaml"
    config.write_text(f"listen: {topo.public_addr}:21\nupstream: {upstream.addr}:{upstream.port}\n{extra}")
    gateway = topo.start_gateway(["run", "--config", config], env={**os.environ, **(env or {})})
    topo.client.wait_port(topo.public_addr, 21, process=gateway, timeout_s=10)
    return gateway


@pytest.fixture
def vsftpd(reverse_topo: Topology, ftp_server_factory) -> FtpServer:  # type: ignore[no-untyped-def]
    return ftp_server_factory("vsftpd", reverse_topo.server)


@pytest.fixture(params=["splice", "asyncio"])
def relay_gateway(
    request: pytest.FixtureRequest, reverse_topo: Topology, vsftpd: FtpServer
) -> Iterator[tuple[ManagedProcess, str]]:
    gateway = _start_gateway(reverse_topo, vsftpd, env={"FTP_ALG_RELAY": str(request.param)})
    yield gateway, str(request.param)
    gateway.stop()


def test_transfers_are_whole_through_each_relay(
    reverse_topo: Topology, vsftpd: FtpServer, relay_gateway: tuple[ManagedProcess, str], tmp_path: Path
) -> None:
    target = vsftpd.target(reverse_topo.public_addr, 21)
    for mode in ("pasv", "port"):
        download = tmp_path / f"big-{mode}.bin"
        curl_download(reverse_topo.client, target, "big.bin", download, mode=mode).check()
        assert sha256_file(download) == vsftpd.seeded["big.bin"]
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(3 * 1024 * 1024 + 1))
    for mode in ("pasv", "port"):
        curl_upload(reverse_topo.client, target, upload, f"upload/{mode}.bin", mode=mode).check()
        assert vsftpd.sha256(f"upload/{mode}.bin") == hashlib.sha256(upload.read_bytes()).hexdigest()
    empty = tmp_path / "empty.txt"
    curl_download(reverse_topo.client, target, "empty.txt", empty).check()
    assert empty.read_bytes() == b""
    gateway, relay = relay_gateway
    assert f"relay={relay}" in gateway.log()  # the path under test is the one that carried the bytes


def test_two_workers_share_the_port_and_split_the_passive_range(
    reverse_topo: Topology, vsftpd: FtpServer, tmp_path: Path
) -> None:
    # One passive port per worker: a worker that announced the other's port, or that received a data
    # connection for a port it did not announce, would fail the transfer.
    gateway = _start_gateway(reverse_topo, vsftpd, extra="passive_ports: 40000-40001\nworkers: 2\n")
    target = vsftpd.target(reverse_topo.public_addr, 21)
    children = Path(f"/proc/{gateway.pid}/task/{gateway.pid}/children").read_text().split()
    assert len(children) == 2, gateway.log()
    ports = set()
    for index in range(16):  # SO_REUSEPORT hashes each connection: 16 sessions reach both workers
        local = tmp_path / f"hello-{index}.txt"
        result = ftplib_run(reverse_topo.client, target, [("retr", "hello.txt", local)])
        assert result.ok, f"{result}\n{gateway.log()[-3000:]}"
        assert local.read_bytes() == vsftpd.path("hello.txt").read_bytes()
        for line in result.received():
            match = _PASV_PORT.match(line)
            if match:
                ports.add(int(match.group(1)) * 256 + int(match.group(2)))
    assert ports == {40000, 40001}
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(15) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_two_workers_on_the_kernel_path_each_map_their_own_connections(
    reverse_topo: Topology, vsftpd: FtpServer, tmp_path: Path
) -> None:
    """data_path kernel with workers: 2: each worker owns a table (ftp_alg_data_w0, _w1) and maps the data
    connections it announced, passive and active; both tables are gone once the gateway stopped."""
    topo = reverse_topo
    topo.gw.sysctl("net.ipv4.ip_forward", 1)
    extra = "passive_ports: 40000-40001\nactive_ports: 40100-40101\nworkers: 2\ndata_path: kernel\n"
    gateway = _start_gateway(topo, vsftpd, extra=extra + "log: {level: debug}\n")
    target = vsftpd.target(topo.public_addr, 21)
    ports = set()
    for index in range(16):  # SO_REUSEPORT hashes each connection: 16 sessions reach both workers
        local = tmp_path / f"small-{index}.bin"
        mode = "pasv" if index % 2 else "port"
        result = ftplib_run(topo.client, target, [("retr", "small.bin", local)], mode=mode)
        assert result.ok, f"{result}\n{gateway.log()[-3000:]}"
        assert sha256_file(local) == vsftpd.seeded["small.bin"]
        for line in result.received():
            match = _PASV_PORT.match(line)
            if match:
                ports.add(int(match.group(1)) * 256 + int(match.group(2)))
    log = gateway.log()
    assert ports == {40000, 40001}, log[-3000:]  # both workers announced
    assert "table=inet ftp_alg_data_w0" in log and "table=inet ftp_alg_data_w1" in log, log[-3000:]
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(15) == 0
    log = gateway.log()  # a transfer's line comes once its counters settled: the stop waits for that
    assert log.count("kernel data ticket=") == 16, log[-6000:]  # every transfer carried by a kernel mapping
    tables = topo.gw.run(["nft", "list", "tables"], check=True).stdout
    assert "ftp_alg_data" not in tables, tables
