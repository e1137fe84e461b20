"""One logged-in control session for the probe: connect, banner, AUTH TLS, login, PBSZ/PROT, each failure
named with where it stopped.

Rules: every wait is bounded by the run's Budget; one TLS context per run, because a data connection resumes
the control connection's TLS session only through the context that made it; the password is never kept in
what comes back.
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass, replace
from ipaddress import ip_address

from alg.diagnose.ftpclient import Budget, ControlClosed, ControlConnection, printable
from alg.diagnose.observations import (
    Control,
    ControlStop,
    Failure,
    IPAddress,
    PathResult,
)


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


class Stopped(Exception):
    def __init__(self, control: Control) -> None:
        super().__init__(control.detail)
        self.control = control


def _new_tls_context(insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


_contexts: dict[bool, ssl.SSLContext] = {}


def tls_context(target: Target) -> ssl.SSLContext:
    # One context per run: a data connection resumes the control connection's TLS session, and a session
    # resumes only through the context that made it.
    if target.insecure not in _contexts:
        _contexts[target.insecure] = _new_tls_context(target.insecure)
    return _contexts[target.insecure]


def open_session(
    target: Target, budget: Budget, *, tls: bool, describe: bool = False
) -> tuple[ControlConnection, Control]:
    """A logged-in control session (TLS and PROT P when `tls`); raises Stopped saying where it stopped."""
    control = Control(target.host, target.port, target.user)
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Stopped(_stop(control, "resolve", "unresolved", str(exc.strerror or exc))) from None
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
        raise Stopped(_stop(replace(control, server=server), "connect", failure, detail)) from None
    control = replace(control, server=ip_address(sock.getpeername()[0]), client=ip_address(sock.getsockname()[0]))
    conn = ControlConnection(sock, budget)
    try:
        return conn, _login(conn, control, target, tls=tls, describe=describe)
    except BaseException:
        conn.close()
        raise


def _login(conn: ControlConnection, control: Control, target: Target, *, tls: bool, describe: bool) -> Control:
    stage: ControlStop = "banner"
    awaited = "220 banner"  # what a timeout was waiting for, in the words of the report
    try:
        banner = conn.read_reply()
        while banner.code == 120:  # RFC 959: "service ready in nnn minutes"; the 220 follows
            banner = conn.read_reply()
        if banner.code != 220:
            raise Stopped(_stop(control, "banner", "rejected", banner.text))
        control = replace(control, banner=banner.text)
        if tls:
            stage, awaited = "tls", "reply to AUTH TLS"
            reply = conn.command("AUTH TLS")
            if reply.code != 234:
                raise Stopped(_stop(control, "tls", "rejected", f"AUTH TLS: {reply.text}"))
            conn.start_tls(tls_context(target), target.host)
            control = replace(control, tls=True)
        stage, awaited = "login", "reply to USER"
        reply = conn.command(f"USER {target.user}")
        if reply.code == 331:
            awaited = "reply to PASS"
            reply = conn.command(f"PASS {target.password}")
        if reply.code != 230:
            raise Stopped(_stop(control, "login", "rejected", reply.text))
        control = replace(control, login_reply=reply.text)
        if tls:
            for line in ("PBSZ 0", "PROT P"):
                reply = conn.command(line)
                if reply.code != 200:
                    raise Stopped(_stop(control, "tls", "rejected", f"{line}: {reply.text}"))
        if describe:
            feat = conn.command("FEAT")
            features = tuple(printable(line).strip() for line in feat.lines[1:-1]) if feat.code == 211 else ()
            syst = conn.command("SYST")
            control = replace(control, features=features, system=syst.text if syst.code == 215 else "")
        return control
    except ssl.SSLError as exc:
        raise Stopped(_stop(control, "tls", "tls", tls_words(exc))) from None
    except TimeoutError:
        raise Stopped(_stop(control, stage, "no_reply", f"no {awaited} within {target.wait_s:g} s")) from None
    except ControlClosed as exc:
        raise Stopped(_stop(control, stage, "closed", str(exc))) from None
    except ConnectionResetError:
        raise Stopped(_stop(control, stage, "reset", "connection reset")) from None
    except OSError as exc:
        raise Stopped(_stop(control, stage, "reset", exc.strerror or str(exc))) from None


def _stop(control: Control, stage: ControlStop, failure: Failure, detail: str) -> Control:
    return replace(control, stopped_at=stage, failure=failure, detail=detail)


def tls_words(exc: ssl.SSLError) -> str:
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


def path_failure(exc: OSError) -> PathResult:
    failure, _ = _connect_failure(exc)
    if failure == "refused" or failure == "timeout" or failure == "reset":
        return failure
    return "unreachable"


def tls_opening_problem(target: Target, budget: Budget) -> str:
    """Why the opportunistic TLS check cannot run ("" when it can)."""
    try:
        conn, _ = open_session(target, budget, tls=True)
    except Stopped as stopped:
        return f"AUTH TLS offered, not checked: {stopped.control.detail}"
    conn.close()
    return ""
