"""FTPS in the session shell: the TLS settings a gateway shares, the upstream's AUTH TLS, the client's switch
after 234, and the TLS wrapping of data legs.

Rules: decisions come from alg.ftp.tls; this module only moves bytes, handshakes and reports. Every failure
becomes a reason in words (for the client's 421/426, the log and a metric), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass

from alg.ftp import tls as ftptls
from alg.ftp.addresses import HostPort
from alg.ftp.reasons import DataFailure, Refusal
from alg.net.tls import Leg, PlainLeg, ServerCertificate, TlsLeg, reason_of
from alg.ops.config_check import client_tls_on, load_certificate, load_upstream_context
from alg.ops.config_sections import TlsSettings
from alg.ops.logs import fields, printable
from alg.ops.metrics import Metrics

log = logging.getLogger("ftp_alg.tls")


# TLS off on both sides: the settings model's defaults, which stay the only place they are written.
_OFF = TlsSettings()


@dataclass(slots=True)
class TlsRuntime:
    """What all sessions of one gateway share about TLS (built from settings.tls; TlsRuntime(): TLS off)."""

    client_mode: str = _OFF.client.mode
    client_data: str = _OFF.client.data
    require_session_reuse: bool = _OFF.client.require_session_reuse
    handshake_timeout_s: float = _OFF.client.handshake_timeout_s
    certificate: ServerCertificate | None = None
    upstream_mode: str = _OFF.upstream.mode
    upstream_data: str = _OFF.upstream.data
    upstream_context: ssl.SSLContext | None = None
    upstream_server_name: str | None = _OFF.upstream.server_name

    @property
    def policy(self) -> ftptls.TlsPolicy:
        return ftptls.TlsPolicy(self.client_mode, self.client_data, self.upstream_data)


def runtime_from_settings(tls: TlsSettings) -> TlsRuntime:
    """TlsRuntime from settings.tls; ConfigError naming the key when a file cannot be used."""
    client, upstream = tls.client, tls.upstream
    certificate = load_certificate(client) if client_tls_on(client) else None
    context = None
    if upstream.mode != "off":
        context = load_upstream_context(upstream)
        if not upstream.verify:
            log.warning(
                "tls.upstream.verify is false: the FTP server's certificate is not checked, so anyone on the path "
                "to it can read and change sessions"
            )
    return TlsRuntime(
        client_mode=client.mode,
        client_data=client.data,
        require_session_reuse=client.require_session_reuse,
        handshake_timeout_s=client.handshake_timeout_s,
        certificate=certificate,
        upstream_mode=upstream.mode,
        upstream_data=upstream.data,
        upstream_context=context,
        upstream_server_name=upstream.server_name,
    )


class UpstreamTlsFailed(Exception):
    """The upstream's TLS could not be set up; str() is the reason for the client's 421."""


async def negotiate_upstream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    runtime: TlsRuntime,
    upstream: HostPort,
    metrics: Metrics,
    timeout_s: float,
) -> ftptls.UpstreamReady:
    """Read the banner and run AUTH TLS, PBSZ 0 and PROT toward the server, before the client's session."""
    steps = ftptls.UpstreamTls(runtime.upstream_mode, runtime.upstream_data)
    replies = ftptls.ReplyReader()
    queued: list[tuple[int, bytes]] = []
    async with asyncio.timeout(timeout_s):
        while True:
            while not queued:
                data = await reader.read(65536)
                if not data:
                    raise UpstreamTlsFailed("the FTP server closed the connection during TLS negotiation")
                queued.extend(replies.feed(data))
            code, raw = queued.pop(0)
            if code == 0:
                raise UpstreamTlsFailed("the FTP server sent an unreadable reply during TLS negotiation")
            step = steps.on_reply(code, raw)
            while step is not None:
                match step:
                    case ftptls.SendLine(line):
                        writer.write(line)
                        await writer.drain()
                        step = None
                    case ftptls.StartServerTls():
                        if queued or replies.pending:
                            raise UpstreamTlsFailed("the FTP server sent bytes in clear after 234")
                        await start_upstream_tls(writer, runtime, upstream, metrics)
                        step = steps.tls_started()
                    case ftptls.UpstreamReady():
                        if queued or replies.pending:
                            raise UpstreamTlsFailed("the FTP server sent unexpected replies during TLS negotiation")
                        return step
                    case ftptls.UpstreamFailed(reason):
                        raise UpstreamTlsFailed(reason)


def upstream_name(runtime: TlsRuntime, upstream: HostPort) -> str:
    # An upstream given by host name (alg.gateway.resolve.NamedAddress) is checked against that name.
    return runtime.upstream_server_name or getattr(upstream, "server_name", None) or str(upstream.ip)


async def start_upstream_tls(
    writer: asyncio.StreamWriter, runtime: TlsRuntime, upstream: HostPort, metrics: Metrics
) -> None:
    assert runtime.upstream_context is not None
    try:
        async with asyncio.timeout(runtime.handshake_timeout_s):  # a TimeoutError: see start_client_tls
            await writer.start_tls(runtime.upstream_context, server_hostname=upstream_name(runtime, upstream))
    except (ssl.SSLError, OSError, TimeoutError) as error:
        metrics.tls_handshake("server", "control", "timeout" if isinstance(error, TimeoutError) else "failed")
        raise UpstreamTlsFailed(reason_of(error)) from error
    metrics.tls_handshake("server", "control", "ok")


