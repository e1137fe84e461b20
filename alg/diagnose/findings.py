"""Each data mode's outcome read as the FTP-through-NAT guides name it (SCENARIOS.md, scenarios 1-6).

Rules: pure (no I/O, no clocks); every sentence is stable for the same observations; a mode "works" only when
the address the server announced (or the one we offered) works, because that is what an ordinary client
uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alg.diagnose.fixes import Problems
from alg.diagnose.observations import (
    PASSIVE_MODES,
    Control,
    DataPath,
    IPAddress,
    ModeCheck,
    address_kind,
    same_host,
)
from alg.ftp.addresses import HostPort
from alg.ftp.wire import parse_reply_line

Status = Literal["ok", "fallback", "failed", "unsupported", "stalled"]

# SCENARIOS.md, in the admins' words.
SCENARIOS = {
    1: "Server behind NAT, passive",
    2: "Server behind a firewall, passive",
    3: "Client behind NAT, active",
    4: "Client behind a stateful firewall, active",
    5: "Firewalls on both sides",
    6: "Non-standard control port",
}


@dataclass(frozen=True)
class Finding:
    scenario: int | None
    title: str
    text: str
    modes: tuple[str, ...] = ()


def reply_code(reply: str) -> int | None:
    """The code of a reply as the probe kept it ("500 Illegal PORT command."), read by alg.ftp.wire."""
    return parse_reply_line(reply.encode("utf-8")).code


def mode_status(check: ModeCheck) -> Status:
    """ok: the announced (or offered) path works; fallback: only the control address works; stalled: its session
    never logged in (the mode was not tried); else failed."""
    if check.stalled:
        return "stalled"
    if check.error:
        return "failed"
    code = reply_code(check.reply)
    if code is None or code >= 400:
        # 502 (not implemented) and 522 (RFC 2428: network protocol not supported) mean the server does not
        # do this mode at all; clients fall back to the other one.
        unsupported = code in (502, 522) or (code == 500 and check.mode in ("EPSV", "EPRT"))
        if unsupported and not (check.mode == "EPRT" and _refused_address(check)):
            return "unsupported"
        return "failed"
    if not check.paths:
        return "failed"
    if check.paths[0].result == "listed":
        return "ok"
    if any(path.result == "listed" for path in check.paths[1:]):
        return "fallback"
    return "failed"


def _refused_address(check: ModeCheck) -> bool:
    # vsftpd answers a checked EPRT address with "500 Illegal EPRT command.": a refusal, not "unsupported".
    return "illegal" in check.reply.lower() or "won't open" in check.reply.lower()


def control_finding(control: Control, within: str) -> Finding:
    where = f"{control.server or control.host}:{control.port}"
    texts = {
        "unresolved": f"The name {control.host} does not resolve: {control.detail}.",
        "refused": f"Connection refused at {where}: nothing listens on that port, or a firewall rejects it.",
        "timeout": f"No answer from {where} {within}: a firewall drops the connection, or the host is down.",
        "unreachable": f"No route to {where}: {control.detail}.",
        "reset": f"The connection to {where} was reset {_stage(control)}.",
        "closed": f"The server closed the connection {_stage(control)}.",
        "no_reply": f"Connected to {where}, but no reply {_stage(control)} {within}: something"
        " accepts the connection and does not speak FTP (a port forward to nothing, a proxy), or the server"
        " is overloaded.",
        "rejected": f"The server answered {_stage(control)}: {control.detail}",
        "tls": f"TLS did not start: {control.detail}",
    }
    failure = control.failure or "rejected"
    title = {
        "connect": "Cannot connect",
        "banner": "No FTP banner",
        "tls": "TLS failed",
        "login": "Login refused",
        "resolve": "Cannot resolve",
    }
    return Finding(None, title[control.stopped_at or "connect"], texts[failure])


def _stage(control: Control) -> str:
    return {
        "connect": "while connecting",
        "banner": "before its 220 banner",
        "tls": "during AUTH TLS",
        "login": "at login",
        "resolve": "",
    }[control.stopped_at or "connect"]


def mode_label(check: ModeCheck) -> str:
    return f"{check.mode} (TLS)" if check.protected else check.mode


def path_words(path: DataPath, wait_s: float) -> str:
    words = {
        "listed": f"listed {path.lines} line{'' if path.lines == 1 else 's'}",
        "refused": "connection refused",
        "timeout": f"no answer within {wait_s:g} s",
        "unreachable": "no route to host",
        "reset": "connection reset",
        "tls": f"TLS handshake failed ({path.reply})" if path.reply else "TLS handshake failed",
        "transfer_failed": f"transfer failed ({path.reply})" if path.reply else "transfer failed",
        "server_refused": "refused by the server",
        "no_connection": f"no connection within {wait_s:g} s",
    }
    return words[path.result]


def announced_words(ip: IPAddress, server: IPAddress | None) -> str:
    """How a 227 address that is not the control peer's reads to an admin (SCENARIOS.md, scenario 1)."""
    kind = address_kind(ip)
    if kind == "private":
        return f"a private address ({ip})"
    if kind == "unroutable":
        return f"an unroutable address ({ip})"
    return f"{ip}, different from the address you connected to ({server})"


def analyse(
    check: ModeCheck,
    status: Status,
    control: Control,
    wait_s: float,
    findings: list[Finding],
    notes: list[str],
    problems: Problems,
) -> None:
    if check.mode in PASSIVE_MODES:
        _analyse_passive(check, status, control, wait_s, findings, notes, problems)
    else:
        _analyse_active(check, status, control, wait_s, findings, notes, problems)


