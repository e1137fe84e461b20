"""A client that drops a download (reads 32 KiB of a 24 MiB RETR, closes its data connection, sends no ABOR) gets
426 or the server's own failure reply through the gateway, never 2xx: plain on both data paths, passive and
active, and under PROT P with each TLS daemon (issue 25 item 2: before, PROT P got 226 in 10 runs of 10). The
session goes on, and the gateway's transfer log says what the reply said.

pure-ftpd is not in the PROT P matrix: it answers a TLS download dropped without ABOR with no final reply at all
(directly too; tests/unit/test_abor_pairing.py records it), so a client waits for nothing either way.

Topology: client 203.0.113.10 -> gateway 203.0.113.1 | 198.51.100.1 -> daemons on 198.51.100.10.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clients import ClientTls, ftplib_run
from ftps import ABOR_FILE, TLS_KINDS, FtpsWorld, build_world
from gateway import random_file
from hostile import start_gateway
from netns import Topology
from pki import Pki
from servers import FtpServer

pytestmark = pytest.mark.netns

RUNS = 5

DROP_EACH = r"""
import ftplib, json, sys
spec = json.load(sys.stdin)
out = {}
for mode in ("pasv", "port"):
    ftp = ftplib.FTP()
    ftp.connect(spec["host"], 21, timeout=20)
    ftp.login(spec["user"], spec["password"])
    ftp.set_pasv(mode == "pasv")
    ftp.voidcmd("TYPE I")
    replies = []
    for _ in range(spec["runs"]):
        conn = ftp.transfercmd("RETR drop.bin")
        conn.recv(32768)
        conn.close()
        replies.append(ftp.getmultiline())
    replies.append(ftp.sendcmd("NOOP"))
    ftp.quit()
    out[mode] = replies
print(json.dumps(out))
"""


@pytest.fixture
def vsftpd(reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer]) -> FtpServer:
    reverse_topo.gw.sysctl("net.ipv4.ip_forward", 1)
    return ftp_server_factory("vsftpd", reverse_topo.server)


@pytest.mark.parametrize("data_path", ["relay", "kernel"])
def test_a_dropped_plain_download_is_never_reported_complete(
    reverse_topo: Topology, vsftpd: FtpServer, tmp_path: Path, data_path: str
) -> None:
    topo = reverse_topo
    gateway = start_gateway(topo, {"data_path": data_path})
    vsftpd.put_file("drop.bin", random_file(tmp_path / "drop.bin", 24 << 20).read_bytes())
    spec = {"host": str(topo.public_addr), "user": vsftpd.user, "password": vsftpd.password, "runs": RUNS}
    done = topo.client.run([sys.executable, "-c", DROP_EACH], input=json.dumps(spec), timeout=120)
    assert done.returncode == 0, done.stderr + topo.logs()
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for mode in ("pasv", "port"):
        *dropped, noop = report[mode]
        assert all(reply[:1] == "4" for reply in dropped), (mode, dropped)
        assert noop.startswith("200"), (mode, noop)
    if data_path == "relay":
        assert "outcome=complete" not in gateway.log(), "the transfer log says what the reply said"


@pytest.fixture(scope="module")
def world(pki: Pki, request: pytest.FixtureRequest) -> Iterator[FtpsWorld]:
    yield from build_world(pki, request)


@pytest.mark.parametrize("kind", [kind for kind in TLS_KINDS if kind != "pure-ftpd"])
def test_a_dropped_download_under_prot_p_is_never_reported_complete(world: FtpsWorld, kind: str) -> None:
    _, port = world.gateway(kind)
    server = world.servers[kind]
    target = server.target(world.topo.public_addr, port)
    ops = [("drop_retr", ABOR_FILE)] * RUNS + [("cmd", "NOOP")]
    tls = ClientTls(ca_file=world.pki.ca_file, reuse=True, protect_data=True)
    result = ftplib_run(world.topo.client, target, ops, tls=tls, timeout_s=90, io_timeout_s=15)
    assert result.ok and result.data is not None, str(result)
    *dropped, noop = result.data["results"]
    assert all(op["received"] > 0 and op["reply"][:1] == "4" for op in dropped), dropped
    assert noop["reply"].startswith("200")
