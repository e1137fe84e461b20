"""Connecting a session upstream: through the route's failover (or to the one upstream), TLS toward the server
(implicit, or AUTH TLS as its FEAT allows) and its banner; the result is a connected Upstream or one
UpstreamFailed saying what the client's 421 says.

Rules: a function of the context and the session's facts, no session state; whatever fails becomes one
UpstreamFailed (a log line, the 421's text and the session's outcome), never a traceback; the 421 names no
address of the internal side (the log line does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass

from alg.ftp.addresses import HostPort
from alg.ftp.reasons import SessionOutcome
from alg.gateway import peers, secure
from alg.gateway.context import GatewayContext
from alg.gateway.frontdoor import Origin
from alg.gateway.upstreams import Route
from alg.net.tls import describe, reason_of
from alg.ops.logs import fields, printable


@dataclass(slots=True)
class Upstream:
    peer: peers.Peer
    address: HostPort  # the upstream connected (the route's choice)
    banner: bytes  # already read (by the route or the TLS negotiation); b"": still to come
    secured: bool = False  # the control connection toward the server is TLS
    private: bool = False  # PROT P toward the server is set up
    tls: str = "-"  # negotiated version/cipher, for the session's log line


class UpstreamFailed(Exception):
    """The upstream could not be reached or secured; str() is the client's 421 text."""

    def __init__(self, text: str, outcome: SessionOutcome) -> None:
        super().__init__(text)
        self.outcome = outcome


async def connect(
    context: GatewayContext,
    upstream: HostPort,
    route: Route | None,
    origin: Origin,
    log: logging.LoggerAdapter[logging.Logger],
) -> Upstream:
    started = time.monotonic()
    tls = context.tls
    try:
        reader, writer, banner, upstream = await _open(context, upstream, route, origin)
        if tls.upstream_mode == "implicit":
            await secure.start_upstream_tls(writer, tls, upstream, context.metrics)
    except secure.UpstreamTlsFailed as error:
        raise _tls_failed(str(error), upstream, log) from error
    except (OSError, TimeoutError) as error:
        log.warning("upstream unreachable", extra=fields(upstream=upstream, error=printable(str(error) or "timed out")))
        # The client is told why, never where: the address of the internal side stays in the log.
        text = f"Service not available: the FTP server cannot be reached ({_why(error)})."
        raise UpstreamFailed(text, SessionOutcome.UPSTREAM_UNREACHABLE) from error
    context.metrics.upstream_connect_seconds.observe(time.monotonic() - started)
    peers.tune(writer, oob_inline=False)
    address, ours = peers.ends(writer)
    connected = Upstream(peers.Peer(reader, writer, address, ours), upstream, banner)
    if tls.upstream_mode != "off":
        try:
            ready = await secure.negotiate_upstream(
                reader, writer, tls, upstream, context.metrics, context.timeouts.upstream_connect_s
            )
        except (secure.UpstreamTlsFailed, OSError, TimeoutError) as error:
            why = str(error) if isinstance(error, secure.UpstreamTlsFailed) else reason_of(error)
            raise _tls_failed(why, upstream, log) from error
        connected.banner, connected.secured, connected.private = ready.banner, ready.secured, ready.private
        if ready.secured:
            connected.tls = describe(writer.get_extra_info("ssl_object"))
            log.info("tls upstream", extra=fields(tls=connected.tls))
    return connected


async def _open(
    context: GatewayContext, upstream: HostPort, route: Route | None, origin: Origin
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes, HostPort]:
    """The TCP connection: each of the route's upstreams in turn, each try bounded by upstream_connect_s."""
    timeout_s = context.timeouts.upstream_connect_s
    if route is not None:
        # Under TLS the banner is read by the negotiation.
        greet = context.tls.upstream_mode == "off"
        reader, writer, banner = await route.connect(origin.client, origin.dialled, timeout_s, greet=greet)
        return reader, writer, banner, route.connected or upstream
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(str(upstream.ip), upstream.port, limit=peers.READ_BYTES)
    return reader, writer, b"", upstream


def _why(error: OSError | TimeoutError) -> str:
    """The reason without the address: asyncio's own text names it ("Connect call failed ('10.0.0.5', 21)")."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if error.errno is not None:
        return os.strerror(error.errno)
    return "connection failed"


def _tls_failed(why: str, upstream: HostPort, log: logging.LoggerAdapter[logging.Logger]) -> UpstreamFailed:
    log.warning("upstream tls failed", extra=fields(upstream=upstream, reason=printable(why)))
    text = f"Service not available: TLS to the FTP server failed ({_nameless(why)})."
    return UpstreamFailed(text, SessionOutcome.TLS_FAILED)


# OpenSSL's reason can name the server ("certificate is not valid for 'ftp.internal.example'") or its address:
# the client is told the kind of failure (expired, name mismatch, untrusted issuer), the log keeps the rest.
_QUOTED = re.compile(r"\s*(?:for|of|to|from)?\s*'[^']*'")
_ADDRESS = re.compile(
    r"\s*(?:for|of|to|from)?\s*\b(?:\d{1,3}\.){3}\d{1,3}\b|\s*(?:for|of|to|from)?\s*\b[0-9a-fA-F:]*::[0-9a-fA-F:]*\b"
)
_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)")


def _nameless(why: str) -> str:
    return _ADDRESS.sub("", _QUOTED.sub("", _SOURCE.sub("", why))).strip(" .") or "handshake failed"
