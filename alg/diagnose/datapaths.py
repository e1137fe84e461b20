"""The data modes, each in a control session of its own: PASV and EPSV dial what the server announced (and
the control address with the same port, as FileZilla does), PORT and EPRT open a listener of our own.

Rules: replies are parsed with alg.ftp (find_227, find_229, format_port, format_eprt); a LIST through each
path that connects; every wait bounded; every socket closed on every path.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from ipaddress import IPv4Address, IPv6Address, ip_address

from alg.diagnose.ftpclient import Budget, ControlClosed, ControlConnection, Reply
from alg.diagnose.observations import (
    PASSIVE_MODES,
    Control,
    DataPath,
    HostPort,
    IPAddress,
    Mode,
    ModeCheck,
    PathResult,
    Via,
    same_host,
)
from alg.diagnose.session import Stopped, Target, open_session, path_failure, tls_context, tls_words
from alg.errors import ServerProtocolError
from alg.ftp.addresses import find_227, find_229, format_eprt, format_port
from alg.ftp.wire import strip_telnet

MAX_LISTING_BYTES = 1 << 20  # a listing is read only to count its lines


def check_mode(target: Target, budget: Budget, control: Control, mode: Mode, *, tls: bool) -> ModeCheck:
    try:
        conn, _ = open_session(target, budget, tls=tls)
    except Stopped as stopped:
        # The first session logged in: a later one that stalls says nothing about this mode (a limit on sessions
        # per client, a server under load), and is reported as such, not as the mode failing.
        error = f"{stopped.control.detail}; the earlier sessions worked"
        return ModeCheck(mode, tls, "", None, error=error, stalled=True)
    try:
        if mode in PASSIVE_MODES:
            return _passive(conn, target, control, mode, tls)
        return _active(conn, target, control, mode, tls)
    except (TimeoutError, ControlClosed, OSError) as exc:
        return ModeCheck(mode, tls, "", None, error=f"control connection: {exc}")
    finally:
        conn.close()


def _passive(conn: ControlConnection, target: Target, control: Control, mode: Mode, tls: bool) -> ModeCheck:
    assert control.server is not None
    reply = conn.command(mode)
    line = strip_telnet(reply.last)
    try:
        if mode == "PASV":
            if reply.code != 227:
                return ModeCheck(mode, tls, reply.text, None)
            announced, _, _ = find_227(line)
        else:
            if reply.code != 229:
                return ModeCheck(mode, tls, reply.text, None)
            port, _, _ = find_229(line)
            announced = HostPort(control.server, port)
    except ServerProtocolError as exc:
        return ModeCheck(mode, tls, reply.text, None, error=str(exc))
    paths = [_passive_path(conn, target, announced, "announced", tls)]
    if paths[0].result != "listed" and not same_host(announced.ip, control.server):
        # What FileZilla does silently: the same port on the address we connected to.
        paths.append(_passive_path(conn, target, HostPort(control.server, announced.port), "control address", tls))
    return ModeCheck(mode, tls, reply.text, announced, tuple(paths))


def _passive_path(conn: ControlConnection, target: Target, where: HostPort, via: Via, tls: bool) -> DataPath:
    budget = conn.budget
    try:
        data = socket.create_connection((str(where.ip), where.port), timeout=budget.wait())
    except OSError as exc:
        return DataPath(where, via, path_failure(exc))
    with data:
        first = conn.command("LIST")
        if first.code >= 400:
            return DataPath(where, via, "transfer_failed", first.text)
        return _receive_listing(conn, target, data, first, where, via, tls, peer=None)


def _receive_listing(
    conn: ControlConnection,
    target: Target,
    data: socket.socket,
    first: Reply,
    where: HostPort,
    via: Via,
    tls: bool,
    peer: IPAddress | None,
) -> DataPath:
    budget = conn.budget
    stream: socket.socket = data
    try:
        if tls:
            data.settimeout(budget.wait())
            stream = tls_context(target).wrap_socket(data, server_hostname=target.host, session=conn.tls_session)
        listing = _read_all(stream, budget)
    except ssl.SSLError as exc:
        return DataPath(where, via, "tls", tls_words(exc), peer)
    except (TimeoutError, OSError):
        return DataPath(where, via, "transfer_failed", "the data stopped", peer)
    finally:
        if stream is not data:
            stream.close()
    final = first if first.code >= 200 else conn.read_reply()
    result: PathResult = "listed" if 200 <= final.code < 300 else "transfer_failed"
    return DataPath(where, via, result, final.text, peer, listing.count(b"\n"))


def _read_all(stream: socket.socket, budget: Budget, limit: int = MAX_LISTING_BYTES) -> bytes:
    received = bytearray()
    while len(received) < limit:
        stream.settimeout(budget.wait())
        chunk = stream.recv(65536)
        if not chunk:
            break
        received += chunk
    return bytes(received)


def _active(conn: ControlConnection, target: Target, control: Control, mode: Mode, tls: bool) -> ModeCheck:
    own = ip_address(conn.sock.getsockname()[0])
    offered_ip = target.active_address or own
    if mode == "PORT" and not isinstance(offered_ip, IPv4Address):
        return ModeCheck(mode, tls, "", None, error="PORT carries IPv4 addresses only")
    family = socket.AF_INET6 if isinstance(own, IPv6Address) else socket.AF_INET
    bind = str(own) if target.active_address is None else ("::" if family == socket.AF_INET6 else "0.0.0.0")
    with socket.create_server((bind, 0), family=family, backlog=1) as listener:
        offered = HostPort(offered_ip, listener.getsockname()[1])
        argument = format_port(offered) if mode == "PORT" else format_eprt(offered)
        reply = conn.command(f"{mode} {argument.decode('ascii')}")
        if reply.code >= 300:
            path = DataPath(offered, "listener", "server_refused", reply.text)
            return ModeCheck(mode, tls, reply.text, offered, (path,))
        conn.send("LIST")
        return ModeCheck(mode, tls, reply.text, offered, (_await_server(conn, target, listener, offered, tls),))


def _await_server(
    conn: ControlConnection, target: Target, listener: socket.socket, offered: HostPort, tls: bool
) -> DataPath:
    """Wait for the server's data connection or its reply, whichever comes first, within one wait."""
    budget = conn.budget
    deadline_wait = budget.wait()
    first: Reply | None = None
    end = time.monotonic() + deadline_wait
    while True:
        remaining = end - time.monotonic()
        if remaining <= 0:
            final = ""
            if first is None:
                try:
                    final = conn.read_reply(wait_s=min(1.0, budget.wait())).text
                except (TimeoutError, ControlClosed, OSError):
                    final = ""
            return DataPath(offered, "listener", "no_connection", final)
        readable = [conn.sock] if conn.buffered else select.select([listener, conn.sock], [], [], remaining)[0]
        if listener in readable:
            data, address = listener.accept()
            with data:
                peer = ip_address(address[0])
                if first is None:
                    first = conn.read_reply()
                if first.code >= 400:
                    return DataPath(offered, "listener", "transfer_failed", first.text, peer)
                return _receive_listing(conn, target, data, first, offered, "listener", tls, peer)
        if conn.sock in readable:
            reply = conn.read_reply()
            if reply.code >= 400:
                return DataPath(offered, "listener", "no_connection", reply.text)
            first = reply
