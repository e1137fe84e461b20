"""The defender's state shared by gateway instances through Redis (defender.store: redis://HOST:PORT/DB).

Rules: sessions never wait on Redis: what this process tells goes into a bounded outbox that a background
task publishes; a ban is also a key with its own expiry, so an instance that starts or comes back reads the
bans in force. When Redis is unreachable the instance goes on with its local state, counts the fault, logs
once, keeps what it has to tell (the oldest dropped past MAX_PENDING) and tells it, then reads the bans,
when Redis is back. The `redis` package (the [redis] extra) is imported only when such a store is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import secrets
import time
from collections import deque
from typing import Any

from alg.gateway.guard_wire import (
    Hearer,
    Message,
    ban_from,
    ban_message,
    hear,
    offence_message,
    unban_message,
    user_message,
)
from alg.ops.defender import Ban, Offence
from alg.ops.logs import fields
from alg.ops.metrics import Metrics

log = logging.getLogger("ftp_alg.defender")

CHANNEL = "ftp-alg:defender"
BAN_KEY = "ftp-alg:defender:ban:"  # + the banned network; the key expires with the ban
MAX_PENDING = 10_000  # messages kept while Redis is away (a few MB at most)
RETRY_S = 1.0  # how soon a lost Redis is tried again
TIMEOUT_S = 1.0  # a Redis that does not answer within this is treated as gone


class RedisStore:
    """A Store (alg.gateway.guard) over one Redis: a pub/sub channel for facts, keys for the bans."""

    def __init__(self, url: str, metrics: Metrics) -> None:
        self.url = url
        self.id = secrets.token_hex(8)  # our own messages come back on the channel: skipped by this
        self._outbox: deque[Message] = deque(maxlen=MAX_PENDING)
        self._wake = asyncio.Event()
        self._faults = metrics.defender_store_faults.labels("redis")
        self._down = False
        self.connected = asyncio.Event()  # set while Redis answers (tests and logs wait on it)

    # ---- Store: what this process tells ---------------------------------------------------------------------

    def offence(self, client: str, offence: Offence, at: float) -> None:
        self._post(offence_message(client, offence, at))

    def login_failed(self, user: str, at: float) -> None:
        self._post(user_message(user, at))

    def banned(self, ban: Ban) -> None:
        self._post(ban_message(ban))

    def unbanned(self, client: str) -> None:
        self._post(unban_message(client))

    def _post(self, message: Message) -> None:
        if len(self._outbox) == self._outbox.maxlen:
            self._faults.inc()  # the oldest is dropped to make room
        self._outbox.append({**message, "from": self.id})
        self._wake.set()

    # ---- the connection -------------------------------------------------------------------------------------

    async def run(self, guard: Hearer) -> None:
        aioredis: Any = importlib.import_module("redis.asyncio")
        errors = (importlib.import_module("redis.exceptions").RedisError, OSError, TimeoutError)
        while True:
            client = aioredis.from_url(self.url, socket_connect_timeout=TIMEOUT_S, socket_timeout=None)
            try:
                await self._connected(client, guard)
            except errors as error:
                self._lost(error)
            finally:
                self.connected.clear()
                with contextlib.suppress(*errors):
                    await client.aclose()
            await asyncio.sleep(RETRY_S)

    def _lost(self, error: BaseException) -> None:
        self._faults.inc()
        if not self._down:
            self._down = True
            log.warning(
                "defender: redis unreachable, going on with the local state until it is back",
                extra=fields(store=_without_password(self.url), error=error or type(error).__name__),
            )

    async def _connected(self, client: Any, guard: Hearer) -> None:
        pubsub = client.pubsub()
        async with asyncio.timeout(TIMEOUT_S):
            await pubsub.subscribe(CHANNEL)
        adopted = await self._resync(client, guard)
        self.connected.set()
        if self._down:
            self._down = False
            log.warning("defender: redis back", extra=fields(store=_without_password(self.url), bans_read=adopted))
        sender = asyncio.create_task(self._send(client), name="defender redis send")
        listener = asyncio.create_task(self._listen(pubsub, guard), name="defender redis listen")
        try:
            done, _ = await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, listener):
                task.cancel()
            await asyncio.gather(sender, listener, return_exceptions=True)
        for task in done:
            task.result()  # the error that ended this connection

    async def _resync(self, client: Any, guard: Hearer) -> int:
        """Adopt the bans Redis holds; those that are ours alone are told through the outbox."""
        async with asyncio.timeout(TIMEOUT_S * 5):
            keys = [key async for key in client.scan_iter(match=BAN_KEY + "*", count=500)]
            values = await client.mget(keys) if keys else []
        held: set[str] = set()
        for value in values:
            if value is None:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                ban = ban_from(json.loads(value))
                held.add(ban.client)
                guard.heard_ban(ban)
        for ban in guard.bans():
            if ban.client not in held:
                self.banned(ban)
        return len(held)

    async def _send(self, client: Any) -> None:
        while True:
            while self._outbox:
                message = self._outbox[0]
                async with asyncio.timeout(TIMEOUT_S):
                    await self._apply(client, message)
                self._outbox.popleft()  # only once Redis has it
            self._wake.clear()
            await self._wake.wait()

    async def _apply(self, client: Any, message: Message) -> None:
        pipe = client.pipeline(transaction=False)
        if message["t"] == "ban":
            ban = ban_from(message)
            ttl_ms = int((ban.until - time.time()) * 1000)  # told late (Redis was away): what is left of it
            if ttl_ms > 0:
                pipe.set(BAN_KEY + ban.client, json.dumps(message), px=ttl_ms)
        elif message["t"] == "unban":
            pipe.delete(BAN_KEY + str(message["client"]))
        pipe.publish(CHANNEL, json.dumps(message, separators=(",", ":")))
        await pipe.execute()

    async def _listen(self, pubsub: Any, guard: Hearer) -> None:
        async for item in pubsub.listen():
            if item.get("type") != "message":
                continue
            try:
                message = json.loads(item["data"])
                if message.get("from") != self.id:
                    hear(guard, message)
            except (ValueError, KeyError, TypeError, AttributeError):
                self._faults.inc()
                log.warning("defender: a malformed message was dropped", extra=fields(channel=CHANNEL))


def _without_password(url: str) -> str:
    """The URL for a log line: a password in it (redis://:secret@host) is not written."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at and credentials else url
