"""The metrics and health listener: GET /metrics, /healthz and /readyz on one small asyncio HTTP server; and, on
the listener configured for them (admin.listen), the admin endpoints /sessions (alg.ops.admin).

Rules: it runs on the gateway's event loop and never blocks it (one short-lived task per connection, bounded
request head, time limit, connection cap, one request per connection); /readyz and every scrape check that the
upstream sends its 220 banner in time: the health checks' last result, or (a single upstream without them) one
check at a time and at most once per READY_CACHE_S, so probes cannot be turned into a flood of connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import generate_latest

from alg.ftp.addresses import HostPort
from alg.net.dataplane import peer_ip
from alg.ops import admin as a
from alg.ops import banner
from alg.ops.admin_peers import Peers, peer_addresses
from alg.ops.bans import BansSource, bans_json, is_bans_path, unban_target
from alg.ops.config import Settings
from alg.ops.logs import fields, printable
from alg.ops.metrics import Metrics


class UpstreamTls(Protocol):
    """How the gateway speaks TLS to its upstream (alg.gateway.secure.TlsRuntime fits)."""

    upstream_mode: str
    upstream_context: ssl.SSLContext | None
    upstream_server_name: str | None


class Gateway(Protocol):
    """What the HTTP side reports on. The gateway hands itself in (alg.gateway.server.Gateway fits), so this
    module never imports the layer that starts it."""

    ready: asyncio.Event
    settings: Settings
    metrics: Metrics

    @property
    def tls(self) -> UpstreamTls: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def guard(self) -> BansSource:
        """The defender's bans (alg.gateway.guard.Guard)."""

    def upstream_health(self) -> str | None:
        """None when an upstream passes its health checks, else why not; 'unchecked' without health checks."""

    def probe_address(self) -> HostPort | None:
        """The upstream /readyz probes itself (names resolved); None in transparent mode."""


log = logging.getLogger("ftp_alg.http")

READY_TIMEOUT_S = 2.0  # the upstream's 220 banner must arrive within this
# Answers reused for this long (the health checks' default interval), so probes and scrapes cost a single upstream
# without health checks one login per interval, however often they come.
READY_CACHE_S = 5.0
REQUEST_TIMEOUT_S = 5.0  # the whole request head must arrive within this
MAX_HEAD_LINE_BYTES = 8 * 1024
MAX_HEAD_LINES = 100
MAX_CONNECTIONS = 64
# The text format generate_latest writes; named here, as newer prometheus_client's CONTENT_TYPE_LATEST says
# version=1.0.0, which Prometheus 2 does not know.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}

_INDEX = b"ftp-alg: /metrics (Prometheus), /healthz (serving), /readyz (upstream answers with 220)\n"


