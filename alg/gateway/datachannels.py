"""The data connections of one session: endpoints opened for the control channel's tickets, each carried by one of
two data paths (the relay, alg.gateway.relaypath, or the kernel, alg.gateway.kerneldata), counted and logged.

Rules: DataChannels owns its session's transfers; one task per data connection, a child of its session, behind
one error boundary (an unexpected exception fails the transfer with 426, never a 226); every transfer ends in
one place (_finish), which reports to the channel exactly once (data_finished or data_endpoint_failed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from alg.errors import DataChannelError
from alg.ftp import control as c
from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.reasons import Refusal
from alg.gateway import kerneldata
from alg.gateway.context import GatewayContext
from alg.gateway.relaypath import DataTls, RelayPath
from alg.gateway.transfer import FAILURE_TEXT, INTERNAL_ERROR, Cross, DataJob, Ended, Transfer
from alg.net.dataplane import Listener, open_listener
from alg.ops.defender import Offence
from alg.ops.logs import fields, printable

transfer_log = logging.getLogger("ftp_alg.transfer")


@dataclass(slots=True, frozen=True)
class Ends:
    """A session's addresses, as its data connections need them (fixed once both control connections are up)."""

    client: HostPort  # the control client (behind a balancer: the PROXY header's)
    client_side: HostPort  # our end of the client's control connection
    data_peer: IPAddress  # where the client's passive data connections come from (the client, or the balancer)
    dialled: IPAddress  # the address the client dialled
    server: HostPort
    server_side: HostPort  # our end of the server's control connection


