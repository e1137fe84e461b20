"""A client that drops a download (closes its data connection after 32 KB) gets 426, never 2xx, plain and under
PROT P, even when the server has already written the whole file and answered 226 (issue 25 item 2); the
transfer log and the failure metric say what the reply says. Over loopback, a real Session (tests/unit/shellrig.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest
from shellrig import LOOPBACK, PAYLOAD, STEP_S, Client, Pki, ScriptedServer, records, rig, run, sha

DROP_AFTER = 32 * 1024
# Larger than what a 4 KB receive window lets the gateway deliver, small enough for the server to write it all
# into the gateway's buffers and answer 226 while the client is still reading.
BIG = PAYLOAD * 5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


async def read_then_drop_plain(client: Client) -> int:
    """Read the first 32 KB, then close: with bytes still unread the close is a reset."""
    sock = await client.pasv(rcvbuf=4096)
    loop = asyncio.get_running_loop()
    await client.expect("RETR file.bin", 150)
    got = 0
    async with asyncio.timeout(STEP_S):
        while got < DROP_AFTER:
            chunk = await loop.sock_recv(sock, DROP_AFTER - got)
            assert chunk
            got += len(chunk)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return (await client.reply())[0]


async def read_then_drop_tls(client: Client, pki: Pki) -> int:
    """PROT P: the first 32 KB, then close_notify and close, as a TLS client that stops reading does."""
    code, line = await client.command("PASV")
    assert code == 227
    numbers = [int(n) for n in line.split(b"(")[1].split(b")")[0].split(b",")]
    reader, writer = await asyncio.open_connection(
        LOOPBACK, numbers[4] * 256 + numbers[5], ssl=pki.client_context(), server_hostname=LOOPBACK
    )
    await client.expect("RETR file.bin", 150)
    async with asyncio.timeout(STEP_S):
        first = await reader.readexactly(DROP_AFTER)
    assert first == PAYLOAD[:DROP_AFTER]
    writer.close()
    return (await client.reply())[0]


@pytest.mark.parametrize("protected", [False, True], ids=["plain", "prot-p"])
def test_a_dropped_download_gets_426_and_the_log_and_metric_say_so(
    protected: bool, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        server = ScriptedServer(files={"file.bin": BIG})
        async with rig(server=server, tls=pki.runtime() if protected else None) as gateway:
            client = await gateway.logged_in()
            if protected:
                await client.secure(pki)
            for _ in range(3):
                if protected:
                    code = await read_then_drop_tls(client, pki)
                else:
                    code = await read_then_drop_plain(client)
                assert code == 426
            assert gateway.metric("ftp_alg_data_channels_failed_total", reason="reset") == 3
            if not protected:  # the session goes on: a whole download after the dropped ones
                data, code = await client.retr()
                assert (code, sha(data)) == (226, sha(BIG))

    run(main)
    outcomes = [r.outcome for r in records(caplog, "ftp_alg.transfer")]  # type: ignore[attr-defined]
    assert outcomes[:3] == ["reset"] * 3
