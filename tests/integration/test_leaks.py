"""The leak test: 2,000 sessions, 50 at a time, that open passive and active data channels and abort them in
every way a client can, leave the gateway with the file descriptors, asyncio tasks and reserved ports it
had before, and no session.

Topology: client 203.0.113.10 (an asyncio driver in its namespace) -> gateway 203.0.113.1 | 198.51.100.1
-> vsftpd 198.51.100.10. The gateway logs at info level here: 2,000 sessions of debug lines would measure
the log, not the gateway.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hostile import metric, open_fds, scrape, start_gateway, wait_until
from netns import Topology
from servers import FtpServer

pytestmark = pytest.mark.netns

SESSIONS = int(os.environ.get("FTP_ALG_LEAK_SESSIONS", "2000"))
CONCURRENCY = 50
SESSION_TIMEOUT_S = 20.0
RUN_TIMEOUT_S = 150.0
CLIENT = "203.0.113.10"
GATEWAY = "203.0.113.1"


# --------------------------------------------------------------------------- the client side


class Ftp:
    """A minimal asyncio FTP client for the driver: send a line, read a whole reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last = b""  # the last reply line, for failure messages

    @classmethod
    async def open(cls) -> Ftp:
        reader, writer = await asyncio.open_connection(GATEWAY, 21)
        return cls(reader, writer)

    async def reply(self) -> int:
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("closed")
        code = line[:3]
        if line[3:4] == b"-":
            while not (line.startswith(code + b" ")):
                line = await self.reader.readline()
                if not line:
                    raise ConnectionError("closed")
        self.last = line
        return int(code)

    async def cmd(self, line: str) -> int:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply()

    async def login(self) -> None:
        assert await self.reply() == 220, self.last
        assert await self.cmd("USER anonymous") == 331
        assert await self.cmd("PASS leak@test") == 230

    async def pasv(self) -> int:
        self.writer.write(b"PASV\r\n")
        line = await self.reader.readline()
        assert line.startswith(b"227 "), line
        numbers = line[line.index(b"(") + 1 : line.index(b")")].split(b",")
        return int(numbers[4]) * 256 + int(numbers[5])

    async def quit(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.cmd("QUIT")
        self.close()

    def close(self) -> None:
        self.writer.close()

    def reset(self) -> None:
        _reset(self.writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def data_to(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(GATEWAY, port)


class ActiveListener:
    """The client's own listener for PORT: accepts one connection, reads it to the end."""

    def __init__(self) -> None:
        self.received: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> ActiveListener:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = len(await reader.read())
            writer.close()
            if not self.received.done():
                self.received.set_result(size)

        self.server = await asyncio.start_server(accepted, CLIENT, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def argument(self) -> str:
        return ",".join([*CLIENT.split("."), str(self.port // 256), str(self.port % 256)])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


# Each scenario is one session; the final replies vary with timing, so the scenarios check what is certain.


async def pasv_never_connect(ftp: Ftp) -> None:
    await ftp.login()
    await ftp.pasv()
    await ftp.quit()


async def pasv_connect_and_reset(ftp: Ftp) -> None:
    await ftp.login()
    _, writer = await data_to(await ftp.pasv())
    _reset(writer)
    assert await ftp.cmd("NOOP") == 200
    await ftp.quit()


async def pasv_connect_never_transfer(ftp: Ftp) -> None:
    await ftp.login()
    _, writer = await data_to(await ftp.pasv())
    await ftp.quit()
    writer.close()


async def retr_client_vanishes(ftp: Ftp) -> None:
    await ftp.login()
    assert await ftp.cmd("TYPE I") == 200
    reader, writer = await data_to(await ftp.pasv())
    assert await ftp.cmd("RETR big.bin") == 150
    await reader.read(65536)
    ftp.reset()
    _reset(writer)


async def retr_abor(ftp: Ftp) -> None:
    await ftp.login()
    assert await ftp.cmd("TYPE I") == 200
    reader, writer = await data_to(await ftp.pasv())
    assert await ftp.cmd("RETR big.bin") == 150
    await reader.read(65536)
    writer.close()
    ftp.writer.write(b"ABOR\r\n")
    codes = [await ftp.reply()]
    if codes[0] == 426:
        codes.append(await ftp.reply())
    assert codes[-1] in (225, 226), codes
    await ftp.quit()


async def retr_complete_epsv(ftp: Ftp) -> None:
    await ftp.login()
    assert await ftp.cmd("TYPE I") == 200
    ftp.writer.write(b"EPSV\r\n")
    line = await ftp.reader.readline()
    assert line.startswith(b"229 "), line
    reader, writer = await data_to(int(line.split(b"|")[3]))
    assert await ftp.cmd("RETR hello.txt") == 150
    assert await reader.read() != b""
    writer.close()
    assert await ftp.reply() == 226
    await ftp.quit()


async def stor_then_reset(ftp: Ftp) -> None:
    await ftp.login()
    assert await ftp.cmd("TYPE I") == 200
    _, writer = await data_to(await ftp.pasv())
    assert await ftp.cmd(f"STOR upload/leak-{id(ftp)}.bin") == 150
    writer.write(b"u" * 100_000)
    await writer.drain()
    _reset(writer)
    ftp.reset()


async def port_bounce(ftp: Ftp) -> None:
    await ftp.login()
    assert await ftp.cmd("PORT 198,18,0,77,195,80") == 504
    assert await ftp.cmd("EPRT |1|203.0.113.10|21|") == 504
    await ftp.quit()


async def port_complete(ftp: Ftp) -> None:
    await ftp.login()
    listener = await ActiveListener().start()
    try:
        assert await ftp.cmd("TYPE I") == 200
        assert await ftp.cmd(f"PORT {listener.argument}") == 200
        assert await ftp.cmd("RETR small.bin") == 150
        assert await listener.received > 0
        assert await ftp.reply() == 226
    finally:
        listener.close()
    await ftp.quit()


async def port_refused(ftp: Ftp) -> None:
    await ftp.login()
    # Bound but not listening: the gateway's connection is refused, and the port cannot be taken meanwhile
    # by another session's listener on this same client address (which would then get this data).
    holder = socket.socket()
    try:
        holder.bind((CLIENT, 0))
        port = holder.getsockname()[1]
        assert await ftp.cmd(f"PORT {CLIENT.replace('.', ',')},{port // 256},{port % 256}") == 200
        code = await ftp.cmd("RETR small.bin")
        if code == 150:
            code = await ftp.reply()
        assert code in (425, 426), ftp.last
    finally:
        holder.close()
    await ftp.quit()


async def port_never_used(ftp: Ftp) -> None:
    await ftp.login()
    listener = await ActiveListener().start()
    assert await ftp.cmd(f"PORT {listener.argument}") == 200
    ftp.reset()
    listener.close()


async def server_rejects_port(ftp: Ftp) -> None:
    assert await ftp.reply() == 220, ftp.last
    listener = await ActiveListener().start()
    assert await ftp.cmd(f"PORT {listener.argument}") == 530  # not logged in: the server refuses it
    listener.close()
    await ftp.quit()


async def pasv_replaced_by_port(ftp: Ftp) -> None:
    await ftp.login()
    await ftp.pasv()
    listener = await ActiveListener().start()
    assert await ftp.cmd(f"PORT {listener.argument}") == 200
    assert await ftp.cmd("NLST") == 150
    assert await listener.received >= 0
    assert await ftp.reply() == 226
    listener.close()
    await ftp.quit()


async def drop_before_banner(ftp: Ftp) -> None:
    ftp.reset()


async def garbage_and_hang_up(ftp: Ftp) -> None:
    assert await ftp.reply() == 220, ftp.last
    ftp.writer.write(b"\xff\xf4\xff\xf2" + b"x" * 5000 + b"\r\n\x00\x01\x02 PASV\r\n")
    assert await ftp.reply() == 500
    ftp.close()


SCENARIOS: list[Callable[[Ftp], Awaitable[None]]] = [
    pasv_never_connect,
    pasv_connect_and_reset,
    pasv_connect_never_transfer,
    retr_client_vanishes,
    retr_abor,
    retr_complete_epsv,
    stor_then_reset,
    port_bounce,
    port_complete,
    port_refused,
    port_never_used,
    server_rejects_port,
    pasv_replaced_by_port,
    drop_before_banner,
    garbage_and_hang_up,
]


Scenario = Callable[["Ftp"], Awaitable[None]]


async def drive(
    count: int, scenarios: list[Scenario] | None = None, concurrency: int = CONCURRENCY
) -> dict[str, collections.Counter[str]]:
    """Run `count` sessions, `concurrency` at a time, cycling through `scenarios` (this module's SCENARIOS by
    default); tally outcomes by scenario."""
    scenarios = scenarios or SCENARIOS
    tally: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        scenario = scenarios[index % len(scenarios)]
        async with gate:
            ftp = None
            try:
                async with asyncio.timeout(SESSION_TIMEOUT_S):
                    ftp = await Ftp.open()
                    await scenario(ftp)
                tally[scenario.__name__]["ok"] += 1
            except TimeoutError:
                tally[scenario.__name__]["timeout"] += 1
            except Exception as error:
                tally[scenario.__name__][f"{type(error).__name__}: {error}"[:120]] += 1
            finally:
                if ftp is not None:
                    ftp.writer.transport.abort()

    await asyncio.gather(*(one(index) for index in range(count)))
    return tally


# --------------------------------------------------------------------------- the test


def footprint(topo: Topology, pid: int) -> dict[str, float]:
    samples = scrape(topo)
    return {
        "fds": open_fds(pid),
        "tasks": metric(samples, "ftp_alg_tasks"),
        "sessions": metric(samples, "ftp_alg_sessions_active"),
        "data_channels": metric(samples, "ftp_alg_data_channels_active"),
        "public_ports": metric(samples, "ftp_alg_port_pool_in_use", pool="public"),
        "internal_ports": metric(samples, "ftp_alg_port_pool_in_use", pool="internal"),
    }


def back_to(topo: Topology, pid: int, before: dict[str, float], *, timeout_s: float) -> dict[str, float]:
    """Wait until the gateway's footprint is `before` again; on a timeout, fail with its open descriptors."""

    def settled() -> dict[str, float] | None:
        now = footprint(topo, pid)
        return now if now == before else None

    try:
        return wait_until("the gateway back where it started", settled, timeout_s=timeout_s, poll_s=0.5)
    except AssertionError:
        fds = sorted(os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir())
        raise AssertionError(f"before {before}, after {footprint(topo, pid)}; fds: {fds}") from None


@pytest.fixture
def vsftpd(reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer]) -> FtpServer:
    """vsftpd with room for the sessions that linger on its side after the gateway closed them (its own
    max_clients/max_per_ip of 100 would answer 421 under 50 sessions a time), and a passive range of 1,000
    ports like a real server's: with the harness's 20, vsftpd runs out ("500 OOPS: vsf_sysutil_bind") and
    reuses a port within milliseconds, so a late data connection of one session can land on the next
    session's listener (all sessions reach it from the gateway's one address)."""
    low = 30000
    return ftp_server_factory(
        "vsftpd",
        reverse_topo.server,
        pasv_ports=(low, low + 999),
        options={"max_clients": "2000", "max_per_ip": "2000"},
    )


def test_2000_aborted_sessions_leave_no_descriptor_task_port_or_session_behind(
    reverse_topo: Topology, vsftpd: FtpServer
) -> None:
    """Proves, together: session teardown cancels data tasks and closes every socket; listeners close on
    timeout, ABOR, replacement and session end and give their ports back (public and internal pools); nothing
    lingers after a client vanishes mid-transfer, a server refusal, a bounce refusal or garbage."""
    topo = reverse_topo
    gateway = start_gateway(
        topo,
        {
            "active_ports": "41000-41999",
            "timeouts": {"data_connect_s": 2},
            # A session the client has left still tears down for a moment: room for that overlap.
            "limits": {"max_sessions_per_client": 1000},
        },
        "--log-level",
        "info",
    )
    pid = gateway.process.pid
    driver = topo.client.loop()

    # Warm-up: one of each, so whatever is created once (the metrics connection, pipes, caches) exists.
    warm = driver.run(drive(len(SCENARIOS)), timeout_s=60)
    problems = {name: dict(counts) for name, counts in warm.items() if set(counts) != {"ok"}}
    assert not problems, problems
    before = wait_until("idle after warm-up", lambda: (f := footprint(topo, pid))["sessions"] == 0 and f)

    started = time.monotonic()
    tally = driver.run(drive(SESSIONS), timeout_s=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started
    print(f"leak test: {SESSIONS} sessions in {elapsed:.1f} s; before {before}")

    problems = {name: dict(counts) for name, counts in tally.items() if set(counts) != {"ok"}}
    assert not problems, f"{problems}\n{gateway.log()[-3000:]}"
    assert sum(sum(counts.values()) for counts in tally.values()) == SESSIONS

    # The last sessions end (and their listeners time out, data_connect_s 2) within a few seconds.
    after = back_to(topo, pid, before, timeout_s=15)
    print(f"leak test: after {after}")
    samples = scrape(topo)
    outcomes = {dict(k)["outcome"]: v for (n, k), v in samples.items() if n == "ftp_alg_sessions_total" and v}
    failures = {
        dict(k)["reason"]: v for (n, k), v in samples.items() if n == "ftp_alg_data_channels_failed_total" and v
    }
    print(f"leak test: session outcomes {outcomes}; data channel failures {failures}")
    assert sum(outcomes.values()) == SESSIONS + len(SCENARIOS)
    errors = [line for line in gateway.log().splitlines() if "level=error" in line]
    assert not errors, errors[:3]  # no session died of an unexpected exception
    assert after["sessions"] == after["data_channels"] == after["public_ports"] == after["internal_ports"] == 0
    assert gateway.process.alive()
