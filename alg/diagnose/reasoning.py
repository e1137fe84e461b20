"""Observations in, a diagnosis out: the table of checks, the findings named as in the FTP-through-NAT
guides (scenarios 1-6), and the fixes ranked for this case.

Rules: pure (no I/O, no clocks); every sentence here is stable for the same observations, so reports can be
compared byte for byte; a mode "works" only when the address the server announced (or the one we offered)
works, because that is what an ordinary client uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from alg.diagnose.fixes import Fix, Problems, ranked_fixes
from alg.diagnose.observations import (
    PASSIVE_MODES,
    Control,
    DataPath,
    HostPort,
    IPAddress,
    ModeCheck,
    Observations,
    address_kind,
    same_host,
)

EXIT_OK = 0  # every mode works
EXIT_SOME_FAIL = 1  # some modes fail
EXIT_NO_SESSION = 2  # cannot connect or log in

Status = Literal["ok", "fallback", "failed", "unsupported"]

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
class Row:
    check: str
    result: str  # "ok", "FAIL", "partly", "n/a"
    detail: str


@dataclass(frozen=True)
class Finding:
    scenario: int | None
    title: str
    text: str
    modes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Diagnosis:
    exit_status: int
    verdict: str
    rows: tuple[Row, ...]
    findings: tuple[Finding, ...]
    notes: tuple[str, ...]
    fixes: tuple[Fix, ...]
    failing: tuple[str, ...]  # the modes (and checks) that fail, as shown in the table


_CODE = re.compile(r"([1-5][0-9][0-9])")


def reply_code(reply: str) -> int | None:
    match = _CODE.match(reply)
    return int(match.group(1)) if match else None


def mode_status(check: ModeCheck) -> Status:
    """ok: the announced (or offered) path works; fallback: only the control address works; else failed."""
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


def diagnose(obs: Observations) -> Diagnosis:
    control = obs.control
    rows = list(_control_rows(control))
    if not control.ok:
        within = "within the time limit" if obs.out_of_time else f"within {obs.wait_s:g} s"
        finding = _control_finding(control, within)
        return Diagnosis(
            exit_status=EXIT_NO_SESSION,
            verdict="cannot connect or log in",
            rows=tuple(rows),
            findings=(finding,),
            notes=(),
            fixes=(),
            failing=(rows[-1].check,),
        )
    findings: list[Finding] = []
    notes: list[str] = []
    problems = Problems(control=control, default_gateway=obs.default_gateway, internal=obs.internal_address)
    failing: list[str] = []
    for check in obs.modes:
        status = mode_status(check)
        rows.append(Row(_label(check), _result(status), _detail(check, control, obs.wait_s)))
        if status in ("failed", "fallback"):
            failing.append(_label(check))
        _analyse(check, status, control, obs.wait_s, findings, notes, problems)
    plain_ok = {check.mode for check in obs.modes if mode_status(check) == "ok"}
    for check in obs.tls_modes:
        status = mode_status(check)
        rows.append(Row(_label(check), _result(status), _detail(check, control, obs.wait_s)))
        if status in ("failed", "fallback"):
            failing.append(_label(check))
            if check.mode in plain_ok:
                problems.helper_blind_under_tls = True
        _analyse(check, status, control, obs.wait_s, findings, notes, problems)
    if obs.tls_skipped:
        rows.append(Row("TLS", "n/a", obs.tls_skipped))
    if obs.transfer is not None:
        transfer = obs.transfer
        ok = transfer.result == "ok"
        detail = f"{transfer.size} bytes up and back through {transfer.mode}"
        if not ok:
            detail = f"{transfer.result.replace('_', ' ')} after {transfer.moved} of {transfer.size} bytes"
            detail += f" through {transfer.mode}: {transfer.detail}" if transfer.detail else f" ({transfer.mode})"
            failing.append("transfer")
        rows.append(Row("transfer", "ok" if ok else "FAIL", detail))
    if obs.out_of_time:
        rows.append(Row("time", "FAIL", "the total time limit ran out before every check ran"))
        failing.append("time")
    _combine(obs, problems, findings)
    if problems.helper_blind_under_tls:
        findings.append(
            Finding(
                1,
                "FTPS behind NAT: the helper cannot read TLS",
                "Plain FTP passive works here, the same mode under TLS does not: something between this client"
                " and the server (a NAT helper such as the kernel's nf_nat_ftp, or a router's FTP ALG) rewrites"
                " the plain 227/229 or opens its port, and it cannot read the encrypted ones.",
            )
        )
    if failing and control.port != 21 and (problems.client_side or problems.server_side):
        findings.append(
            Finding(
                6,
                SCENARIOS[6],
                f"The server listens on port {control.port}: NAT helpers that watch only port 21 do not see this"
                " session at all.",
            )
        )
    exit_status = EXIT_SOME_FAIL if failing else EXIT_OK
    verdict = "some modes fail" if failing else "every mode works"
    return Diagnosis(
        exit_status=exit_status,
        verdict=verdict,
        rows=tuple(rows),
        findings=tuple(_merge(findings)),
        notes=tuple(dict.fromkeys(notes + problems.notes())),
        fixes=tuple(ranked_fixes(problems)) if failing else (),
        failing=tuple(failing),
    )


# --------------------------------------------------------------------------- control


def _control_rows(control: Control) -> list[Row]:
    order = ("connect", "banner", "tls", "login")
    reached = order.index(control.stopped_at) if control.stopped_at in order else len(order)
    if control.stopped_at == "resolve":
        return [Row("connect", "FAIL", f"{control.host}: {control.detail}")]
    rows: list[Row] = []
    where = HostPort(control.server, control.port) if control.server is not None else None
    connect = f"{where} (from {control.client})" if where is not None and control.client else f"{control.host}"
    for index, step in enumerate(order):
        if step == "tls" and not control.tls and control.stopped_at != "tls":
            continue
        if index > reached:
            break
        if index == reached:
            at = f"{where}: " if step == "connect" and where is not None else ""
            rows.append(Row(step, "FAIL", at + control.detail))
            break
        detail = {"connect": connect, "banner": control.banner, "tls": "AUTH TLS", "login": control.login_reply}
        rows.append(Row(step, "ok", detail[step]))
    if control.ok:
        features = " ".join(_feature_name(feature) for feature in control.features)
        rows.append(Row("FEAT", "ok" if control.features else "n/a", features or "no features"))
        rows.append(Row("SYST", "ok" if control.system else "n/a", control.system or "no reply"))
    return rows


def _feature_name(feature: str) -> str:
    # "MLST type*;size*;..." reads as MLST; "AUTH TLS" stays whole, it says which security is offered.
    return feature if feature.upper().startswith("AUTH") else feature.split(" ")[0]


def _control_finding(control: Control, within: str) -> Finding:
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


# --------------------------------------------------------------------------- data modes


def _label(check: ModeCheck) -> str:
    return f"{check.mode} (TLS)" if check.protected else check.mode


def _result(status: Status) -> str:
    return {"ok": "ok", "fallback": "partly", "failed": "FAIL", "unsupported": "n/a"}[status]


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


def _detail(check: ModeCheck, control: Control, wait_s: float) -> str:
    if check.error:
        return check.error
    code = reply_code(check.reply)
    if code is None or code >= 400 or check.address is None:
        return check.reply or "no reply"
    address = check.address
    if check.mode in PASSIVE_MODES:
        if check.mode == "PASV":
            head = f"227 names {address}"
            if not same_host(address.ip, control.server):
                head += f" ({_announced_kind(address.ip)})"
        else:
            head = f"229 port {address.port}"
        parts = [head]
        for path in check.paths:
            where = f"{path.target} ({path.via})" if path.via == "control address" else f"{path.target}"
            parts.append(f"{where}: {path_words(path, wait_s)}")
        return "; ".join(parts)
    parts = [f"{check.mode} {address}: {check.reply}"]
    for path in check.paths:
        if path.result == "listed" and path.peer is not None and not same_host(path.peer, control.server):
            parts.append(f"connection from {path.peer}, not {control.server}: {path_words(path, wait_s)}")
        else:
            parts.append(path_words(path, wait_s))
        if path.result != "listed" and path.reply:
            parts.append(path.reply)
    return "; ".join(parts)


def _announced_kind(ip: IPAddress) -> str:
    kind = address_kind(ip)
    if kind == "public":
        return "different from the address you connected to"
    return f"{'a private' if kind == 'private' else 'an unroutable'} address"


def announced_words(ip: IPAddress, server: IPAddress | None) -> str:
    """How a 227 address that is not the control peer's reads to an admin (SCENARIOS.md, scenario 1)."""
    kind = address_kind(ip)
    if kind == "private":
        return f"a private address ({ip})"
    if kind == "unroutable":
        return f"an unroutable address ({ip})"
    return f"{ip}, different from the address you connected to ({server})"


