"""Transparent mode end to end: LAN clients behind the NAT box reach an external server, active mode included.

Topology: lan 198.18.0.10 -> gw 198.18.0.1 | 203.0.113.1 (forwarding, masquerade) -> server 203.0.113.20.
Clients dial the server's own address. The gateway namespace gets the shipped rule set,
deploy/nftables/ftp-alg-transparent.nft (its defines set to this topology): LAN tcp/21 goes to ftp-alg on
198.18.0.1:2121, which finds 203.0.113.20:21 with SO_ORIGINAL_DST, and passive data connections to the
server on ftp-alg's ports are redirected to it. No kernel FTP helper is attached anywhere, so without
ftp-alg active mode cannot work (test_active_mode_fails_through_plain_masquerade).
Every test with a server runs over both data paths: the relay, and the kernel (nftables mappings in ftp-alg's
own table, whose NAT chains run before the shipped rule set's redirect of the data ports).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clients import (
    CURL_FTP_PORT_FAILED,
    MODES,
    Mode,
    curl_download,
    curl_list,
    curl_upload,
    lftp,
)
from conftest import require_netns, require_server
from gateway import Gateway, random_file, sha256_file, wait_listening
from netns import Host, Topology
from scenarios import ftplib_round_trip
from servers import KINDS, FtpServer, FtpTarget, start_server

pytestmark = pytest.mark.netns

GATEWAY_PORT = 2121
PASSIVE_PORTS = "50000-50099"
RULESET = Path(__file__).resolve().parents[2] / "deploy" / "nftables" / "ftp-alg-transparent.nft"
SMALL = 1 << 20
BIG = 16 << 20
# Reachable through the NAT, but refused by the rules below: proves the destination ACL runs.
DENIED_DESTINATION = "203.0.113.99"
DATA_PATHS = ("relay", "kernel")

RULES = f"""\
destinations:
  deny: [{DENIED_DESTINATION}/32]
"""


@dataclass
class Setup:
    kind: str
    topo: Topology
    server: FtpServer
    gateway: Gateway
    target: FtpTarget  # the server's own address: the redirect, not the client, sends it to ftp-alg
    files: Path


def load_shipped_ruleset(topo: Topology) -> None:
    """deploy/nftables/ftp-alg-transparent.nft with its four defines set for this topology."""
    values = {"LAN_IF": '"lan"', "WAN_IF": '"pub"', "ALG_PORT": str(GATEWAY_PORT), "DATA_PORTS": PASSIVE_PORTS}
    text = RULESET.read_text()
    for name, value in values.items():
        text, count = re.subn(rf"^define {name} = \S+", f"define {name} = {value}", text, flags=re.M)
        assert count == 1, f"define {name} not found in {RULESET}"
    topo.gw.nft(text)


def start_transparent_gateway(topo: Topology, workdir: Path, data_path: str = "relay") -> Gateway:
    """The issue's command line, plus a rules file with one destination ACL, and the shipped rule set."""
    rules = workdir / "rules.yaml"
    rules.write_text(RULES)
    config = workdir / "transparent.yaml"
    config.write_text(f"rules: [{rules}]\n")
    lan = topo.gw_inside_addr
    process = topo.start_gateway(
        [
            "run",
            "--config",
            config,
            "--mode",
            "transparent",
            "--listen",
            f"{lan}:{GATEWAY_PORT}",
            "--public-address",
            str(topo.public_addr),
            "--passive-ports",
            PASSIVE_PORTS,
            "--log-level",
            "debug",
            "--data-path",
            data_path,
        ]
    )
    wait_listening(topo.gw, process, lan, GATEWAY_PORT)
    assert f"data_path={data_path}" in process.log()
    load_shipped_ruleset(topo)
    return Gateway(topo, process, lan, GATEWAY_PORT)


