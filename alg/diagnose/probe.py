"""The probe: real sockets against the server, every wait bounded, the results as Observations.

Rules: each data mode runs in a control session of its own, so one that hangs cannot confuse the next; the
total time limit is checked before each wait (OutOfTime ends the run with what was seen so far); replies are
parsed with alg.ftp (find_227, find_229, format_port, format_eprt); no password is kept in what this returns.
"""

from __future__ import annotations

import errno
import hashlib
import random
import select
import socket
import ssl
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from alg.diagnose.ftpclient import Budget, ControlClosed, ControlConnection, OutOfTime, Reply, printable
from alg.diagnose.observations import (
    MODES,
    PASSIVE_MODES,
    Control,
    ControlStop,
    DataPath,
    Failure,
    HostPort,
    IPAddress,
    Mode,
    ModeCheck,
    Observations,
    PathResult,
    Transfer,
    TransferResult,
    Via,
    same_host,
)
from alg.errors import ServerProtocolError
from alg.ftp.addresses import find_227, find_229, format_eprt, format_port
from alg.ftp.wire import strip_telnet

MAX_LISTING_BYTES = 1 << 20  # a listing is read only to count its lines
TRANSFER_NAME = "ftp-alg-diagnose.bin"


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    password: str
    tls: bool = False
    insecure: bool = False
    wait_s: float = 5.0
    total_s: float = 120.0
    size: int = 0  # --size: bytes to upload and read back; 0 for none
    folder: str = ""  # the URL's path: where the --size transfer writes its file
    active_address: IPAddress | None = None  # the address to offer in PORT/EPRT (default: our control address)
    internal_address: IPAddress | None = None

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"Target({self.user}@{self.host}:{self.port}, tls={self.tls})"


class _Stopped(Exception):
    def __init__(self, control: Control) -> None:
        super().__init__(control.detail)
        self.control = control


def probe(target: Target) -> Observations:
    budget = Budget(target.total_s, target.wait_s)
    base = Observations(
        control=Control(target.host, target.port, target.user),
        wait_s=target.wait_s,
        default_gateway=default_gateway(),
        internal_address=target.internal_address,
        folder=target.folder,
    )
    try:
        conn, control = _open(target, budget, tls=target.tls, describe=True)
    except _Stopped as stopped:
        return replace(base, control=stopped.control, out_of_time=budget.expired)
    except OutOfTime:
        return replace(base, out_of_time=True)
    conn.close()
    obs = replace(base, control=control)
    modes: list[ModeCheck] = []
    try:
        for mode in MODES:
            modes.append(_check_mode(target, budget, control, mode, tls=target.tls))
        tls_modes: list[ModeCheck] = []
        tls_skipped = ""
        if not target.tls and control.offers_tls:
            tls_skipped = _tls_opening_problem(target, budget)
            if not tls_skipped:
                for mode in PASSIVE_MODES:
                    tls_modes.append(_check_mode(target, budget, control, mode, tls=True))
        obs = replace(obs, modes=tuple(modes), tls_modes=tuple(tls_modes), tls_skipped=tls_skipped)
        if target.size:
            obs = replace(obs, transfer=_transfer(target, budget, control, obs))
    except OutOfTime:
        return replace(obs, modes=tuple(modes), out_of_time=True)
    return obs


# --------------------------------------------------------------------------- control session


