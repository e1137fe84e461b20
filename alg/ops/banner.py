"""Is an FTP server there: its 220 greeting read to the end, shared by /readyz and the upstream health checks.

Rules: every wait bounded (the caller's timeout; a bounded number of bounded lines); QUIT after a 220; any
failure comes back as a reason in words, never as an exception (cancellation aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from typing import Protocol

from alg.ftp.addresses import HostPort
from alg.net import proxyproto
from alg.net.tls import reason_of
from alg.ops.logs import printable

MAX_BANNER_LINES = 100
MAX_BANNER_LINE_BYTES = 8 * 1024
# RFC 959 4.2: the last line of a reply is the code followed by a space (or by nothing at all).
_FINAL_REPLY = re.compile(rb"([0-9]{3})(?: |\r?\n|$)")


class BannerError(Exception):
    """The server did not greet with 220: the text says what it did instead ("answered 421 ...")."""


class _Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...


async def read_banner(reader: asyncio.StreamReader) -> bytes:
    """The server's whole greeting (multi-line, and a 120 before it, included) when it is a 220."""
    seen = b""
    for _ in range(MAX_BANNER_LINES):
        try:
            line = await reader.readline()
        except ValueError:  # StreamReader.readline past its limit
            raise BannerError("sent an overlong banner line") from None
        if not line.endswith(b"\n"):
            raise BannerError("closed the connection before its 220 banner")
        seen += line
        match = _FINAL_REPLY.match(line)
        if match is None:
            continue  # a line inside a multi-line reply (220-...)
        code = int(match.group(1))
        if code == 120:  # RFC 959: "service ready in nnn minutes"; 220 follows
            continue
        if code != 220:
            raise BannerError(f"answered {printable(line.rstrip(), 120)}")
        return seen
    raise BannerError("sent a banner that does not end")


async def check_greeting(reader: asyncio.StreamReader, writer: _Writer) -> str | None:
    """None after a 220 (and our QUIT); else what the server did instead."""
    try:
        await read_banner(reader)
    except BannerError as error:
        return str(error)
    writer.write(b"QUIT\r\n")
    with contextlib.suppress(OSError):
        await writer.drain()
    return None


async def probe(
    address: HostPort,
    timeout_s: float,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
    proxy_version: int | None = None,
) -> str | None:
    """None when `address` greets with 220 within `timeout_s`; else why not. `tls`: implicit FTPS (the banner
    comes inside TLS; a certificate the gateway would refuse is a reason). `proxy_version`: a PROXY protocol
    LOCAL header first, as the upstream expects one on every connection."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(str(address.ip), address.port, limit=MAX_BANNER_LINE_BYTES)
            try:
                if proxy_version is not None:
                    writer.write(proxyproto.encode(proxy_version, None, None))  # LOCAL: our own connection
                if tls is not None:
                    name = server_name or getattr(address, "server_name", None) or str(address.ip)  # NamedAddress
                    await writer.start_tls(tls, server_hostname=name)
                reason = await check_greeting(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except TimeoutError:
        return f"no 220 banner from {address} within {timeout_s:g} s"
    except ssl.SSLError as error:
        return f"TLS to {address} failed: {reason_of(error)}"
    except OSError as error:
        return f"cannot connect to {address}: {error.strerror or error}"
    return None if reason is None else f"{address} {reason}"
