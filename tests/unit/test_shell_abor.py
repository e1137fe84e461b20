"""ABOR through the shell over loopback: the overdue-ABOR timer runs whatever the control leg toward the server
(issue 21 defect 2: it was armed only on an urgent send, which a TLS leg never makes), and the synch and the ABOR
line that follows it go to the server in one write, however the actions came (defect 4)."""

from __future__ import annotations

import asyncio

import pytest
from shellrig import PAYLOAD, Pki, ScriptedServer, rig, run

from alg.gateway.peers import join_writes

BIG = PAYLOAD * 240  # 49 MB: far more than the path's buffers hold, so the server is still writing at the ABOR


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("server_tls", [False, True], ids=["plain", "tls-control-leg"])
def test_an_abor_the_server_leaves_unanswered_gets_the_download_ended_by_the_gateway(
    pki: Pki, server_tls: bool
) -> None:
    """The server (as proftpd does) answers the transfer and the ABOR only once its data peer has closed; the
    client sent ABOR and reads no more data. Only the gateway's timer can end the data connection: with an
    idle timeout of a minute, the replies come within seconds only if it ran."""

    async def main() -> None:
        server = ScriptedServer(files={"big.bin": BIG}, tls=pki.server_context() if server_tls else None)
        tls = pki.upstream_runtime() if server_tls else None
        async with rig(server=server, tls=tls, data_idle_s=60.0) as gateway:
            client = await gateway.logged_in()
            sock = await client.pasv(rcvbuf=4096)
            with sock:
                await client.expect("RETR big.bin", 150)
                assert await asyncio.get_running_loop().sock_recv(sock, 4096)
                client.writer.write(b"ABOR\r\n")
                codes = [(await client.reply())[0], (await client.reply())[0]]
            assert codes == [426, 226]
            assert "ABOR" in server.commands
            await client.expect("NOOP", 200)

    run(main)


def test_server_writes_in_a_row_go_out_as_one_with_the_urgent_mark_on_the_last_urgent_byte() -> None:
    synch, abor = b"\xff\xf4\xff\xf2", b"ABOR\r\n"
    assert join_writes([(synch, True), (abor, False)]) == (synch, abor)
    assert join_writes([(abor, False)]) == (b"", abor)
    assert join_writes([(b"NOOP\r\n", False), (synch, True), (abor, False)]) == (b"NOOP\r\n" + synch, abor)
    assert join_writes([(abor, False), (b"NOOP\r\n", False)]) == (b"", abor + b"NOOP\r\n")
