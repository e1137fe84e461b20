"""Attacks through the real gateway: FTP bounce (PORT/EPRT), data-port theft on both sides, hostile 227
replies from the upstream, and control characters aimed at the logs. Each test names the protection it proves
and fails without it.

Topology: client 203.0.113.10 (and .11, the thief) -> gateway 203.0.113.1 | 198.51.100.1 -> vsftpd
198.51.100.10 (or a scripted hostile server there). Bounce and theft tests run over both data paths: the relay,
and the kernel (nftables mappings that match only the expected peer; the gateway then forwards).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile import (
    FakeServer,
    RawFtp,
    add_address,
    connect,
    metric,
    peer_closed,
    port_argument,
    read_all,
    scrape,
    start_gateway,
    vsftpd_commands,
    wait_until,
)
from netns import Topology
from servers import FtpServer

pytestmark = pytest.mark.netns

THIEF = "203.0.113.11"


@pytest.fixture
def vsftpd(reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer]) -> FtpServer:
    return ftp_server_factory("vsftpd", reverse_topo.server)


@pytest.fixture(params=["relay", "kernel"])
def data_path(request: pytest.FixtureRequest, reverse_topo: Topology) -> str:
    """The data path under test, as the gateway's config; the kernel path needs a forwarding gateway."""
    if request.param == "kernel":
        reverse_topo.gw.sysctl("net.ipv4.ip_forward", 1)
    return str(request.param)


def refusals(topo: Topology) -> dict[str, float]:
    return {
        dict(labels)["reason"]: count
        for (name, labels), count in scrape(topo).items()
        if name == "ftp_alg_refusals_total"
    }


# --------------------------------------------------------------------------- bounce


BOUNCES = [
    "PORT 198,18,0,77,195,80",  # a third host
    "EPRT |1|198.18.0.77|50000|",
    "PORT 198,51,100,10,0,21",  # the internal server's own control port: the classic bounce
    "PORT 203,0,113,10,0,25",  # the client's own address, a privileged port
    "EPRT |1|203.0.113.10|1023|",
]


def test_port_and_eprt_naming_another_host_or_a_privileged_port_never_reach_the_server(
    reverse_topo: Topology, vsftpd: FtpServer, data_path: str
) -> None:
    """Protection: bounce refusal (RFC 2577). Without it the server would receive PORT/EPRT naming the target."""
    topo = reverse_topo
    start_gateway(topo, {"data_path": data_path})
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        for line in BOUNCES:
            answer = client.cmd(line)
            assert answer.code == 504, (line, str(answer))
        client.expect("NOOP", 200)  # the session goes on
        client.expect("QUIT", 221)
    received = vsftpd_commands(vsftpd.logs())
    assert "NOOP" in received
    assert not [c for c in received if c.split(" ")[0].upper() in ("PORT", "EPRT")], received
    samples = scrape(topo)
    assert metric(samples, "ftp_alg_refusals_total", reason="bounce") == len(BOUNCES)
    assert metric(samples, "ftp_alg_rewrites_total", kind="port") == 0
    assert metric(samples, "ftp_alg_rewrites_total", kind="eprt") == 0


def test_rewrite_mode_sends_the_data_to_the_clients_own_address(
    reverse_topo: Topology, vsftpd: FtpServer, data_path: str
) -> None:
    """Protection: port_address_mismatch: rewrite ignores the address in PORT and uses the control client's
    (OpenBSD ftp-proxy); the privileged-port check still holds. Without the rewrite the 198.18.0.77 PORT is
    refused or the data goes nowhere."""
    topo = reverse_topo
    start_gateway(topo, {"port_address_mismatch": "rewrite", "data_path": data_path})
    listener = topo.client.listen(str(topo.client_addr), 0)
    port = listener.getsockname()[1]
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        assert client.cmd(f"PORT {port_argument('198.18.0.77', 80)}").code == 504  # still privileged
        client.expect("TYPE I", 200)
        client.expect(f"PORT {port_argument('198.18.0.77', port)}", 200)
        client.expect("RETR small.bin", 150)
        data, peer = listener.accept()
        listener.close()
        assert peer[0] == str(topo.public_addr)
        received = read_all(data)
        data.close()
        assert client.reply().code == 226
        client.expect("QUIT", 221)
    assert hashlib.sha256(received).hexdigest() == vsftpd.seeded["small.bin"]
    assert metric(scrape(topo), "ftp_alg_rewrites_total", kind="port") == 1


