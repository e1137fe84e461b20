"""ABOR during a transfer, through the gateway, in every style clients send it, against four real servers.

The gateway re-sends every ABOR as BSD ftp does (IAC IP, IAC DM with the urgent mark on DM, then ABOR), so
ftplib's style (urgent mark on the newline), BSD's (tnftp) and a plain non-urgent ABOR all reach the server in
the one form it is written for. Each case does what tnftp does: a download gets ABOR and then has its data
drained; an upload has its data connection closed and then gets ABOR. A well-formed 426/226 (or 225/226)
must come back within a few seconds, and NOOP then works. Directly, ftplib's style gets 500 from pure-ftpd
and leaves proftpd answering the next command with 500 (it reads "ABOR\r" glued to what follows).
One topology for the module: client 203.0.113.10 -> gateway 203.0.113.1 | 198.51.100.1 -> the servers.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import require_netns, require_server, skip_or_fail
from gateway import wait_listening
from netns import Topology
from servers import FtpServer, start_server

pytestmark = pytest.mark.netns

# name: (kind, server port, gateway port, passive ports)
SERVERS = {
    "vsftpd": ("vsftpd", 21, 2101, (30000, 30019)),
    "pure-ftpd": ("pure-ftpd", 2121, 2102, (30020, 30039)),
    "proftpd": ("proftpd", 2122, 2103, (30040, 30059)),
    "pyftpdlib": ("pyftpdlib", 2123, 2104, (30060, 30079)),
}
BIG = 32 << 20  # far more than socket buffers hold: the transfer is still running when ABOR arrives
STYLES = ("ftplib", "bsd", "plain")


@dataclass
class World:
    topo: Topology
    servers: dict[str, FtpServer]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_netns()
    for kind, *_ in SERVERS.values():
        require_server(kind)
    blob = bytes(range(256)) * (BIG // 256)
    with Topology("reverse") as topo:
        servers: dict[str, FtpServer] = {}
        for index, (name, (kind, port, listen, passive)) in enumerate(SERVERS.items()):
            servers[name] = server = start_server(kind, topo.server, port=port, pasv_ports=passive)
            server.put_file("big.bin", blob)
            first = 50000 + 100 * index
            process = topo.start_gateway(
                [
                    "run",
                    "--listen",
                    f"{topo.public_addr}:{listen}",
                    "--upstream",
                    f"{topo.server_addr}:{port}",
                    "--passive-ports",
                    f"{first}-{first + 99}",
                    "--log-level",
                    "debug",
                ]
            )
            wait_listening(topo.gw, process, topo.public_addr, listen)
        yield World(topo, servers)
        for server in servers.values():
            server.stop()


# Runs in the client namespace. Each style: one stalled transfer, ABOR, replies until the ABOR's own 2xx.
ABORT_CLIENT = r"""
import json, re, select, socket, sys, time
spec = json.load(sys.stdin)
IAC, IP, DM = 255, 244, 242
control = socket.create_connection((spec["host"], spec["port"]), timeout=10)
control.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buffer = b""

def reply(timeout=10.0):
    global buffer
    control.settimeout(timeout)
    while True:
        if b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            text = line.decode("latin-1").rstrip("\r")
            if re.match(r"\d{3} ", text):
                return text
            continue
        chunk = control.recv(4096)
        if not chunk:
            raise EOFError("control connection closed")
        buffer += chunk

def command(line):
    control.sendall(line.encode() + b"\r\n")
    return reply()

def abort(style):
    if style == "ftplib":  # ftplib.FTP.abort(): the whole line as urgent data, the mark on the newline
        control.sendall(b"ABOR\r\n", socket.MSG_OOB)
    elif style == "bsd":  # tnftp's abort_remote(): IAC IP IAC urgent, then DM ABOR
        control.send(bytes((IAC, IP, IAC)), socket.MSG_OOB)
        control.sendall(bytes((DM,)) + b"ABOR\r\n")
    else:
        control.sendall(b"ABOR\r\n")

