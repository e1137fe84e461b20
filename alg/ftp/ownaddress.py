"""The gateway's own address toward the server, kept out of what the client reads.

A server's status reply names its peer: vsftpd's STAT (no argument) says "Connected to 198.51.100.1", which
directly is the client's address and through the gateway is the gateway's internal one. The client's address is
written in its place, so that the reply reads as it would directly (docs/on-the-wire.md).

Rules: pure; only a whole address is replaced (198.51.100.1 never inside 198.51.100.10), as inet_ntop writes
it, IPv4-mapped or not.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address

IpAddress = IPv4Address | IPv6Address


def address_pattern(ours: IpAddress) -> re.Pattern[bytes]:
    """`ours` as text in a reply: not preceded or followed by another character of an address."""
    text = re.escape(str(ours).encode())
    if isinstance(ours, IPv4Address):  # ":port" may follow it, "::ffff:" precede it
        return re.compile(rb"(?<![0-9A-Za-z.:])(?:::ffff:)?" + text + rb"(?![0-9A-Za-z.])", re.IGNORECASE)
    return re.compile(rb"(?<![0-9A-Za-z.:])" + text + rb"(?![0-9A-Za-z.:])", re.IGNORECASE)


def hide_own_address(line: bytes, ours: re.Pattern[bytes], client: IpAddress) -> bytes:
    """`line` with each mention of the gateway's address (matched by `ours`) replaced by the client's."""
    return ours.sub(str(client).encode(), line)