@pytest.fixture(scope="module")
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One topology, one real server, one gateway per server kind (indirect param), shared by the module."""
    kind, data_path = request.param
    require_netns()
    require_server(kind)
    files = tmp_path_factory.mktemp(f"transparent-{kind}-{data_path}")
    with Topology("transparent") as topo:
        server = start_server(kind, topo.server)
        for name, size in (("empty.bin", 0), ("one.bin", 1), ("small.bin", SMALL), ("big.bin", BIG)):
            random_file(files / name, size)
            server.put_file(name, (files / name).read_bytes())
        try:
            gateway = start_transparent_gateway(topo, files, data_path)
            yield Setup(kind, topo, server, gateway, server.target(), files)
            gateway.stop()
        finally:
            server.stop()


@pytest.fixture(autouse=True)
def _gateway_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    shared: Setup | None = request.getfixturevalue("setup") if "setup" in request.fixturenames else None
    yield
    report = getattr(request.node, "rep_call", None)
    if shared is not None and report is not None and report.failed:
        print(shared.topo.logs())


def with_kinds(*kinds: str) -> pytest.MarkDecorator:
    """Each server kind over each data path."""
    params = [(kind, path) for kind in kinds for path in DATA_PATHS]
    return pytest.mark.parametrize("setup", params, indirect=True, ids=[f"{k}-{p}" for k, p in params])


def check_upload(setup: Setup, remote: str, local: Path) -> None:
    assert setup.server.sha256(remote) == sha256_file(local), f"{remote} differs on the server"


def assert_relayed(setup: Setup, received: list[str], sent: list[str]) -> None:
    """Passive: the client was told the server's own address with one of ftp-alg's ports (so the data went
    through ftp-alg). Active: the server was told only ftp-alg's public address, never the LAN one."""
    first, last = map(int, PASSIVE_PORTS.split("-"))
    for line in received:
        if line.startswith("227"):
            numbers = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", line)
            assert numbers is not None and ".".join(numbers.groups()[:4]) == "203.0.113.20", line
            assert first <= int(numbers[5]) * 256 + int(numbers[6]) <= last, line
        if line.startswith("229"):
            port = re.search(r"\((.)\1\1(\d+)\1\)", line)
            assert port is not None and first <= int(port[2]) <= last, line
    if setup.kind == "vsftpd":  # vsftpd's protocol log shows what reached the server
        server_log = "\n".join(line for line in setup.server.logs().splitlines() if "PORT" in line)
        assert "198,18,0,10" not in server_log and "|198.18.0.10|" not in server_log, server_log
        if any(line.startswith(("PORT", "EPRT")) for line in sent):
            assert re.search(r"PORT 203,0,113,1,|EPRT \|1\|203\.0\.113\.1\|", server_log), server_log


# ---- the matrix: every client, every mode ------------------------------------------------------------------------


