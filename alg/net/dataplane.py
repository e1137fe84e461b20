"""Data connections: a port pool, and one-shot listeners that accept only the expected peer (the relay: alg.net.relay).

Rules: a listener lives until it accepts the expected peer or its timeout, then closes and frees its port; a
connection from anyone else is closed at once and counted; every socket opened here is closed here.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address

from alg.errors import DataChannelError
from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.reasons import DataFailure
from alg.net.relay import RelayResult, relay

__all__ = ["Listener", "PortPool", "RelayResult", "accept_from", "connect_from", "open_listener", "peer_ip", "relay"]


class PortPool:
    """Ports the gateway may listen on, handed out round-robin so a port rests before it is used again."""

    def __init__(self, ports: Iterable[int]) -> None:
        self._free: deque[int] = deque(ports)
        self.size = len(self._free)
        self._taken: set[int] = set()

    @property
    def in_use(self) -> int:
        return len(self._taken)

    def take(self) -> int | None:
        if not self._free:
            return None
        port = self._free.popleft()
        self._taken.add(port)
        return port

    def give_back(self, port: int) -> None:
        if port in self._taken:
            self._taken.remove(port)
            self._free.append(port)


# Sockets created non-blocking where the platform can (Linux): one system call fewer per data socket.
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)


def _family(ip: IPAddress) -> socket.AddressFamily:
    return socket.AF_INET6 if isinstance(ip, IPv6Address) else socket.AF_INET


def peer_ip(address: tuple[str, int] | tuple[str, int, int, int]) -> IPAddress:
    """The peer's IP from a socket address; IPv4-mapped IPv6 (dual-stack sockets) becomes IPv4."""
    ip = ip_address(address[0].split("%", 1)[0])
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(slots=True)
class Listener:
    sock: socket.socket
    address: HostPort
    _release: Callable[[], None]

    def close(self) -> None:
        self.sock.close()
        self._release()


def open_listener(ip: IPAddress, pool: PortPool | None) -> Listener:
    """Bind a one-shot listener on `ip`, on a port from `pool` (or any free port when pool is None)."""
    attempts = min(pool.size, 64) if pool is not None else 1
    last_error: OSError | None = None
    for _ in range(attempts):
        port = 0
        if pool is not None:
            taken = pool.take()
            if taken is None:
                raise DataChannelError("no free data port in the range", reason=DataFailure.PORT_POOL_EXHAUSTED)
            port = taken
        sock = socket.socket(_family(ip), socket.SOCK_STREAM | _NONBLOCK)  # no ioctl to set it afterwards
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(ip), port))
            sock.listen(4)
            if not _NONBLOCK:
                sock.setblocking(False)
        except OSError as error:
            sock.close()
            if pool is not None:
                pool.give_back(port)
            last_error = error
            if error.errno == errno.EADDRINUSE:
                continue  # another program holds this port: try the next one
            raise DataChannelError(
                f"cannot listen on {ip}: {error.strerror}", reason=DataFailure.LISTEN_FAILED
            ) from error
        bound = port or sock.getsockname()[1]  # a port from the pool is the one bound

        def release(port: int = port) -> None:
            if pool is not None:
                pool.give_back(port)

        return Listener(sock, HostPort(ip, bound), release)
    detail = last_error.strerror if last_error else "busy"
    raise DataChannelError(f"no data port could be bound on {ip}: {detail}", reason=DataFailure.PORT_POOL_EXHAUSTED)


async def accept_from(
    listener: Listener,
    expected: IPAddress,
    on_stranger: Callable[[IPAddress], None],
    *,
    also: tuple[IPv4Network | IPv6Network, ...] = (),
) -> socket.socket:
    """The first connection from `expected` (or from a network in `also`); anyone else is closed at once
    (data-port theft)."""
    loop = asyncio.get_running_loop()
    while True:
        conn, address = await loop.sock_accept(listener.sock)
        peer = peer_ip(address)
        if peer == expected or any(peer in network for network in also):
            conn.setblocking(False)
            return conn
        conn.close()
        on_stranger(peer_ip(address))


async def connect_from(source: IPAddress | None, target: HostPort) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(_family(target.ip), socket.SOCK_STREAM | _NONBLOCK)
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        if source is not None and _family(source) == _family(target.ip):
            # vsftpd and others refuse data from another address than the control peer's.
            sock.bind((str(source), 0))
        await _connect(loop, sock, (str(target.ip), target.port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple[str, int]) -> None:
    """loop.sock_connect for a numeric address. uvloop's resolves every address in its thread pool, even
    numeric ones: a thread hop and one more event loop turn per data connection, before the 227 can go out."""
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):
        pass  # EINPROGRESS: wait until the socket is writable, then read the outcome
    ready = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, _resolve, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))  # OSError picks the subclass: ConnectionRefusedError, ...


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
