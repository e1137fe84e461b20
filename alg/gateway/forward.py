"""Forward mode: the gateway greets, reads the login that names the server (USER user@host[:port]), optionally
after a proxy login of its own (USER name, PASS password: forward.users_file), resolves the name, checks every
address against forward.allow, and hands the session a Route to that server with `USER user` to replay.

Rules: nothing is connected to before the allowlist passed; a refusal is a 530 that names only what the client
wrote (never a resolved address), counted by reason, logged with the detail. After the Route, the session is a
reverse-mode session like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.reasons import Refusal
from alg.ftp.wire import parse_command, reply
from alg.gateway.frontdoor import FrontTls, answer_before_login, answer_until_login
from alg.gateway.health import Checked, HealthState
from alg.gateway.resolve import NamedAddress, NameNotResolved, Resolver
from alg.gateway.upstreams import Route, Upstream, UpstreamPool
from alg.ops.forward_allow import Allowlist, Destination, parse_destination
from alg.ops.logs import fields, printable
from alg.ops.proxy_users import ProxyUsers

log = logging.getLogger("ftp_alg.forward")

GREETING = "FTP proxy ready; log in as USER user@host[:port]."
GREETING_LOGIN = "FTP proxy ready; log in to the proxy (USER, PASS), then USER user@host[:port]."


@dataclass(frozen=True, slots=True)
class Asked:
    """A login that names its server: where, and whether the client's control connection is TLS now."""

    destination: Destination
    secured: bool
    proxy_user: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Refusal
    text: str  # the 530's words: only what the client wrote
    detail: str = ""  # for the log
    guessed: bool = False  # a wrong proxy password: the defender scores it as a failed login


class _Dialog:
    """The lines before the destination is known; `users` None: no proxy login."""

    def __init__(self, users: ProxyUsers | None, secured: bool) -> None:
        self.users = users
        self.secured = secured
        self.pending: str | None = None  # a proxy user name, waiting for its PASS
        self.proxy_user: str | None = None  # logged in to the proxy

    async def line(self, line: bytes, tls: FrontTls | None) -> tuple[bytes, Asked | Refused | str | None]:
        """The reply and what follows: an Asked, a Refused, "quit", "tls" or None (the next line)."""
        command = parse_command(line)
        if command is not None and command.verb == "PASS" and self.pending is not None:
            return await self._password(command.argument.decode("utf-8", "replace"))
        answer, then = answer_before_login(line, tls=tls, secured=self.secured)
        if then != "login":
            return answer, then
        assert command is not None
        return self._user(command.argument.strip().decode("utf-8", "surrogateescape"))  # replayed byte for byte

    async def _password(self, password: str) -> tuple[bytes, Refused | None]:
        assert self.users is not None and self.pending is not None
        name, self.pending = self.pending, None
        if await asyncio.to_thread(self.users.verify, name, password):
            self.proxy_user = name
            return reply(230, "Proxy login accepted; now USER user@host[:port]."), None
        detail = f"proxy user {printable(name)}"
        return b"", Refused(Refusal.FORWARD_LOGIN, "Login incorrect.", detail, guessed=True)

    def _user(self, argument: str) -> tuple[bytes, Asked | Refused | None]:
        if "@" not in argument:
            if self.users is not None and self.proxy_user is None:
                self.pending = argument
                return reply(331, "Password required for the proxy login."), None
            return reply(530, "Log in as USER user@host[:port] to name the FTP server."), None
        if self.users is not None and self.proxy_user is None:
            text = "Log in to the proxy first (USER name, PASS password), then USER user@host."
            return b"", Refused(Refusal.FORWARD_LOGIN, text, "no proxy login")
        try:
            destination = parse_destination(argument)
        except ValueError as error:
            return reply(530, str(error)), None
        return b"", Asked(destination, self.secured, self.proxy_user)


async def read_login(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    timeout_s: float,
    tls: FrontTls | None,
    users: ProxyUsers | None,
) -> Asked | Refused | None:
    """Greet and read up to the USER that names the server; None when the client quit, closed, failed its TLS
    handshake or took too long."""
    dialog = _Dialog(users, tls is not None and tls.secured)

    async def step(line: bytes, secured: bool) -> tuple[bytes, Asked | Refused | str | None]:
        dialog.secured = secured
        return await dialog.line(line, tls)

    greeting = reply(220, GREETING if users is None else GREETING_LOGIN)
    return await answer_until_login(reader, writer, timeout_s, tls, greeting, step)


async def resolve(destination: Destination, resolver: Resolver, timeout_s: float) -> list[IPAddress] | Refused:
    """The destination's addresses (an IP literal: itself), or a Refused for a name that does not resolve."""
    if destination.literal is not None:
        return [destination.literal]
    try:
        async with asyncio.timeout(timeout_s):
            return await resolver(destination.host, destination.port)
    except (NameNotResolved, TimeoutError) as error:
        detail = str(error) or "timed out"
        return Refused(Refusal.FORWARD_UNKNOWN_HOST, f"{destination.host}: no such FTP server.", detail)


def check(
    destination: Destination, addresses: list[IPAddress], allow: Allowlist, loops: Callable[[IPAddress, int], bool]
) -> Refused | None:
    """None when every address may be reached; never the gateway's own listeners (`loops`: a session would
    connect to itself, again and again)."""
    refused = allow.first_refused(destination, addresses)
    if refused is None:
        refused = next((address for address in addresses if loops(address, destination.port)), None)
    if refused is None and addresses:
        return None
    text = f"Access to {destination} is not allowed by this proxy."
    return Refused(Refusal.FORWARD_NOT_ALLOWED, text, f"address {refused}")


def route_to(destination: Destination, addresses: list[IPAddress], replay: bytes) -> Route:
    """A Route to the destination's addresses in resolver order, replaying `USER user`; a name stays the TLS
    server name toward it. No metrics per destination: labels would grow without bound."""
    port, label = destination.port, str(destination)
    ends = [
        HostPort(address, port) if destination.literal else NamedAddress.of(address, port, destination.host)
        for address in addresses
    ]
    state = HealthState(rise=1, fall=1)
    upstream = Upstream(label, ends[0], health=state, endpoints=[Checked(label, end, state) for end in ends])
    return Route(UpstreamPool([upstream]), [upstream], replay=replay)


def replay_line(destination: Destination) -> bytes:
    return b"USER " + destination.user.encode("utf-8", "surrogateescape") + b"\r\n"


def refuse(writer: asyncio.StreamWriter, refused: Refused, client: IPAddress, destination: str = "") -> None:
    log.info(
        "forward refused",
        extra=fields(client=client, reason=refused.reason, destination=printable(destination), detail=refused.detail),
    )
    writer.write(reply(530, refused.text))
