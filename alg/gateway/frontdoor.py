"""What happens on a new control connection before its session: the PROXY protocol header from a trusted
balancer (who the client really is), and for per_user routing our own greeting up to the client's USER.

Rules: a trusted peer must send a valid header within its timeout and an untrusted one must not send any;
either mistake refuses the connection, with one log line and a count (ftp_alg_proxy_protocol_refusals_total).
The header is read to its last byte and no further: what follows belongs to the FTP session (on an implicit
FTPS listener, to its TLS handshake: the header comes first, in clear, and is read from the bare socket).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from alg.ftp import tls as ftptls
from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.wire import parse_command, reply
from alg.gateway.peers import ends, hostport
from alg.net import proxyproto
from alg.ops.config_sections import ProxyProtocolIn
from alg.ops.logs import fields, printable
from alg.ops.metrics import Metrics

T = TypeVar("T")

log = logging.getLogger("ftp_alg.frontdoor")

MAX_LOGIN_LINES = 20  # commands a client may send before USER when we greet for per_user routing
MAX_LOGIN_LINE_BYTES = 2048
UNTRUSTED_TEXT = "PROXY protocol is accepted only from trusted balancers."


@dataclass(frozen=True, slots=True)
class Origin:
    """Who a control connection is from, as rules, PORT checks, logs and metrics must see it."""

    client: HostPort  # the client (from the PROXY header when a balancer sent one)
    dialled: HostPort  # the address the client connected to
    data_peer: IPAddress  # where its passive data connections come from: the client, or the balancer
    balancer: IPAddress | None = None  # the peer that sent the header


class ProxyRefused(Exception):
    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


async def receive_origin(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, settings: ProxyProtocolIn | None, metrics: Metrics
) -> tuple[Origin, asyncio.StreamReader]:
    """The connection's Origin and the reader the session should use; ProxyRefused when the PROXY protocol
    rules refuse it. `settings` None: no PROXY protocol."""
    peer, ours = ends(writer)
    direct = Origin(peer, ours, peer.ip)
    if settings is None or not _applies(settings.listeners, ours):
        return direct, reader
    if not _trusted(settings, peer):
        return direct, _GuardedReader(reader, writer, metrics, peer.ip)  # type: ignore[return-value]
    header = await _read_header(reader.readexactly, settings, peer)
    metrics.proxy_protocol_headers.labels(str(header.version)).inc()
    return _origin(header, peer, ours, settings), reader


async def receive_origin_before_tls(conn: socket.socket, settings: ProxyProtocolIn | None, metrics: Metrics) -> Origin:
    """Implicit FTPS: a balancer's header comes in clear before the ClientHello, so it is read from the bare socket
    (to its last byte and no further: the rest is the TLS handshake's). An untrusted peer whose first bytes look
    like a header is refused here: inside TLS it would only be a failed handshake."""
    peer, ours = hostport(conn.getpeername()), hostport(conn.getsockname())
    direct = Origin(peer, ours, peer.ip)
    if settings is None or not _applies(settings.listeners, ours):
        return direct
    loop = asyncio.get_running_loop()
    if not _trusted(settings, peer):
        try:
            async with asyncio.timeout(settings.header_timeout_s):
                first = await _peek(loop, conn)
        except TimeoutError:
            return direct  # a silent client: the TLS handshake timeout deals with it
        if proxyproto.looks_like_header(first):
            raise ProxyRefused(f"a PROXY header from {peer.ip}, which is not a trusted balancer", reason="untrusted")
        return direct

    async def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = await loop.sock_recv(conn, n - len(data))
            if not chunk:
                raise asyncio.IncompleteReadError(data, n)
            data += chunk
        return data

    header = await _read_header(exactly, settings, peer)
    metrics.proxy_protocol_headers.labels(str(header.version)).inc()
    return _origin(header, peer, ours, settings)


def _trusted(settings: ProxyProtocolIn, peer: HostPort) -> bool:
    return any(peer.ip in network for network in settings.trusted if network.version == peer.ip.version)


async def _read_header(
    read_exactly: Callable[[int], Awaitable[bytes]], settings: ProxyProtocolIn, peer: HostPort
) -> proxyproto.ProxyHeader:
    data = b""
    try:
        async with asyncio.timeout(settings.header_timeout_s):
            while not isinstance(result := proxyproto.parse_header(data), proxyproto.ProxyHeader):
                data += await read_exactly(result)  # never past the header's end
    except proxyproto.ProxyHeaderError as error:
        raise ProxyRefused(f"from balancer {peer.ip}: {error}", reason=error.reason) from None
    except TimeoutError:
        raise ProxyRefused(f"no PROXY header from balancer {peer.ip} in time", reason="timeout") from None
    except (asyncio.IncompleteReadError, ConnectionError):
        raise ProxyRefused(f"balancer {peer.ip} closed inside the PROXY header", reason="malformed") from None
    return result


def _origin(header: proxyproto.ProxyHeader, peer: HostPort, ours: HostPort, settings: ProxyProtocolIn) -> Origin:
    client = header.client or peer  # LOCAL / UNKNOWN: the balancer's own connection
    dialled = header.destination or ours
    data_peer = client.ip if settings.data_from == "client" else peer.ip
    return Origin(client, dialled, data_peer, balancer=peer.ip)


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The first bytes waiting on a non-blocking socket, left in place for the TLS handshake."""
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), ready)
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv(16, socket.MSG_PEEK)


