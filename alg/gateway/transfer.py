"""One transfer as the shell tracks it (its data connection, its command, its bytes) and the words for how it ended.

Rules: plain records and constants, no behaviour; shared by the relay and the kernel data path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from alg.ops.metrics import ByteCounts

# An unexpected exception in a data task: counted in ftp_alg_internal_errors_total, not as a data failure.
INTERNAL_ERROR = "internal_error"

# Why a transfer failed, as the client's 426 (or 425, before the address was announced) says it.
FAILURE_TEXT = {
    "accept_timeout": "nobody connected to the data port in time",
    "connect_failed": "the other end of the data connection could not be reached",
    "connect_timeout": "the other end of the data connection did not answer in time",
    "tls_truncated": "the FTP server's TLS data stream ended without close_notify (truncated)",
    "reset": "the data connection broke before the transfer completed",
    "idle_timeout": "no data moved on the data connection for too long",
    "aborted": "the transfer was aborted",
    INTERNAL_ERROR: "the gateway failed (internal error)",
}


@dataclass(slots=True)
class Transfer:
    mode: str
    verb: str | None = None
    argument: bytes = b""
    reply_code: int | None = None
    task: asyncio.Task[None] | None = None
    connected: bool = False  # both legs up: counted in data_channels_opened once its verb is known
    counted: bool = False
    client_tls: bool = False  # PROT P on the client's leg
    server_tls: bool = False
    kernel_end: Callable[[], None] | None = None  # carried by the kernel: called at the transfer's final reply
    started: float = 0.0  # wall clock, once bytes may move (the live-sessions view shows it)
    moved: ByteCounts | None = None  # (download, upload) so far, while relaying
    # The transfer's own direction delivered its end of file: it is complete, its final reply may go on.
    delivered: bool = False
