"""The two control connections of a session, as the session holds them, and the small socket chores on them.

Rules: no FTP here; writes to a peer that is gone are dropped, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

from alg.ftp.addresses import HostPort
from alg.net.dataplane import peer_ip

READ_BYTES = 64 * 1024


@dataclass(slots=True)
class Peer:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: HostPort  # the other end
    ours: HostPort  # our end of this connection
    can_read: asyncio.Event = field(default_factory=asyncio.Event)


def ends(writer: asyncio.StreamWriter) -> tuple[HostPort, HostPort]:
    """(the other end, our end) of a connected stream."""
    return hostport(writer.get_extra_info("peername")), hostport(writer.get_extra_info("sockname"))


def hostport(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> HostPort:
    """A socket address as HostPort (an IPv4-mapped IPv6 address as IPv4)."""
    return HostPort(peer_ip(sockaddr), sockaddr[1])


def write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Queue bytes for a peer; a peer already gone takes none (uvloop raises RuntimeError where asyncio drops them)."""
    if not writer.transport.is_closing():
        writer.write(data)


def tune(writer: asyncio.StreamWriter, *, oob_inline: bool) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if oob_inline:
            # Clients send ABOR's Telnet sync as TCP urgent data (RFC 959 4.1.3); keep it in the stream.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
