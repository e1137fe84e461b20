"""The data tasks' error boundary: an unexpected exception at any step of a transfer ends that transfer with a
failure reply (never the server's 226), is logged once with its traceback and counted, and the session goes on.
Over loopback, a real Session between a raw client and a scripted server (tests/unit/shellrig.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import SimpleNamespace
from typing import Any

import pytest
from shellrig import PAYLOAD, Rig, ScriptedServer, records, rig, run, sha

from alg.gateway import kerneldata, relaypath

INTERNAL = "ftp_alg_internal_errors_total"


class Injected(RuntimeError):
    pass


async def relay_then_raise(a: socket.socket, b: socket.socket, **kwargs: Any) -> Any:
    """A passive download's first 64 KiB forwarded (server leg `b` to client leg `a`), then a bug."""
    loop = asyncio.get_running_loop()
    result = kwargs.get("result")
    moved = 0
    while moved < 65536:
        chunk = await loop.sock_recv(b, 65536 - moved)
        if not chunk:
            break
        await loop.sock_sendall(a, chunk)
        moved += len(chunk)
        if result is not None:
            result.to_a += len(chunk)
    raise Injected("relay bug")


async def connect_raises(*_: Any) -> socket.socket:
    raise Injected("connect bug")


async def the_session_goes_on(gateway: Rig, client: Any) -> None:
    data, code = await client.retr()
    assert (code, sha(data)) == (226, sha(PAYLOAD))
    await client.expect("QUIT", 221)


def injected(error: BaseException | None) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return any(injected(inner) for inner in error.exceptions)
    return isinstance(error, Injected)


def traceback_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    failures = [r for r in caplog.records if r.exc_info is not None and injected(r.exc_info[1])]
    assert len(failures) == 1, [r.getMessage() for r in failures]


def test_a_relay_that_raises_mid_download_ends_it_with_426_not_the_servers_226(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        async with rig() as gateway:
            client = await gateway.logged_in()
            monkeypatch.setattr(relaypath, "relay", relay_then_raise)
            data, code = await client.retr()
            assert len(data) == 65536 and code == 426
            assert gateway.metric(INTERNAL, where="data") == 1
            monkeypatch.undo()
            await the_session_goes_on(gateway, client)
            assert gateway.ended == [] or gateway.ended == ["quit"]
            assert not gateway.loop_errors, gateway.loop_errors

    run(main)
    traceback_logged_once(caplog)
    outcomes = [r.outcome for r in records(caplog, "ftp_alg.transfer")]  # type: ignore[attr-defined]
    assert outcomes == ["internal_error", "complete"]


def test_a_connect_that_raises_before_the_227_gets_425_and_the_session_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with rig() as gateway:
            client = await gateway.logged_in()
            monkeypatch.setattr(relaypath, "connect_from", connect_raises)
            code, _ = await client.command("PASV")
            assert code == 425
            assert gateway.metric(INTERNAL, where="data") == 1
            monkeypatch.undo()
            await the_session_goes_on(gateway, client)
            assert not gateway.loop_errors, gateway.loop_errors

    run(main)
    traceback_logged_once(caplog)


def test_a_failure_at_close_after_every_byte_arrived_leaves_the_226_and_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with rig() as gateway:
            client = await gateway.logged_in()
            real = gateway.metrics.relay_finished

            def finished_raises(token: int) -> tuple[int, int]:
                gateway.metrics.relay_finished = real  # type: ignore[method-assign]
                real(token)
                raise Injected("bookkeeping bug")

            gateway.metrics.relay_finished = finished_raises  # type: ignore[method-assign]
            data, code = await client.retr()
            # Every byte arrived before the bookkeeping failed: the server's 226 is the truth.
            assert (code, sha(data)) == (226, sha(PAYLOAD))
            await the_session_goes_on(gateway, client)
            assert gateway.metric(INTERNAL, where="data") == 1
            assert not gateway.loop_errors, gateway.loop_errors

    run(main)
    traceback_logged_once(caplog)


def test_an_exception_in_a_session_task_is_counted_and_the_gateway_keeps_serving(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from alg.gateway.session import Session

    async def main() -> None:
        async with rig() as gateway:
            first = await gateway.client()
            assert (await first.reply())[0] == 220
            with monkeypatch.context() as patch:

                def execute_raises(self: Session, actions: Any) -> None:
                    raise Injected("session bug")

                patch.setattr(Session, "execute", execute_raises)
                first.writer.write(b"USER u\r\n")
                # One 421 and the end of the session; no traceback reaches the client.
                assert (await read_all_stream(first)).startswith(b"421 ")
            assert gateway.metric(INTERNAL, where="session") == 1
            second = await gateway.logged_in()
            await the_session_goes_on(gateway, second)
            assert "error" in gateway.ended

    run(main)
    traceback_logged_once(caplog)


async def read_all_stream(client: Any) -> bytes:
    async with asyncio.timeout(10):
        return bytes(await client.reader.read())


def test_shellrig_reads_a_whole_download_through_the_gateway() -> None:
    async def main() -> None:
        async with rig() as gateway:
            client = await gateway.logged_in()
            data, code = await client.retr()
            assert (code, sha(data)) == (226, sha(PAYLOAD))
            sock = await client.pasv()
            with sock:
                await client.expect("STOR up.bin", 150)
                await asyncio.get_running_loop().sock_sendall(sock, PAYLOAD[:1000])
            assert (await client.reply())[0] == 226
            assert gateway.server.uploads["up.bin"] == PAYLOAD[:1000]
            await client.expect("QUIT", 221)
        assert gateway.ended == ["quit"]

    run(main)


class RaisingKernelCarrier:
    """In the kernel path's place (no root here): it raises once the client's RETR has gone out."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.path = SimpleNamespace(tasks=set())

    def end(self) -> None:
        pass

    async def carry(self, *_: Any) -> None:
        async with asyncio.timeout(10):
            while self.job.transfer.verb is None:  # no event for it: bounded, and a few turns of the loop
                await asyncio.sleep(0)
        raise Injected("kernel path bug")


def test_an_exception_in_the_kernel_path_is_behind_the_same_boundary(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with rig(server=ScriptedServer(data_timeout_s=0.5)) as gateway:
            client = await gateway.logged_in()
            with monkeypatch.context() as patch:
                patch.setattr(kerneldata, "mapped", lambda _context, job, _log: RaisingKernelCarrier(job))
                await client.expect("PASV", 227)  # mapped before it is announced
                code, _ = await client.command("RETR file.bin")
                if code == 150:
                    code, _ = await client.reply()
            assert code in (425, 426)  # the server found no data connection; never a 2xx
            assert gateway.metric(INTERNAL, where="data") == 1
            await the_session_goes_on(gateway, client)
            assert not gateway.loop_errors, gateway.loop_errors

    run(main)
    traceback_logged_once(caplog)
