"""A small blocking FTP control client for the probe: send a command, read one whole reply.

Rules: every read is bounded by the caller's budget; replies are framed and parsed by alg.ftp.wire, never by
hand; what we keep of a reply is printable text (no CR/LF, no control bytes, at most MAX_SHOWN characters),
because it goes into the report. The PASS argument is never kept anywhere.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass

from alg.ftp.wire import LineFramer, Overlong, parse_reply_line

MAX_LINE_BYTES = 8192
MAX_REPLY_LINES = 200  # a FEAT or HELP reply is a few dozen lines
MAX_SHOWN = 120


class OutOfTime(Exception):
    """The total time limit ran out."""


class ControlClosed(Exception):
    """The server closed the control connection (or sent something that is no FTP reply)."""


class Budget:
    """A total deadline, and the per-wait bound under it."""

    def __init__(self, total_s: float, wait_s: float) -> None:
        self.wait_s = wait_s
        self._end = time.monotonic() + total_s

    def wait(self, longest: float | None = None) -> float:
        remaining = self._end - time.monotonic()
        if remaining <= 0:
            raise OutOfTime
        return max(0.01, min(remaining, self.wait_s if longest is None else longest))

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end


def printable(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[bytes, ...]  # raw lines, EOL included

    @property
    def last(self) -> bytes:
        return self.lines[-1]

    @property
    def text(self) -> str:
        """The reply as shown: its last line (the one carrying the final code)."""
        return printable(self.last)


class ControlConnection:
    def __init__(self, sock: socket.socket, budget: Budget) -> None:
        self.sock: socket.socket = sock
        self.budget = budget
        self._framer = LineFramer(MAX_LINE_BYTES)
        self._lines: deque[bytes] = deque()

    def close(self) -> None:
        self.sock.close()

    def send(self, line: str) -> None:
        self.sock.settimeout(self.budget.wait())
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def command(self, line: str, *, wait_s: float | None = None) -> Reply:
        self.send(line)
        return self.read_reply(wait_s=wait_s)

    def read_reply(self, *, wait_s: float | None = None) -> Reply:
        """One whole reply; RFC 959 4.2: a multi-line reply ends at a line with the same code and a space."""
        first = self._line(wait_s)
        head = parse_reply_line(first)
        if head.code is None:
            raise ControlClosed(f"not an FTP reply: {printable(first)}")
        lines = [first]
        while head.more and len(lines) < MAX_REPLY_LINES:
            line = self._line(wait_s)
            lines.append(line)
            parsed = parse_reply_line(line)
            if parsed.code == head.code and not parsed.more:
                break
        return Reply(head.code, tuple(lines))

    def _line(self, wait_s: float | None) -> bytes:
        while not self._lines:
            self.sock.settimeout(self.budget.wait(wait_s))
            data = self.sock.recv(65536)
            if not data:
                raise ControlClosed("the server closed the control connection")
            for item in self._framer.feed(data):
                if not isinstance(item, Overlong):
                    self._lines.append(item)
        return self._lines.popleft()

    def start_tls(self, context: ssl.SSLContext, hostname: str) -> None:
        # Nothing may be buffered past the 234: those bytes would be plaintext the TLS layer never sees.
        if self._lines or self._framer.pending:
            raise ControlClosed("the server sent more after 234")
        self.sock.settimeout(self.budget.wait())
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)

    @property
    def buffered(self) -> bool:
        """A reply (or TLS record) already read from the socket: select() would not see it."""
        return bool(self._lines) or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)

    @property
    def tls_session(self) -> ssl.SSLSession | None:
        return self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
