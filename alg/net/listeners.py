"""Control listeners that asyncio cannot make by itself: an IPv6 socket that also takes IPv4 clients.

Rules: asyncio's start_server sets IPV6_V6ONLY on every IPv6 socket; a dual-stack listener is bound here and
handed over as `sock=`. IPv4 clients then arrive as ::ffff:a.b.c.d, which peer_ip() turns back into IPv4.
"""

from __future__ import annotations

import socket

from alg.ftp.addresses import HostPort


def dual_stack_socket(address: HostPort, *, reuse_port: bool, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on IPv6 `address` that accepts IPv4-mapped clients as well."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((str(address.ip), address.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
