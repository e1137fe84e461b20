"""Every limit and timeout of settings.limits and settings.timeouts, through the real gateway with small values
written to its YAML config, against vsftpd (or a scripted server where vsftpd cannot show the effect).
Each test names the setting it proves and fails without it.

Topology: client 203.0.113.10 (and .11) -> gateway 203.0.113.1 | 198.51.100.1 -> vsftpd 198.51.100.10.
"""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
from conftest import HUGE
from hostile import (
    Closed,
    FakeServer,
    RawFtp,
    add_address,
    connect,
    metric,
    port_argument,
    read_all,
    scrape,
    start_gateway,
    value,
    vsftpd_commands,
    wait_until,
)
from netns import Topology
from servers import FtpServer

pytestmark = pytest.mark.netns

SECOND_CLIENT = "203.0.113.11"
SMALL_RCVBUF = 4096


def session_outcome(topo: Topology, outcome: str) -> float:
    return value(topo, "ftp_alg_sessions_total", outcome=outcome)


def idle_gateway(topo: Topology) -> bool:
    samples = scrape(topo)
    return (
        metric(samples, "ftp_alg_sessions_active") == 0
        and metric(samples, "ftp_alg_data_channels_active") == 0
        and metric(samples, "ftp_alg_port_pool_in_use", pool="public") == 0
    )


def start_stalled_download(topo: Topology, client: RawFtp) -> socket.socket:
    """PASV + RETR huge.bin on a data socket with a tiny receive buffer that nobody reads yet."""
    client.expect("TYPE I", 200)
    _, port = client.pasv()
    data = connect(topo.client, topo.public_addr, port, rcvbuf=SMALL_RCVBUF)
    client.expect("RETR huge.bin", 150)
    return data


# --------------------------------------------------------------------------- sessions


def test_sessions_in_total_and_per_client_address_get_421_before_any_upstream(
    reverse_topo: Topology, vsftpd: FtpServer
) -> None:
    """Limits: max_sessions (3) and max_sessions_per_client (2). Without them the fourth and third
    connections would reach vsftpd (its log would show more CONNECTs) and get its 220."""
    topo = reverse_topo
    add_address(topo.client, "eth0", f"{SECOND_CLIENT}/24")
    start_gateway(topo, {"limits": {"max_sessions": 3, "max_sessions_per_client": 2}})
    first = [RawFtp.open(topo.client, topo.public_addr) for _ in range(2)]
    for client in first:
        assert client.reply().code == 220
    over_per_client = RawFtp.open(topo.client, topo.public_addr)
    refusal = over_per_client.reply()
    assert refusal.code == 421 and "Too many connections from your address (2)" in refusal.text
    over_per_client.closed()
    other = RawFtp.open(topo.client, topo.public_addr, source=SECOND_CLIENT)
    assert other.reply().code == 220  # another address still gets in: 3 in all
    over_total = RawFtp.open(topo.client, topo.public_addr, source=SECOND_CLIENT)
    refusal = over_total.reply()
    assert refusal.code == 421 and "Too many connections (3)" in refusal.text
    over_total.closed()
    connects = [line for line in vsftpd.logs().splitlines() if "CONNECT: Client" in line]
    assert len(connects) == 1 + 3, connects  # the harness's readiness probe and the three admitted sessions

    # A slot freed is a slot to use again.
    first[0].expect("QUIT", 221)
    first[0].close()
    wait_until("the session slot freed", lambda: value(topo, "ftp_alg_sessions_active") == 2)
    again = RawFtp.open(topo.client, topo.public_addr)
    assert again.reply().code == 220
    assert value(topo, "ftp_alg_refusals_total", reason="limit") == 2
    for client in (*first[1:], other, again):
        client.close()


# --------------------------------------------------------------------------- the control channel


