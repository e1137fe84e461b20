"""With `workers: N`, one worker's admin endpoint answers for the whole gateway: /sessions gathers every
worker's sessions, and ending a session another worker holds is passed on to that worker. Worker i serves
admin.listen's port + i (alg.gateway.workers.worker_settings), so each knows where the others are.

Rules: asks the other workers only (over the admin address, with the same token), one request each, bounded in
time; a worker that does not answer is named in the answer, never waited for beyond PEER_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from alg.ftp.addresses import HostPort

PEER_TIMEOUT_S = 3.0
MAX_BODY_BYTES = 16 * 1024 * 1024


def peer_addresses(listen: HostPort | None, worker: int, workers: int) -> dict[int, HostPort]:
    """The admin addresses of the other workers (none when the port is chosen by the kernel, port 0)."""
    if listen is None or listen.port == 0 or workers < 2:
        return {}
    ip = listen.ip
    if ip.is_unspecified:  # listening everywhere: ask over loopback
        ip = IPv6Address("::1") if isinstance(ip, IPv6Address) else IPv4Address("127.0.0.1")
    base = listen.port - worker
    return {index: HostPort(ip, base + index) for index in range(workers) if index != worker}


@dataclass(frozen=True, slots=True)
class Peers:
    """This worker's index and the other workers' admin listeners."""

    worker: int
    workers: int
    addresses: dict[int, HostPort] = field(default_factory=dict)
    token: str | None = None

    async def sessions(self) -> tuple[list[dict[str, Any]], list[int]]:
        """Every other worker's sessions, and the workers that did not answer."""
        indexes = sorted(self.addresses)
        answers = await asyncio.gather(*(self.ask(index, "GET", "/sessions?scope=worker") for index in indexes))
        found: list[dict[str, Any]] = []
        silent = []
        for index, (status, body) in zip(indexes, answers, strict=True):
            try:
                listed = json.loads(body)["sessions"] if status == 200 else None
            except (ValueError, KeyError, TypeError):
                listed = None
            if isinstance(listed, list):
                found.extend(item for item in listed if isinstance(item, dict))
            else:
                silent.append(index)
        return found, silent

    async def ask(self, index: int, method: str, target: str) -> tuple[int, bytes]:
        """One request to worker `index`'s admin listener: (status, body); status 0 when it did not answer."""
        address = self.addresses.get(index)
        if address is None:
            return 0, b""
        with contextlib.suppress(OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            async with asyncio.timeout(PEER_TIMEOUT_S):
                return await _request(address, method, target, self.token)
        return 0, b""


async def _request(address: HostPort, method: str, target: str, token: str | None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(str(address.ip), address.port)
    try:
        head = [f"{method} {target} HTTP/1.1", f"Host: {address}", "Connection: close", "Content-Length: 0"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii"))
        await writer.drain()
        response = bytearray()
        while chunk := await reader.read(1 << 16):
            response += chunk
            if len(response) > MAX_BODY_BYTES:
                raise ValueError("answer too long")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status_line, _, rest = bytes(response).partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body
