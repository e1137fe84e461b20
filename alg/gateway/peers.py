"""The two control connections of a session, as the session holds them, and the small socket chores on them.

Rules: no FTP here; writes to a peer that is gone are dropped, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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


def join_writes(parts: list[tuple[bytes, bool]]) -> tuple[bytes, bytes]:
    """Writes in a row as (the part whose last byte is marked urgent, the part behind it), to go out in one
    segment whatever order they were asked for in. No urgent part: (b"", everything)."""
    last = max((i for i, (_, urgent) in enumerate(parts) if urgent), default=-1)
    return b"".join(data for data, _ in parts[: last + 1]), b"".join(data for data, _ in parts[last + 1 :])


def write_urgent(writer: asyncio.StreamWriter, data: bytes, then: bytes = b"") -> tuple[int, int]:
    """Write `data` with its last byte marked urgent (MSG_OOB), then `then` in the same TCP segment; the bytes
    of each sent at once (the rest is queued as usual).

    BSD ftp sends IAC IP IAC, then DM alone as urgent data, then ABOR: three segments. Held back with MSG_MORE,
    the synch and the command arrive together, urgent pointer on DM, so a server that looks for the command
    when the urgent signal comes finds it there."""
    sock = writer.get_extra_info("socket")
    if sock is None or writer.transport.get_write_buffer_size() > 0:
        write(writer, data + then)  # the urgent mark cannot overtake queued bytes: send it plainly
        return 0, 0
    # The transport owns the socket; a duplicate descriptor lets us pass flags it has no API for.
    sent = sent_then = 0
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as raw:
            sent = raw.send(data, socket.MSG_OOB | (socket.MSG_MORE if then else 0))
            if sent == len(data) and then:
                sent_then = raw.send(then, socket.MSG_DONTWAIT)
    except OSError:
        pass
    rest = data[sent:] + then[sent_then:]
    if rest:
        write(writer, rest)
    return sent, sent_then
