"""The byte relay of a data connection: both directions copied until both end, zero-copy where Linux allows.

Rules: one state machine for every path, so byte counts, half-close (shutdown SHUT_WR once a direction has
delivered its last byte), the end-of-file reports, the idle timeout and errors are the same whichever mover
carries the bytes: `splice` (socket -> pipe -> socket, os.splice, no copy through Python) or `asyncio`
(recv_into / send through a buffer). Both are driven by the event loop's readiness callbacks, never threads.
Sockets stay open for the caller; pipes are closed here, always.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

RelayMode = Literal["splice", "asyncio"]
RELAY_ENV = "FTP_ALG_RELAY"  # splice | asyncio | auto (unset: auto)

# A 1 MiB pipe lets one splice call carry what a fast socket has queued (measured: bench/README.md).
PIPE_BYTES = 1024 * 1024
COPY_BUFFER_BYTES = 256 * 1024
# A direction copies its first bytes and splices only past this: a small file or a bare end of file then
# costs no pipe (pipe2, fcntl, two closes), which shows when a session fetches thousands of small files.
SPLICE_AFTER_BYTES = 64 * 1024
FIRST_BUFFER_BYTES = 64 * 1024  # grown to COPY_BUFFER_BYTES once a read fills it
# Bytes one direction may move per wake-up before it lets other connections run.
TURN_BYTES = 8 * 1024 * 1024

# Never SPLICE_F_MORE toward a socket: it corks small writes and delays the peer's replies.
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# What splice answers for a file it cannot splice (another socket type, an old kernel).
_NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


@dataclass(slots=True)
class RelayResult:
    to_b: int = 0  # bytes from a to b
    to_a: int = 0
    idle_timeout: bool = False


def splice_available() -> bool:
    return hasattr(os, "splice")


def relay_mode(requested: str | None = None) -> RelayMode:
    """The mover to use: `requested`, else $FTP_ALG_RELAY, else splice where the kernel has it."""
    wanted = (requested or os.environ.get(RELAY_ENV) or "auto").strip().lower()
    if wanted not in ("auto", "splice", "asyncio"):
        raise ValueError(f"{RELAY_ENV} must be splice, asyncio or auto, got {wanted!r}")
    if wanted == "asyncio" or not splice_available():
        return "asyncio"
    return "splice"


async def relay(
    a: socket.socket,
    b: socket.socket,
    *,
    idle_timeout_s: float,
    on_eof: Callable[[bool], None],
    result: RelayResult | None = None,
    mode: RelayMode | None = None,
) -> RelayResult:
    """Copy bytes both ways until both directions end; half-close is passed on (shutdown SHUT_WR).

    on_eof(forward) runs once for each direction that delivered all its bytes and its end of file (forward:
    a to b), which is when a transfer's 226 may go on to the client if it is the transfer's direction. A
    direction that failed never reports: a client that drops a download has not received it.
    Raises TimeoutError (result.idle_timeout set) when no byte moved for idle_timeout_s, and ConnectionError
    or OSError when a socket fails. Sockets must be non-blocking; they are left open for the caller. Pass
    `result` to read the counts while the relay runs and after it fails. `mode` overrides relay_mode().
    """
    loop = asyncio.get_running_loop()
    state = _Relay(loop, idle_timeout_s, on_eof, result if result is not None else RelayResult())
    splice = relay_mode(mode) == "splice"
    directions = (
        _Direction(state, a, b, forward=True, splice=splice),
        _Direction(state, b, a, forward=False, splice=splice),
    )
    state.open = 2
    try:
        for direction in directions:
            direction.step()
        state.arm_watchdog()
        await state.finished
    finally:
        for direction in directions:
            direction.stop()
        state.stop()
    return state.result


class _Relay:
    """What both directions share: the result, the end-of-file reports, the idle watchdog, the outcome."""

    __slots__ = (
        "_on_eof",
        "finished",
        "idle_timeout_s",
        "last_activity",
        "loop",
        "open",
        "result",
        "timer",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle_timeout_s: float,
        on_eof: Callable[[bool], None],
        result: RelayResult,
    ) -> None:
        self.loop = loop
        self.idle_timeout_s = idle_timeout_s
        self._on_eof = on_eof
        self.result = result
        self.finished: asyncio.Future[None] = loop.create_future()
        self.last_activity = loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.open = 0

    def direction_done(self, forward: bool) -> None:
        self.open -= 1
        self._on_eof(forward)
        if self.open == 0 and not self.finished.done():
            self.finished.set_result(None)

    def fail(self, error: BaseException) -> None:
        if not self.finished.done():
            self.finished.set_exception(error)

    def arm_watchdog(self) -> None:
        if not self.finished.done():
            self.timer = self.loop.call_at(self.last_activity + self.idle_timeout_s, self._watchdog)

    def _watchdog(self) -> None:
        self.timer = None
        if self.loop.time() >= self.last_activity + self.idle_timeout_s:
            self.result.idle_timeout = True
            self.fail(TimeoutError("data connection idle"))
        else:
            self.arm_watchdog()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


_IDLE, _READING, _WRITING = 0, 1, 2


class _Direction:
    """One direction, src -> dst: read while the buffer is empty, write until it is, then wait for readiness.

    The buffer is a pipe (splice) or a bytearray (asyncio); either way at most one wait is registered."""

    __slots__ = (
        "buffer",
        "done",
        "dst",
        "dst_fd",
        "eof",
        "forward",
        "offset",
        "pending",
        "pipe_r",
        "pipe_w",
        "relay",
        "splice",
        "spliced",
        "src",
        "src_fd",
        "total",
        "waiting",
    )

    def __init__(self, relay: _Relay, src: socket.socket, dst: socket.socket, *, forward: bool, splice: bool) -> None:
        self.relay = relay
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.forward = forward
        self.splice = splice  # may splice (past SPLICE_AFTER_BYTES)
        self.spliced = False  # the pending bytes are in the pipe, not in the copy buffer
        self.total = 0
        self.pipe_r = self.pipe_w = -1
        self.buffer: memoryview | None = None
        self.pending = 0  # bytes read from src, not yet written to dst
        self.offset = 0  # where they start in the copy buffer
        self.eof = False
        self.done = False
        self.waiting = _IDLE

    # ---- the state machine -----------------------------------------------------------------------------------

    def step(self) -> None:
        """Move bytes until src has none, dst takes no more, or the turn is over; then wait for readiness."""
        relay = self.relay
        if self.done or relay.finished.done():
            return
        moved = 0
        try:
            while True:
                if self.pending:
                    written = self._write()
                    if written is None:
                        self._wait(_WRITING)
                        break
                    self.pending -= written
                    moved += written
                    continue
                if self.eof:
                    self._account(moved)  # counts are final before the end-of-file report
                    moved = 0
                    self._finish()
                    break
                if moved >= TURN_BYTES:
                    self._wait(_READING)  # level-triggered: we are called again at once if more is queued
                    break
                read = self._read()
                if read is None:
                    self._wait(_READING)
                    break
                if read == 0:
                    self.eof = True
                self.pending = read
        except Exception as error:  # a socket failed (OSError), or on_eof did: the caller sees it
            self._wait(_IDLE)
            relay.fail(error)
        finally:
            self._account(moved)

    def _account(self, moved: int) -> None:
        if moved:
            relay = self.relay
            relay.last_activity = relay.loop.time()
            if self.forward:
                relay.result.to_b += moved
            else:
                relay.result.to_a += moved

    def _finish(self) -> None:
        self._wait(_IDLE)
        self.done = True
        self._close_pipe()
        with contextlib.suppress(OSError):  # the peer may be gone already; the other direction will say so
            self.dst.shutdown(socket.SHUT_WR)
        self.relay.direction_done(self.forward)

    def _wait(self, what: int) -> None:
        if what == self.waiting:
            return
        loop = self.relay.loop
        if self.waiting == _READING:
            loop.remove_reader(self.src_fd)
        elif self.waiting == _WRITING:
            loop.remove_writer(self.dst_fd)
        self.waiting = what
        if what == _READING:
            loop.add_reader(self.src_fd, self.step)
        elif what == _WRITING:
            loop.add_writer(self.dst_fd, self.step)

    # ---- the movers: bytes read or written, None when the socket would block ---------------------------------

    def _read(self) -> int | None:
        """Called only when nothing is pending, so the mover may change here."""
        if self.splice and (self.pipe_r >= 0 or self.total >= SPLICE_AFTER_BYTES):
            if self.pipe_r < 0 and not self._open_pipe():
                return self._read()
            try:
                read = os.splice(self.src_fd, self.pipe_w, PIPE_BYTES, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return None
            except OSError as error:
                if error.errno not in _NO_SPLICE:
                    raise
                self._close_pipe()  # the pipe is empty here: nothing is lost by copying from now on
                self.splice = False
                return self._read()
            self.spliced = True
            self.buffer = None  # the copy buffer of the first bytes is not needed any more
            self.total += read
            return read
        buffer = self.buffer
        if buffer is None or (self.offset == len(buffer) and len(buffer) < COPY_BUFFER_BYTES):
            buffer = self.buffer = memoryview(bytearray(FIRST_BUFFER_BYTES if buffer is None else COPY_BUFFER_BYTES))
        try:
            read = self.src.recv_into(buffer)
        except BlockingIOError:
            return None
        self.spliced = False
        self.offset = 0
        self.total += read
        return read

    def _write(self) -> int | None:
        try:
            if self.spliced:
                return os.splice(self.pipe_r, self.dst_fd, self.pending, flags=_SPLICE_FLAGS)
            assert self.buffer is not None
            sent = self.dst.send(self.buffer[self.offset : self.offset + self.pending])
        except BlockingIOError:
            return None
        self.offset += sent
        return sent

    # ---- pipes -----------------------------------------------------------------------------------------------

    def _open_pipe(self) -> bool:
        """Open this direction's pipe; False (and copy from now on) when the system has no more pipes."""
        try:
            self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            if error.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self.splice = False
            return False
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size for this user: keep the default
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, PIPE_BYTES)
        return True

    def _close_pipe(self) -> None:
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                os.close(fd)
        self.pipe_r = self.pipe_w = -1

    def stop(self) -> None:
        self._wait(_IDLE)
        self._close_pipe()