def test_an_overlong_line_gets_500_and_the_next_command_works(reverse_topo: Topology, vsftpd: FtpServer) -> None:
    """Limit: max_line_bytes (default 4096). A 4097-byte line, and a 64 KiB one dribbled in pieces without its
    newline for a while, each get one 500, never reach the server, and the session goes on."""
    topo = reverse_topo
    start_gateway(topo)
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        line = b"SITE " + b"x" * (4097 - 7) + b"\r\n"
        assert len(line) == 4097
        answer = client.cmd(line[:-2])
        assert answer.code == 500 and "too long (limit 4096 bytes)" in answer.text
        client.expect("NOOP", 200)
        for _ in range(16):
            client.send(b"y" * 4096)
        answer = client.cmd(b"")
        assert answer.code == 500 and "too long" in answer.text
        client.expect("NOOP", 200)
        client.expect("QUIT", 221)
    received = vsftpd_commands(vsftpd.logs())
    assert received.count("NOOP") == 2 and not any(c.startswith(("SITE", "yyy")) for c in received)
    assert value(topo, "ftp_alg_refusals_total", reason="line_length") == 2


def test_200_pipelined_commands_get_200_replies_in_order(reverse_topo: Topology, vsftpd: FtpServer) -> None:
    """Limit: max_pipelined_commands with back-pressure. 200 commands written at once, the server's replies
    interleaved with the gateway's own (a refused PORT): every reply arrives, in command order."""
    topo = reverse_topo
    start_gateway(topo)
    script = [
        ("NOOP", 200, "NOOP ok"),
        ("TYPE I", 200, "Switching to Binary mode"),
        ("PORT 198,18,0,77,4,1", 504, "PORT refused"),
        ("TYPE A", 200, "Switching to ASCII mode"),
    ]
    commands = [script[i % len(script)] for i in range(200)]
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        client.send("".join(f"{line}\r\n" for line, _, _ in commands))
        for index, (line, code, text) in enumerate(commands):
            answer = client.reply()
            assert (answer.code, text in answer.text) == (code, True), (index, line, str(answer))
        client.expect("QUIT", 221)


def test_pipelined_commands_beyond_the_limit_wait_at_the_gateway(reverse_topo: Topology) -> None:
    """Limit: max_pipelined_commands (8 here). A server that does not answer never has more than 8 commands
    outstanding; once it answers, the rest follow and the client gets all 200 replies in order. Without the
    limit all 200 would be forwarded at once."""
    topo = reverse_topo
    limit = 8
    seen_before_answering: list[int] = []

    def script(control: RawFtp, server: FakeServer) -> None:
        control.send(b"220 slow server\r\n")
        # Read what the gateway forwards while we answer nothing, until it stops sending.
        while True:
            try:
                server.command(control, timeout_s=0.5)
            except TimeoutError:
                break
        seen_before_answering.append(len(server.commands))
        answered = 0
        while answered < 200:
            while len(server.commands) <= answered:
                server.command(control)
            control.send(f"200 ok {answered}\r\n".encode())
            answered += 1

    server = FakeServer(topo.server, str(topo.server_addr), 2121, script)
    start_gateway(topo, {"limits": {"max_pipelined_commands": limit}}, upstream=f"{topo.server_addr}:2121")
    with RawFtp.open(topo.client, topo.public_addr) as client:
        assert client.reply().code == 220
        client.send(b"NOOP\r\n" * 200)
        for index in range(200):
            answer = client.reply()
            assert (answer.code, answer.text.strip()) == (200, f"200 ok {index}")
    server.join()
    assert seen_before_answering == [limit]
    assert len(server.commands) == 200