def _analyse(
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
    label = _label(check)
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
    tls = " Under TLS the 227 is encrypted: no NAT helper can read or rewrite it." if check.protected else ""
    if not same_host(announced.ip, control.server):
        problems.announced = announced
        words = announced_words(announced.ip, control.server)
        if status == "ok":
            notes.append(
                f"The server announced {words} in its 227, and this host reaches it; clients elsewhere may not."
            )
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
    findings.append(Finding(2, SCENARIOS[2] + (" (TLS)" if check.protected else ""), text, (_label(check),)))


def _analyse_active(
    check: ModeCheck,
    status: Status,
    control: Control,
    wait_s: float,
    findings: list[Finding],
    notes: list[str],
    problems: Problems,
) -> None:
    label = _label(check)
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
        problems.client_side = True
        problems.tls |= check.protected
        findings.append(
            Finding(
                3,
                SCENARIOS[3],
                f"The server refused {check.mode} {offered} ({check.reply}). Servers accept only the address they"
                f" see on the control connection, and {lan}: behind NAT the server sees another address (or the"
                " server refuses active mode altogether).",
                (label,),
            )
        )
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


def _combine(obs: Observations, problems: Problems, findings: list[Finding]) -> None:
    passive = [check for check in obs.modes if check.mode in PASSIVE_MODES]
    active = [check for check in obs.modes if check.mode not in PASSIVE_MODES]
    problems.passive_works = any(mode_status(check) == "ok" for check in passive)
    problems.active_works = any(mode_status(check) == "ok" for check in active)
    if passive and active and not problems.passive_works and not problems.active_works:
        problems.server_side = problems.server_side or not problems.passive_works
        findings.append(
            Finding(
                5,
                SCENARIOS[5],
                "No data mode works from here: passive is blocked in front of the server and active in front of"
                " this client.",
            )
        )


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per (scenario, title, text without modes): the same problem in PASV and EPSV is said once."""
    merged: dict[tuple[int | None, str, str], Finding] = {}
    for finding in findings:
        key = (finding.scenario, finding.title, _generic(finding.text))
        if key in merged:
            old = merged[key]
            modes = tuple(dict.fromkeys(old.modes + finding.modes))
            merged[key] = Finding(old.scenario, old.title, old.text, modes)
        else:
            merged[key] = finding
    return list(merged.values())


def _generic(text: str) -> str:
    # The same problem on two modes differs only in port numbers (and PORT vs EPRT).
    return re.sub(r"\b(PORT|EPRT|PASV|EPSV)\b", "MODE", re.sub(r":\d+\b", ":P", text))
