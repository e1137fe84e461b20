"""The kernel data path (data_path: kernel): a data connection mapped in nftables and watched until its transfer
ends, with its metrics and counts.

Rules: only a plain data connection whose ends share an IP family is mapped, everything else is relayed; the
mapping is installed before the address is announced; the transfer's final reply is passed on as the server
sends it (the client reads the data connection to its end anyway), and the bytes are read once the kernel's
counters stop moving. It speaks to the data channels only through TransferEvents; the error boundary and the
finish are theirs (alg.gateway.datachannels).
"""

from __future__ import annotations

import asyncio
import logging
import time

from alg.ftp.addresses import HostPort
from alg.ftp.reasons import DataFailure
from alg.gateway.context import GatewayContext
from alg.gateway.transfer import DataJob, Ended, TransferEvents
from alg.net.dataplane import Listener
from alg.net.kernelpath import Carried, KernelPath, KernelPathUnavailable, carry, stop_listening
from alg.net.nft import NftError
from alg.net.nftrules import Mapping, table_name
from alg.ops.logs import fields

log = logging.getLogger("ftp_alg.server")  # said at start, with the other start-up lines
SessionLog = logging.LoggerAdapter[logging.Logger]


class KernelCarrier:
    """One data connection mapped in the kernel: carried until end() (the transfer's final reply), then counted."""

    def __init__(self, path: KernelPath, mapping: Mapping, job: DataJob, listener: Listener) -> None:
        self.path, self.mapping, self.job, self.listener = path, mapping, job, listener
        self._ended = asyncio.Event()

    def end(self) -> None:
        """The transfer's final reply came: the port is refused before the client hears it, the watch stops."""
        stop_listening(self.listener)
        self._ended.set()

    async def carry(
        self,
        context: GatewayContext,
        events: TransferEvents,
        ended: Ended,
        session_log: SessionLog,
    ) -> None:
        job, metrics, timeouts = self.job, context.metrics, context.timeouts
        state = Carried()
        # Passive: the peer is the client (original direction = upload); active: the server (original = download).
        if job.transfer.mode == "passive":
            token = metrics.relay_started(lambda: (state.counts.reply, state.counts.original))
        else:
            token = metrics.relay_started(lambda: (state.counts.original, state.counts.reply))
        metrics.data_active.inc()
        started = time.monotonic()
        try:
            await carry(
                self.path,
                self.mapping,
                self.listener,
                lambda ip: events.stranger(job, ip),
                self._ended,
                connect_timeout_s=timeouts.data_connect_s,
                idle_timeout_s=timeouts.data_idle_s,
                state=state,
            )
            ended.failure = state.failure
        except asyncio.CancelledError:
            if not self._ended.is_set():
                ended.failure = DataFailure.ABORTED  # ABOR, or the session closing under a running transfer
            raise
        finally:
            metrics.data_active.dec()
            moved = metrics.relay_finished(token)
            session_log.debug(
                "kernel data",
                extra=fields(
                    ticket=job.ticket,
                    mapping=self.mapping.number,
                    packets=state.counts.packets,
                    original=state.counts.original,
                    reply=state.counts.reply,
                ),
            )
            events.pools_changed()
            # Packets seen: the connection was made, and the server's reply (passed on as it came) tells the rest.
            job.transfer.connected = job.transfer.connected or state.counts.seen
            job.transfer.delivered = job.transfer.delivered or state.counts.seen
            if job.transfer.connected:
                ended.moved, ended.seconds = moved, time.monotonic() - started


def mapped(context: GatewayContext, job: DataJob, session_log: SessionLog) -> KernelCarrier | None:
    """The job mapped in the kernel, or None when the relay must carry it."""
    path = context.kernel_path
    if path is None or job.transfer.client_tls or job.transfer.server_tls:
        return None  # TLS-protected data is decrypted and re-encrypted: only the relay can do that
    if job.from_server and job.sources:
        # A mapping admits one peer address; upstream_data_sources may name several: relayed.
        session_log.debug("upstream_data_sources: relaying this transfer", extra=fields(ticket=job.ticket))
        return None
    if job.cross is not None or job.listener is None:
        # One NAT mapping joins one accepted leg to one connected leg; two of a kind need the relay.
        session_log.debug("upstream_data_mode: relaying this transfer", extra=fields(ticket=job.ticket))
        return None
    announced = HostPort(job.dialled, job.listener.address.port)
    mapping = path.mapping(job.expected, announced, job.target, job.source, context.timeouts.data_connect_s)
    if mapping is None:
        return None
    try:
        path.install(mapping)
    except NftError as error:
        session_log.warning("kernel mapping failed; relaying", extra=fields(ticket=job.ticket, error=error))
        return None
    return KernelCarrier(path, mapping, job, job.listener)


def open_path(worker: int, workers: int, user: str | None = None) -> KernelPath | None:
    """The kernel data path, or None (said at start) when this host or these privileges do not allow it."""
    try:
        if user is not None:
            # Every mapping is a netlink request, checked against the process's capabilities at that moment.
            raise KernelPathUnavailable(
                f"`user: {user}` drops the CAP_NET_ADMIN every mapping needs; run as that user with the"
                " capability instead (deploy/systemd/ftp-alg.service)"
            )
        return KernelPath.open(table_name(worker, workers))
    except KernelPathUnavailable as why:
        log.warning(  # said once at start: the sentence names the reason, and so does the field
            "data_path kernel is not available: %s; data connections use the relay", why, extra=fields(reason=why)
        )
        return None