reply()
command("USER " + spec["user"]); command("PASS " + spec["password"]); command("TYPE I")
results = {}
for style in spec["styles"]:
    name = "upload/%s-%s.bin" % (style, spec["passive"])
    verb = "RETR big.bin" if spec["direction"] == "download" else "STOR " + name
    if spec["passive"]:
        numbers = [int(n) for n in re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", command("PASV")).groups()]
        data = socket.create_connection((".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]), timeout=10)
        first = command(verb)
    else:
        listener = socket.create_server((control.getsockname()[0], 0))
        host, port = listener.getsockname()
        command("PORT " + ",".join(host.split(".") + [str(port >> 8), str(port & 255)]))
        control.sendall(verb.encode() + b"\r\n")
        listener.settimeout(10)
        data, _ = listener.accept()
        listener.close()
        first = reply()
    data.settimeout(10)
    started = time.monotonic()
    if spec["direction"] == "download":
        data.recv(65536)
        abort(style)  # and, as tnftp does, drop whatever data still comes while the replies are awaited
    else:
        data.sendall(b"u" * (256 << 10))
        data.close()  # as tnftp does for a put: the data connection first, then ABOR
        abort(style)
    codes = []  # final replies: the transfer command's, then the ABOR's
    while len(codes) < 2:
        left = spec["patience"] - (time.monotonic() - started)
        if left <= 0:
            break
        watch = [control] + ([data] if data.fileno() >= 0 else [])
        ready, _, _ = select.select([] if b"\n" in buffer else watch, [], [], min(left, 0.2))
        if data in ready:
            try:
                if not data.recv(1 << 20):
                    data.close()
            except OSError:
                data.close()
        if b"\n" in buffer or control in ready:
            try:
                code = reply(left)[:3]
            except (TimeoutError, socket.timeout):
                break
            if not code.startswith("1"):
                codes.append(code)
    seconds = time.monotonic() - started
    data.close()
    late = []  # replies after the patience ran out: reported, and out of the way of the NOOP's
    try:
        while len(codes) + len(late) < 2:
            late.append(reply(3.0)[:3])
        late.append(reply(0.5)[:3])  # one reply too many would answer the NOOP in its place
    except (TimeoutError, socket.timeout):
        pass
    noop = command("NOOP")[:3]
    results[style] = {"first": first[:3], "codes": codes, "late": late, "seconds": round(seconds, 2), "noop": noop}
command("QUIT")
print(json.dumps(results))
"""


def run_aborts(world: World, name: str, passive: bool, direction: str, *, direct: bool = False) -> dict[str, dict]:
    server = world.servers[name]
    topo = world.topo
    spec = {
        "host": str(server.addr if direct else topo.public_addr),
        "port": server.port if direct else SERVERS[name][2],
        "user": server.user,
        "password": server.password,
        "passive": passive,
        "direction": direction,
        "styles": STYLES,
        "patience": 5.0,
    }
    host = topo.server if direct else topo.client
    done = host.run([sys.executable, "-c", ABORT_CLIENT], input=json.dumps(spec), timeout=90)
    assert done.returncode == 0, done.stderr + topo.logs()[-4000:]
    results: dict[str, dict] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


CASES = [(n, p, d) for n in SERVERS for p in (True, False) for d in ("download", "upload")]


@pytest.mark.parametrize(
    ("name", "passive", "direction"),
    CASES,
    ids=[f"{n}-{'passive' if p else 'active'}-{d}" for n, p, d in CASES],
)
def test_every_abor_style_ends_the_transfer_cleanly(world: World, name: str, passive: bool, direction: str) -> None:
    results = run_aborts(world, name, passive, direction)
    for style, got in results.items():
        where = f"{name} {style}: {got}"
        assert got["first"] == "150" or got["first"] == "125", where
        # The transfer command's final reply, then the ABOR's (RFC 959 4.1.3), in time and nothing else.
        # (pure-ftpd answers an aborted upload with 426 then 451, directly too.)
        assert len(got["codes"]) == 2 and set(got["codes"]) <= {"426", "226", "225", "451"}, where
        assert got["seconds"] < 5.0 and not got["late"], where
        assert got["noop"] == "200", where


# Without the gateway tnftp's Ctrl-C leaves proftpd 1.3.8 and tnftp waiting for each other after the 426
# (about 10 s here): proftpd sends the ABOR's 226 once its data peer closes, tnftp closes once it has that
# 226. The gateway closes both data legs when the transfer's 426 comes with an ABOR pending.
# After other sessions on the same gateway (likely: TCP metrics cached per destination open windows at once)
# proftpd can write the whole 32 MiB into the buffers between it and tnftp within a second; it then waits for
# its data peer to close before it answers. An ABOR unanswered after ABORT_GRACE_S makes the gateway close it.


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
@pytest.mark.parametrize("name", ["vsftpd", "pure-ftpd", "proftpd"])
def test_tnftp_ctrl_c_during_a_download(world: World, name: str, passive: bool) -> None:
    """BSD ftp itself: `get`, then Ctrl-C (SIGINT) mid-transfer, then another command on the same session."""
    import shutil

    if shutil.which("tnftp") is None:
        skip_or_fail("tnftp not installed (scripts/install-test-deps.sh)")
    topo = world.topo
    server = world.servers[name]
    script = (
        f"open {topo.public_addr} {SERVERS[name][2]}\n"
        f"user {server.user} {server.password}\n"
        f"binary\npassive {'on' if passive else 'off'}\nrate get 262144\nget big.bin /dev/null\npwd\nquit\n"
    )
    commands = topo.workdir / f"tnftp-{name}-{passive}.commands"
    commands.write_text(script)
    # exec: the PID we signal is tnftp's own (ip netns exec and sh both exec), as a terminal's Ctrl-C would.
    process = topo.client.popen(["sh", "-c", f"exec tnftp -n -v < {commands}"], name="tnftp")
    deadline = time.monotonic() + 20
    while "150 " not in process.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "150 " in process.log(), process.log()
    time.sleep(1.0)  # data moves; 32 MiB at 256 KiB/s would take two minutes
    process.signal(signal.SIGINT)
    started = time.monotonic()
    assert process.wait(20) == 0, process.log() + topo.logs()[-3000:]
    assert time.monotonic() - started < 5, process.log() + topo.logs()[-6000:]
    out = process.log()
    after = out[out.index("receive aborted") :]
    assert re.search(r"^(426|226|225)[ -]", after, re.M), out
    assert "Remote directory: /" in after and "221" in after, out  # pwd and quit answered after the abort