async def probe_upstream(
    upstream: HostPort,
    timeout_s: float = READY_TIMEOUT_S,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> str | None:
    """None when `upstream` greets with 220 within `timeout_s`; else why it is not ready (alg.ops.banner)."""
    return await banner.probe(upstream, timeout_s, tls=tls, server_name=server_name)


class Readiness:
    """Whether the gateway can serve: listening, not shutting down, and its upstream greets with 220."""

    def __init__(self, gateway: Gateway, *, timeout_s: float = READY_TIMEOUT_S, cache_s: float = READY_CACHE_S) -> None:
        self.gateway = gateway
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._lock = asyncio.Lock()
        self._checked_at = float("-inf")
        self._reason: str | None = None

    async def check(self) -> str | None:
        """None when ready, else the reason (one line, fit for a 503 body and a log)."""
        gateway = self.gateway
        if gateway.stopping:
            return "shutting down"
        if not gateway.ready.is_set():
            return "not listening yet"
        reason = gateway.upstream_health()
        if reason != "unchecked":  # several upstreams: health checks decide; ready while one passes them
            gateway.metrics.upstream_ready.set(1 if reason is None else 0)
            return reason
        upstream = gateway.probe_address()
        if upstream is None:  # transparent mode: each session's upstream is its own original destination
            gateway.metrics.upstream_ready.set(1)
            return None
        async with self._lock:  # concurrent probes wait for the one running and share its answer
            if time.monotonic() - self._checked_at >= self.cache_s:
                tls = gateway.tls
                implicit = tls.upstream_context if tls.upstream_mode == "implicit" else None
                name = tls.upstream_server_name
                if implicit is None:
                    reason = await probe_upstream(upstream, self.timeout_s)
                else:
                    reason = await probe_upstream(upstream, self.timeout_s, implicit, name)
                if reason != self._reason:
                    level = logging.INFO if reason is None else logging.WARNING
                    log.log(level, "upstream %s", "ready" if reason is None else f"not ready: {reason}")
                self._reason = reason
                self._checked_at = time.monotonic()
                gateway.metrics.upstream_ready.set(1 if reason is None else 0)
            return self._reason


@dataclass(slots=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class AdminAccess:
    """The admin endpoints of a listener: the sessions they act on, the bearer token (None: none asked), and
    the other workers, whose sessions this listener answers for too."""

    sessions: a.SessionsSource
    token: str | None = None
    peers: Peers = field(default_factory=lambda: Peers(worker=0, workers=1))
    bans: BansSource | None = None  # the defender's: GET /bans, DELETE /bans/ADDRESS (alg.ops.bans)


class HttpListener:
    """The running listener; close() stops accepting (what `serve` calls at shutdown). `metrics`: serves
    /metrics and /readyz; `admin`: serves /sessions (else a 404 there, as for any unknown path)."""

    def __init__(self, gateway: Gateway, *, metrics: bool = True, admin: AdminAccess | None = None) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.admin = admin
        self.readiness = Readiness(gateway)
        self.addresses: list[HostPort] = []
        self._server: asyncio.Server | None = None
        self._connections = 0

    async def start(self, address: HostPort) -> None:
        self._server = await asyncio.start_server(
            self._handle, host=str(address.ip), port=address.port, reuse_address=True, limit=MAX_HEAD_LINE_BYTES
        )
        for sock in self._server.sockets:
            name = sock.getsockname()
            self.addresses.append(HostPort(peer_ip(name), name[1]))
        what = ["metrics and health"] if self.metrics else ["health"]
        if self.admin is not None:
            what.append("admin" + (" (bearer token)" if self.admin.token else " (no token)"))
        log.info("%s on http://%s/", ", ".join(what), ", ".join(map(str, self.addresses)))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        try:
            if self._connections <= MAX_CONNECTIONS:
                await self._serve_one(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await _read_head(reader)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError):
            return  # too slow, too long or cut short: nothing worth answering
        if request is None:
            response = _Response(400, b"bad request\n")
            method = b"GET"
        else:
            method, path, query, authorization = request
            if self.admin is not None and (a.is_admin_path(path) or is_bans_path(path)):
                response = await self._admin(self.admin, method, path, query, authorization)
            else:
                response = await self._route(method, path)
        _write(writer, response, head_only=method == b"HEAD")
        await writer.drain()

    async def _route(self, method: bytes, path: bytes) -> _Response:
        served = (b"/metrics", b"/healthz", b"/readyz", b"/") if self.metrics else (b"/healthz", b"/")
        if path not in served:
            return _Response(404, b"not found\n")
        if method not in (b"GET", b"HEAD"):
            return _Response(405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),))
        if path == b"/healthz":
            return _Response(200, b"ok\n")
        if path == b"/readyz":
            reason = await self.readiness.check()
            if reason is None:
                return _Response(200, b"ready\n")
            return _Response(503, f"not ready: {reason}\n".encode())
        if path == b"/metrics":
            await self.readiness.check()  # keeps ftp_alg_upstream_ready current at every scrape
            self.gateway.metrics.tasks.set(len(asyncio.all_tasks()))  # this scrape's own task included
            return _Response(200, generate_latest(self.gateway.metrics.registry), METRICS_CONTENT_TYPE)
        return _Response(200, _INDEX)

    async def _admin(
        self, admin: AdminAccess, method: bytes, path: bytes, query: bytes, authorization: bytes | None
    ) -> _Response:
        # The token is checked before anything else, so a caller without it learns nothing, not even a 404.
        if not a.authorized(authorization, admin.token):
            self.gateway.metrics.admin_unauthorized.inc()
            log.warning("admin request refused: %s bearer token", "wrong" if authorization else "no")
            return _Response(401, b"unauthorized\n", headers=(("WWW-Authenticate", 'Bearer realm="ftp-alg"'),))
        if is_bans_path(path):
            return _bans(admin.bans, method, path)
        if path == b"/sessions":
            if method not in (b"GET", b"HEAD"):
                return _Response(405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),))
            return await _list_sessions(admin, whole=query != b"scope=worker")
        target = a.session_path(path)
        if target is None:
            return _Response(404, b"not found\n")
        given, end_path = target
        if (method, end_path) not in ((b"DELETE", False), (b"POST", True)):
            allow = "POST" if end_path else "DELETE"
            return _Response(405, b"method not allowed\n", headers=(("Allow", allow),))
        return await _end_session(admin, given)


