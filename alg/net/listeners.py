"""Control listeners that asyncio cannot make by itself: an IPv6 socket that also takes IPv4 clients, and the
implicit FTPS listeners, whose connections are accepted and made TLS on the bare socket.

Rules: asyncio's start_server sets IPV6_V6ONLY on every IPv6 socket; a dual-stack listener is bound here and
handed over as `sock=`. IPv4 clients then arrive as ::ffff:a.b.c.d, which peer_ip() turns back into IPv4.
"""

from __future__ import annotations

import socket

from alg.ftp.addresses import HostPort


def listening_socket(
    address: HostPort, *, reuse_port: bool, dual_stack: bool = False, backlog: int = 1024
) -> socket.socket:
    """A non-blocking listening TCP socket on `address`; dual_stack (IPv6 only): IPv4-mapped clients too."""
    family = socket.AF_INET6 if address.ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind((str(address.ip), address.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
