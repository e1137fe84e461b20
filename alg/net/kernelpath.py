"""The kernel data path: a data connection's bytes forwarded by netfilter, not relayed through this process.

The control channel still decides every data connection; for a plain one, instead of relaying it, ftp-alg
installs a mapping (alg.net.nftrules) before it announces the port, and conntrack carries the connection once
its first packet is translated. The announced port keeps a listener of ours, which only strangers ever reach
(the expected peer's packets are translated before local delivery): they are closed and counted, as in the
relay. Rules: the table is ftp-alg's alone, created at start and deleted at exit; every mapping is removed
once its connection is established or its transfer ends, and expires in the kernel by itself as a backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.reasons import DataFailure
from alg.net import nftrules
from alg.net.dataplane import Listener, peer_ip
from alg.net.nft import Nft, NftError
from alg.net.nftrules import Counts, Mapping

log = logging.getLogger("ftp_alg.kernel")

POLL_S = 1.0  # how often a running transfer's counters are read (metrics, idle timeout, established)
SETTLE_POLL_S = 0.05  # after the final reply: counters read until two readings agree
SETTLE_MAX_S = 5.0

_FORWARDING = {4: Path("/proc/sys/net/ipv4/ip_forward"), 6: Path("/proc/sys/net/ipv6/conf/all/forwarding")}


class KernelPathUnavailable(Exception):
    """Why the kernel data path cannot be used here; the gateway says so and uses the relay."""


def _forwarding(family: int) -> bool:
    try:
        return _FORWARDING[family].read_text().strip() == "1"
    except OSError:
        return False


class KernelPath:
    """ftp-alg's nftables table and the mappings in it, for one gateway process.

    Installing a mapping is one libnftables call, made before the port is announced. Ending one is batched:
    transfers that ended are handled together, one call per SETTLE_POLL_S however many they are (a session
    fetching small files ends hundreds a second), first removing their mappings and reading their counters,
    then reading again until the counts stand still, then deleting the counters."""

    def __init__(self, nft: Nft, table: str, families: frozenset[int]) -> None:
        self.nft = nft
        self.table = table
        self.families = families  # IP versions this host forwards
        self._numbers = 0
        self.live: set[Mapping] = set()
        self._totals: dict[str, tuple[int, int]] = {}  # counter name -> (packets, bytes) read so far
        self._ending: list[tuple[Mapping, bool, asyncio.Future[Counts]]] = []
        self._settling: dict[Mapping, tuple[asyncio.Future[Counts], float]] = {}  # -> (future, deadline)
        self._releasing: list[Mapping] = []
        self._reaper: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()  # carried connections, held until their counts are read

    @classmethod
    def open(cls, table: str = nftrules.TABLE, nft: Nft | None = None) -> KernelPath:
        """Create (or replace) the table. Raises KernelPathUnavailable naming what is missing."""
        families = frozenset(v for v in (4, 6) if _forwarding(v))
        if not families:
            raise KernelPathUnavailable("this host does not forward IP packets (net.ipv4.ip_forward=0)")
        try:
            nft = nft or Nft()
        except OSError as error:
            raise KernelPathUnavailable(f"libnftables cannot be loaded ({error}); install libnftables1") from None
        try:
            nft.run(nftrules.create_table(table))
        except NftError as error:
            nft.close()
            detail = str(error).splitlines()[0] if str(error) else "refused"
            if "Operation not permitted" in str(error):
                detail = "Operation not permitted: nftables needs CAP_NET_ADMIN"
            raise KernelPathUnavailable(f"cannot create nftables table inet {table}: {detail}") from None
        return cls(nft, table, families)

    def close(self) -> None:
        """Delete the table (every mapping and counter in it); established connections keep their conntrack."""
        if self._reaper is not None:
            self._reaper.cancel()
        for _, _, future in self._ending:
            future.cancel()
        for future, _ in self._settling.values():
            future.cancel()
        with contextlib.suppress(NftError):
            self.nft.run(nftrules.delete_table(self.table))
        self.live.clear()
        self.nft.close()

    def mapping(
        self, peer: IPAddress, dialled: HostPort, target: HostPort, source: IPAddress, timeout_s: float
    ) -> Mapping | None:
        """A mapping for this connection, or None when the kernel cannot carry it (families differ, or this
        host does not forward that family): the relay takes it."""
        self._numbers += 1
        try:
            mapping = Mapping(self._numbers, peer, dialled, target, source, timeout_s)
        except ValueError:
            return None
        return mapping if mapping.family in self.families else None

    def install(self, mapping: Mapping) -> None:
        """Raises NftError, e.g. when another live mapping has the same peer and target (a server re-announcing
        a port at once): the relay then carries this one."""
        self.nft.run(nftrules.add_mapping(mapping, self.table))
        self.live.add(mapping)

    def unmap(self, mapping: Mapping) -> None:
        """New connections stop matching; a connection already translated goes on (conntrack)."""
        try:
            self.nft.run(nftrules.remove_mapping(mapping, self.table))
        except NftError as error:
            log.warning("removing kernel mapping %d failed: %s", mapping.number, error)

    def counts(self, mapping: Mapping) -> Counts:
        """Read the mapping's counters now (one call)."""
        try:
            self._add_readings(self.nft.run(nftrules.read_counters(mapping, self.table)))
        except NftError as error:
            log.warning("reading kernel counters %d failed: %s", mapping.number, error)
        return self.total(mapping)

    def total(self, mapping: Mapping) -> Counts:
        """What was read so far, without asking the kernel."""
        return nftrules.counts_of(mapping, self._totals)

    def end(self, mapping: Mapping, *, unmap: bool) -> asyncio.Future[Counts]:
        """Remove the mapping (when `unmap`), read its counters until they stand still, then release them.
        The future gives its final counts."""
        future: asyncio.Future[Counts] = asyncio.get_running_loop().create_future()
        self._ending.append((mapping, unmap, future))
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name=f"kernel path {self.table}")
        return future

    async def _reap(self) -> None:
        while self._ending or self._settling or self._releasing:
            ending, self._ending = self._ending, []
            settling = list(self._settling)
            releasing, self._releasing = self._releasing, []
            commands = [nftrules.remove_mapping(m, self.table) for m, unmap, _ in ending if unmap]
            commands += [nftrules.read_counters(m, self.table) for m, _, _ in ending]
            commands += [nftrules.read_counters(m, self.table) for m in settling]
            commands += [nftrules.release_counters(m, self.table) for m in releasing]
            before = {m: self.total(m) for m in settling}
            self._run_batch(commands)
            for m in releasing:
                self.live.discard(m)
                for name in m.counters:
                    self._totals.pop(name, None)
            now = time.monotonic()
            for m, _, future in ending:
                self._settling[m] = (future, now + SETTLE_MAX_S)
            for m in settling:
                future, deadline = self._settling[m]
                if self.total(m) == before[m] or now > deadline:
                    del self._settling[m]
                    if not future.done():
                        future.set_result(self.total(m))
                    self._releasing.append(m)
            if self._ending or self._settling or self._releasing:
                await asyncio.sleep(SETTLE_POLL_S)

    def _run_batch(self, commands: list[str]) -> None:
        if not commands:
            return
        try:
            self._add_readings(self.nft.run("".join(commands)))
        except NftError:
            # One bad command fails the whole batch: run them one by one, so the others still happen.
            for command in commands:
                try:
                    self._add_readings(self.nft.run(command))
                except NftError as error:
                    log.warning("kernel path command failed: %s: %s", command.splitlines()[0], error)

    def _add_readings(self, listing: str) -> None:
        for name, (packets, byte_count) in nftrules.parse_counters(listing).items():
            total = self._totals.get(name, (0, 0))
            self._totals[name] = (total[0] + packets, total[1] + byte_count)


