"""A session's data connection carried by the kernel (data_path: kernel): its mapping, metrics and transfer log.

Rules: only a plain data connection whose ends share an IP family is mapped, everything else is relayed; the
mapping is installed before the address is announced; the transfer's final reply is passed on as the server
sends it (the client reads the data connection to its end anyway), and the transfer log is written once the
kernel's counters stop moving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from alg.ftp.addresses import HostPort, IPAddress
from alg.net.dataplane import Listener
from alg.net.kernelpath import Carried, KernelPath, KernelPathUnavailable, carry, stop_listening
from alg.net.nft import NftError
from alg.net.nftrules import Mapping, table_name
from alg.ops.defender import Offence

log = logging.getLogger("ftp_alg.server")  # said at start, with the other start-up lines

if TYPE_CHECKING:
    from alg.gateway.datachannels import Transfer as _Transfer
    from alg.gateway.session import Session


def start(
    session: Session,
    ticket: int,
    listener: Listener,
    expected: IPAddress,
    dialled: IPAddress,
    target: HostPort,
    source: IPAddress,
    transfer: _Transfer,
) -> bool:
    """Map this data connection in the kernel and watch it; False when the relay must carry it."""
    path = session.context.kernel_path
    if path is None or transfer.client_tls or transfer.server_tls:
        return False  # TLS-protected data is decrypted and re-encrypted: only the relay can do that
    timeouts = session.context.timeouts
    mapping = path.mapping(expected, HostPort(dialled, listener.address.port), target, source, timeouts.data_connect_s)
    if mapping is None:
        return False
    try:
        path.install(mapping)
    except NftError as error:
        session.log.warning("kernel mapping failed ticket=%d error=%s; relaying", ticket, error)
        return False
    ended = asyncio.Event()

    def end() -> None:
        stop_listening(listener)  # before the final reply goes on: the port is refused once the client hears it
        ended.set()
        # A transfer the server reports done had its data connection: counted as opened now (the counters say
        # so for the others, once read).
        if transfer.reply_code is not None and transfer.reply_code < 300:
            transfer.connected = True
            session._count_opened(transfer, final=True)
        # Done as far as the session is concerned: what is left (reading the counters once they stand still,
        # the transfer log) must not be cancelled by a QUIT that follows at once, as it does after most files.
        session._transfers.pop(ticket, None)
        session._last_activity = time.monotonic()

    transfer.kernel_end = end
    transfer.task = task = asyncio.create_task(
        _carried(session, ticket, mapping, listener, transfer, ended), name=f"#{session.id} kernel data {ticket}"
    )
    # The session lets go of it at the final reply; the kernel path keeps it until its bookkeeping is done.
    path.tasks.add(task)
    task.add_done_callback(path.tasks.discard)
    return True


async def _carried(
    session: Session, ticket: int, mapping: Mapping, listener: Listener, transfer: _Transfer, ended: asyncio.Event
) -> None:
    context = session.context
    path, metrics, timeouts = context.kernel_path, context.metrics, context.timeouts
    assert path is not None
    state = Carried()
    failure: str | None = None
    moved: tuple[int, int] | None = None

    def stranger(ip: IPAddress) -> None:
        metrics.refused("port_theft")
        if context.guard is not None:
            context.guard.offence(ip, Offence.PORT_THEFT)
        session.log.warning("data port theft attempt ticket=%d from=%s expected=%s", ticket, ip, mapping.peer)

    # Passive: the peer is the client (original direction = upload); active: the server (original = download).
    if transfer.mode == "passive":
        token = metrics.relay_started(lambda: (state.counts.reply, state.counts.original))
    else:
        token = metrics.relay_started(lambda: (state.counts.original, state.counts.reply))
    metrics.data_active.inc()
    started = time.monotonic()
    try:
        await carry(
            path,
            mapping,
            listener,
            stranger,
            ended,
            connect_timeout_s=timeouts.data_connect_s,
            idle_timeout_s=timeouts.data_idle_s,
            state=state,
        )
        failure = state.failure
    except asyncio.CancelledError:
        if not ended.is_set():
            failure = "aborted"  # ABOR, or the session closing under a running transfer
        raise
    finally:
        metrics.data_active.dec()
        moved = metrics.relay_finished(token)
        session.log.debug(
            "kernel data ticket=%d mapping=%d packets=%d original=%d reply=%d",
            ticket,
            mapping.number,
            state.counts.packets,
            state.counts.original,
            state.counts.reply,
        )
        session._update_pools()
        transfer.connected = transfer.connected or state.counts.seen
        if failure is not None:
            metrics.data_failure(failure)
            session.log.info("data connection failed ticket=%d reason=%s", ticket, failure)
        if transfer.connected:
            session._count_opened(transfer, final=True)
            session._account(transfer, moved, time.monotonic() - started, failure or "complete")
        session._transfers.pop(ticket, None)
        session._last_activity = time.monotonic()
        channel = session.channel
        if channel is not None and not session._closed.is_set():
            if failure is not None and not state.counts.seen:
                session._report(channel.data_endpoint_failed(ticket, "nobody connected to the data port in time"))
            else:
                session._report(channel.data_finished(ticket))
        if session._draining and not session._transfers:
            session.drain()


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
        log.warning("data_path kernel is not available: %s; data connections use the relay", why)
        return None
