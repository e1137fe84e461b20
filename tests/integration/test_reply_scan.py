"""Reverse mode reveals nothing internal: every reply a client gets, in sessions of every kind (login, listings and
transfers in the four data modes, refusals, an upstream that is down), is scanned for the upstream's addresses,
the gateway's internal address and the upstream's host name. The gateway's log keeps them.

client 203.0.113.10 ─ gw 203.0.113.1 | 198.51.100.1 ─ vsftpd 198.51.100.10:21, named ftp.internal.example
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from clients import ftplib_run
from hostile import RawFtp
from netns import Topology
from pki import Pki
from scaleout import start_gateway
from servers import FtpServer, FtpTarget

GW = "203.0.113.1"
NAME = "ftp.internal.example"
# The internal network in both spellings a reply can use (dotted, and 227's commas), and the upstream's name.
INTERNAL = re.compile(rb"198[.,]51[.,]100[.,]\d|" + re.escape(NAME.encode()), re.IGNORECASE)


def leaks(received: bytes) -> list[str]:
    return [line.decode(errors="replace").rstrip() for line in received.splitlines(True) if INTERNAL.search(line)]


@pytest.fixture
def gateway(reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer]) -> FtpServer:
    server = ftp_server_factory("vsftpd", reverse_topo.server)
    reverse_topo.gw.hosts_file(f"127.0.0.1 localhost\n198.51.100.10 {NAME}\n")
    start_gateway(reverse_topo.gw, {"listen": f"{GW}:21", "passive_ports": "50000-50019", "upstream": NAME})
    return server


@pytest.mark.parametrize("mode", ["pasv", "epsv", "port", "eprt"])
def test_transfers_in_every_mode(reverse_topo: Topology, gateway: FtpServer, tmp_path: Path, mode: str) -> None:
    got, up = tmp_path / "small.bin", tmp_path / "up.bin"
    up.write_bytes(b"upload\n" * 1000)
    ops = [("list",), ("retr", "small.bin", got), ("stor", up, f"upload/{mode}.bin"), ("cmd", "PWD")]
    result = ftplib_run(reverse_topo.client, gateway.target(GW, 21), ops, mode=mode)
    assert result.ok and result.data is not None, result.stderr[-2000:]
    assert hashlib.sha256(got.read_bytes()).hexdigest() == gateway.seeded["small.bin"]
    replies = "\n".join(line for way, line in result.data["transcript"] if way == "<")
    assert replies.count("\n") > 10
    assert leaks(replies.encode()) == []


SERVER_TEXT = ["SYST", "FEAT", "HELP", "STAT", "STAT .", "SITE HELP", "MDTM nothing", "CWD /nothing", "NOOP"]


def test_commands_answered_with_server_text(reverse_topo: Topology, gateway: FtpServer) -> None:
    """The replies that carry the most of a server's own words: banner, SYST, FEAT, HELP, STAT, errors."""
    control = RawFtp.open(reverse_topo.client, GW)
    control.login()
    for line in SERVER_TEXT:
        control.cmd(line)
    control.cmd("QUIT")
    assert b"221" in control.received
    assert leaks(control.received) == []


def test_stat_names_the_client_as_directly(reverse_topo: Topology, gateway: FtpServer) -> None:
    """vsftpd's STAT names its peer: the gateway's internal address, replaced by the client's (docs/on-the-wire.md)."""
    control = RawFtp.open(reverse_topo.client, GW)
    control.login()
    status = control.cmd("STAT")
    assert status.code == 211
    assert b"Connected to 203.0.113.10\r\n" in b"".join(status.lines), status.lines
    control.cmd("QUIT")


def test_refusals(reverse_topo: Topology, gateway: FtpServer) -> None:
    """PORT and EPRT naming the upstream (a bounce), a privileged port, garbage: refused by the gateway, whose
    reply may quote what the client itself wrote, and nothing else internal."""
    control = RawFtp.open(reverse_topo.client, GW)
    control.login()
    for line, quoted in (
        ("PORT 198,51,100,10,0,21", b"198.51.100.10"),
        ("EPRT |1|198.51.100.10|21|", b"198.51.100.10"),
        ("PORT 203,0,113,10,0,80", b""),
        ("PORT x", b""),
    ):
        answer = control.cmd(line)
        assert answer.code >= 500
        assert leaks(b"".join(answer.lines).replace(quoted or b"\0", b"")) == []
    control.cmd("QUIT")
    assert leaks(control.received.split(b"\n", 1)[0]) == []  # the banner


def test_upstream_down(reverse_topo: Topology, gateway: FtpServer) -> None:
    gateway.stop()
    control = RawFtp.open(reverse_topo.client, GW)
    received = control.closed()
    assert received.startswith(b"421 "), received
    assert leaks(received) == []


def test_the_log_keeps_the_upstream(reverse_topo: Topology, gateway: FtpServer, tmp_path: Path) -> None:
    target = FtpTarget(reverse_topo.public_addr, 21, "anonymous", "x@ftp-alg.test")
    assert ftplib_run(reverse_topo.client, target, [("list",)]).ok
    assert "upstream=198.51.100.10:21" in reverse_topo.logs()


def test_upstream_tls_failure(reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], pki: Pki) -> None:
    ftp_server_factory("vsftpd", reverse_topo.server, tls=pki.wrong_name)  # a certificate for other.test only
    reverse_topo.gw.hosts_file(f"127.0.0.1 localhost\n198.51.100.10 {NAME}\n")
    tls = {"upstream": {"mode": "require", "ca_file": str(pki.ca_file)}}
    start_gateway(reverse_topo.gw, {"listen": f"{GW}:21", "upstream": NAME, "tls": tls})
    received = RawFtp.open(reverse_topo.client, GW).closed()
    assert received.startswith(b"421 "), received
    assert leaks(received) == []
