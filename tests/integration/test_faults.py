"""Faults through the real gateway: the upstream down, refusing, killed mid-transfer or talking nonsense; the
client vanishing mid-transfer; a full port pool; SIGTERM under a running transfer. Each test names what it
proves and fails without it; each ends by checking the gateway holds nothing (sessions, data channels, ports).

Topology: client 203.0.113.10 -> gateway 203.0.113.1 | 198.51.100.1 -> vsftpd 198.51.100.10.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import time

import netns
import pytest
from conftest import HUGE
from hostile import (
    FakeServer,
    RawFtp,
    connect,
    established,
    metric,
    read_all,
    reset,
    scrape,
    start_gateway,
    value,
    wait_until,
)
from netns import Topology
from servers import FtpServer

pytestmark = pytest.mark.netns

SMALL_RCVBUF = 4096


def running_download(topo: Topology, client: RawFtp) -> tuple[socket.socket, bytes]:
    """RETR huge.bin started and its first bytes received; the data socket's tiny buffer keeps it going slowly."""
    client.expect("TYPE I", 200)
    _, port = client.pasv()
    data = connect(topo.client, topo.public_addr, port, rcvbuf=SMALL_RCVBUF)
    client.expect("RETR huge.bin", 150)
    data.settimeout(5)
    first = data.recv(SMALL_RCVBUF)
    assert first
    return data, first


def gateway_holds_nothing(topo: Topology) -> bool:
    samples = scrape(topo)
    return all(
        metric(samples, name, **labels) == 0
        for name, labels in (
            ("ftp_alg_sessions_active", {}),
            ("ftp_alg_data_channels_active", {}),
            ("ftp_alg_port_pool_in_use", {"pool": "public"}),
        )
    )


# --------------------------------------------------------------------------- the upstream


def test_upstream_down_gets_421_with_a_clear_text(reverse_topo: Topology) -> None:
    """Fault: nothing listens on the upstream's port. The client gets one 421 naming the cause but not the
    internal address (the log names it), then the connection closes; the session is counted as
    upstream_unreachable."""
    topo = reverse_topo
    gateway = start_gateway(topo)
    with RawFtp.open(topo.client, topo.public_addr) as client:
        answer = client.reply()
        assert answer.code == 421
        assert (
            answer.text.strip() == "421 Service not available: the FTP server cannot be reached (Connection refused)."
        )
        assert client.closed() == b""
    assert "upstream unreachable upstream=198.51.100.10:21" in gateway.log()
    samples = scrape(topo)
    assert metric(samples, "ftp_alg_sessions_total", outcome="upstream_unreachable") == 1
    assert metric(samples, "ftp_alg_sessions_active") == 0


def test_an_upstream_that_refuses_with_421_is_passed_on_once_and_the_session_ends(reverse_topo: Topology) -> None:
    """Fault: the server answers the connection with its own 421 and closes. The client sees that reply, and
    only that one (no second 421 from the gateway), then the close."""
    topo = reverse_topo

    def script(control: RawFtp, server: FakeServer) -> None:
        control.send(b"421 Too many users, sorry.\r\n")

    server = FakeServer(topo.server, str(topo.server_addr), 2121, script)
    start_gateway(topo, upstream=f"{topo.server_addr}:2121", metrics=False)
    with RawFtp.open(topo.client, topo.public_addr) as client:
        assert client.reply().text == "421 Too many users, sorry.\r\n"
        assert client.closed() == b""
    server.join()


def test_an_upstream_that_sends_an_endless_line_gets_the_session_closed(reverse_topo: Topology) -> None:
    """Limit: max_server_line_bytes (64 KiB). The server sends 1 MiB without a newline, then one: the gateway
    drops the bytes as they come (no buffer grows), answers the client 421 and closes both sides."""
    topo = reverse_topo
    upstream_closed: list[bytes] = []

    def script(control: RawFtp, server: FakeServer) -> None:
        control.send(b"220 ok\r\n")
        assert server.command(control).startswith(b"USER")
        control.send(b"331 " + b"z" * (1 << 20) + b"\r\n")
        upstream_closed.append(control.closed())

    server = FakeServer(topo.server, str(topo.server_addr), 2121, script)
    gateway = start_gateway(topo, upstream=f"{topo.server_addr}:2121", metrics=False)
    with RawFtp.open(topo.client, topo.public_addr) as client:
        assert client.reply().code == 220
        client.send(b"USER someone\r\n")
        rest = client.closed()
        assert rest == b"421 The FTP server sent an unreadable reply; closing.\r\n", rest[:200]
    server.join()
    assert upstream_closed == [b""]
    wait_until("session end", lambda: "session end outcome=protocol_error" in gateway.log())


