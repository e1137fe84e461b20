"""connect_from, the data connection's outgoing leg, on loopback under both event loops the gateway may run:
it connects from the asked source, reports a refused port as ConnectionRefusedError, and never leaks its
socket, also when cancelled mid-connect (it connects without the loop's sock_connect: see alg.net.dataplane)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
from collections.abc import Callable, Coroutine
from ipaddress import ip_address
from typing import Any

import pytest
import uvloop

from alg.ftp.addresses import HostPort
from alg.net.dataplane import connect_from

LOOPBACK = ip_address("127.0.0.1")
RUNNERS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


def _open_sockets() -> int:
    """Sockets this process holds (uvloop keeps a pipe pair for the process once a loop has run: not counted).
    Garbage from earlier tests is collected first, so a socket closed by the collector mid-test does not count."""
    gc.collect()
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used is gone
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_connect_from_reaches_the_target_from_the_source(loop: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        async def main() -> tuple[str, int]:
            sock = await connect_from(LOOPBACK, HostPort(LOOPBACK, port))
            try:
                assert sock.gettimeout() == 0.0  # non-blocking, as the relay needs
                accepted, peer = server.accept()
                with accepted:
                    sock.sendall(b"ping")
                    assert accepted.recv(4) == b"ping"
                return peer[0], sock.getpeername()[1]
            finally:
                sock.close()

        peer_ip, peer_port = RUNNERS[loop](main())
    assert (peer_ip, peer_port) == ("127.0.0.1", port)


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_a_refused_port_raises_connection_refused_and_leaks_nothing(loop: str) -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        before = _open_sockets()

        async def main() -> None:
            with pytest.raises(ConnectionRefusedError):
                await connect_from(LOOPBACK, HostPort(LOOPBACK, port))

        RUNNERS[loop](main())
        assert _open_sockets() == before


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_cancelled_mid_connect_closes_its_socket(loop: str) -> None:
    # A listener whose backlog is full does not answer the SYN: the connect stays in progress until cancelled.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as server:
        port = server.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        before = _open_sockets()

        async def main() -> None:
            task = asyncio.create_task(connect_from(LOOPBACK, HostPort(LOOPBACK, port)))
            done, _ = await asyncio.wait([task], timeout=0.3)
            if done:  # the kernel took it after all: nothing to cancel, but the socket must be ours to close
                task.result().close()
                return
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        RUNNERS[loop](main())
        assert _open_sockets() == before
        for filler in fillers:
            filler.close()