def test_data_channels_per_session(reverse_topo: Topology, vsftpd: FtpServer, huge: str) -> None:
    """Limit: max_data_channels_per_session (1 here). A PASV while a transfer holds the session's one data
    channel gets 425 from the gateway (after the transfer's own replies) and never reaches the server;
    once the transfer is over, PASV works again."""
    topo = reverse_topo
    start_gateway(topo, {"limits": {"max_data_channels_per_session": 1}})
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        data = start_stalled_download(topo, client)
        client.send(b"PASV\r\n")
        received = read_all(data)
        assert hashlib.sha256(received).hexdigest() == huge
        assert client.reply(timeout_s=20).code == 226
        refused = client.reply()
        assert refused.code == 425 and "Too many data connections open (limit 1)" in refused.text
        client.pasv()  # the channel is free again
        client.expect("QUIT", 221)
    assert vsftpd_commands(vsftpd.logs()).count("PASV") == 2
    assert value(topo, "ftp_alg_refusals_total", reason="limit") == 1


# --------------------------------------------------------------------------- timeouts


def test_login_timeout_closes_a_session_that_never_logs_in(reverse_topo: Topology, vsftpd: FtpServer) -> None:
    """Timeout: login_s (1 s here). A client that sends USER and nothing more is told 421 and closed; its
    slot is freed (max_sessions_per_client 1: the next session from it gets in)."""
    topo = reverse_topo
    start_gateway(topo, {"timeouts": {"login_s": 1}, "limits": {"max_sessions_per_client": 1}})
    client = RawFtp.open(topo.client, topo.public_addr)
    assert client.reply().code == 220
    client.expect("USER anonymous", 331)
    started = time.monotonic()
    rest = client.closed(timeout_s=5)
    assert rest.startswith(b"421 Login timeout (1 s)"), rest
    assert 0.5 < time.monotonic() - started < 4
    client.close()
    assert wait_until("outcome timeout", lambda: session_outcome(topo, "timeout") == 1)
    with RawFtp.open(topo.client, topo.public_addr) as again:
        again.login()


def test_idle_timeout_closes_an_idle_session_but_not_one_whose_transfer_runs(
    reverse_topo: Topology, vsftpd: FtpServer, huge: str
) -> None:
    """Timeout: idle_s (2 s here), counted only between commands, never while a transfer runs, and afresh
    from the end of a transfer. A download stalled for 3 s (longer than idle_s) completes byte-exact; a
    command 1 s after it still works; then, left alone, the session is closed with 421."""
    topo = reverse_topo
    start_gateway(topo, {"timeouts": {"idle_s": 2}})
    client = RawFtp.open(topo.client, topo.public_addr)
    client.login()
    data = start_stalled_download(topo, client)
    time.sleep(2.5)  # the scenario itself: a transfer that outlasts idle_s
    received = read_all(data)
    data.close()
    assert hashlib.sha256(received).hexdigest() == huge
    assert client.reply(timeout_s=20).code == 226
    time.sleep(1)  # a user who pauses after a long transfer, for less than idle_s
    client.expect("NOOP", 200)
    started = time.monotonic()
    rest = client.closed(timeout_s=6)
    assert rest.startswith(b"421 Idle timeout (2 s)"), rest
    assert 1.5 < time.monotonic() - started < 4.5
    client.close()
    wait_until("outcome timeout", lambda: session_outcome(topo, "timeout") == 1)


@pytest.mark.parametrize("stage", ["before login", "after login"])
def test_a_slow_loris_is_cut_off_and_its_slot_freed(reverse_topo: Topology, vsftpd: FtpServer, stage: str) -> None:
    """Timeouts: login_s and idle_s count whole command lines only. One byte every 0.5 s, never a newline,
    does not keep the session (2 s limits); its slot (max_sessions_per_client 1) is free afterwards."""
    topo = reverse_topo
    start_gateway(topo, {"timeouts": {"login_s": 2, "idle_s": 2}, "limits": {"max_sessions_per_client": 1}})
    client = RawFtp.open(topo.client, topo.public_addr)
    if stage == "after login":
        client.login()
    else:
        assert client.reply().code == 220
    started = time.monotonic()
    sent = 0
    cut_off = b""
    for _ in range(40):  # at most 20 s of dribbling
        try:
            client.send(b"N")
        except OSError:
            break
        sent += 1
        try:
            cut_off += client.line(timeout_s=0.5)
            break
        except TimeoutError:
            continue
        except Closed:
            break
    elapsed = time.monotonic() - started
    assert cut_off.startswith(b"421 "), cut_off
    assert (b"Login timeout" if stage == "before login" else b"Idle timeout") in cut_off
    assert sent >= 3 and elapsed < 5, (sent, elapsed)
    client.close()
    wait_until("the slot freed", lambda: value(topo, "ftp_alg_sessions_active") == 0)
    with RawFtp.open(topo.client, topo.public_addr) as again:
        again.login()


