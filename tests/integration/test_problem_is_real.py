"""Why an ALG is needed: a plain TCP forwarder of port 21 is not enough.

In the reverse topology the client reaches only the gateway.  A forwarder that copies the control
connection unchanged lets the client log in, but the server's 227 names 198.51.100.10, which the
client cannot reach, so the listing fails; PORT fails too (the server sees the forwarder's address on
the control connection and refuses a data address that differs from it, or cannot reach the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator

import pytest
from clients import CURL_CONNECT_FAILURES, CURL_FTP_PORT_FAILED, curl_list
from netns import Topology
from servers import FtpServer

pytestmark = pytest.mark.netns


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _start_forwarder(listen: tuple[str, int], upstream: tuple[str, int]) -> asyncio.Server:
    """Forward every connection to `upstream`, bytes unchanged (no FTP awareness at all)."""

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, server_w), _pump(server_r, client_w))

    return await asyncio.start_server(handle, *listen)


@pytest.fixture
def forwarder(reverse_topo: Topology, upstream: FtpServer) -> Iterator[tuple[str, int]]:
    """203.0.113.1:21 in the gw namespace, forwarded verbatim to the upstream at 198.51.100.10:21."""
    loop = reverse_topo.gw.loop()
    server = loop.run(_start_forwarder((str(reverse_topo.public_addr), 21), (str(upstream.addr), upstream.port)))
    try:
        yield str(reverse_topo.public_addr), 21
    finally:

        async def close() -> None:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)

        loop.run(close())


def test_pasv_through_plain_forwarder_names_unreachable_server(
    reverse_topo: Topology, upstream: FtpServer, forwarder: tuple[str, int]
) -> None:
    target = upstream.target(*forwarder)
    result = curl_list(reverse_topo.client, target, mode="pasv", connect_timeout_s=3)
    assert not result.ok
    assert result.returncode in CURL_CONNECT_FAILURES, result
    replies_227 = [line for line in result.received() if line.startswith("227")]
    assert replies_227, result
    assert re.search(r"\(?198,51,100,10,\d+,\d+\)?", replies_227[0]), replies_227
    assert any(line.startswith("230") for line in result.received()), "login works through the forwarder"


def test_epsv_through_plain_forwarder_finds_nothing_at_the_gateway(
    reverse_topo: Topology, upstream: FtpServer, forwarder: tuple[str, int]
) -> None:
    # 229 carries only a port; the client dials it on the gateway, where nothing listens.
    target = upstream.target(*forwarder)
    result = curl_list(reverse_topo.client, target, mode="epsv", connect_timeout_s=3)
    assert result.returncode in CURL_CONNECT_FAILURES, result
    assert any(line.startswith("229") for line in result.received()), result


def test_port_through_plain_forwarder_fails(
    reverse_topo: Topology, upstream: FtpServer, forwarder: tuple[str, int]
) -> None:
    # PORT 203,0,113,10: refused by servers that check it against the control peer (198.51.100.1),
    # or accepted and then unreachable from 198.51.100.0/24.
    target = upstream.target(*forwarder)
    result = curl_list(reverse_topo.client, target, mode="port", connect_timeout_s=3, timeout_s=10)
    assert not result.ok
    assert any(line.startswith("PORT 203,0,113,10,") for line in result.sent()), result
    # All three daemons refuse it: vsftpd "500 Illegal PORT command.", pure-ftpd "500 I won't open a
    # connection to 203.0.113.10 (only to 198.51.100.1)", proftpd "500 Illegal PORT command".
    assert result.returncode == CURL_FTP_PORT_FAILED, result
    assert any(line.startswith("500") for line in result.received()), result