def _analyse_passive(
    check: ModeCheck,
    status: Status,
    control: Control,
    wait_s: float,
    findings: list[Finding],
    notes: list[str],
    problems: Problems,
) -> None:
    label = mode_label(check)
    if status == "unsupported":
        notes.append(f"The server does not do {check.mode} ({check.reply}); clients fall back to the other mode.")
        return
    if check.address is None or not check.paths:
        if status == "failed":
            findings.append(
                Finding(
                    None,
                    f"{check.mode} refused",
                    f"The server answered {check.mode}: {check.reply or check.error}.",
                    (label,),
                )
            )
        return
    announced = check.address
    first = check.paths[0]
    if not same_host(announced.ip, control.server):
        _announced_elsewhere(check, status, control, wait_s, findings, notes, problems)
        return
    if status != "ok":
        if first.result in ("tls", "transfer_failed"):
            findings.append(
                Finding(
                    None,
                    f"{check.mode} data fails",
                    f"The data connection opened, then {path_words(first, wait_s)}.",
                    (label,),
                )
            )
            return
        _blocked(check, first, wait_s, findings, problems)


def _announced_elsewhere(
    check: ModeCheck,
    status: Status,
    control: Control,
    wait_s: float,
    findings: list[Finding],
    notes: list[str],
    problems: Problems,
) -> None:
    """The 227 names another host than the one we connected to: scenario 1 (or a note when it still works)."""
    assert check.address is not None
    announced, first, label = check.address, check.paths[0], mode_label(check)
    tls = " Under TLS the 227 is encrypted: no NAT helper can read or rewrite it." if check.protected else ""
    problems.announced = announced
    words = announced_words(announced.ip, control.server)
    if status == "ok":
        notes.append(f"The server announced {words} in its 227, and this host reaches it; clients elsewhere may not.")
        return
    problems.server_side = True
    problems.address_differs = True
    problems.tls |= check.protected
    text = f"Login works, then the 227 names {words}: {path_words(first, wait_s)}."
    fallback = check.paths[1] if len(check.paths) > 1 else None
    if fallback is not None and fallback.result == "listed":
        text += (
            " The same port on the address you connected to works, so the passive ports reach the server but"
            " it writes its own address into the reply. Clients that substitute the control address (FileZilla:"
            ' "Server sent passive reply with unroutable address") work; the others hang or fail.'
        )
    findings.append(Finding(1, SCENARIOS[1] + (" (TLS)" if check.protected else ""), text + tls, (label,)))
    if fallback is not None and fallback.result != "listed":
        _blocked(check, fallback, wait_s, findings, problems)
    return


def _blocked(check: ModeCheck, path: DataPath, wait_s: float, findings: list[Finding], problems: Problems) -> None:
    """The passive port at the control address does not let us in: scenario 2."""
    problems.server_side = True
    problems.range_blocked = True
    problems.tls |= check.protected
    where = path.target
    if path.result == "timeout":
        text = (
            f"Login works, then the data connection to {where} gets no answer within {wait_s:g} s: a firewall in"
            " front of the server drops the passive port range."
        )
    elif path.result == "refused":
        text = (
            f"Login works, then the data connection to {where} is refused: nothing listens there for this"
            " client, so the passive port range is not forwarded to the server (or a firewall rejects it)."
        )
    else:
        text = f"Login works, then the data connection to {where}: {path_words(path, wait_s)}."
    if check.protected:
        text += " Under TLS a NAT helper cannot see the port to open it."
    findings.append(Finding(2, SCENARIOS[2] + (" (TLS)" if check.protected else ""), text, (mode_label(check),)))


def _analyse_active(
    check: ModeCheck,
    status: Status,
    control: Control,
    wait_s: float,
    findings: list[Finding],
    notes: list[str],
    problems: Problems,
) -> None:
    label = mode_label(check)
    offered = check.address
    if status == "unsupported":
        notes.append(f"The server does not do {check.mode} ({check.reply}); clients fall back to the other mode.")
        return
    if offered is None:
        if status == "failed":
            findings.append(Finding(None, f"{check.mode} failed", check.error or check.reply, (label,)))
        return
    lan = (
        f"this client announced a LAN address ({offered.ip})"
        if address_kind(offered.ip) == "private"
        else f"this client announced {offered.ip}"
    )
    code = reply_code(check.reply)
    if code is not None and code >= 400:
        _active_refused(check, offered, lan, findings, problems)
        return
    for path in check.paths:
        if path.result == "listed" and path.peer is not None and not same_host(path.peer, control.server):
            notes.append(
                f"The {check.mode} data connection came from {path.peer}, not from {control.server}: the server's"
                " side sends data from another address; a firewall that expects the control address drops it."
            )
        elif path.result == "no_connection":
            problems.client_side = True
            problems.tls |= check.protected
            final = f" (the server then answered {path.reply})" if path.reply else ""
            findings.append(
                Finding(
                    4,
                    SCENARIOS[4],
                    f"The server accepted {check.mode} {offered}, but its data connection did not arrive within"
                    f" {wait_s:g} s{final}: this client's NAT or firewall drops the inbound connection ({lan}).",
                    (label,),
                )
            )
        elif path.result != "listed":
            findings.append(
                Finding(None, f"{check.mode} data fails", f"The data connection: {path_words(path, wait_s)}.", (label,))
            )


def _active_refused(check: ModeCheck, offered: HostPort, lan: str, findings: list[Finding], problems: Problems) -> None:
    """The server refused the PORT/EPRT: scenario 3."""
    problems.client_side = True
    problems.tls |= check.protected
    findings.append(
        Finding(
            3,
            SCENARIOS[3],
            f"The server refused {check.mode} {offered} ({check.reply}). Servers accept only the address they"
            f" see on the control connection, and {lan}: behind NAT the server sees another address (or the"
            " server refuses active mode altogether).",
            (mode_label(check),),
        )
    )
