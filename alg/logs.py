"""What may reach a log line from the network: escaped, bounded, and with secrets removed."""

from __future__ import annotations

import re

_PASS = re.compile(rb"^((?:\xff[\xf0-\xfe])*\s*PASS)( .*)?$", re.IGNORECASE | re.DOTALL)


def printable(data: bytes | str, limit: int = 200) -> str:
    """The text with CR, LF and every other control character escaped, cut at `limit` characters."""
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    out = []
    for char in text[:limit]:
        if char == "\\" or char.isprintable():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    if len(text) > limit:
        out.append("...")
    return "".join(out)


def redact(line: bytes) -> bytes:
    """A client line fit to log: the argument of PASS is replaced by ***."""
    stripped = line.rstrip(b"\r\n")
    match = _PASS.match(stripped)
    if match is None:
        return stripped
    return match.group(1) + (b" ***" if match.group(2) else b"")
