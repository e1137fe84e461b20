"""FTP control-channel framing: bytes to lines, lines to commands and reply lines.

Rules: the same lines come out however TCP splits the stream; every buffer is bounded; the bytes of a line are
kept exactly as received, except that a framer asked to (the client side) consumes Telnet commands (IAC IP,
IAC DM, option negotiation) so that ABOR's synch never glues onto or splits a command; IAC IAC stays as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IAC = 0xFF
IP = 0xF4  # Telnet Interrupt Process (RFC 854)
DM = 0xF2  # Telnet Data Mark: the byte the urgent pointer marks in a synch (RFC 854)
# Telnet commands that take an option byte (WILL, WONT, DO, DONT); the rest are two bytes long.
_IAC_WITH_OPTION = frozenset((0xFB, 0xFC, 0xFD, 0xFE))

# RFC 959 4.1.3 and RFC 854, as BSD ftp sends it: IP, then the synch (IAC DM, urgent on the DM), then ABOR.
ABORT_BEFORE_URGENT = bytes((IAC, IP, IAC))
ABORT_URGENT = bytes((DM,))
ABORT_COMMAND = b"ABOR\r\n"


class TelnetFilter:
    """Consumes Telnet commands from a byte stream (RFC 854), whatever the chunking; IAC IAC passes unchanged.

    Holds at most two bytes of an unfinished sequence between feeds. Counts the interrupts and synchs seen."""

    def __init__(self) -> None:
        self._held = b""
        self.interrupts = 0  # IAC IP
        self.synchs = 0  # IAC DM

    def feed(self, data: bytes) -> bytes:
        if self._held:
            data, self._held = self._held + data, b""
        if IAC not in data:
            return data
        out = bytearray()
        i = 0
        while i < len(data):
            byte = data[i]
            if byte != IAC:
                end = data.find(bytes((IAC,)), i)
                end = len(data) if end < 0 else end
                out += data[i:end]
                i = end
                continue
            if i + 1 >= len(data):
                self._held = data[i:]
                break
            command = data[i + 1]
            if command == IAC:
                out += b"\xff\xff"
                i += 2
            elif command in _IAC_WITH_OPTION:
                if i + 2 >= len(data):
                    self._held = data[i:]
                    break
                i += 3
            else:
                self.interrupts += command == IP
                self.synchs += command == DM
                i += 2
        return bytes(out)


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line that passed the limit; its bytes were dropped up to the next LF."""

    size: int


class LineFramer:
    """Splits a byte stream into lines ending in LF (CRLF or bare LF, RFC 959 asks CRLF; clients send both).

    A line longer than max_line_bytes is dropped, reported once as Overlong, and framing resumes after its LF,
    so one bad line costs the peer one refusal, not the session.
    """

    def __init__(self, max_line_bytes: int, *, telnet: TelnetFilter | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self.telnet = telnet
        self._buffer = bytearray()
        self._discarding = 0  # bytes of an overlong line dropped so far

    def feed(self, data: bytes) -> list[bytes | Overlong]:
        if self.telnet is not None:
            data = self.telnet.feed(data)
        out: list[bytes | Overlong] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            if end < 0:
                self._absorb(data[start:])
                break
            piece = data[start : end + 1]
            start = end + 1
            if self._discarding:
                out.append(Overlong(self._discarding + len(piece)))
                self._discarding = 0
            elif len(self._buffer) + len(piece) > self.max_line_bytes:
                out.append(Overlong(len(self._buffer) + len(piece)))
                self._buffer.clear()
            elif self._buffer:
                self._buffer += piece
                out.append(bytes(self._buffer))
                self._buffer.clear()
            else:
                out.append(piece)
        return out

    def _absorb(self, tail: bytes) -> None:
        if self._discarding:
            self._discarding += len(tail)
        elif len(self._buffer) + len(tail) > self.max_line_bytes:
            self._discarding = len(self._buffer) + len(tail)
            self._buffer.clear()
        else:
            self._buffer += tail

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held (or being dropped)."""
        return len(self._buffer) or self._discarding


def strip_telnet(line: bytes) -> bytes:
    """The line without Telnet sequences (RFC 854), for parsing only; IAC IAC stands for one 0xFF byte."""
    if IAC not in line:
        return line
    out = bytearray()
    i = 0
    while i < len(line):
        byte = line[i]
        if byte != IAC:
            out.append(byte)
            i += 1
        elif i + 1 < len(line) and line[i + 1] == IAC:
            out.append(IAC)
            i += 2
        elif i + 1 < len(line) and line[i + 1] in _IAC_WITH_OPTION:
            i += 3
        else:
            i += 2
    return bytes(out)


def _trim_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


# A verb is letters (and '@' for the odd P@SW); RFC 959 says 3 or 4, extensions use more, so allow a few.
_COMMAND = re.compile(rb"([A-Za-z@]{1,16})(?: (.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Command:
    """A client command. `raw` is the line as received; `verb` is upper-case ASCII; `argument` has no EOL."""

    raw: bytes
    verb: str
    argument: bytes


def parse_command(line: bytes) -> Command | None:
    """The command in a client line, or None when the line has no recognisable verb."""
    text = _trim_eol(strip_telnet(line)).lstrip(b" ")
    match = _COMMAND.fullmatch(text)
    if match is None:
        return None
    verb = match.group(1).decode("ascii").upper()
    return Command(raw=line, verb=verb, argument=match.group(2) or b"")


_REPLY = re.compile(rb"([1-5][0-9][0-9])([ -])")


@dataclass(frozen=True, slots=True)
class ReplyLine:
    """One line of a server reply. `code` is None for a line inside a multi-line reply that carries none."""

    raw: bytes
    code: int | None
    more: bool  # "123-": a multi-line reply starts (or a continuation line repeats the code with '-')


def parse_reply_line(line: bytes) -> ReplyLine:
    match = _REPLY.match(line)
    if match is None:
        return ReplyLine(raw=line, code=None, more=False)
    return ReplyLine(raw=line, code=int(match.group(1)), more=match.group(2) == b"-")


def reply(code: int, text: str) -> bytes:
    """A one-line reply of our own. Text is ASCII we wrote; CR/LF cannot slip in."""
    safe = text.replace("\r", " ").replace("\n", " ")
    return f"{code} {safe}\r\n".encode("ascii", "replace")
