"""Two gateway instances share the defender's state through a real redis-server (Debian's, started here on
loopback): a guesser banned through one is refused by the other; with Redis stopped mid-run both go on with
their local state, count the fault and log it once; when Redis is back the ban made meanwhile reaches the
other instance, and an unban made on one lifts it on both.

Loopback only: two Gateway objects in this process (each its own metrics), a scripted FTP server that refuses
every password, and redis-server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from alg.gateway.guard_redis import RedisStore
from alg.gateway.server import Gateway
from alg.ops.config import settings_from_mapping


class RedisServer:
    """redis-server on 127.0.0.1:port, no persistence; stop() and start() again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(argv, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                try:
                    sock.connect(("127.0.0.1", self.port))
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError("redis-server did not answer PING within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    # Missing parts fail the test, never skip it: CI installs both (the `test` extra, install-test-deps.sh).
    if importlib.util.find_spec("redis") is None:
        pytest.fail("the redis package is missing: pip install -c constraints.txt -e '.[test]'")
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: scripts/install-test-deps.sh installs it")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Refuser:
    """An FTP server that refuses every password."""

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted\r\n")
        while line := await reader.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            writer.write({b"USER": b"331 pass", b"PASS": b"530 no", b"QUIT": b"221 bye"}.get(verb, b"502 no") + b"\r\n")
            if verb == b"QUIT":
                break
        writer.close()


async def greeting(port: int, guesses: int = 0) -> bytes:
    """The first reply line of a new connection from 127.0.0.1, after `guesses` wrong passwords if let in."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(5):
            first = await reader.readline()
            if first.startswith(b"220"):
                for _ in range(guesses):
                    writer.write(b"USER root\r\nPASS guess\r\n")
                    await reader.readline()
                    await reader.readline()
                writer.write(b"QUIT\r\n")
                await reader.readline()
    finally:
        writer.close()
    return first


async def until(check: Callable[[], Any], timeout_s: float = 10.0) -> float:
    """Seconds until check() held (AssertionError past timeout_s)."""
    start = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)
    return time.monotonic() - start


def store(gateway: Gateway) -> RedisStore:
    (redis_store,) = gateway.guard.stores
    assert isinstance(redis_store, RedisStore)
    return redis_store


def faults(gateway: Gateway) -> float:
    value = gateway.metrics.registry.get_sample_value("ftp_alg_defender_store_faults_total", {"store": "redis"})
    return value or 0.0


async def two_instances(redis: RedisServer) -> dict[str, Any]:
    upstream = await Refuser().start()
    url = f"redis://127.0.0.1:{redis.port}/0"
    gateways = []
    for ports in ("50000-50009", "50010-50019"):
        settings = settings_from_mapping(
            {
                "listen": "127.0.0.1:0",
                "upstream": f"127.0.0.1:{upstream}",
                "passive_ports": ports,
                "defender": {"enabled": True, "store": url},
            }
        )
        gateway = Gateway(settings)
        await gateway.start()
        gateways.append(gateway)
    one, two = gateways
    ports = [gateway.addresses[0].port for gateway in gateways]
    seen: dict[str, Any] = {}
    try:
        await until(lambda: store(one).connected.is_set() and store(two).connected.is_set())
        assert await greeting(ports[0], guesses=5) == b"220 scripted\r\n"
        seen["ban_reached_the_other_s"] = await until(lambda: two.guard.bans())
        seen["refused_by_the_other"] = await greeting(ports[1])
        seen["refused_by_the_first"] = await greeting(ports[0])

        # Redis goes away: both go on; the first instance lifts its ban and a new one is made on the second.
        redis.stop()
        await until(lambda: not store(one).connected.is_set() and not store(two).connected.is_set())
        one.guard.unban("127.0.0.1")
        seen["let_in_by_the_first_meanwhile"] = await greeting(ports[0], guesses=0)
        seen["still_refused_by_the_second"] = await greeting(ports[1])
        seen["faults"] = (faults(one), faults(two))

        # Back: the unban told meanwhile reaches the second instance; the state converges.
        redis.start()
        await until(lambda: store(one).connected.is_set() and store(two).connected.is_set())
        await until(lambda: not two.guard.bans())
        seen["let_in_by_the_second_after"] = await greeting(ports[1])
        assert await greeting(ports[1], guesses=5) == b"220 scripted\r\n"
        await until(lambda: one.guard.bans())
        seen["repeat_on_the_first"] = one.guard.bans()[0].repeat
    finally:
        for gateway in gateways:
            await gateway.stop(1.0)
    return seen


def test_two_instances_share_bans_through_redis_and_survive_its_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ftp_alg.defender")
    seen = asyncio.run(two_instances(redis_server))
    assert seen["refused_by_the_other"].startswith(b"421 ")
    assert seen["refused_by_the_first"].startswith(b"421 ")
    assert seen["let_in_by_the_first_meanwhile"] == b"220 scripted\r\n"
    assert seen["still_refused_by_the_second"].startswith(b"421 ")
    assert all(count >= 1 for count in seen["faults"]), seen["faults"]
    assert seen["let_in_by_the_second_after"] == b"220 scripted\r\n"
    assert seen["repeat_on_the_first"] == 2
    unreachable = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
    assert len(unreachable) == 2, [r.getMessage() for r in unreachable]  # once per instance, however many retries
    assert sum("redis back" in r.getMessage() for r in caplog.records) == 2
    print(f"ban seen by the other instance after {seen['ban_reached_the_other_s'] * 1000:.0f} ms")
