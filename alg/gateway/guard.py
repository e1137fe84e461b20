"""The defender in a gateway process: the door asks it, the session reports to it; it logs, counts and shares.

Rules: nothing here waits on the network: a session's report is scored at once and handed to the store,
which sends it on in the background (other workers, Redis); a ban heard from elsewhere is adopted as is.
One log line per ban and per unban, by the process that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from alg.ftp.reasons import Refusal
from alg.gateway.guard_redis import RedisStore
from alg.gateway.guard_wire import Hearer
from alg.gateway.guard_workers import WorkerMesh
from alg.ops.config_sections import DefenderSettings
from alg.ops.defender import Ban, Defender, Offence, Unbanned
from alg.ops.logs import fields
from alg.ops.metrics import Metrics

log = logging.getLogger("ftp_alg.defender")

# Ended bans are noticed (and their unban logged) within this many seconds.
EXPIRE_EVERY_S = 1.0

# The core's refusals (alg.ftp Refused.reason) that are hostile acts; the others are a client's mistakes.
_RULE_OFFENCES = {
    Refusal.BOUNCE: Offence.BOUNCE,
    Refusal.LINE_LENGTH: Offence.OVERLONG_LINE,
    Refusal.TLS_PLAINTEXT: Offence.TLS_GARBAGE,
    Refusal.ACL: Offence.REFUSED_COMMAND,
    Refusal.COMMAND_RULE: Offence.REFUSED_COMMAND,
}


def offence_for_rule(reason: Refusal) -> Offence | None:
    return _RULE_OFFENCES.get(reason)


class Store(Protocol):
    """Carries scored acts, bans and unbans to the other processes sharing the state; never blocks."""

    def offence(self, client: str, offence: Offence, at: float) -> None: ...
    def login_failed(self, user: str, at: float) -> None: ...
    def banned(self, ban: Ban) -> None: ...
    def unbanned(self, client: str) -> None: ...
    async def run(self, hearer: Hearer) -> None: ...


def guard_for(settings: DefenderSettings | None, metrics: Metrics, worker: int = 0, workers: int = 1) -> Guard:
    """The gateway process's guard; it shares its state with the other workers, or with every process
    (each worker of each instance) through Redis: through one of them only, so no act is counted twice."""
    guard = Guard(settings or DefenderSettings(), metrics, worker=worker, workers=workers)
    guard.open_stores()
    return guard


class Guard:
    def __init__(
        self,
        settings: DefenderSettings,
        metrics: Metrics,
        defender: Defender | None = None,
        *,
        worker: int = 0,
        workers: int = 1,
    ) -> None:
        self.defender = defender or Defender(settings)
        self.metrics = metrics
        self.worker, self.workers = worker, workers
        self.stores: list[Store] = []
        self._made_here: set[str] = set()  # bans this process made: it logs their end
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.defender.enabled

    def configure(self, settings: DefenderSettings) -> None:
        self.defender.configure(settings)

    def open_stores(self) -> None:
        """The store the settings name, once the defender is on (defender.store waits for a restart)."""
        settings = self.defender.settings
        if not self.enabled or self.stores:
            return
        if settings.store.startswith(("redis://", "rediss://")):
            self.stores.append(RedisStore(settings.store, self.metrics))
        elif self.workers > 1:
            self.stores.append(WorkerMesh(self.worker, self.workers, self.metrics))

    def reconfigure(self, settings: DefenderSettings) -> None:
        """A reload's `defender:` section: thresholds, scores, allowlist and on/off change now; scores and bans
        are kept. Turned on by the reload, it opens its store and starts (a running one keeps going)."""
        was = self.enabled
        self.configure(settings)
        if self.enabled and not was:
            self.open_stores()
            self.start()
        self._update_active()
        log.info("defender reconfigured", extra=fields(enabled=self.enabled, bans=len(self.bans())))

    # ---- the door and the session ----------------------------------------------------------------------------

    def refuses(self, ip: IPv4Address | IPv6Address) -> Ban | None:
        """The ban that shuts this client out now, counted; None: let it in."""
        ban = self.defender.banned(ip)
        if ban is not None:
            self.metrics.defender_refused.inc()
        return ban

    def offence(self, ip: IPv4Address | IPv6Address, offence: Offence) -> None:
        if not self.enabled or self.defender.allowed(ip):
            return
        self.metrics.defender_points.labels(offence.value).inc(self.defender.points(offence))
        at = self.defender.clock()
        ban = self.defender.record(ip, offence, at)
        for store in self.stores:
            store.offence(self.defender.key(ip), offence, at)
        if ban is not None:
            self._banned(ban, made_here=True)

    def refused(self, ip: IPv4Address | IPv6Address, reason: Refusal) -> None:
        """A command the core refused: scored when its rule is a hostile act."""
        offence = offence_for_rule(reason)
        if offence is not None:
            self.offence(ip, offence)

    def login_failed(self, ip: IPv4Address | IPv6Address, user: str) -> float:
        """A 530 after PASS; the delay before this client's next command (its user name is under attack)."""
        if not self.enabled:
            return 0.0
        self.offence(ip, Offence.LOGIN_FAILED)
        delay = self.defender.login_failed(user)
        at = self.defender.clock()
        for store in self.stores:
            store.login_failed(user, at)
        return delay

    # ---- what other processes tell ---------------------------------------------------------------------------

    def heard_offence(self, client: str, offence: Offence, at: float) -> None:
        ban = self.defender.record_key(client, offence, at)
        if ban is not None:
            self._banned(ban, made_here=False)

    def heard_login_failed(self, user: str, at: float) -> None:
        self.defender.login_failed(user, at)

    def heard_ban(self, ban: Ban) -> None:
        if self.defender.adopt(ban):
            self._made_here.discard(ban.client)
            self._update_active()

    def heard_unban(self, client: str) -> None:
        if self.defender.unban(client) is not None:
            self._made_here.discard(client)
            self._update_active()

    # ---- operators -------------------------------------------------------------------------------------------

    def bans(self) -> list[Ban]:
        return self.defender.bans()

    def unban(self, client: str) -> Ban | None:
        """DELETE /bans/ADDRESS: lifted here and in every process sharing the state."""
        ban = self.defender.unban(client)
        if ban is None:
            return None
        self._made_here.discard(ban.client)
        log.warning("defender unban", extra=fields(client=ban.client, reason=Unbanned.ADMIN, repeat=ban.repeat))
        self._update_active()
        for store in self.stores:
            store.unbanned(ban.client)
        return ban

    # ---- background ------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="defender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for store in self.stores:
                tasks.create_task(store.run(self), name=f"defender {type(store).__name__}")
            while True:
                await asyncio.sleep(EXPIRE_EVERY_S)
                self.expire()

    def expire(self) -> None:
        for ban in self.defender.expire():
            if ban.client in self._made_here:
                self._made_here.discard(ban.client)
                log.info("defender unban", extra=fields(client=ban.client, reason=Unbanned.EXPIRED, repeat=ban.repeat))
        self._update_active()

    def _banned(self, ban: Ban, *, made_here: bool) -> None:
        self._update_active()
        if not made_here:
            return  # counted and logged by the process whose act crossed the threshold: summed once
        self.metrics.defender_bans.labels(ban.reason.value).inc()
        self._made_here.add(ban.client)
        log.warning(
            "defender ban",
            extra=fields(client=ban.client, reason=ban.reason, repeat=ban.repeat, for_s=round(ban.until - ban.since)),
        )
        for store in self.stores:
            store.banned(ban)

    def _update_active(self) -> None:
        self.metrics.defender_bans_active.set(len(self.defender.bans()))