# --------------------------------------------------------------------------- data-port theft


def refused(topo: Topology, port: int, source: str) -> bool:
    try:
        connect(topo.client, topo.public_addr, port, source=source).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("verb", ["PASV", "EPSV"])
def test_a_stranger_on_the_passive_port_is_closed_and_counted_and_the_client_gets_its_data(
    reverse_topo: Topology, vsftpd: FtpServer, verb: str, data_path: str
) -> None:
    """Protection: the passive listener accepts only the control client's address (accept_from). Without it
    the thief's connection would be the one relayed and the client's would find the port closed."""
    topo = reverse_topo
    add_address(topo.client, "eth0", f"{THIEF}/24")
    gateway = start_gateway(topo, {"data_path": data_path})
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        client.expect("TYPE I", 200)
        port = client.pasv()[1] if verb == "PASV" else client.epsv()
        thief = connect(topo.client, topo.public_addr, port, source=THIEF)
        assert peer_closed(thief), "the thief's data connection was kept open"
        thief.close()
        assert refusals(topo)["port_theft"] == 1
        data = connect(topo.client, topo.public_addr, port)
        client.expect("RETR small.bin", 150)
        received = read_all(data)
        data.close()
        assert client.reply().code == 226
        # The port was one-shot: once the transfer is done, nobody else gets to it (the kernel path closes its
        # listener and removes its mapping just after the final reply, hence the bounded wait).
        wait_until("the data port closed", lambda: refused(topo, port, THIEF))
        client.expect("QUIT", 221)
    assert hashlib.sha256(received).hexdigest() == vsftpd.seeded["small.bin"]
    assert f"data port theft attempt ticket=1 from={THIEF}" in gateway.log()
    samples = scrape(topo)
    assert metric(samples, "ftp_alg_refusals_total", reason="port_theft") == 1
    assert metric(samples, "ftp_alg_data_channels_opened_total", mode="passive", direction="download") == 1


def test_a_stranger_on_the_active_port_is_closed_and_the_server_still_delivers(
    reverse_topo: Topology, vsftpd: FtpServer, data_path: str
) -> None:
    """Protection: the internal listener behind a rewritten PORT accepts only the upstream server. A second
    host on the internal network (198.51.100.11) reads the announced port from the wire and connects first."""
    topo = reverse_topo
    add_address(topo.server, "eth0", "198.51.100.11/24")
    gateway = start_gateway(topo, {"data_path": data_path})
    listener = topo.client.listen(str(topo.client_addr), 0)
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        client.expect("TYPE I", 200)
        client.expect(f"PORT {port_argument(str(topo.client_addr), listener.getsockname()[1])}", 200)

        def announced() -> tuple[str, int] | None:
            ports = [c for c in vsftpd_commands(vsftpd.logs()) if c.startswith("PORT ")]
            if not ports:
                return None
            numbers = [int(n) for n in ports[-1].split(" ")[1].split(",")]
            return ".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]

        ip, port = wait_until("the rewritten PORT in vsftpd's log", announced)
        assert ip == str(topo.gw_inside_addr)
        thief = connect(topo.server, ip, port, source="198.51.100.11")
        assert peer_closed(thief), "the thief's data connection was kept open"
        thief.close()
        client.expect("RETR small.bin", 150)
        data, _ = listener.accept()
        listener.close()
        received = read_all(data)
        data.close()
        assert client.reply().code == 226
        client.expect("QUIT", 221)
    assert hashlib.sha256(received).hexdigest() == vsftpd.seeded["small.bin"]
    assert refusals(topo)["port_theft"] == 1
    assert "data port theft attempt" in gateway.log()


