"""A server's multi-line reply in progress (RFC 959 4.2): each continuation line passed on at once, dropped, or
kept until the last line decides.

Rules: pure; bounded (a kept reply longer than its limit is passed on, a suppressed one cut short, a FEAT
list longer than 256 lines is not a feature list); the control channel decides at the first line which of the
four a reply gets and acts on the whole reply at its last line.
"""

from __future__ import annotations

from enum import Enum

MAX_FEATURES = 256


class Handling(Enum):
    PASS = "pass"  # continuation lines go to the client as they come
    SUPPRESS = "suppress"  # a 227/229 that may name the internal address: never forwarded, kept to be read
    FEAT = "feat"  # collected, rewritten once complete (alg.ftp.tls.rewrite_feat)
    KEEP = "keep"  # a transfer's final reply: not before its data, so kept whole until its last line


class MultilineReply:
    def __init__(self, max_kept_bytes: int) -> None:
        self.code: int | None = None  # of the reply in progress; None: none is
        self._handling = Handling.PASS
        self._lines: list[bytes] = []
        self._kept_bytes = 0
        self._max_kept_bytes = max_kept_bytes

    def start(self, code: int, line: bytes, handling: Handling) -> bytes:
        """The first line; returns what goes to the client now."""
        self.code, self._handling, self._kept_bytes = code, handling, 0
        self._lines = [] if handling is Handling.PASS else [line]
        return line if handling is Handling.PASS else b""

    def continuation(self, line: bytes) -> bytes:
        """A line before the last; returns what goes to the client now."""
        if self._handling is Handling.SUPPRESS:
            if self._kept_bytes + len(line) <= self._max_kept_bytes:
                self._lines.append(line)  # the numbers may stand in any line; past the limit, none are read
                self._kept_bytes += len(line)
            return b""
        if self._handling is Handling.PASS:
            return line
        if self._handling is Handling.FEAT:
            if len(self._lines) < MAX_FEATURES:
                self._lines.append(line)
                return b""
            return self._give_up(line)
        self._lines.append(line)
        self._kept_bytes += len(line)
        if self._kept_bytes > self._max_kept_bytes:
            return self._give_up(b"")  # too long to keep: passed on; only its last line will wait for the data
        return b""

    def end(self, line: bytes) -> tuple[Handling, list[bytes]]:
        """The last line: how the reply was handled and its lines still held, the last one included."""
        handling, lines = self._handling, [*self._lines, line]
        self.code, self._handling, self._lines = None, Handling.PASS, []
        return handling, lines

    def _give_up(self, line: bytes) -> bytes:
        held, self._lines, self._handling = self._lines, [], Handling.PASS
        return b"".join(held) + line
