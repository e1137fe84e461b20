"""The defender's state shared by the workers of one gateway: each worker tells the others what it scored.

Rules: one unix datagram socket per worker in the abstract namespace, named after the parent process and the
worker's index, so no file and no change to the parent is needed; sends never wait (a full peer drops the
message and counts a fault); a message is taken only from a sibling's socket name with our own user id (the
kernel's SO_PASSCRED), so another local user cannot ban or unban anyone. A worker that starts (or restarts)
says hello and its siblings answer with the bans they hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import struct
from typing import Any

from alg.gateway.guard_wire import Hearer, ban_message, hear, offence_message, unban_message, user_message
from alg.ops.defender import Ban, Offence
from alg.ops.logs import fields
from alg.ops.metrics import Metrics

log = logging.getLogger("ftp_alg.defender")

MAX_MESSAGE_BYTES = 2048  # a ban is about 150 bytes of JSON
_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


def socket_name(group: int, index: int) -> bytes:
    return f"\0ftp-alg-defender-{group}-{index}".encode()


class WorkerMesh:
    """A Store (alg.gateway.guard) over the sibling workers' sockets."""

    def __init__(self, index: int, count: int, metrics: Metrics, group: int | None = None) -> None:
        self.index = index
        self.count = count
        self.group = os.getppid() if group is None else group  # the supervising parent
        self._faults = metrics.defender_store_faults.labels("workers")
        self._sender = re.compile(re.escape(f"\0ftp-alg-defender-{self.group}-".encode()) + rb"(\d{1,4})")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(socket_name(self.group, index))
        self._sock.setblocking(False)
        self._guard: Hearer | None = None

    # ---- Store: what this worker tells ----------------------------------------------------------------------

    def offence(self, client: str, offence: Offence, at: float) -> None:
        self._tell(offence_message(client, offence, at))

    def login_failed(self, user: str, at: float) -> None:
        self._tell(user_message(user, at))

    def banned(self, ban: Ban) -> None:
        self._tell(ban_message(ban))

    def unbanned(self, client: str) -> None:
        self._tell(unban_message(client))

    def _tell(self, message: dict[str, Any], only: int | None = None) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        for other in range(self.count) if only is None else (only,):
            if other == self.index:
                continue
            try:
                self._sock.sendto(data, socket_name(self.group, other))
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # that worker is restarting: it says hello when it is back
            except OSError:  # BlockingIOError above all: its queue is full
                self._faults.inc()

    # ---- what the siblings tell ------------------------------------------------------------------------------

    async def run(self, guard: Hearer) -> None:
        self._guard = guard
        loop = asyncio.get_running_loop()
        loop.add_reader(self._sock.fileno(), self._readable)
        try:
            self._tell({"t": "hello"})
            await asyncio.Event().wait()  # until cancelled with the guard
        finally:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _readable(self) -> None:
        for _ in range(64):  # a bounded batch per wake-up; the loop calls again while more is queued
            try:
                data, ancillary, _, sender = self._sock.recvmsg(MAX_MESSAGE_BYTES, socket.CMSG_SPACE(_CREDENTIALS.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._faults.inc()
                return
            index = self._sibling(sender, ancillary)
            if index is not None:
                self._heard(data, index)

    def _sibling(self, sender: object, ancillary: list[tuple[int, int, bytes]]) -> int | None:
        """The sending worker's index; None for anyone who is not a sibling of ours."""
        match = self._sender.fullmatch(sender) if isinstance(sender, bytes) else None
        uid = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(value) >= _CREDENTIALS.size:
                uid = _CREDENTIALS.unpack_from(value)[1]
        if match is None or uid != os.getuid() or not 0 <= int(match.group(1)) < self.count:
            return None
        return int(match.group(1))

    def _heard(self, data: bytes, sender: int) -> None:
        guard = self._guard
        assert guard is not None
        try:
            message = json.loads(data)
            if message["t"] == "hello":
                for ban in guard.bans():
                    self._tell(ban_message(ban), only=sender)
            elif not hear(guard, message):
                raise ValueError(f"unknown message {message['t']!r}")
        except (ValueError, KeyError, TypeError):
            self._faults.inc()
            log.warning("defender: a malformed message was dropped", extra=fields(worker=sender))