# --------------------------------------------------------------------------- a hostile upstream


@pytest.mark.parametrize("passive_target", ["upstream", "advertised"])
def test_227_replies_that_are_unsolicited_multiline_or_name_a_third_party_are_not_followed(
    reverse_topo: Topology, passive_target: str
) -> None:
    """Protection: a 227 opens a data path only as the single-line reply to an outstanding PASV, and never
    toward a third party (the upstream host is used instead, whatever passive_target says, unless a rule
    allows the address). A hostile server sends an unsolicited 227, a multi-line 227, then one naming
    198.18.0.77 (unreachable from the gateway: following it would fail the transfer)."""
    topo = reverse_topo
    payload = random.Random(7).randbytes(300_000)
    data_listener = topo.server.listen(str(topo.server_addr), 0)
    data_port = data_listener.getsockname()[1]

    def script(control: RawFtp, server: FakeServer) -> None:
        control.send(b"220 hostile\r\n")
        assert server.command(control).startswith(b"USER")
        control.send(b"331 go on\r\n")
        assert server.command(control).startswith(b"PASS")
        # The unsolicited 227 right behind the 230, aimed at an internal host's port 21.
        control.send(b"230 in\r\n227 Entering Passive Mode (198,51,100,10,0,21)\r\n")
        assert server.command(control) == b"PASV\r\n"
        control.send(b"227-Entering Passive Mode (198,51,100,10,0,22)\r\n227 Entering Passive Mode (1,2,3,4,5,6)\r\n")
        assert server.command(control) == b"PASV\r\n"
        control.send(f"227 Entering Passive Mode ({port_argument('198.18.0.77', data_port)})\r\n".encode())
        assert server.command(control) == b"RETR payload.bin\r\n"
        conn, peer = data_listener.accept()
        assert peer[0] == str(topo.gw_inside_addr)
        control.send(b"150 here it comes\r\n")
        conn.sendall(payload)
        conn.close()
        control.send(b"226 done\r\n")
        assert server.command(control) == b"QUIT\r\n"
        control.send(b"221 bye\r\n")

    server = FakeServer(topo.server, str(topo.server_addr), 2121, script)
    start_gateway(topo, {"passive_target": passive_target}, upstream=f"{topo.server_addr}:2121")
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        unsolicited = client.line()
        # Acted on never, and not passed on with the address it names either (it may be an internal one).
        assert unsolicited.startswith(b"425 ") and b"198,51,100" not in unsolicited, unsolicited
        assert metric(scrape(topo), "ftp_alg_port_pool_in_use", pool="public") == 0
        assert client.cmd("PASV").code == 425  # the multi-line 227 is not used
        assert metric(scrape(topo), "ftp_alg_port_pool_in_use", pool="public") == 0
        ip, port = client.pasv()
        assert ip == str(topo.public_addr)
        data = connect(topo.client, ip, port)
        client.expect("RETR payload.bin", 150)
        received = read_all(data)
        data.close()
        assert client.reply().code == 226
        client.expect("QUIT", 221)
    server.join()
    data_listener.close()
    assert received == payload
    samples = scrape(topo)
    assert metric(samples, "ftp_alg_rewrites_total", kind="pasv") == 1
    assert metric(samples, "ftp_alg_data_channels_failed_total", reason="connect_failed") == 0


# --------------------------------------------------------------------------- logs