def _bans(bans: BansSource | None, method: bytes, path: bytes) -> _Response:
    target = unban_target(path)
    if bans is None:
        return _Response(404, b"not found\n")
    if target is None:
        if method not in (b"GET", b"HEAD"):
            return _Response(405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),))
        return _Response(200, bans_json(bans.bans(), enabled=bans.enabled), "application/json")
    if method != b"DELETE":
        return _Response(405, b"method not allowed\n", headers=(("Allow", "DELETE"),))
    lifted = bans.unban(target)
    if lifted is None:
        return _Response(404, f"no ban on {printable(target)}\n".encode())
    return _Response(200, f"ban on {lifted.client} lifted\n".encode())


async def _list_sessions(admin: AdminAccess, *, whole: bool) -> _Response:
    """This worker's sessions, and (whole) every other worker's, in id order."""
    sessions = admin.sessions.snapshot()
    document: dict[str, Any] = {"sessions": sessions, "workers": admin.peers.workers}
    if whole and admin.peers.workers > 1:
        others, silent = await admin.peers.sessions()
        sessions.extend(others)
        if silent or len(admin.peers.addresses) < admin.peers.workers - 1:
            missing = set(range(admin.peers.workers)) - {admin.peers.worker} - set(admin.peers.addresses)
            document["unreachable_workers"] = sorted({*silent, *missing})
    sessions.sort(key=lambda session: a.parse_session_id(str(session.get("id")), 1) or (1 << 16, 0))
    return _Response(200, a.json_document(document), "application/json")


async def _end_session(admin: AdminAccess, given: str) -> _Response:
    """End the session `given` names, here or at the worker that holds it."""
    peers = admin.peers
    parsed = a.parse_session_id(given, peers.workers)
    if parsed is None:
        text = f"no session {given}: with {peers.workers} workers, give the id as WORKER-NUMBER (see /sessions)"
        return _Response(404, (text + "\n").encode())
    worker, number = parsed
    session = a.session_id(worker, number)
    if worker != peers.worker:
        status, body = await peers.ask(worker, "DELETE", f"/sessions/{session}")
        if status == 0:
            return _Response(404, f"no session {session}: worker {worker} did not answer\n".encode())
        return _Response(status, body)
    if not admin.sessions.end(session):
        return _Response(404, f"no session {session}\n".encode())
    log.info("session ended by the administrator", extra=fields(session=session))
    return _Response(200, f"session {session} ended\n".encode())


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes, bytes, bytes | None] | None:
    """(method, path, query, Authorization value or None) of the request, after reading its head; None when
    it is not HTTP."""
    first = await reader.readline()
    if not first.endswith(b"\n"):
        raise asyncio.IncompleteReadError(first, None)
    authorization = None
    for _ in range(MAX_HEAD_LINES):
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        if line in (b"\r\n", b"\n"):
            break
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"authorization":
            authorization = value.strip()
    else:
        return None
    parts = first.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    method, target = parts[0], parts[1]
    path, _, query = target.partition(b"?")
    return method, path, query, authorization


def _write(writer: asyncio.StreamWriter, response: _Response, *, head_only: bool) -> None:
    reason = _STATUS_TEXT.get(response.status, "")
    headers = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("ascii"))
    if not head_only:
        writer.write(response.body)


async def start_http(
    address: HostPort, gateway: Gateway, *, metrics: bool = True, admin: AdminAccess | None = None
) -> HttpListener:
    """Serve /metrics, /healthz and /readyz (and /sessions when `admin` is given) on `address` until close()."""
    listener = HttpListener(gateway, metrics=metrics, admin=admin)
    await listener.start(address)
    return listener


async def start_http_listeners(
    settings: Settings, gateway: Gateway, sessions: a.SessionsSource, worker: int = 0
) -> list[HttpListener]:
    """The listeners the settings ask for: metrics_listen, and admin.listen (one listener when both are equal).
    ConfigError when the admin token file cannot be read."""
    metrics_at = settings.metrics_listen
    admin_at = settings.admin.listen
    admin = None
    if admin_at is not None:
        token = a.read_token(settings.admin.token_file)
        addresses = peer_addresses(admin_at, worker, settings.workers)
        peers = Peers(worker, settings.workers, addresses, token)
        admin = AdminAccess(sessions, token, peers, bans=gateway.guard)
    listeners: list[HttpListener] = []
    try:
        if metrics_at is not None:
            listeners.append(await start_http(metrics_at, gateway, admin=admin if admin_at == metrics_at else None))
        if admin_at is not None and admin_at != metrics_at:
            listeners.append(await start_http(admin_at, gateway, metrics=False, admin=admin))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners
