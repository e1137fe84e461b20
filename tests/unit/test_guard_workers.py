"""Workers share the defender's state over abstract unix datagram sockets: scores add up across workers, a ban
made by one holds on the other, an unban lifts it everywhere, a restarted worker learns the bans on hello, and
a stranger's socket is not listened to."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from ipaddress import ip_address

from alg.gateway.guard import Guard
from alg.gateway.guard_workers import WorkerMesh, socket_name
from alg.ops.config_sections import DefenderSettings
from alg.ops.defender import Offence
from alg.ops.metrics import Metrics

GUESSER = ip_address("203.0.113.7")
GROUP = 4_000_000 + os.getpid()  # a group no real gateway has (pids stay below 4194304)


async def until(what: str, check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.01)


def worker(index: int) -> Guard:
    metrics = Metrics()
    guard = Guard(DefenderSettings(enabled=True), metrics)
    guard.stores.append(WorkerMesh(index, 2, metrics, group=GROUP))
    return guard


async def two_workers() -> dict[str, object]:
    first = worker(0)
    first.start()
    second = worker(1)
    second.start()
    seen: dict[str, object] = {}
    try:
        for guard in (first, second, first, second):  # 4 failed logins, 2 on each: 8 points
            guard.login_failed(GUESSER, "root")
        await until("scores shared", lambda: first.defender.score(GUESSER) == second.defender.score(GUESSER) == 8)
        second.offence(GUESSER, Offence.LOGIN_FAILED)
        await until("ban shared", lambda: first.refuses(GUESSER) is not None)
        seen["bans"] = (first.bans(), second.bans())
        # A stranger's socket names itself like a worker of another group: ignored.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
            stranger.bind(socket_name(GROUP + 1, 1))
            stranger.sendto(json.dumps({"t": "unban", "client": "203.0.113.7/32"}).encode(), socket_name(GROUP, 0))
        first.unban("203.0.113.7")
        await until("unban shared", lambda: second.refuses(GUESSER) is None)
        second.offence(GUESSER, Offence.BOUNCE)
        second.offence(GUESSER, Offence.BOUNCE)
        await until("second ban", lambda: first.refuses(GUESSER) is not None)
        # A worker restarted: it says hello and hears the ban.
        await second.stop()
        third = worker(1)
        third.start()
        await until("hello answered", lambda: third.refuses(GUESSER) is not None)
        seen["third"] = third.bans()
        await third.stop()
    finally:
        await first.stop()
        await second.stop()
    return seen


def test_workers_share_scores_bans_and_unbans() -> None:
    seen = asyncio.run(two_workers())
    first, second = seen["bans"]  # type: ignore[misc]
    assert first == second and len(first) == 1 and first[0].repeat == 1
    (ban,) = seen["third"]  # type: ignore[misc]
    assert ban.repeat == 2 and ban.reason is Offence.BOUNCE