def discard_buffered(reader: asyncio.StreamReader) -> int:
    """Drop bytes the stream read but nobody consumed (plaintext sent after 234); how many."""
    buffer = getattr(reader, "_buffer", None)  # asyncio's StreamReader keeps them here, on both loops
    if not isinstance(buffer, bytearray):
        return 0
    count = len(buffer)
    buffer.clear()
    return count


async def start_client_tls(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, runtime: TlsRuntime, context: ssl.SSLContext
) -> int:
    """Switch the client's control connection to TLS after our 234; returns plaintext bytes dropped."""
    await writer.drain()
    dropped = discard_buffered(reader)
    # asyncio.timeout, not ssl_handshake_timeout: that one ends in ConnectionAbortedError, which the metrics
    # would count as a failure, never as a timeout.
    async with asyncio.timeout(runtime.handshake_timeout_s):
        await writer.start_tls(context)
    return dropped


async def client_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    runtime: TlsRuntime,
    context: ssl.SSLContext,
    metrics: Metrics,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> bool:
    """start_client_tls, counted and logged (the session's AUTH TLS, and per_user's before USER); False when
    the handshake failed or timed out."""
    try:
        dropped = await start_client_tls(reader, writer, runtime, context)
    except (ssl.SSLError, OSError, TimeoutError) as error:
        outcome = "timeout" if isinstance(error, TimeoutError) else "failed"
        metrics.tls_handshake("client", "control", outcome)
        metrics.refused(Refusal.TLS_HANDSHAKE)
        logger.info("client tls handshake failed", extra=fields(outcome=outcome, reason=printable(reason_of(error))))
        return False
    metrics.tls_handshake("client", "control", "ok")
    if dropped:
        metrics.refused(Refusal.TLS_PLAINTEXT)
        logger.warning("plaintext sent after 234 before the TLS handshake dropped", extra=fields(bytes=dropped))
    return True


async def wrap_data_legs(
    client_sock: socket.socket,
    server_sock: socket.socket,
    *,
    client_tls: bool,
    server_tls: bool,
    runtime: TlsRuntime,
    client_context: ssl.SSLContext | None,
    server_session: ssl.SSLSession | None,
    upstream: HostPort,
    metrics: Metrics,
    timeout_s: float,
) -> tuple[Leg, Leg]:
    """The legs of one data connection, TLS where PROT P: the gateway is TLS server toward the client and TLS
    client toward the server (RFC 4217 7, whoever connected). Both handshakes run at once: a server such as
    vsftpd starts its handshake only once the transfer command reached it."""
    client_leg: Leg = PlainLeg(client_sock)
    server_leg: Leg = PlainLeg(server_sock)
    # Uploads from clients that end without close_notify are common (and what vsftpd accepts by default);
    # the server's leg is strict, so a download cut short reaches the client as 426, not 226.
    if client_tls and client_context is not None:
        client_leg = TlsLeg.wrap(client_sock, client_context, server_side=True, strict=False)
    if server_tls and runtime.upstream_context is not None:
        server_leg = TlsLeg.wrap(
            server_sock,
            runtime.upstream_context,
            server_side=False,
            server_hostname=upstream_name(runtime, upstream),
            session=server_session,
        )

    results = await asyncio.gather(
        _handshake(client_leg, "client", metrics, timeout_s),
        _handshake(server_leg, "server", metrics, timeout_s),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    if isinstance(client_leg, TlsLeg) and runtime.require_session_reuse and not client_leg.session_reused:
        # A clean close (close_notify): the client then reads our 426 on the control connection, instead of
        # failing on a broken TLS stream first.
        with contextlib.suppress(OSError):
            await client_leg.close_write()
        raise DataTlsFailed(
            DataFailure.TLS_SESSION_REUSE,
            "the data connection did not resume the control connection's TLS session (session reuse required)",
        )
    if isinstance(server_leg, TlsLeg) and server_session is not None and not server_leg.session_reused:
        log.debug("upstream data connection did not resume the control session")
    return client_leg, server_leg


async def _handshake(leg: Leg, side: str, metrics: Metrics, timeout_s: float) -> None:
    """One data leg's handshake (nothing for a plain leg), counted; DataTlsFailed with the reason."""
    if not isinstance(leg, TlsLeg):
        return
    try:
        async with asyncio.timeout(timeout_s):
            await leg.handshake()
    except TimeoutError:
        metrics.tls_handshake(side, "data", "timeout")
        raise DataTlsFailed(_HANDSHAKE_FAILURE[side], f"the {side}'s TLS data handshake timed out") from None
    except (ssl.SSLError, OSError) as error:
        metrics.tls_handshake(side, "data", "failed")
        text = f"the {side}'s TLS data handshake failed: {reason_of(error)}"
        raise DataTlsFailed(_HANDSHAKE_FAILURE[side], text) from error
    metrics.tls_handshake(side, "data", "ok")


class DataTlsFailed(Exception):
    def __init__(self, reason: DataFailure, text: str) -> None:
        super().__init__(text)
        self.reason = reason


_HANDSHAKE_FAILURE = {"client": DataFailure.TLS_HANDSHAKE_CLIENT, "server": DataFailure.TLS_HANDSHAKE_SERVER}