HOSTILE_LINES = [
    b"USER evil\rts=forged level=error msg=injected\x1b[2J\x00\r\n",
    b"SITE \xe2\x80\xa8fake line\x85\x07\x7f\r\n",  # U+2028, a raw C1 byte, BEL, DEL
    b"NOOP\x0bx\x0c\r\n",
    b"\x1b]0;title\x07\r\n",  # no verb: the gateway's own 500
    b"PASS sec\rret-9f3a\r\n",
    b"USER anonymous\r\n",
    b"PASS x\r\n",
    b"TYPE I\r\n",
    b"PASV\r\n",
]


@pytest.mark.parametrize("log_format", ["kv", "json"])
def test_control_characters_from_the_network_never_reach_a_log_line_unescaped(
    reverse_topo: Topology, vsftpd: FtpServer, log_format: str
) -> None:
    """Protection: every value from a peer goes through alg.ops.logs.printable (and PASS through redact) before a
    log line; one record is one line. Without it the CR/LF/ESC/U+2028 bytes would split or forge lines."""
    topo = reverse_topo
    gateway = start_gateway(topo, {"log": {"format": log_format}}, "--log-level", "debug")
    with RawFtp.open(topo.client, topo.public_addr) as client:
        assert client.reply().code == 220
        for line in HOSTILE_LINES:
            client.send(line)
            client.reply()
        client.send(b"QUIT\r\n")
        client.closed()
    text = wait_until("session end logged", lambda: "session end" in gateway.log() and gateway.log())
    lines = text.splitlines()
    assert len(lines) >= len(HOSTILE_LINES)
    for line in lines:
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in line), repr(line)
        assert "\u2028" not in line and "\u2029" not in line, repr(line)
        if log_format == "json":
            json.loads(line)
        else:
            assert line.startswith("ts="), repr(line)
    assert "ret-9f3a" not in text  # the PASS argument, split by a CR, is still redacted
    assert not any(line.startswith(("ts=forged", "fake line")) for line in lines)


# --------------------------------------------------------------------------- privileges


def proc_ids(pid: int) -> dict[str, list[str]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Uid", "Gid", "Groups", "CapEff", "CapPrm"):
            fields[key] = rest.split()
    return fields


def test_the_gateway_binds_port_21_as_root_then_runs_as_the_configured_user(
    reverse_topo: Topology, vsftpd: FtpServer
) -> None:
    """Protection: `user:` drops root for good after the listeners are bound (real, effective, saved and
    filesystem ids, no supplementary groups, no capabilities left); the gateway still serves port 21 and
    opens passive data ports. Without the drop the process would keep uid 0."""
    topo = reverse_topo
    gateway = start_gateway(topo, {"user": "nobody"})
    nobody = pwd.getpwnam("nobody")
    wait_until("privileges dropped", lambda: "running as user=nobody" in gateway.log())
    # The worker serves; its parent keeps root only to read renewed certificates at SIGHUP, and holds no socket.
    parent = gateway.process.pid
    [worker] = map(int, Path(f"/proc/{parent}/task/{parent}/children").read_text().split())
    assert not [fd for fd in Path(f"/proc/{parent}/fd").iterdir() if os.readlink(fd).startswith("socket:")]
    ids = proc_ids(worker)
    assert ids["Uid"] == [str(nobody.pw_uid)] * 4, ids
    assert ids["Gid"] == [str(nobody.pw_gid)] * 4, ids
    assert ids["Groups"] == [], ids
    assert int(ids["CapEff"][0], 16) == 0 and int(ids["CapPrm"][0], 16) == 0, ids
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        client.expect("TYPE I", 200)
        ip, port = client.pasv()
        data = connect(topo.client, ip, port)
        client.expect("RETR hello.txt", 150)
        received = read_all(data)
        data.close()
        assert client.reply().code == 226
        client.expect("QUIT", 221)
    assert hashlib.sha256(received).hexdigest() == vsftpd.seeded["hello.txt"]
    assert wait_until("quit counted", lambda: metric(scrape(topo), "ftp_alg_sessions_total", outcome="quit") == 1)
    assert "level=error" not in gateway.log()  # nothing failed for lack of root (or of a file root could read)