def test_data_connect_timeout_frees_the_port(reverse_topo: Topology, vsftpd: FtpServer) -> None:
    """Timeout: data_connect_s (1 s here). A PASV whose port nobody connects to, and a PORT the server never
    uses, give their ports back to the pools (ftp_alg_port_pool_in_use returns to 0)."""
    topo = reverse_topo
    start_gateway(topo, {"timeouts": {"data_connect_s": 1}, "active_ports": "41000-41009"})
    listener = topo.client.listen(str(topo.client_addr), 0)
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        client.pasv()
        assert value(topo, "ftp_alg_port_pool_in_use", pool="public") == 1
        wait_until("public port back", lambda: value(topo, "ftp_alg_port_pool_in_use", pool="public") == 0, 5)
        client.expect(f"PORT {port_argument(str(topo.client_addr), listener.getsockname()[1])}", 200)
        assert value(topo, "ftp_alg_port_pool_in_use", pool="internal") == 1
        wait_until("internal port back", lambda: value(topo, "ftp_alg_port_pool_in_use", pool="internal") == 0, 5)
        client.expect("NOOP", 200)
        client.expect("QUIT", 221)
    listener.close()
    assert value(topo, "ftp_alg_data_channels_failed_total", reason="accept_timeout") == 2


def test_data_idle_timeout_ends_a_stalled_transfer_and_keeps_the_session(
    reverse_topo: Topology, vsftpd: FtpServer, huge: str
) -> None:
    """Timeout: data_idle_s (1 s here). A download whose client stops reading is cut after 1 s without a
    byte moving; the server reports the failed transfer and the session takes the next command."""
    topo = reverse_topo
    start_gateway(topo, {"timeouts": {"data_idle_s": 1}})
    with RawFtp.open(topo.client, topo.public_addr) as client:
        client.login()
        data = start_stalled_download(topo, client)
        failed = client.reply(timeout_s=10)
        assert failed.code in (426, 451), str(failed)
        received = read_all(data)
        assert len(received) < HUGE
        client.expect("NOOP", 200)
        client.expect("QUIT", 221)
    assert value(topo, "ftp_alg_data_channels_failed_total", reason="idle_timeout") == 1


def test_upstream_connect_timeout_answers_421(reverse_topo: Topology, vsftpd: FtpServer) -> None:
    """Timeout: upstream_connect_s (1 s here). The server's host drops SYNs to port 21; the client gets 421
    saying so within the timeout, instead of hanging for the kernel's two minutes."""
    topo = reverse_topo
    topo.server.nft("""
table inet falg_test_drop {
    chain input {
        type filter hook input priority 0;
        tcp dport 21 drop
    }
}
""")
    gateway = start_gateway(topo, {"timeouts": {"upstream_connect_s": 1}})
    started = time.monotonic()
    with RawFtp.open(topo.client, topo.public_addr) as client:
        answer = client.reply(timeout_s=5)
        assert answer.code == 421 and "cannot be reached (timed out)" in answer.text, str(answer)
        client.closed()
    assert 0.9 < time.monotonic() - started < 3
    # From the log: a scrape would wait for the readiness probe, which the same dropped SYNs time out.
    wait_until("session end logged", lambda: "session end outcome=upstream_unreachable" in gateway.log())