def _applies(listeners: Sequence[HostPort], ours: HostPort) -> bool:
    # A listener on 0.0.0.0:21 takes connections to every local address: it matches by port.
    return not listeners or any(
        listener.port == ours.port and (listener.ip.is_unspecified or listener.ip == ours.ip) for listener in listeners
    )


class _GuardedReader:
    """An untrusted peer's stream: if its first bytes are a PROXY header, it gets a 421 and end of stream."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, metrics: Metrics, peer: IPAddress
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._metrics = metrics
        self._peer = peer
        self._first = True

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        return self._checked(data)

    async def readline(self) -> bytes:
        return self._checked(await self._reader.readline())

    def _checked(self, data: bytes) -> bytes:
        if self._first and data:
            self._first = False
            if proxyproto.looks_like_header(data):
                self._metrics.proxy_refused("untrusted")
                log.warning("proxy protocol refused", extra=fields(reason="untrusted", peer=self._peer))
                if not self._writer.transport.is_closing():
                    self._writer.write(reply(421, UNTRUSTED_TEXT))
                return b""
        return data


@dataclass(frozen=True, slots=True)
class Login:
    """What per_user routing read before the session: the user, the USER line to replay on the upstream, and
    whether the client started TLS with AUTH TLS first (explicit FTPS: its session goes on inside TLS)."""

    user: str
    line: bytes
    secured: bool = False


@dataclass(frozen=True, slots=True)
class FrontTls:
    """Client TLS before USER (tls.client allow or require): AUTH TLS answered here, as the session would."""

    required: bool  # require: a USER before AUTH TLS gets 530
    start: Callable[[], Awaitable[bool]]  # after our 234: the handshake, counted and logged; False if it failed
    secured: bool = False  # implicit FTPS: TLS from the first byte already


FEATURES_BEFORE_LOGIN = b"211-Features:\r\n" + b"".join(ftptls.TLS_FEATURES) + b"211 End\r\n"


def answer_before_login(line: bytes, *, tls: FrontTls | None, secured: bool) -> tuple[bytes, str | None]:
    """The reply to one line before USER, and what follows: "login" (a USER to route by), "quit", "tls" (our
    234: the handshake next) or None (the next line). AUTH and USER are decided as the session decides them
    (alg.ftp.tls), so the words and codes are the same."""
    if len(line) > MAX_LOGIN_LINE_BYTES:
        return reply(500, "Line too long."), None
    command = parse_command(line)
    verb = command.verb if command is not None else "?"
    if verb == "QUIT":
        return reply(221, "Goodbye."), "quit"
    if verb == "FEAT" and tls is not None:
        return FEATURES_BEFORE_LOGIN, None  # what clients look for before AUTH TLS; the server's list comes later
    if command is not None and verb in ("AUTH", "USER"):
        mode = "refuse" if tls is None else "require" if tls.required else "allow"
        decision = ftptls.ClientTls(ftptls.TlsPolicy(client_mode=mode), secured=secured).decide(command, transfer=False)
        if isinstance(decision, ftptls.StartTls):
            return reply(234, "Proceed with TLS negotiation"), "tls"
        if isinstance(decision, ftptls.Answer):
            return reply(decision.code, decision.text), None
        if verb == "USER" and command.argument.strip():
            return b"", "login"
    log.debug("before login", extra=fields(verb=printable(verb)))
    return reply(530, "Please log in with USER first."), None


async def read_user(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float, tls: FrontTls | None = None
) -> Login | None:
    """per_user routing: greet the client ourselves and read up to its USER command (after AUTH TLS and the
    handshake, for an FTPS client), or None when the client quit, closed, failed its handshake or took too long."""

    async def step(line: bytes, secured: bool) -> tuple[bytes, Login | str | None]:
        answer, then = answer_before_login(line, tls=tls, secured=secured)
        if then != "login":
            return answer, then
        command = parse_command(line)
        assert command is not None
        return b"", Login(command.argument.strip().decode("utf-8", "replace"), line, secured)

    greeting = reply(220, "FTP gateway ready; log in to be connected to your server.")
    found = await answer_until_login(reader, writer, timeout_s, tls, greeting, step)
    return found if isinstance(found, Login) else None


async def answer_until_login(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    timeout_s: float,
    tls: FrontTls | None,
    greeting: bytes,
    step: Callable[[bytes, bool], Awaitable[tuple[bytes, T | str | None]]],
) -> T | None:
    """The gateway's own dialogue before it knows the server: greet, then answer each line with `step(line,
    secured)` (its reply, and "quit", "tls" for our 234, None for the next line, or its result), at most
    MAX_LOGIN_LINES lines within timeout_s. None when the client quit, closed, failed its handshake or took too
    long."""
    writer.write(greeting)
    secured = tls is not None and tls.secured
    try:
        async with asyncio.timeout(timeout_s):
            for _ in range(MAX_LOGIN_LINES):
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    return None
                answer, then = await step(line, secured)
                if answer:
                    writer.write(answer)
                if then == "quit":
                    return None
                if then == "tls":
                    assert tls is not None
                    if not await tls.start():
                        return None
                    secured = True
                    continue
                if then is not None and not isinstance(then, str):
                    return then
                await writer.drain()
            writer.write(reply(421, "Too many commands before USER."))
    except (TimeoutError, ConnectionError, OSError, ValueError):
        pass
    return None