def kill_upstream(topo: Topology) -> None:
    """SIGKILL every process of the server namespace, all started by this test: vsftpd, and its session
    processes, which are session leaders of their own (out of reach of a process-group kill) and, isolated
    in network namespaces of their own, are found by the sockets they hold in the server's."""
    pids = set(netns._namespace_pids(topo.server.netns))
    sockets = topo.server.run(["ss", "-Htanp"]).stdout
    pids.update(int(pid) for pid in re.findall(r"pid=(\d+)", sockets))
    assert pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_upstream_killed_mid_transfer_gives_426_then_421_and_a_clean_end(
    reverse_topo: Topology, vsftpd: FtpServer, huge: str
) -> None:
    """Fault: the server process dies during a download. The client gets 426 for the transfer and 421 for
    the session, its data connection ends short, and the gateway releases the session and the port."""
    topo = reverse_topo
    start_gateway(topo)
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        data, _ = running_download(topo, client)
        kill_upstream(topo)
        failed = client.reply(timeout_s=10)
        # The gateway's 426, or vsftpd's own failure reply when it got one out first ("500 OOPS: child died"
        # from its parent process): a failure either way, never a 2xx.
        assert failed.code in (426, 451) or failed.text.startswith("500 OOPS"), str(failed)
        assert client.reply().code == 421
        assert client.closed() == b""
        assert len(read_all(data)) < HUGE
        data.close()
    wait_until("the gateway holds nothing", lambda: gateway_holds_nothing(topo))
    assert value(topo, "ftp_alg_sessions_total", outcome="server_closed") == 1


@pytest.mark.parametrize("how", ["reset both", "close control only"])
def test_client_gone_mid_transfer_closes_the_upstream_side(
    reverse_topo: Topology, vsftpd: FtpServer, huge: str, how: str
) -> None:
    """Fault: the client vanishes during a download. The gateway closes its control and data connections to
    the server (the server namespace sees them end) and releases the session, the data channel and the port.
    Without the teardown the server would go on sending into a session nobody reads."""
    topo = reverse_topo
    start_gateway(topo)
    client = RawFtp.open(topo.client, topo.public_addr)
    client.login()
    data, _ = running_download(topo, client)
    upstream = established(topo.server)
    assert len(upstream) >= 2, upstream  # control :21 and the data connection
    reset(client.sock)
    if how == "reset both":
        reset(data)
    else:
        assert len(read_all(data)) < HUGE  # the gateway ends the client's data connection too
        data.close()
    wait_until("the server's connections end", lambda: not established(topo.server), timeout_s=10)
    wait_until("the gateway holds nothing", lambda: gateway_holds_nothing(topo))
    samples = scrape(topo)
    assert metric(samples, "ftp_alg_sessions_total", outcome="client_closed") == 1
    failures = {
        reason: metric(samples, "ftp_alg_data_channels_failed_total", reason=reason) for reason in ("aborted", "reset")
    }
    assert sum(failures.values()) == 1, failures


# --------------------------------------------------------------------------- the port pool


def test_a_full_port_pool_answers_425_and_recovers(reverse_topo: Topology, vsftpd: FtpServer) -> None:
    """Fault: the passive range (2 ports) is used up by two sessions. A third PASV gets 425 and is counted;
    when one of the two sessions ends its port is back, and the third session's next PASV works."""
    topo = reverse_topo
    start_gateway(topo, passive_ports="50000-50001")
    holders = [RawFtp.open(topo.client, topo.public_addr) for _ in range(2)]
    for holder in holders:
        holder.login()
        holder.pasv()
    with RawFtp.open(topo.client, topo.public_addr) as third:
        third.login()
        refused = third.cmd("PASV")
        assert refused.code == 425 and "no free data port" in refused.text, str(refused)
        samples = scrape(topo)
        assert metric(samples, "ftp_alg_port_pool_in_use", pool="public") == 2
        assert metric(samples, "ftp_alg_data_channels_failed_total", reason="port_pool_exhausted") == 1
        holders[0].expect("QUIT", 221)
        holders[0].close()
        wait_until("a port back", lambda: value(topo, "ftp_alg_port_pool_in_use", pool="public") == 1)
        third.expect("TYPE I", 200)
        ip, port = third.pasv()
        data = connect(topo.client, ip, port)
        third.expect("RETR small.bin", 150)
        received = read_all(data)
        data.close()
        assert third.reply().code == 226
        third.expect("QUIT", 221)
    assert hashlib.sha256(received).hexdigest() == vsftpd.seeded["small.bin"]
    holders[1].close()
    wait_until("the gateway holds nothing", lambda: gateway_holds_nothing(topo))


# --------------------------------------------------------------------------- shutdown


def refused(topo: Topology) -> bool:
    try:
        connect(topo.client, topo.public_addr, 21).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_lets_a_running_transfer_finish_and_refuses_new_connections(
    reverse_topo: Topology, vsftpd: FtpServer, huge: str
) -> None:
    """Graceful shutdown (SIGTERM, shutdown_grace_s 20 here): the listener closes at once, an idle session
    gets 421 and is closed, a running download completes byte-exact and its session then ends with 421; the
    process exits 0 well inside the grace period."""
    topo = reverse_topo
    gateway = start_gateway(topo, {"timeouts": {"shutdown_grace_s": 20}})
    idle = RawFtp.open(topo.client, topo.public_addr)
    idle.login()
    busy = RawFtp.open(topo.client, topo.public_addr)
    busy.login()
    data, first = running_download(topo, busy)
    started = time.monotonic()
    gateway.process.signal(signal.SIGTERM)
    assert idle.closed() == b"421 Service shutting down.\r\n"
    idle.close()
    wait_until("new connections refused", lambda: refused(topo))
    assert gateway.process.alive()  # still serving the transfer
    received = first + read_all(data)
    data.close()
    assert busy.reply(timeout_s=20).code == 226
    assert busy.closed() == b"421 Service shutting down.\r\n"
    busy.close()
    assert gateway.process.wait(10) == 0
    assert time.monotonic() - started < 20
    assert hashlib.sha256(received).hexdigest() == huge