@dataclass(slots=True)
class Carried:
    """A kernel-carried data connection as it goes: the latest counts, and how it ended."""

    counts: Counts = field(default_factory=Counts)
    failure: DataFailure | None = None  # accept_timeout, idle_timeout; None when it ended with its transfer
    established: bool = False


async def carry(
    path: KernelPath,
    mapping: Mapping,
    listener: Listener,
    on_stranger: Callable[[IPAddress], None],
    ended: asyncio.Event,
    *,
    connect_timeout_s: float,
    idle_timeout_s: float,
    state: Carried,
) -> Carried:
    """Watch one installed mapping until its transfer ends (`ended`), then remove it and read its bytes.

    The listener on the announced port catches everyone the mapping does not translate. Ends with
    state.failure set when nobody connected within connect_timeout_s or no byte moved for idle_timeout_s."""
    guard = asyncio.create_task(_turn_away(listener, mapping.peer, on_stranger), name=f"kernel {mapping.number} guard")
    started = last_change = time.monotonic()
    try:
        while not ended.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await ended.wait()
            if ended.is_set():
                break
            now = time.monotonic()
            counts = path.counts(mapping)
            if counts != state.counts:
                state.counts, last_change = counts, now
            if counts.seen and not state.established:
                state.established = True  # translated: conntrack carries it from here
                path.unmap(mapping)
            if not counts.seen and now - started > connect_timeout_s:
                state.failure = DataFailure.ACCEPT_TIMEOUT
                break
            if counts.seen and now - last_change > idle_timeout_s:
                state.failure = DataFailure.IDLE_TIMEOUT
                break
    finally:
        stop_listening(listener)
        guard.cancel()
        guard.add_done_callback(lambda _: listener.close())  # once nothing waits on its socket
        ending = path.end(mapping, unmap=not state.established)
        try:
            state.counts = await asyncio.shield(ending)
        except asyncio.CancelledError:
            state.counts = path.total(mapping)  # the session is closing: what was read so far
            raise
    return state


def stop_listening(listener: Listener) -> None:
    """Refuse connections to the announced port from now on, at once (the socket itself is closed later,
    once the task accepting on it has stopped): a listening socket shut down stops listening."""
    with contextlib.suppress(OSError):
        listener.sock.shutdown(socket.SHUT_RD)


async def _turn_away(listener: Listener, peer: IPAddress, on_stranger: Callable[[IPAddress], None]) -> None:
    """Close whoever reaches the announced port itself: a stranger, or the peer once its mapping is gone."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, address = await loop.sock_accept(listener.sock)
        except OSError:  # stop_listening(): the port is closed for good
            return
        conn.close()
        if peer_ip(address) != peer:
            on_stranger(peer_ip(address))
