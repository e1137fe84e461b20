"""A session over loopback, end to end through the shell (tests/unit/shellrig.py): passive and active transfers
both ways byte for byte, a TLS control leg toward the server, and an upstream that cannot be reached (its 421
names no address of the internal side; the log does)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from shellrig import LOOPBACK, PAYLOAD, STEP_S, Client, Pki, ScriptedServer, read_all, rig, run, sha

from alg.ops.logs import FIELDS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


async def active(client: Client, command: str, send: bytes = b"") -> tuple[bytes, int]:
    """PORT toward our own listener, `command`, the data (sent, or received), the final reply's code."""
    loop = asyncio.get_running_loop()
    with socket.create_server((LOOPBACK, 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        await client.expect(f"PORT 127,0,0,1,{port >> 8},{port & 0xFF}", 200)
        await client.expect(command, 150)
        async with asyncio.timeout(STEP_S):
            sock, _ = await loop.sock_accept(listener)
    with sock:
        if send:
            await loop.sock_sendall(sock, send)
            sock.shutdown(socket.SHUT_WR)
        data = await read_all(sock)
    return data, (await client.reply())[0]


@pytest.mark.parametrize("server_tls", [False, True], ids=["plain", "tls-control-leg"])
def test_passive_and_active_both_ways_arrive_whole(pki: Pki, server_tls: bool) -> None:
    async def main() -> None:
        server = ScriptedServer(tls=pki.server_context() if server_tls else None)
        async with rig(server=server, tls=pki.upstream_runtime() if server_tls else None) as gateway:
            client = await gateway.logged_in()
            data, code = await client.retr()
            assert (code, sha(data)) == (226, sha(PAYLOAD))
            data, code = await active(client, "RETR file.bin")
            assert (code, sha(data)) == (226, sha(PAYLOAD))
            _, code = await active(client, "STOR up.bin", send=PAYLOAD[::-1])
            assert code == 226 and sha(server.uploads["up.bin"]) == sha(PAYLOAD[::-1])
            await client.expect("QUIT", 221)
        assert gateway.ended == ["quit"]
        assert gateway.metric("ftp_alg_data_channels_opened_total", mode="active", direction="upload") == 1
        assert gateway.metric("ftp_alg_data_channels_opened_total", mode="passive", direction="download") == 1
        assert gateway.metric("ftp_alg_internal_errors_total", where="data") == 0

    run(main)


def test_an_unreachable_upstream_gets_a_421_that_names_no_internal_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        async with rig() as gateway:
            await gateway.server.close()  # nobody listens on the upstream's port any more
            client = await gateway.client()
            code, line = await client.reply()
            assert code == 421 and b"cannot be reached" in line
            assert b"127.0.0.1" not in line and str(gateway.server.port).encode() not in line
            assert await client.reader.read() == b""
        assert gateway.ended == ["upstream_unreachable"]

    run(main)
    warning = next(r for r in caplog.records if r.getMessage() == "upstream unreachable")
    assert "127.0.0.1" in str(getattr(warning, FIELDS)["upstream"])  # the address stays in the log, for the operator
