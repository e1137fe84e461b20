"""Before the session: the PROXY header read to its last byte and no further, trust, and per_user's USER."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address, ip_network
from types import SimpleNamespace
from typing import Any

import pytest

from alg.ftp.addresses import HostPort
from alg.gateway.frontdoor import (
    FEATURES_BEFORE_LOGIN,
    FrontTls,
    Login,
    ProxyRefused,
    answer_before_login,
    read_user,
    receive_origin,
)
from alg.net.proxyproto import encode_v2
from alg.ops.metrics import Metrics

BALANCER = ("203.0.113.17", 40000)
GATEWAY = ("203.0.113.18", 21)
CLIENT = HostPort(ip_address("198.18.0.10"), 51000)
VIP = HostPort(ip_address("203.0.113.5"), 21)


class _Writer:
    def __init__(self, peer: tuple[str, int] = BALANCER) -> None:
        self.peer = peer
        self.written = b""
        self.transport = SimpleNamespace(is_closing=lambda: False)

    def get_extra_info(self, name: str) -> Any:
        return {"peername": self.peer, "sockname": GATEWAY}[name]

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        pass


def _settings(
    data_from: str = "client", timeout_s: float = 1.0, listeners: tuple[HostPort, ...] = ()
) -> SimpleNamespace:
    return SimpleNamespace(
        trusted=(ip_network("203.0.113.16/28"),), data_from=data_from, header_timeout_s=timeout_s, listeners=listeners
    )


async def _origin(chunks: list[bytes], settings: Any, peer: tuple[str, int] = BALANCER, eof: bool = False) -> Any:
    reader = asyncio.StreamReader()
    writer = _Writer(peer)
    metrics = Metrics()

    async def feed() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        if eof:
            reader.feed_eof()

    feeder = asyncio.create_task(feed())
    try:
        origin, session_reader = await receive_origin(reader, writer, settings, metrics)  # type: ignore[arg-type]
    finally:
        await feeder
    return origin, session_reader, writer, metrics


def test_header_byte_by_byte_leaves_the_ftp_bytes() -> None:
    header = encode_v2(CLIENT, VIP)
    chunks = [header[i : i + 1] for i in range(len(header))] + [b"USER anonymous\r\n"]
    origin, reader, _, metrics = asyncio.run(_origin(chunks, _settings()))
    assert (origin.client, origin.dialled, origin.data_peer) == (CLIENT, VIP, CLIENT.ip)
    assert origin.balancer == ip_address(BALANCER[0])
    assert asyncio.run(_read_all(reader)) == b"USER anonymous\r\n"
    assert metrics.proxy_protocol_headers.labels("2")._value.get() == 1


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    reader.feed_eof()
    return await reader.read()


def test_data_from_balancer() -> None:
    origin, *_ = asyncio.run(_origin([b"PROXY TCP4 198.18.0.10 203.0.113.5 51000 21\r\n"], _settings("balancer")))
    assert origin.client == CLIENT and origin.data_peer == ip_address(BALANCER[0])


def test_local_command_is_the_balancer_itself() -> None:
    origin, *_ = asyncio.run(_origin([encode_v2(None, None)], _settings()))
    assert origin.client == HostPort(ip_address(BALANCER[0]), BALANCER[1])


@pytest.mark.parametrize(
    ("chunks", "eof", "reason"),
    [
        ([b"USER anonymous\r\n"], False, "missing"),
        ([b"PROXY TCP4 198.18.0.10\r\n"], False, "malformed"),
        ([b"PROXY TCP4 198.18"], True, "malformed"),  # closed inside the header
        ([b"PROXY TCP4 198.18"], False, "timeout"),
        ([], False, "timeout"),
    ],
)
def test_trusted_peer_refused(chunks: list[bytes], eof: bool, reason: str) -> None:
    with pytest.raises(ProxyRefused) as caught:
        asyncio.run(_origin(chunks, _settings(timeout_s=0.2), eof=eof))
    assert caught.value.reason == reason


def test_untrusted_peer_sending_a_header_gets_421_and_end_of_stream() -> None:
    async def run() -> tuple[bytes, bytes, float]:
        origin, reader, writer, metrics = await _origin([], _settings(), peer=("203.0.113.10", 5000))
        assert origin.client == HostPort(ip_address("203.0.113.10"), 5000)
        reader._reader.feed_data(b"PROXY TCP4 198.18.0.99 203.0.113.18 1 21\r\n")
        data = await reader.read(100)
        return data, writer.written, metrics.proxy_protocol_refusals.labels("untrusted")._value.get()

    data, written, refused = asyncio.run(run())
    assert data == b"" and written.startswith(b"421 ") and refused == 1


def test_untrusted_peer_without_a_header_is_served() -> None:
    async def run() -> bytes:
        _, reader, *_ = await _origin([], _settings(), peer=("203.0.113.10", 5000))
        reader._reader.feed_data(b"USER anonymous\r\n")
        return bytes(await reader.read(100))

    assert asyncio.run(run()) == b"USER anonymous\r\n"


def test_only_on_the_listeners_named() -> None:
    elsewhere = _settings(listeners=(HostPort(ip_address("0.0.0.0"), 2121),))
    origin, *_ = asyncio.run(_origin([], elsewhere))  # a trusted peer on another listener: no header expected
    assert origin.balancer is None
    here = _settings(listeners=(HostPort(ip_address("0.0.0.0"), 21),))
    origin, *_ = asyncio.run(_origin([encode_v2(CLIENT, VIP)], here))
    assert origin.client == CLIENT


def test_no_proxy_protocol_configured() -> None:
    origin, *_ = asyncio.run(_origin([], None))
    assert origin.client == HostPort(ip_address(BALANCER[0]), BALANCER[1]) and origin.balancer is None


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"USER alice\r\nPASS x\r\n"], Login("alice", b"USER alice\r\n")),
        ([b"FEAT\r\n", b"user bob\r\n"], Login("bob", b"user bob\r\n")),
        ([b"QUIT\r\n"], None),
        ([b"USER \r\n"], None),  # an empty USER is not a login: 530, then the stream ends
    ],
)
def test_read_user(lines: list[bytes], expected: Login | None) -> None:
    login, written, rest = asyncio.run(_read_user(lines, None))
    assert login == expected
    assert written.startswith(b"220 ")
    if expected is not None and expected.user == "alice":
        assert rest == b"PASS x\r\n"  # the rest of the login waits for the upstream
    if lines[0].startswith(b"FEAT"):
        assert b"530 " in written  # no TLS offered: nothing to list before login


async def _read_user(lines: list[bytes], tls: FrontTls | None) -> tuple[Login | None, bytes, bytes]:
    reader = asyncio.StreamReader()
    for line in lines:
        reader.feed_data(line)
    reader.feed_eof()
    writer = _Writer()
    login = await read_user(reader, writer, 1.0, tls)  # type: ignore[arg-type]
    return login, writer.written, await reader.read()


def _front_tls(*, required: bool, handshake_ok: bool = True, secured: bool = False) -> tuple[FrontTls, list[str]]:
    started: list[str] = []

    async def start() -> bool:
        started.append("handshake")
        return handshake_ok

    return FrontTls(required=required, start=start, secured=secured), started


def test_an_ftps_client_starts_tls_before_its_user_and_the_session_knows() -> None:
    tls, started = _front_tls(required=True)
    lines = [b"FEAT\r\n", b"AUTH TLS\r\n", b"USER alice\r\n", b"PASS x\r\n"]
    login, written, rest = asyncio.run(_read_user(lines, tls))
    assert login == Login("alice", b"USER alice\r\n", secured=True)
    assert started == ["handshake"]
    assert written == (
        b"220 FTP gateway ready; log in to be connected to your server.\r\n"
        + FEATURES_BEFORE_LOGIN
        + b"234 Proceed with TLS negotiation\r\n"
    )
    assert rest == b"PASS x\r\n"


def test_tls_required_refuses_a_user_in_clear_then_takes_it_inside_tls() -> None:
    tls, _ = _front_tls(required=True)
    login, written, _ = asyncio.run(_read_user([b"USER alice\r\n", b"AUTH TLS\r\n", b"USER alice\r\n"], tls))
    assert b"530 TLS required" in written and login is not None and login.secured


def test_tls_allowed_takes_a_user_in_clear() -> None:
    tls, started = _front_tls(required=False)
    login, _, _ = asyncio.run(_read_user([b"USER alice\r\n"], tls))
    assert login == Login("alice", b"USER alice\r\n", secured=False) and started == []


def test_a_failed_handshake_ends_the_connection_before_any_upstream() -> None:
    tls, started = _front_tls(required=True, handshake_ok=False)
    login, _, _ = asyncio.run(_read_user([b"AUTH TLS\r\n", b"USER alice\r\n"], tls))
    assert login is None and started == ["handshake"]


@pytest.mark.parametrize(
    ("line", "tls_on", "secured", "code", "then"),
    [
        (b"AUTH TLS\r\n", False, False, b"502", None),
        (b"AUTH TLS\r\n", True, True, b"503", None),  # implicit FTPS, or a second AUTH
        (b"AUTH KERBEROS\r\n", True, False, b"504", None),
        (b"auth ssl\r\n", True, False, b"234", "tls"),
        (b"PBSZ 0\r\n", True, True, b"530", None),
        (b"QUIT\r\n", True, False, b"221", "quit"),
        (b"X" * 3000 + b"\r\n", True, False, b"500", None),
    ],
)
def test_answer_before_login(line: bytes, tls_on: bool, secured: bool, code: bytes, then: str | None) -> None:
    tls = _front_tls(required=False)[0] if tls_on else None
    answer, what = answer_before_login(line, tls=tls, secured=secured)
    assert answer.startswith(code + b" ") and answer.endswith(b"\r\n") and what == then
