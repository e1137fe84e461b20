"""When the last byte of a transfer has reached its receiver: not when send() returned (the kernel may still hold
megabytes of it in the socket's send buffer), but once the receiver has acknowledged it.

Rules: socket facts only (SIOCOUTQ, SO_ERROR); there is no readiness event for "all acknowledged", so a watch
looks at the send queue every ACK_POLL_S until it is empty, and stops with its relay.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
from collections.abc import Callable

ACK_POLL_S = 0.02


def unacknowledged(sock: socket.socket) -> int:
    """Bytes written to `sock` that its peer has not acknowledged yet (SIOCOUTQ); 0 for a closed socket."""
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    count: int = struct.unpack("i", queued)[0]
    return count


def broken(sock: socket.socket) -> bool:
    """The peer reset the connection (an error is pending on the socket), or the socket is gone."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    except (OSError, ValueError):
        return True


class DeliveryWatch:
    """Calls `on_delivered` once every byte handed to the socket named by sent() was acknowledged."""

    def __init__(self, on_delivered: Callable[[], None]) -> None:
        self._on_delivered = on_delivered
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.delivered = False

    def sent(self, sock: socket.socket) -> None:
        """The transfer's last byte and its end of file were written to `sock`."""
        self._sock = sock
        self._check()

    def look_again(self) -> None:
        """Something happened on the connection (the receiver's own end of file): check now, not at the next tick."""
        if self._sock is not None and not self.delivered:
            self.stop()
            self._check()

    def settle(self) -> bool:
        """At the relay's end: delivered, now or before? Not when bytes are still unacknowledged or the peer reset."""
        self.stop()
        sock = self._sock
        if not self.delivered and sock is not None and unacknowledged(sock) == 0 and not broken(sock):
            self._deliver()
        return self.delivered

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self.delivered or self._sock is None:
            return
        if unacknowledged(self._sock) == 0:
            self._deliver()
        else:
            self._timer = asyncio.get_running_loop().call_later(ACK_POLL_S, self._check)

    def _deliver(self) -> None:
        self.delivered = True
        self._on_delivered()
