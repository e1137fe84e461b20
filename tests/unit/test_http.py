"""The metrics/health listener without sockets: request heads fed to a StreamReader, routes answered for a
stand-in gateway, upstream banners read from fed bytes, and readiness checks shared and cached."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from ipaddress import ip_address
from types import SimpleNamespace
from typing import Any

import pytest
from fakewriter import FakeWriter
from prometheus_client.parser import text_string_to_metric_families

from alg.ftp.addresses import HostPort
from alg.gateway.secure import TlsRuntime
from alg.ops import banner, http
from alg.ops.config_sections import HealthCheck
from alg.ops.metrics import Metrics

UPSTREAM = HostPort(ip_address("198.51.100.10"), 21)


def _sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def fed(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=http.MAX_HEAD_LINE_BYTES)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def gateway(*, upstream: HostPort | None = None, stopping: bool = False, ready: bool = True) -> Any:
    event = asyncio.Event()
    if ready:
        event.set()
    servers = (SimpleNamespace(address=upstream),) if upstream is not None else ()
    return SimpleNamespace(
        stopping=stopping,
        ready=event,
        settings=SimpleNamespace(upstream_servers=servers),
        metrics=Metrics(),
        tls=TlsRuntime(),
        upstream_health=lambda: "unchecked",
        probe_address=lambda: upstream,
    )


async def ask(listener: http.HttpListener, request: bytes) -> tuple[int, dict[str, str], bytes]:
    writer = FakeWriter()
    await listener._serve_one(fed(request), writer)  # type: ignore[arg-type]
    head, _, body = bytes(writer.data).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert headers["Content-Length"] == str(len(body)) or request.startswith(b"HEAD")
    return int(status_line.split()[1]), headers, body


# ---- routes ---------------------------------------------------------------------------------------------------


@_sync
async def test_metrics_route_serves_the_registry_in_text_format() -> None:
    gw = gateway()
    gw.metrics.refused("bounce")
    status, headers, body = await ask(http.HttpListener(gw), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }
    assert values[("ftp_alg_refusals_total", (("reason", "bounce"),))] == 1
    assert values[("ftp_alg_upstream_ready", ())] == 1  # transparent stand-in: no single upstream


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\n", 200),
        (b"GET /healthz?verbose=1 HTTP/1.0\n\n", 200),  # bare LF and a query string
        (b"GET /readyz HTTP/1.1\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\n\r\n", 200),
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"hello\r\n\r\n", 400),
    ],
)
@_sync
async def test_routes(request_bytes: bytes, status: int) -> None:
    assert (await ask(http.HttpListener(gateway()), request_bytes))[0] == status


@_sync
async def test_head_has_no_body() -> None:
    writer = FakeWriter()
    await http.HttpListener(gateway())._serve_one(fed(b"HEAD /healthz HTTP/1.1\r\n\r\n"), writer)  # type: ignore[arg-type]
    assert bytes(writer.data).endswith(b"\r\n\r\n")
    assert b"Content-Length: 3" in writer.data


@_sync
async def test_cut_or_endless_heads_get_no_answer() -> None:
    listener = http.HttpListener(gateway())
    for request in (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"GET /metr", b"X" * (http.MAX_HEAD_LINE_BYTES + 10)):
        writer = FakeWriter()
        await listener._serve_one(fed(request), writer)  # type: ignore[arg-type]
        assert writer.data == b"", request[:40]
    endless = b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * (http.MAX_HEAD_LINES + 5) + b"\r\n"
    assert (await ask(listener, endless))[0] == 400


@_sync
async def test_not_ready_while_stopping_or_before_listening() -> None:
    status, _, body = await ask(http.HttpListener(gateway(stopping=True)), b"GET /readyz HTTP/1.1\r\n\r\n")
    assert (status, body) == (503, b"not ready: shutting down\n")
    status, _, body = await ask(http.HttpListener(gateway(ready=False)), b"GET /readyz HTTP/1.1\r\n\r\n")
    assert (status, body) == (503, b"not ready: not listening yet\n")
    assert (await ask(http.HttpListener(gateway(stopping=True)), b"GET /healthz HTTP/1.1\r\n\r\n"))[0] == 200


# ---- the upstream's banner (alg.ops.banner, shared with the health checks) ---------------------------------


@pytest.mark.parametrize(
    ("greeting", "reason"),
    [
        (b"220 (vsFTPd 3.0.3)\r\n", None),
        (b"220-Welcome\r\n to the server\r\n220 ready\r\n", None),
        (b"120 ready in 1 minute\r\n220 ready\r\n", None),
        (b"220\r\n", None),
        (b"421 Too many users\r\n", "answered 421 Too many users"),
        (b"220-never ends\r\n", "closed the connection before its 220 banner"),
        (b"", "closed the connection before its 220 banner"),
        (b"530 \x1b[31m\r\n", "answered 530 \\x1b[31m"),
        (b"220-" + b"x" * (banner.MAX_BANNER_LINE_BYTES + 10) + b"\r\n", "sent an overlong banner line"),
        (b"220-more\r\n" * (banner.MAX_BANNER_LINES + 1), "sent a banner that does not end"),
    ],
)
@_sync
async def test_banner(greeting: bytes, reason: str | None) -> None:
    writer = FakeWriter()
    reader = asyncio.StreamReader(limit=banner.MAX_BANNER_LINE_BYTES)
    reader.feed_data(greeting)
    reader.feed_eof()
    assert await banner.check_greeting(reader, writer) == reason
    assert bytes(writer.data) == (b"QUIT\r\n" if reason is None else b"")


@_sync
async def test_readiness_checks_are_shared_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[HostPort] = []
    answers = iter(["cannot connect to 198.51.100.10:21: Connection refused", None])

    async def probe(upstream: HostPort, timeout_s: float) -> str | None:
        calls.append(upstream)
        await asyncio.sleep(0)
        return next(answers)

    monkeypatch.setattr(http, "probe_upstream", probe)
    gw = gateway(upstream=UPSTREAM)
    readiness = http.Readiness(gw, cache_s=3600)
    reasons = await asyncio.gather(*(readiness.check() for _ in range(5)))
    assert len(calls) == 1
    assert set(reasons) == {"cannot connect to 198.51.100.10:21: Connection refused"}
    assert gw.metrics.upstream_ready._value.get() == 0
    for _ in range(10):  # scrapes and probes in a row: the last answer, no new connection
        await readiness.check()
    assert len(calls) == 1
    readiness.cache_s = 0  # expired: the next check asks again
    assert await readiness.check() is None
    assert len(calls) == 2
    assert gw.metrics.upstream_ready._value.get() == 1


def test_a_single_upstream_is_probed_at_most_once_per_health_interval() -> None:
    assert HealthCheck().interval_s == http.READY_CACHE_S
    assert http.Readiness(gateway(upstream=UPSTREAM)).cache_s == http.READY_CACHE_S
