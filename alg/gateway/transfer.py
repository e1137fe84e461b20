"""One transfer as the shell tracks it (its data connection, its command, its bytes), what a data path is given
to carry it (DataJob), what it tells while carrying it (TransferEvents) and how it ended (Ended).

Rules: plain records, one small interface and constants, no behaviour; shared by the data channels and the two
data paths (alg.gateway.relaypath, alg.gateway.kerneldata), which import nothing of each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.reasons import DataFailure
from alg.net.dataplane import Listener
from alg.ops.metrics import ByteCounts

# An unexpected exception in a data task: a data failure, and also counted in ftp_alg_internal_errors_total.
INTERNAL_ERROR = DataFailure.INTERNAL_ERROR

# Why a transfer failed, as the client's 426 (or 425, before the address was announced) says it.
FAILURE_TEXT: dict[DataFailure, str] = {
    DataFailure.ACCEPT_TIMEOUT: "nobody connected to the data port in time",
    DataFailure.UNEXPECTED_SOURCE: "the FTP server's data connection came from an unexpected address",
    DataFailure.CONNECT_FAILED: "the other end of the data connection could not be reached",
    DataFailure.CONNECT_TIMEOUT: "the other end of the data connection did not answer in time",
    DataFailure.TLS_TRUNCATED: "the FTP server's TLS data stream ended without close_notify (truncated)",
    DataFailure.RESET: "the data connection broke before the transfer completed",
    DataFailure.IDLE_TIMEOUT: "no data moved on the data connection for too long",
    DataFailure.ABORTED: "the transfer was aborted",
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
    lingering: bool = False  # the server's TLS leg is drained after the client's broke: it ends by itself


@dataclass(slots=True, frozen=True)
class DataJob:
    """One data connection to carry: accept `expected` on `listener`, connect `target` from `source`."""

    ticket: int
    transfer: Transfer
    listener: Listener | None  # None: a ConnectBoth, which only connects
    expected: IPAddress  # the only peer the listener accepts
    dialled: IPAddress  # the address that peer dials (the kernel path maps it)
    target: HostPort
    source: IPAddress
    public: HostPort  # the address the peer is told (passive: once the relay has the server's leg connected)
    # upstream_data_mode: the server's leg in the other mode than the client's (relay path only).
    cross: Cross | None = None
    # The listener is the server's (active mode toward it): upstream_data_sources are admitted too, and a
    # stranger fails the transfer at once (the server will not connect again).
    from_server: bool = False
    sources: tuple[IPv4Network | IPv6Network, ...] = ()


@dataclass(slots=True, frozen=True)
class Cross:
    """The client's leg of a job whose server leg is in the other mode. ListenForBoth: the job's listener is the
    client's and `server_listener` the server's (told to it as `internal`); ConnectBoth: the job connects to
    the server (target, source) and then to the client's `client_target` from `client_source`."""

    server_listener: Listener | None = None
    server_expected: IPAddress | None = None  # the only peer server_listener accepts
    internal: HostPort | None = None
    client_target: HostPort | None = None
    client_source: IPAddress | None = None


@dataclass(slots=True)
class Ended:
    """How a data connection ended, as its data path saw it; the data channels finish it in one place."""

    failure: DataFailure | None = None  # None: the transfer's data arrived
    text: str | None = None  # for the client's 426, when the failure's stock text will not do
    moved: tuple[int, int] | None = None  # (download, upload), once bytes could move
    seconds: float = 0.0


class TransferEvents(Protocol):
    """What a data path tells the data channels while it carries one job."""

    def announce(self, job: DataJob) -> None:
        """Passive: the server's leg is connected; the client may hear of our port now."""

    def connected(self, job: DataJob) -> None:
        """The expected peer connected to our listener."""

    def relaying(self, job: DataJob) -> None:
        """Both legs are up (and secured where PROT P asked): the data connection counts as opened."""

    def delivered(self, job: DataJob) -> None:
        """The transfer's data arrived: its final reply may go on."""

    def stranger(self, job: DataJob, ip: IPAddress) -> None:
        """Someone other than the expected peer dialled the data port (refused)."""

    def pools_changed(self) -> None:
        """A listener closed: the port pools' gauges are due."""