@with_kinds(*KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_curl_list_download_upload(setup: Setup, mode: Mode, tmp_path: Path) -> None:
    lan = setup.topo.client
    listing = curl_list(lan, setup.target, mode=mode).check()
    assert "small.bin" in listing.stdout
    verb = {"pasv": "PASV", "epsv": "EPSV", "port": "PORT", "eprt": "EPRT"}[mode]
    verbs = [line.split(" ")[0] for line in listing.sent()]
    assert verb in verbs, listing.sent()
    # curl falls back (EPSV -> PASV, EPRT -> PORT) after a failure: the first try must have worked.
    assert not {"PASV", "PORT"} & set(verbs) or verb in ("PASV", "PORT"), listing.sent()
    for name in ("empty.bin", "one.bin", "small.bin"):
        dest = tmp_path / name
        curl_download(lan, setup.target, name, dest, mode=mode).check()
        assert sha256_file(dest) == sha256_file(setup.files / name), name
    remote = f"upload/up-curl-{mode}.bin"
    curl_upload(lan, setup.target, setup.files / "small.bin", remote, mode=mode).check()
    check_upload(setup, remote, setup.files / "small.bin")
    assert_relayed(setup, listing.received(), listing.sent())


@with_kinds("vsftpd")
@pytest.mark.parametrize("mode", ["port", "eprt"])
def test_curl_big_file_active_both_ways(setup: Setup, mode: Mode, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    curl_download(setup.topo.client, setup.target, "big.bin", dest, mode=mode, timeout_s=30).check()
    assert sha256_file(dest) == sha256_file(setup.files / "big.bin")
    remote = f"upload/big-{mode}.bin"
    curl_upload(setup.topo.client, setup.target, setup.files / "big.bin", remote, mode=mode, timeout_s=30).check()
    check_upload(setup, remote, setup.files / "big.bin")


@with_kinds("vsftpd")
@pytest.mark.parametrize("mode", ["pasv", "epsv", "port"])  # lftp sends EPRT only over IPv6
def test_lftp_session(setup: Setup, mode: Mode, tmp_path: Path) -> None:
    dest = tmp_path / "small.bin"
    remote = f"upload/up-lftp-{mode}.bin"
    result = lftp(
        setup.topo.client,
        setup.target,
        ["ls", f"get small.bin -o {dest}", f"put {setup.files / 'small.bin'} -o {remote}"],
        mode=mode,
    ).check()
    assert "small.bin" in result.stdout
    assert sha256_file(dest) == sha256_file(setup.files / "small.bin")
    check_upload(setup, remote, setup.files / "small.bin")
    assert_relayed(setup, result.received(), result.sent())


@with_kinds("vsftpd")
@pytest.mark.parametrize("mode", MODES)
def test_ftplib_session(setup: Setup, mode: Mode, tmp_path: Path) -> None:
    result = ftplib_round_trip(setup.topo.client, setup.target, setup.server, setup.files, mode, tmp_path)
    assert_relayed(setup, result.received(), result.sent())


# ---- policy: loops, connections that were not redirected, the destination ACL -----------------------------------


def greeting(host: Host, ip: str, port: int) -> str:
    """The first reply line a client gets on ip:port (the connection is closed after)."""

    def talk() -> str:
        with socket.create_connection((ip, port), timeout=5) as sock:
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace").strip()

    return host.call(talk, timeout_s=10)


@with_kinds("vsftpd")
def test_redirected_to_the_gateway_itself_is_refused_as_a_loop(setup: Setup) -> None:
    # Port 21 of the gateway's own addresses is redirected too; the original destination is the gateway.
    for own in (str(setup.topo.public_addr), str(setup.topo.gw_inside_addr)):
        line = greeting(setup.topo.client, own, 21)
        assert line.startswith("421 "), line
        assert "loop" in line and own in line, line
    # The session was refused before any upstream: the server never saw a connection from the gateway.
    assert "refused client=198.18.0.10 reason=acl" in setup.gateway.log()


@with_kinds("vsftpd")
def test_dialling_the_gateway_port_directly_is_refused(setup: Setup) -> None:
    line = greeting(setup.topo.client, str(setup.topo.gw_inside_addr), GATEWAY_PORT)
    assert line.startswith("421 "), line
    assert "redirected" in line and "dialled directly" in line, line


@with_kinds("vsftpd")
def test_destination_acl_refuses_before_connecting(setup: Setup) -> None:
    line = greeting(setup.topo.client, DENIED_DESTINATION, 21)
    assert line.startswith("421 "), line
    assert DENIED_DESTINATION in line and "not allowed" in line, line
    assert f"upstream={DENIED_DESTINATION}" not in setup.gateway.log()  # no session, no connect attempt


@with_kinds("vsftpd")
def test_session_log_names_the_original_destination(setup: Setup) -> None:
    curl_list(setup.topo.client, setup.target, mode="pasv").check()
    assert "client=198.18.0.10:" in setup.gateway.log()
    assert "upstream=203.0.113.20:21" in setup.gateway.log()


@with_kinds("vsftpd")
def test_shipped_rule_sets(setup: Setup) -> None:
    """The loaded table did its work (the pair was remembered, no kernel helper was attached), and the
    complete NAT-box example parses (`nft -c`: checked, not applied)."""
    gw = setup.topo.gw
    curl_list(setup.topo.client, setup.target, mode="epsv").check()
    pairs = gw.run(["nft", "list", "set", "inet", "ftp_alg", "ftp_pairs4"], check=True).stdout
    assert "198.18.0.10 . 203.0.113.20" in pairs, pairs
    helper = gw.run(["nft", "list", "chain", "inet", "ftp_alg", "helper_check"], check=True).stdout
    assert "counter packets 0 bytes 0" in helper, helper
    for name in ("nat-box.nft", "ftp-alg-transparent.nft"):
        checked = gw.run(["nft", "-c", "-I", RULESET.parent, "-f", RULESET.parent / name])
        assert checked.returncode == 0, checked.stderr


# ---- why: without ftp-alg, active mode does not survive the masquerade -------------------------------------------


def test_active_mode_fails_through_plain_masquerade(transparent_topo: Topology) -> None:
    """No redirect, no ftp-alg, no kernel FTP helper: PORT names 198.18.0.10, which the server either refuses
    (it does not match the control peer 203.0.113.1) or cannot reach. Passive mode, for contrast, works."""
    require_server("vsftpd")
    ruleset = transparent_topo.gw.nft_json()["nftables"]
    assert not any("ct helper" in str(item) for item in ruleset), "a conntrack helper is attached"
    server = start_server("vsftpd", transparent_topo.server)
    try:
        lan, target = transparent_topo.client, server.target()
        passive = curl_list(lan, target, mode="pasv")
        assert passive.ok, passive  # the masquerade itself is fine
        active = curl_list(lan, target, mode="port", timeout_s=10)
        assert not active.ok
        assert any(line.startswith("PORT 198,18,0,10,") for line in active.sent()), active
        # vsftpd: "500 Illegal PORT command." (port_promiscuous=NO checks the address against 203.0.113.1).
        assert active.returncode == CURL_FTP_PORT_FAILED, active
        assert any(line.startswith("500") for line in active.received()), active
    finally:
        server.stop()