def _tls_context(insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


_contexts: dict[bool, ssl.SSLContext] = {}


def _context(target: Target) -> ssl.SSLContext:
    # One context per run: a data connection resumes the control connection's TLS session, and a session
    # resumes only through the context that made it.
    if target.insecure not in _contexts:
        _contexts[target.insecure] = _tls_context(target.insecure)
    return _contexts[target.insecure]


def _open(target: Target, budget: Budget, *, tls: bool, describe: bool = False) -> tuple[ControlConnection, Control]:
    """A logged-in control session (TLS and PROT P when `tls`); raises _Stopped saying where it stopped."""
    control = Control(target.host, target.port, target.user)
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _Stopped(_stop(control, "resolve", "unresolved", str(exc.strerror or exc))) from None
    family, _, _, _, sockaddr = infos[0]
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(budget.wait())
        try:
            sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        server = ip_address(sockaddr[0])
        failure, detail = _connect_failure(exc)
        raise _Stopped(_stop(replace(control, server=server), "connect", failure, detail)) from None
    control = replace(control, server=ip_address(sock.getpeername()[0]), client=ip_address(sock.getsockname()[0]))
    conn = ControlConnection(sock, budget)
    try:
        return conn, _login(conn, control, target, tls=tls, describe=describe)
    except BaseException:
        conn.close()
        raise


def _login(conn: ControlConnection, control: Control, target: Target, *, tls: bool, describe: bool) -> Control:
    stage: ControlStop = "banner"
    try:
        banner = conn.read_reply()
        while banner.code == 120:  # RFC 959: "service ready in nnn minutes"; the 220 follows
            banner = conn.read_reply()
        if banner.code != 220:
            raise _Stopped(_stop(control, "banner", "rejected", banner.text))
        control = replace(control, banner=banner.text)
        if tls:
            stage = "tls"
            reply = conn.command("AUTH TLS")
            if reply.code != 234:
                raise _Stopped(_stop(control, "tls", "rejected", f"AUTH TLS: {reply.text}"))
            conn.start_tls(_context(target), target.host)
            control = replace(control, tls=True)
        stage = "login"
        reply = conn.command(f"USER {target.user}")
        if reply.code == 331:
            reply = conn.command(f"PASS {target.password}")
        if reply.code != 230:
            raise _Stopped(_stop(control, "login", "rejected", reply.text))
        control = replace(control, login_reply=reply.text)
        if tls:
            for line in ("PBSZ 0", "PROT P"):
                reply = conn.command(line)
                if reply.code != 200:
                    raise _Stopped(_stop(control, "tls", "rejected", f"{line}: {reply.text}"))
        if describe:
            feat = conn.command("FEAT")
            features = tuple(printable(line).strip() for line in feat.lines[1:-1]) if feat.code == 211 else ()
            syst = conn.command("SYST")
            control = replace(control, features=features, system=syst.text if syst.code == 215 else "")
        return control
    except ssl.SSLError as exc:
        raise _Stopped(_stop(control, "tls", "tls", _tls_words(exc))) from None
    except TimeoutError:
        raise _Stopped(_stop(control, stage, "no_reply", "no reply")) from None
    except ControlClosed as exc:
        raise _Stopped(_stop(control, stage, "closed", str(exc))) from None
    except ConnectionResetError:
        raise _Stopped(_stop(control, stage, "reset", "connection reset")) from None
    except OSError as exc:
        raise _Stopped(_stop(control, stage, "reset", exc.strerror or str(exc))) from None


def _stop(control: Control, stage: ControlStop, failure: Failure, detail: str) -> Control:
    return replace(control, stopped_at=stage, failure=failure, detail=detail)


def _tls_words(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the certificate is not trusted ({exc.verify_message}); --insecure skips the check"
    return exc.reason or str(exc)


def _connect_failure(exc: OSError) -> tuple[Failure, str]:
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, TimeoutError):
        return "timeout", "no answer"
    if isinstance(exc, ConnectionResetError):
        return "reset", "connection reset"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable", "no route to host"
    return "unreachable", exc.strerror or str(exc)


def _path_failure(exc: OSError) -> PathResult:
    failure, _ = _connect_failure(exc)
    if failure == "refused" or failure == "timeout" or failure == "reset":
        return failure
    return "unreachable"


def _tls_opening_problem(target: Target, budget: Budget) -> str:
    """Why the opportunistic TLS check cannot run ("" when it can)."""
    try:
        conn, _ = _open(target, budget, tls=True)
    except _Stopped as stopped:
        return f"AUTH TLS offered, not checked: {stopped.control.detail}"
    conn.close()
    return ""


# --------------------------------------------------------------------------- data modes


def _check_mode(target: Target, budget: Budget, control: Control, mode: Mode, *, tls: bool) -> ModeCheck:
    try:
        conn, _ = _open(target, budget, tls=tls)
    except _Stopped as stopped:
        return ModeCheck(mode, tls, "", None, error=f"no session: {stopped.control.detail}")
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
        return DataPath(where, via, _path_failure(exc))
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
            stream = _context(target).wrap_socket(data, server_hostname=target.host, session=conn.tls_session)
        listing = _read_all(stream, budget)
    except ssl.SSLError as exc:
        return DataPath(where, via, "tls", _tls_words(exc), peer)
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
        pending = isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending() > 0
        readable = [conn.sock] if pending else select.select([listener, conn.sock], [], [], remaining)[0]
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


# --------------------------------------------------------------------------- larger transfer


def _transfer(target: Target, budget: Budget, control: Control, obs: Observations) -> Transfer | None:
    """STOR `size` bytes, RETR them, compare, DELE: through the first passive mode that works."""
    from alg.diagnose.reasoning import mode_status

    working = [check for check in obs.modes if check.mode in PASSIVE_MODES and mode_status(check) == "ok"]
    if not working:
        return None
    mode = working[0].mode
    payload = random.Random(target.size).randbytes(target.size)
    try:
        conn, _ = _open(target, budget, tls=target.tls)
    except _Stopped as stopped:
        return Transfer(mode, target.size, "failed", 0, stopped.control.detail)
    try:
        if target.folder.strip("/"):
            reply = conn.command(f"CWD {target.folder}")
            if reply.code >= 300:
                return Transfer(mode, target.size, "upload_refused", 0, reply.text)
        conn.command("TYPE I")
        moved, result, detail = _store(conn, target, control, mode, payload)
        if result != "ok":
            return Transfer(mode, target.size, result, moved, detail)
        back, result, detail = _retrieve(conn, target, control, mode)
        conn.command(f"DELE {TRANSFER_NAME}")
        if result != "ok":
            return Transfer(mode, target.size, result, len(back), detail)
        if hashlib.sha256(back).digest() != hashlib.sha256(payload).digest():
            return Transfer(mode, target.size, "mismatch", len(back), "the bytes read back differ")
        return Transfer(mode, target.size, "ok", len(back))
    except (TimeoutError, ControlClosed, OSError) as exc:
        return Transfer(mode, target.size, "failed", 0, f"control connection: {exc}")
    finally:
        conn.close()


def _data_socket(conn: ControlConnection, target: Target, control: Control, mode: Mode) -> socket.socket | str:
    assert control.server is not None
    reply = conn.command(mode)
    if reply.code not in (227, 229):
        return reply.text
    if mode == "PASV":
        where, _, _ = find_227(strip_telnet(reply.last))
    else:
        where = HostPort(control.server, find_229(strip_telnet(reply.last))[0])
    return socket.create_connection((str(where.ip), where.port), timeout=conn.budget.wait())


def _store(
    conn: ControlConnection, target: Target, control: Control, mode: Mode, payload: bytes
) -> tuple[int, TransferResult, str]:
    data = _data_socket(conn, target, control, mode)
    if isinstance(data, str):
        return 0, "failed", data
    sent = 0
    with data:
        first = conn.command(f"STOR {TRANSFER_NAME}")
        if first.code >= 400:
            return 0, "upload_refused", first.text
        stream = _wrap(data, conn, target)
        try:
            view = memoryview(payload)
            while sent < len(payload):
                stream.settimeout(conn.budget.wait())
                sent += stream.send(view[sent : sent + 65536])
        except (TimeoutError, OSError):
            return sent, "stalled", "the upload stopped"
        finally:
            if target.tls and isinstance(stream, ssl.SSLSocket):
                stream = stream.unwrap()
            stream.close()
    final = conn.read_reply()
    return sent, ("ok" if final.code < 300 else "failed"), final.text


def _retrieve(
    conn: ControlConnection, target: Target, control: Control, mode: Mode
) -> tuple[bytes, TransferResult, str]:
    data = _data_socket(conn, target, control, mode)
    if isinstance(data, str):
        return b"", "failed", data
    received = bytearray()
    with data:
        first = conn.command(f"RETR {TRANSFER_NAME}")
        if first.code >= 400:
            return b"", "failed", first.text
        stream = _wrap(data, conn, target)
        try:
            while chunk := _recv(stream, conn.budget):
                received += chunk
        except (TimeoutError, OSError):
            return bytes(received), "stalled", "the download stopped"
        finally:
            stream.close()
    final = conn.read_reply()
    return bytes(received), ("ok" if final.code < 300 else "failed"), final.text


def _recv(stream: socket.socket, budget: Budget) -> bytes:
    stream.settimeout(budget.wait())
    return stream.recv(1 << 16)


def _wrap(data: socket.socket, conn: ControlConnection, target: Target) -> socket.socket:
    if not target.tls:
        return data
    data.settimeout(conn.budget.wait())
    return _context(target).wrap_socket(data, server_hostname=target.host, session=conn.tls_session)


# --------------------------------------------------------------------------- this host


def default_gateway(route_table: Path = Path("/proc/net/route")) -> IPAddress | None:
    """This host's IPv4 default gateway (where a NAT box would be), or None."""
    try:
        text = route_table.read_text()
    except OSError:
        return None
    return parse_default_gateway(text)


def parse_default_gateway(text: str) -> IPAddress | None:
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "00000000" and fields[2] != "00000000":
            try:
                return IPv4Address(bytes.fromhex(fields[2])[::-1])
            except ValueError:
                return None
    return None
