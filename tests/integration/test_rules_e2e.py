"""Rules through the real gateway: a denied verb, a denied client address, and SIGHUP reload mid-session.

Topology: client 203.0.113.10 -> gateway 203.0.113.1 | 198.51.100.1 -> vsftpd 198.51.100.10.
"""

from __future__ import annotations

import ftplib
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_netns, require_server
from gateway import Gateway, start_reverse_gateway
from netns import Topology
from servers import FtpServer, start_server

from alg.ops.rules import is_own_address

pytestmark = pytest.mark.netns

METRICS = "127.0.0.1:9121"  # inside the gateway's namespace
READ_ONLY = """
commands:
  rules:
    - deny: [DELE, RMD]
      code: 553
      text: Read-only gateway (test rule).
"""


@dataclass
class Site:
    topo: Topology
    server: FtpServer
    workdir: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_netns()
    require_server("vsftpd")
    with Topology("reverse") as topo:
        server = start_server("vsftpd", topo.server)
        try:
            yield Site(topo, server, tmp_path_factory.mktemp("rules"))
        finally:
            server.stop()


def gateway_with_rules(site: Site, rules: str) -> tuple[Gateway, Path]:
    rules_path = site.workdir / "rules.yaml"
    rules_path.write_text(rules)
    config = site.workdir / "gateway.yaml"
    config.write_text(f"rules: [{rules_path}]\nmetrics_listen: {METRICS}\n")
    return start_reverse_gateway(site.topo, "--config", str(config)), rules_path


@pytest.fixture
def stop_after() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        gateway.stop()


def login(site: Site, gateway: Gateway) -> ftplib.FTP:
    def body() -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=5)
        ftp.connect(str(gateway.addr), gateway.port)
        ftp.login(site.server.user, site.server.password)
        return ftp

    return site.topo.client.call(body)


def send(site: Site, ftp: ftplib.FTP, line: str) -> str:
    """The reply to one command, errors included."""

    def body() -> str:
        try:
            return ftp.sendcmd(line)
        except ftplib.Error as error:
            return str(error)

    return site.topo.client.call(body)


def wait_log(gateway: Gateway, text: str, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while gateway.log().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} #{count} in the gateway log:\n{gateway.log()[-3000:]}"
        time.sleep(0.05)


def refusals(site: Site, reason: str) -> float:
    def body() -> str:
        with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=5) as response:
            return str(response.read().decode())

    text = site.topo.gw.call(body)
    line = next(line for line in text.splitlines() if line.startswith(f'ftp_alg_refusals_total{{reason="{reason}"}}'))
    return float(line.split()[-1])


def test_denied_verb_gets_the_configured_reply_and_the_file_stays(site: Site, stop_after: list[Gateway]) -> None:
    gateway, _ = gateway_with_rules(site, READ_ONLY)
    stop_after.append(gateway)
    victim = site.server.put_file("upload/keep.txt", b"keep me\n")
    ftp = login(site, gateway)
    assert send(site, ftp, "DELE upload/keep.txt") == "553 Read-only gateway (test rule)."
    assert send(site, ftp, "NOOP").startswith("200")  # the session goes on
    assert victim.read_bytes() == b"keep me\n"
    assert refusals(site, "command_rule") == 1
    site.topo.client.call(ftp.close)
    assert "refused rule=command_rule:rules.yaml:commands.rules[0] verb=DELE code=553" in gateway.log()


def test_denied_client_address_gets_421_before_any_upstream(site: Site, stop_after: list[Gateway]) -> None:
    gateway, _ = gateway_with_rules(site, f"clients:\n  deny: [{site.topo.client_addr}/32]\n  text: Not you.\n")
    stop_after.append(gateway)

    def connect() -> str:
        try:
            ftplib.FTP(timeout=5).connect(str(gateway.addr), gateway.port)
        except ftplib.Error as error:
            return str(error)
        return "connected"

    assert site.topo.client.call(connect) == "421 Not you."
    assert refusals(site, "acl") == 1
    assert "session start" not in gateway.log()  # refused before a session (and its upstream) existed


def test_sighup_reloads_rules_for_a_connected_session(site: Site, stop_after: list[Gateway]) -> None:
    gateway, rules_path = gateway_with_rules(site, "commands:\n  rules: []\n")
    stop_after.append(gateway)
    first = site.server.put_file("upload/first.txt", b"1")
    second = site.server.put_file("upload/second.txt", b"2")
    ftp = login(site, gateway)
    assert send(site, ftp, "DELE upload/first.txt").startswith("250")
    assert not first.exists()

    rules_path.write_text(READ_ONLY)
    gateway.process.signal(signal.SIGHUP)
    wait_log(gateway, "settings reloaded", 1)
    assert send(site, ftp, "DELE upload/second.txt") == "553 Read-only gateway (test rule)."
    assert second.exists()

    rules_path.write_text("commands:\n  rules: [{deny: DELE, code: 200}]\n")  # invalid: keeps the old rules
    gateway.process.signal(signal.SIGHUP)
    wait_log(gateway, "reload failed, keeping the running settings", 1)
    assert "commands.rules[0] (line 2): code must be a 4xx or 5xx reply" in gateway.log()
    assert send(site, ftp, "DELE upload/second.txt") == "553 Read-only gateway (test rule)."
    assert send(site, ftp, "NOOP").startswith("200")
    assert gateway.process.alive()
    site.topo.client.call(ftp.close)


def test_own_addresses_are_found_in_the_gateway_namespace(site: Site) -> None:
    """The loop check of transparent mode: the gateway's addresses are its own, its neighbours' are not."""
    topo = site.topo
    for address, own in ((topo.public_addr, True), (topo.gw_inside_addr, True), (topo.client_addr, False)):
        assert topo.gw.call(is_own_address, address) is own, address
    assert topo.gw.call(is_own_address, topo.server_addr) is False