class DataChannels:
    """The data connections of one session (it *has* them: session.data)."""

    def __init__(
        self,
        context: GatewayContext,
        channel: c.ControlChannel,
        ends: Ends,
        tls: DataTls,
        log: logging.LoggerAdapter[logging.Logger],
        *,
        session: str,
        report: Callable[[list[c.Action]], None],
        at_rest: Callable[[], None],
    ) -> None:
        self.context, self.channel, self.ends, self.log = context, channel, ends, log
        self.session = session
        self._report = report  # the session executes what the channel answers (nothing once it is closed)
        self._at_rest = at_rest  # a transfer ended: the session's idle timer starts afresh, a drain may finish
        self._relay = RelayPath(context, tls, log)
        self.transfers: dict[int, Transfer] = {}

    # ---- orders from the session -----------------------------------------------------------------------------

    def open(self, action: c.ListenForClient | c.ListenForServer | c.ListenForBoth | c.ConnectBoth) -> list[c.Action]:
        """Open the endpoint the channel asked for; the channel's answer (the rewritten line, or a refusal)."""
        passive = isinstance(action, c.ListenForClient)
        try:
            if isinstance(action, c.ListenForBoth | c.ConnectBoth):
                job = self._cross_job(action)
            else:
                job = self._job(action, passive)
        except DataChannelError as error:
            self.context.metrics.data_failure(error.reason)
            self.log.warning("data endpoint failed", extra=fields(ticket=action.ticket, reason=str(error)))
            return self.channel.data_endpoint_failed(action.ticket, str(error))
        self.pools_changed()
        self.transfers[action.ticket] = job.transfer
        kernel = kerneldata.mapped(self.context, job, self.log)
        if kernel is not None:
            job.transfer.kernel_end = lambda: self._kernel_end(job, kernel.end)
            task = self._start(job, lambda ended: kernel.carry(self.context, self, ended, self.log))
            # The session lets go of it at the final reply; the kernel path keeps it until its counts are read.
            kernel.path.tasks.add(task)
            task.add_done_callback(kernel.path.tasks.discard)
            return self.channel.data_endpoint_ready(action.ticket, job.public)  # mapped before it is announced
        self._start(job, lambda ended: self._relay.carry(job, self, ended))
        if passive or isinstance(action, c.ConnectBoth):
            return []  # announced once the server's leg is connected (TransferEvents.announce)
        internal = job.cross.internal if job.cross is not None else None
        return self.channel.data_endpoint_ready(action.ticket, job.public, internal)

    def close(self, ticket: int) -> None:
        """The channel is done with this endpoint (ABOR, a new PASV, an aborted transfer): cut it."""
        transfer = self.transfers.pop(ticket, None)
        if transfer is not None and transfer.task is not None and not transfer.lingering:
            transfer.task.cancel()

    def requested(self, ticket: int | None, verb: str, argument: bytes) -> None:
        transfer = self.transfers.get(ticket) if ticket is not None else None
        if transfer is not None:
            transfer.verb, transfer.argument = verb, argument
            self._count_opened(transfer)

    def replied(self, ticket: int, code: int) -> bool:
        """The transfer's final reply came; True when the kernel carried it and has let go of it now (its
        reply goes on at once: the client reads the data connection to its end anyway)."""
        transfer = self.transfers.get(ticket)
        if transfer is None:
            return False
        transfer.reply_code = code
        if transfer.kernel_end is None:
            return False
        transfer.kernel_end()
        return True

    @property
    def busy(self) -> bool:
        return bool(self.transfers)

    @property
    def running(self) -> bool:
        """A transfer command went out on one of the data connections (its ABOR ends a running transfer)."""
        return any(transfer.verb is not None for transfer in self.transfers.values())

    async def stop(self) -> None:
        """The session is closing: every transfer cut, and waited for."""
        tasks = [t.task for t in self.transfers.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.transfers.clear()

    # ---- TransferEvents: what the data paths tell ---------------------------------------------------------------

    def announce(self, job: DataJob) -> None:
        internal = job.cross.internal if job.cross is not None else None
        self._report(self.channel.data_endpoint_ready(job.ticket, job.public, internal))

    def connected(self, job: DataJob) -> None:
        self._report(self.channel.data_connected(job.ticket))

    def relaying(self, job: DataJob) -> None:
        job.transfer.connected = True
        self._count_opened(job.transfer)  # else counted when the client's RETR/STOR/LIST arrives

    def delivered(self, job: DataJob) -> None:
        job.transfer.delivered = True
        self._report(self.channel.data_finished(job.ticket))

    def stranger(self, job: DataJob, ip: IPAddress) -> None:
        self.context.metrics.refused(Refusal.PORT_THEFT)
        if self.context.guard is not None:
            self.context.guard.offence(ip, Offence.PORT_THEFT)
        found = fields(ticket=job.ticket, **{"from": ip}, expected=job.expected)
        if job.from_server:
            # Maybe the server itself, from another of its addresses (a multi-homed server, a cluster's node
            # behind its virtual address): the log says which setting would admit it.
            found = fields(ticket=job.ticket, **{"from": ip}, expected=job.expected, setting="upstream_data_sources")
        self.log.warning("data port theft attempt", extra=found)

    def pools_changed(self) -> None:
        metrics = self.context.metrics
        for name, pool in (("public", self.context.public_pool), ("internal", self.context.internal_pool)):
            if pool is not None:
                metrics.pool_used(name, pool.in_use)

    # ---- the endpoint ----------------------------------------------------------------------------------------

    def _job(self, action: c.ListenForClient | c.ListenForServer, passive: bool) -> DataJob:
        """The listener and the plan for its connection. The listener sits on the side the expected peer talks
        to us on; the other leg leaves from our address on the other side, so each peer sees data come from
        the address it already knows."""
        context, ends = self.context, self.ends
        if passive:
            listen_on, expected, source = ends.client_side.ip, ends.data_peer, ends.server_side.ip
            pool = context.internal_pool if context.transparent else context.public_pool
        else:
            listen_on, expected, source = ends.server_side.ip, ends.server.ip, ends.client_side.ip
            pool = context.public_pool if context.transparent else context.internal_pool
        if passive and context.transparent:
            # The LAN client dials the server's own address (a 229 names no address; curl and FileZilla ignore
            # a 227 address that differs) and the firewall redirects that port range to us (deploy/nftables):
            # the listener needs a known range, and the 227 names the server, as if there were no gateway.
            pool = context.internal_pool or context.public_pool
        listener = open_listener(listen_on, pool)
        mode = "passive" if passive else "active"
        transfer = Transfer(mode=mode, client_tls=action.client_tls, server_tls=action.server_tls)
        dialled = ends.server.ip if passive and context.transparent else listen_on
        public = self._announced(listener, passive=passive)
        job = DataJob(action.ticket, transfer, listener, expected, dialled, action.then_connect, source, public)
        if passive:
            return job
        return dataclasses.replace(job, from_server=True, sources=context.upstream_data_sources)

    def _cross_job(self, action: c.ListenForBoth | c.ConnectBoth) -> DataJob:
        """upstream_data_mode: the client's leg in its own mode, the server's in the other (the relay carries
        it). Each leg is opened or dialled on the side its peer talks to us on, as in _job."""
        context, ends = self.context, self.ends
        transfer = Transfer(
            mode="passive" if isinstance(action, c.ListenForBoth) else "active",
            client_tls=action.client_tls,
            server_tls=action.server_tls,
        )
        if isinstance(action, c.ConnectBoth):
            cross = Cross(client_target=action.client, client_source=ends.client_side.ip)
            return DataJob(
                action.ticket, transfer, None, ends.server.ip, ends.server.ip, action.server, ends.server_side.ip,
                action.server, cross,
            )  # fmt: skip
        public_pool, internal_pool = context.public_pool, context.internal_pool
        if context.transparent:
            public_pool, internal_pool = internal_pool or public_pool, public_pool
        listener = open_listener(ends.client_side.ip, public_pool)
        try:
            server_listener = open_listener(ends.server_side.ip, internal_pool)
        except DataChannelError:
            listener.close()
            raise
        public = self._announced(listener, passive=True)
        internal = self._announced(server_listener, passive=False)
        cross = Cross(server_listener=server_listener, server_expected=ends.server.ip, internal=internal)
        return DataJob(
            action.ticket, transfer, listener, ends.data_peer, ends.client_side.ip, ends.server, ends.server_side.ip,
            public, cross, sources=context.upstream_data_sources,
        )  # fmt: skip

    def _announced(self, listener: Listener, *, passive: bool) -> HostPort:
        """The address told to the peer: ours, the configured public one, the advertiser's, or (transparent
        passive) the server's own."""
        context = self.context
        facing_public = passive != context.transparent
        if passive and context.transparent:
            return HostPort(self.ends.server.ip, listener.address.port)
        if facing_public and context.advertiser is not None:
            client_ip, dialled = self.ends.client.ip, self.ends.dialled
            return context.advertiser.announce(listener.address, client_ip, dialled, self.ends.client_side)
        public = context.public_address
        if listener.address.ip.version == 6 and context.public_address6 is not None:
            public = context.public_address6
        if facing_public and public is not None and type(public) is type(listener.address.ip):
            return HostPort(public, listener.address.port)
        return listener.address

    # ---- one task per transfer, one boundary, one finish -----------------------------------------------------

    def _start(self, job: DataJob, carry: Callable[[Ended], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(job, carry), name=f"#{self.session} data {job.ticket}")
        job.transfer.task = task
        return task

    async def _run(self, job: DataJob, carry: Callable[[Ended], Coroutine[Any, Any, None]]) -> None:
        ended = Ended()
        try:
            await carry(ended)
        except Exception:
            # A bug, not the network: the transfer fails (426) whatever the server answers; the session goes on.
            self.log.exception("data connection failed", extra=fields(ticket=job.ticket, reason="internal_error"))
            self.context.metrics.internal_error("data")
            ended.failure, ended.text = INTERNAL_ERROR, None
        finally:
            try:
                self._finish(job, ended)
            except Exception:
                self.log.exception("data connection bookkeeping failed", extra=fields(ticket=job.ticket))
                self.context.metrics.internal_error("data")
                self._release(job)

    def _finish(self, job: DataJob, ended: Ended) -> None:
        transfer, failure = job.transfer, ended.failure
        if failure is not None and transfer.delivered:
            # The transfer's data had arrived (and its reply may have gone on): what broke after is no failure.
            self.log.debug("data connection ended after its transfer", extra=fields(ticket=job.ticket, reason=failure))
            failure = None
        if failure is not None:
            self.context.metrics.data_failure(failure)
            self.log.info("data connection failed", extra=fields(ticket=job.ticket, reason=failure))
        if transfer.connected:
            self._count_opened(transfer, final=True)
        if ended.moved is not None:
            self._account(transfer, ended.moved, ended.seconds, failure or "complete")
        self._release(job)
        if failure is not None:
            # The transfer's data did not all arrive (a leg broke or was cut, or the gateway failed): it did not
            # complete, whatever the server answers.
            self._report(
                self.channel.data_endpoint_failed(job.ticket, ended.text or FAILURE_TEXT.get(failure, failure))
            )
        else:
            self._report(self.channel.data_finished(job.ticket))

    def _kernel_end(self, job: DataJob, end: Callable[[], None]) -> None:
        """Kernel path, at the transfer's final reply: done as far as the session is concerned. What is left
        (reading the counters once they stand still, the transfer log) must not be cancelled by a QUIT that
        follows at once, as it does after most files."""
        end()
        # A transfer the server reports done had its data connection: counted as opened now (the counters say
        # so for the others, once read).
        if job.transfer.reply_code is not None and job.transfer.reply_code < 300:
            job.transfer.connected = True
            self._count_opened(job.transfer, final=True)
        self._release(job)

    def _release(self, job: DataJob) -> None:
        if self.transfers.get(job.ticket) is job.transfer:
            del self.transfers[job.ticket]
        self._at_rest()

    def _count_opened(self, transfer: Transfer, *, final: bool = False) -> None:
        """One count per data connection, by mode and by the direction its command gives (else `unknown`)."""
        if transfer.connected and not transfer.counted and (transfer.verb is not None or final):
            transfer.counted = True
            self.context.metrics.data_channel_opened(transfer.mode, transfer.verb)

    def _account(self, transfer: Transfer, moved: tuple[int, int], seconds: float, outcome: str) -> None:
        """The transfer log's record (xferlog's fields, as key=value or JSON), and the duration histogram."""
        download, upload = moved
        if outcome == "complete":
            self.context.metrics.transfer_seconds.observe(seconds)
        transfer_log.info(
            "transfer",
            extra={
                "session": self.session,
                "client": str(self.ends.client.ip),
                "user": printable(self.channel.user or "-"),
                "command": transfer.verb or "-",
                "path": printable(transfer.argument) or "-",
                "bytes": download + upload,
                "bytes_download": download,
                "bytes_upload": upload,
                "seconds": round(seconds, 3),
                "mode": transfer.mode,
                "outcome": outcome,
            },
        )
