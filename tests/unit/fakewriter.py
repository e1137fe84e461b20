"""A stand-in for an asyncio.StreamWriter that keeps what was written: for the HTTP listener's tests, which read
the response bytes whole."""

from __future__ import annotations


class FakeWriter:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass
