"""The data relay: the same tests run against both movers (splice and asyncio) and both event loops.

Each test joins `client <-> a` and `b <-> server` (socketpairs or TCP over loopback), relays a <-> b, and
checks what the peers see: the bytes, the ends of stream, the end-of-file reports, the timeout and the errors.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from loops import LOOPS, run_on

from alg.net import relay as relay_module
from alg.net.relay import RelayResult, relay, relay_mode

MODES = ["splice", "asyncio"] if relay_module.splice_available() else ["asyncio"]
TRANSPORTS = ["unix", "tcp"]


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        one = socket.create_connection(server.getsockname())
        two, _ = server.accept()
    return one, two


def _pair(transport: str) -> tuple[socket.socket, socket.socket]:
    one, two = socket.socketpair() if transport == "unix" else _tcp_pair()
    for sock in (one, two):
        sock.setblocking(False)
    return one, two


class Rig:
    """client <-> a   (relay)   b <-> server; the test drives client and server."""

    def __init__(self, transport: str) -> None:
        self.client, self.a = _pair(transport)
        self.b, self.server = _pair(transport)

    def close(self) -> None:
        for sock in (self.client, self.a, self.b, self.server):
            sock.close()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=TRANSPORTS)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    rig = Rig(str(request.param))
    yield rig
    rig.close()


async def _read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await loop.sock_recv(sock, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


async def _send_and_close(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    sock.shutdown(socket.SHUT_WR)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- bytes and counts -----------------------------------------------------------------------------------------


def test_both_directions_arrive_whole_and_are_counted(rig: Rig, mode: str, loop_kind: str) -> None:
    down = os.urandom(3 * 1024 * 1024 + 17)
    up = os.urandom(700 * 1024 + 3)

    async def main() -> tuple[RelayResult, bytes, bytes]:
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode=mode))
        got_by_server, got_by_client, _, _ = await asyncio.gather(
            _read_all(rig.server),
            _read_all(rig.client),
            _send_and_close(rig.client, up),
            _send_and_close(rig.server, down),
        )
        return await task, got_by_server, got_by_client

    result, got_by_server, got_by_client = run_on(loop_kind, main)
    assert hashlib.sha256(got_by_server).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_by_client).digest() == hashlib.sha256(down).digest()
    assert (result.to_b, result.to_a, result.idle_timeout) == (len(up), len(down), False)


def test_empty_transfer_counts_zero_and_ends(rig: Rig, mode: str, loop_kind: str) -> None:
    async def main() -> tuple[RelayResult, bytes, bytes]:
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode=mode))
        rig.client.shutdown(socket.SHUT_WR)
        rig.server.shutdown(socket.SHUT_WR)
        got = await asyncio.gather(_read_all(rig.server), _read_all(rig.client))
        return await task, got[0], got[1]

    assert run_on(loop_kind, main) == (RelayResult(0, 0, False), b"", b"")


def test_counts_can_be_read_while_the_relay_runs(rig: Rig, mode: str, loop_kind: str) -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        counts = RelayResult()
        task = asyncio.create_task(
            relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, result=counts, mode=mode)
        )
        await loop.sock_sendall(rig.client, b"x" * 1000)
        received = b""
        while len(received) < 1000:
            received += await loop.sock_recv(rig.server, 4096)
        during = counts.to_b
        rig.client.shutdown(socket.SHUT_WR)
        rig.server.shutdown(socket.SHUT_WR)
        await asyncio.gather(_read_all(rig.server), _read_all(rig.client))
        assert await task is counts
        return during, counts.to_b

    assert run_on(loop_kind, main) == (1000, 1000)


# --- half-close and the end-of-file reports ------------------------------------------------------------------


def test_half_close_is_passed_on_and_the_other_direction_keeps_flowing(rig: Rig, mode: str, loop_kind: str) -> None:
    """An upload ends when the client shuts its side; the server still answers over the same connection."""

    async def main() -> tuple[bytes, bytes, RelayResult]:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode=mode))
        await _send_and_close(rig.client, b"upload")
        upload = await _read_all(rig.server)  # ends: the client's EOF reached the server
        assert not task.done()
        await loop.sock_sendall(rig.server, b"after the client's EOF")
        rig.server.shutdown(socket.SHUT_WR)
        answer = await _read_all(rig.client)
        return upload, answer, await task

    upload, answer, result = run_on(loop_kind, main)
    assert (upload, answer) == (b"upload", b"after the client's EOF")
    assert (result.to_b, result.to_a) == (6, 22)


def test_half_close_from_the_b_side(rig: Rig, mode: str, loop_kind: str) -> None:
    async def main() -> tuple[bytes, bytes]:
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode=mode))
        await _send_and_close(rig.server, b"download")
        download = await _read_all(rig.client)
        await _send_and_close(rig.client, b"late")
        late = await _read_all(rig.server)
        await task
        return download, late

    assert run_on(loop_kind, main) == (b"download", b"late")


def test_each_end_of_file_is_reported_once_after_its_last_byte_was_delivered(
    rig: Rig, mode: str, loop_kind: str
) -> None:
    data = os.urandom(2 * 1024 * 1024)

    async def main() -> list[tuple[bool, int]]:
        counts = RelayResult()
        reports: list[tuple[bool, int]] = []
        got: list[bytes] = []

        def on_eof(forward: bool) -> None:
            reports.append((forward, counts.to_a))

        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=on_eof, result=counts, mode=mode))
        reader = asyncio.create_task(_read_all(rig.client))
        await asyncio.get_running_loop().sock_sendall(rig.server, data)
        assert reports == []  # both directions still open
        rig.server.shutdown(socket.SHUT_WR)
        got.append(await reader)
        assert len(reports) == 1  # the client saw EOF only after the report: the 226 may go on now
        await _send_and_close(rig.client, b"")
        await _read_all(rig.server)
        await task
        assert got == [data]
        return reports

    # When the 226 is allowed, every byte of the transfer has been handed to the client's socket; the other
    # direction's end is reported when it comes.
    assert run_on(loop_kind, main) == [(False, len(data)), (True, len(data))]


def test_no_end_of_file_is_reported_when_the_relay_fails(rig: Rig, mode: str, loop_kind: str) -> None:
    async def main() -> int:
        reports = []
        with pytest.raises(TimeoutError):
            await relay(rig.a, rig.b, idle_timeout_s=0.05, on_eof=reports.append, mode=mode)
        return len(reports)

    assert run_on(loop_kind, main) == 0


# --- timeouts and errors --------------------------------------------------------------------------------------


def test_idle_timeout_raises_and_is_flagged(rig: Rig, mode: str, loop_kind: str) -> None:
    async def main() -> tuple[RelayResult, float]:
        loop = asyncio.get_running_loop()
        counts = RelayResult()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await relay(rig.a, rig.b, idle_timeout_s=0.1, on_eof=lambda _: None, result=counts, mode=mode)
        return counts, loop.time() - started

    counts, waited = run_on(loop_kind, main)
    assert counts.idle_timeout
    assert 0.09 <= waited < 2


def test_traffic_keeps_the_relay_from_idling_out(rig: Rig, mode: str, loop_kind: str) -> None:
    async def main() -> RelayResult:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=0.2, on_eof=lambda _: None, mode=mode))
        for _ in range(8):  # 8 x 0.05 s: twice the idle timeout in total, never idle for that long
            await loop.sock_sendall(rig.client, b"tick")
            assert await loop.sock_recv(rig.server, 16) == b"tick"
            await asyncio.sleep(0.05)
        assert not task.done()
        rig.client.shutdown(socket.SHUT_WR)
        rig.server.shutdown(socket.SHUT_WR)
        await asyncio.gather(_read_all(rig.client), _read_all(rig.server))
        return await task

    result = run_on(loop_kind, main)
    assert (result.to_b, result.idle_timeout) == (32, False)


def test_a_reset_peer_raises_connection_error(mode: str, loop_kind: str) -> None:
    rig = Rig("tcp")
    try:

        async def main() -> None:
            loop = asyncio.get_running_loop()
            task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode=mode))
            await loop.sock_sendall(rig.client, b"x" * 100_000)
            rig.server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rig.server.close()  # RST toward b
            with pytest.raises(OSError) as caught:
                await task
            assert isinstance(caught.value, ConnectionError) or caught.value.errno in (errno.EPIPE, errno.ECONNRESET)

        run_on(loop_kind, main)
    finally:
        rig.close()


def test_sockets_are_left_open_for_the_caller(rig: Rig, mode: str, loop_kind: str) -> None:
    async def main() -> None:
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode=mode))
        rig.client.shutdown(socket.SHUT_WR)
        rig.server.shutdown(socket.SHUT_WR)
        await asyncio.gather(_read_all(rig.client), _read_all(rig.server))
        await task

    run_on(loop_kind, main)
    assert rig.a.fileno() >= 0 and rig.b.fileno() >= 0
    rig.a.getsockname()  # still a working socket


# --- resources ------------------------------------------------------------------------------------------------


def test_no_descriptor_leaks_whatever_the_ending(mode: str, loop_kind: str) -> None:
    """Pipes are closed after a clean end, a timeout, a reset and a cancellation."""

    async def clean(rig: Rig) -> None:
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode=mode))
        await asyncio.gather(_send_and_close(rig.client, b"a" * 70_000), _send_and_close(rig.server, b"b" * 5))
        await asyncio.gather(_read_all(rig.client), _read_all(rig.server))
        await task

    async def timeout(rig: Rig) -> None:
        await asyncio.get_running_loop().sock_sendall(rig.client, b"then silence")
        with pytest.raises(TimeoutError):
            await relay(rig.a, rig.b, idle_timeout_s=0.05, on_eof=lambda _: None, mode=mode)

    async def cancelled(rig: Rig) -> None:
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode=mode))
        await asyncio.get_running_loop().sock_sendall(rig.client, b"z" * 10_000)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def reset(rig: Rig) -> None:
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode=mode))
        await asyncio.get_running_loop().sock_sendall(rig.client, b"y" * 50_000)
        rig.server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rig.server.close()
        with pytest.raises(OSError):
            await task

    before = _open_fds()
    for scenario in (clean, timeout, cancelled, reset):
        for _ in range(3):
            rig = Rig("tcp")
            try:
                run_on(loop_kind, lambda rig=rig, scenario=scenario: scenario(rig))  # type: ignore[misc]
            finally:
                rig.close()
    assert _open_fds() == before


# --- choosing the mover ---------------------------------------------------------------------------------------


def test_relay_mode_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTP_ALG_RELAY", "asyncio")
    assert relay_mode() == "asyncio"
    monkeypatch.setenv("FTP_ALG_RELAY", "splice")
    assert relay_mode() == ("splice" if relay_module.splice_available() else "asyncio")
    monkeypatch.delenv("FTP_ALG_RELAY")
    assert relay_mode() == ("splice" if relay_module.splice_available() else "asyncio")
    assert relay_mode("asyncio") == "asyncio"
    monkeypatch.setenv("FTP_ALG_RELAY", "sendfile")
    with pytest.raises(ValueError, match="FTP_ALG_RELAY"):
        relay_mode()


@pytest.mark.skipif(not relay_module.splice_available(), reason="no os.splice")
def test_splice_refused_by_the_kernel_falls_back_to_copying(
    rig: Rig, loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_splice(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(relay_module.os, "splice", no_splice)
    data = os.urandom(300_000)

    async def main() -> tuple[RelayResult, bytes]:
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode="splice"))
        got, _, _ = await asyncio.gather(
            _read_all(rig.server), _send_and_close(rig.client, data), _send_and_close(rig.server, b"")
        )
        await _read_all(rig.client)
        return await task, got

    result, got = run_on(loop_kind, main)
    assert got == data and result.to_b == len(data)


@pytest.mark.skipif(not relay_module.splice_available(), reason="no os.splice")
@pytest.mark.parametrize(("size", "spliced"), [(4096, False), (3 * 1024 * 1024, True)])
def test_splice_carries_bulk_and_small_transfers_cost_no_pipe(
    rig: Rig, loop_kind: str, monkeypatch: pytest.MonkeyPatch, size: int, spliced: bool
) -> None:
    calls = {"splice": 0, "pipe2": 0}
    real_splice, real_pipe2 = os.splice, os.pipe2

    def splice(*args: Any, **kwargs: Any) -> int:
        calls["splice"] += 1
        return real_splice(*args, **kwargs)

    def pipe2(flags: int) -> tuple[int, int]:
        calls["pipe2"] += 1
        return real_pipe2(flags)

    monkeypatch.setattr(relay_module.os, "splice", splice)
    monkeypatch.setattr(relay_module.os, "pipe2", pipe2)
    data = os.urandom(size)

    async def main() -> bytes:
        task = asyncio.create_task(relay(rig.a, rig.b, idle_timeout_s=10, on_eof=lambda _: None, mode="splice"))
        got, _, _ = await asyncio.gather(
            _read_all(rig.server), _send_and_close(rig.client, data), _send_and_close(rig.server, b"")
        )
        await _read_all(rig.client)
        await task
        return got

    assert run_on(loop_kind, main) == data
    assert (calls["splice"] > 0, calls["pipe2"]) == ((True, 1) if spliced else (False, 0))
