"""Active health checks of the upstream servers: dial, read a 220 banner, say QUIT.

Rules: `HealthState` is pure (rise/fall counting, as HAProxy's); `HealthChecker` is the shell that probes every
upstream each interval, one probe per upstream at a time, each bounded by its timeout. Upstreams start healthy,
so a gateway serves at once; `fall` failures in a row take one out, `rise` successes bring it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from alg.ftp.addresses import HostPort
from alg.ops import banner
from alg.ops.logs import fields, printable

log = logging.getLogger("ftp_alg.health")


@dataclass(slots=True)
class HealthState:
    """Whether one upstream gets sessions, from the results of its checks."""

    rise: int
    fall: int
    healthy: bool = True
    streak: int = 0  # checks in a row that disagree with `healthy`

    def record(self, ok: bool) -> bool:
        """Count one check; True when it changed `healthy`."""
        if ok == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak >= (self.rise if ok else self.fall):
            self.healthy, self.streak = ok, 0
            return True
        return False


@dataclass(slots=True)
class Checked:
    """One upstream as the checker sees it."""

    label: str
    address: HostPort
    state: HealthState
    proxy_version: int | None = None
    last_reason: str | None = None


class HealthChecker:
    """Probes every upstream every `interval_s`; `on_change(checked)` hears each transition."""

    def __init__(
        self,
        upstreams: Sequence[Checked] | Callable[[], Sequence[Checked]],
        *,
        interval_s: float,
        timeout_s: float,
        on_change: Callable[[Checked], None],
    ) -> None:
        # A callable is asked each round: the addresses of an upstream given by name follow its lookups.
        self._targets = upstreams if callable(upstreams) else (lambda: list(upstreams))
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.on_change = on_change
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health checks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def upstreams(self) -> list[Checked]:
        return list(self._targets())

    async def check_once(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for checked in self.upstreams:
                tasks.create_task(self._check(checked), name=f"health {checked.label} {checked.address}")
        self.rounds += 1

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval_s)

    async def _check(self, checked: Checked) -> None:
        try:
            reason = await banner.probe(checked.address, self.timeout_s, proxy_version=checked.proxy_version)
        except Exception as error:  # a bug here must not end every later check: it counts as a failed one
            log.exception("health check failed", extra=fields(upstream=checked.label, address=checked.address))
            reason = f"check failed: {error!r}"
        checked.last_reason = reason
        if checked.state.record(reason is None):
            if checked.state.healthy:
                log.info("upstream up", extra=fields(upstream=checked.label, address=checked.address))
            else:
                why = printable(reason or "")
                log.warning("upstream down", extra=fields(upstream=checked.label, address=checked.address, reason=why))
            self.on_change(checked)
