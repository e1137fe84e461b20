"""Running a test's coroutine on either event loop the gateway supports (asyncio's own, uvloop), with a bound.

uvloop is a hard dependency of ftp-alg (pyproject.toml): imported plainly, so that a missing uvloop fails the
tests instead of skipping half of them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

LOOPS = ["asyncio", "uvloop"]


def run_on(loop_kind: str, main: Callable[[], Awaitable[Any]], *, limit_s: float = 20) -> Any:
    """main() on a fresh loop of `loop_kind`, failing with TimeoutError after `limit_s`."""
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(main(), limit_s))
