"""TLS transports: the contexts of both sides, and TLS data legs driven through memory BIOs over plain sockets.

Rules: one server context serves a client's control and data connections, so clients can resume their session
on data connections; the upstream context is one object for the process, so a data connection can resume the
control connection's session (`wrap_bio(session=...)`, which asyncio's and uvloop's start_tls cannot pass).
A data leg of our own, not an asyncio SSL transport, because only it can tell a close_notify from a bare FIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alg.net.relay import RelayResult

log = logging.getLogger("ftp_alg.tls")

VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
READ_BYTES = 256 * 1024


class TlsTruncated(ConnectionError):
    """The peer closed TCP without TLS close_notify: what arrived may be cut short (a truncation attack)."""


def server_context(cert: Path, key: Path, min_version: str = "TLSv1.2") -> ssl.SSLContext:
    """The gateway as TLS server toward clients. Raises OSError or ssl.SSLError for a bad file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[min_version]
    context.load_cert_chain(cert, key)
    return context


def upstream_context(ca_file: Path | None, *, verify: bool = True, min_version: str = "TLSv1.2") -> ssl.SSLContext:
    """The gateway as TLS client toward servers: verified against `ca_file`, or the system store."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = VERSIONS[min_version]
    if verify:
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ServerCertificate:
    """The client-facing context. A reload builds a new one (alg.gateway.reload); sessions keep the context they
    started with, so their data connections resume against the same one."""

    def __init__(self, cert: Path, key: Path, min_version: str) -> None:
        self.cert, self.key, self.min_version = cert, key, min_version
        self.context = server_context(cert, key, min_version)
        self.loaded_at = time.time()


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """'TLSv1.3/TLS_AES_256_GCM_SHA384' for a log line; '-' without TLS."""
    if ssl_object is None:
        return "-"
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()}/{cipher[0] if cipher else '?'}"


def reason_of(error: BaseException) -> str:
    """A handshake failure in a few words: 'certificate verify failed: self-signed certificate'."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, TimeoutError):
        return "handshake timed out"
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error.args[-1]).replace("_", " ").lower()
    return str(error) or type(error).__name__


# ---- data legs -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PlainLeg:
    sock: socket.socket

    async def recv(self) -> bytes:
        return await asyncio.get_running_loop().sock_recv(self.sock, READ_BYTES)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def close_write(self, *, notify: bool = True) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)


@dataclass(slots=True)
class TlsLeg:
    """TLS over a connected non-blocking socket. `strict`: a bare FIN raises TlsTruncated, else it ends the
    stream like a close_notify and `ragged` records it."""

    sock: socket.socket
    tls: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    strict: bool = True
    ragged: bool = False
    _closed_write: bool = field(default=False)

    @classmethod
    def wrap(
        cls,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
        strict: bool = True,
    ) -> TlsLeg:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname, session=session
        )
        return cls(sock, tls, incoming, outgoing, strict)

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
        await self._flush()

    async def recv(self) -> bytes:
        while True:
            try:
                return self.tls.read(READ_BYTES)  # b"": close_notify, a clean end
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as error:
                if not self.incoming.eof:
                    raise
                if self.strict:
                    raise TlsTruncated("the TLS stream ended without close_notify") from error
                self.ragged = True
                return b""
            # TLS 1.3 post-handshake messages (tickets, key updates) go out; a peer that has stopped reading
            # may still have bytes for us, so a failed write does not end the reading.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self._flush()
            await self._fill()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self.tls.write(view[:READ_BYTES])
            view = view[written:]
            await self._flush()

    async def close_write(self, *, notify: bool = True) -> None:
        """End our direction: close_notify then FIN; `notify` False: a bare FIN, passing on a peer's ragged end
        as it was (a server sees what the client did, not a clean end the client never sent)."""
        if self._closed_write:
            return
        self._closed_write = True
        if notify:
            with contextlib.suppress(ssl.SSLError, ValueError):
                self.tls.unwrap()  # sends close_notify; the peer's own arrives (or not) on recv
        with contextlib.suppress(OSError):
            await self._flush()
            self.sock.shutdown(socket.SHUT_WR)

    @property
    def session_reused(self) -> bool:
        return self.tls.session_reused

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _fill(self) -> None:
        data = await asyncio.get_running_loop().sock_recv(self.sock, READ_BYTES)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()


Leg = PlainLeg | TlsLeg


async def relay_legs(
    a: Leg,
    b: Leg,
    *,
    idle_timeout_s: float,
    on_eof: Callable[[bool], None],
    result: RelayResult,
) -> RelayResult:
    """relay() for connections with a TLS leg: both directions copied until both end, the end of each passed
    on (close_notify then FIN on a TLS leg, FIN on a plain one). Raises TimeoutError, TlsTruncated,
    ssl.SSLError, ConnectionError or OSError as relay() does; sockets stay open for the caller."""
    last = time.monotonic()

    async def pump(src: Leg, dst: Leg, forward: bool) -> None:
        nonlocal last
        while True:
            data = await src.recv()
            if not data:
                break
            await dst.send(data)
            last = time.monotonic()
            if forward:
                result.to_b += len(data)
            else:
                result.to_a += len(data)
        await dst.close_write(notify=not (isinstance(src, TlsLeg) and src.ragged))
        on_eof(forward)

    async def watchdog() -> None:
        while True:
            wait = last + idle_timeout_s - time.monotonic()
            if wait <= 0:
                result.idle_timeout = True
                raise TimeoutError("no byte moved")
            await asyncio.sleep(wait)

    tasks = [
        asyncio.ensure_future(pump(a, b, True)),
        asyncio.ensure_future(pump(b, a, False)),
        asyncio.ensure_future(watchdog()),
    ]
    try:
        waiting = set(tasks)
        while not (tasks[0].done() and tasks[1].done()):
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result
