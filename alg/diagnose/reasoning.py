"""Observations in, a diagnosis out: the table of checks, the findings, and the fixes ranked for this case.

Rules: pure (no I/O, no clocks); the same observations give the same report, byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alg.diagnose.findings import (
    SCENARIOS,
    Finding,
    Status,
    analyse,
    announced_words,
    control_finding,
    mode_label,
    mode_status,
    path_words,
    reply_code,
)
from alg.diagnose.fixes import Fix, Problems, ranked_fixes
from alg.diagnose.observations import (
    PASSIVE_MODES,
    Control,
    HostPort,
    IPAddress,
    ModeCheck,
    Observations,
    Transfer,
    address_kind,
    same_host,
)

__all__ = ["Diagnosis", "Finding", "Row", "announced_words", "diagnose", "mode_status"]

EXIT_OK = 0  # every mode works


EXIT_SOME_FAIL = 1  # some modes fail


EXIT_NO_SESSION = 2  # cannot connect or log in


@dataclass(frozen=True)
class Row:
    check: str
    result: str  # "ok", "FAIL", "partly", "n/a"
    detail: str


@dataclass(frozen=True)
class Diagnosis:
    exit_status: int
    verdict: str
    rows: tuple[Row, ...]
    findings: tuple[Finding, ...]
    notes: tuple[str, ...]
    fixes: tuple[Fix, ...]
    failing: tuple[str, ...]  # the modes (and checks) that fail, as shown in the table


def diagnose(obs: Observations) -> Diagnosis:
    control = obs.control
    rows = list(_control_rows(control))
    if not control.ok:
        within = "within the time limit" if obs.out_of_time else f"within {obs.wait_s:g} s"
        finding = control_finding(control, within)
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
    failing, stalled = _modes(obs, rows, findings, notes, problems)
    if obs.tls_skipped:
        rows.append(Row("TLS", "n/a", obs.tls_skipped))
    if obs.transfer is not None:
        rows.append(_transfer_row(obs.transfer))
        if rows[-1].result != "ok":
            failing.append("transfer")
    if obs.out_of_time:
        rows.append(Row("time", "FAIL", "the total time limit ran out before every check ran"))
        failing.append("time")
    _combine(obs, problems, findings)
    _whole_session_findings(control, problems, bool(failing), findings)
    exit_status = EXIT_SOME_FAIL if failing or stalled else EXIT_OK
    verdict = "some modes fail" if failing else "some modes could not be checked" if stalled else "every mode works"
    return Diagnosis(
        exit_status=exit_status,
        verdict=verdict,
        rows=tuple(rows),
        findings=tuple(_merge(findings)),
        notes=tuple(dict.fromkeys(notes + problems.notes())),
        fixes=tuple(ranked_fixes(problems)) if failing else (),
        failing=tuple(failing),
    )


def _modes(
    obs: Observations, rows: list[Row], findings: list[Finding], notes: list[str], problems: Problems
) -> tuple[list[str], list[ModeCheck]]:
    """A row per mode checked (plain, then under TLS), each analysed; the failing labels and the stalled checks."""
    control = obs.control
    failing: list[str] = []
    stalled: list[ModeCheck] = []
    plain_ok = {check.mode for check in obs.modes if mode_status(check) == "ok"}
    for check in (*obs.modes, *obs.tls_modes):
        status = mode_status(check)
        rows.append(Row(mode_label(check), _result(status), _detail(check, control, obs.wait_s)))
        if status == "stalled":  # never tried: nothing to analyse, and not a failing mode
            stalled.append(check)
            continue
        if status in ("failed", "fallback"):
            failing.append(mode_label(check))
            if check.protected and not control.tls and check.mode in plain_ok:
                problems.helper_blind_under_tls = True
        analyse(check, status, control, obs.wait_s, findings, notes, problems)
    if stalled:
        findings.append(_stalled_finding(stalled))
    return failing, stalled


def _transfer_row(transfer: Transfer) -> Row:
    if transfer.result == "ok":
        return Row("transfer", "ok", f"{transfer.size} bytes up and back through {transfer.mode}")
    detail = f"{transfer.result.replace('_', ' ')} after {transfer.moved} of {transfer.size} bytes"
    detail += f" through {transfer.mode}: {transfer.detail}" if transfer.detail else f" ({transfer.mode})"
    return Row("transfer", "FAIL", detail)


def _whole_session_findings(control: Control, problems: Problems, failing: bool, findings: list[Finding]) -> None:
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


def _result(status: Status) -> str:
    return {"ok": "ok", "fallback": "partly", "failed": "FAIL", "unsupported": "n/a", "stalled": "stalled"}[status]


def _stalled_finding(stalled: list[ModeCheck]) -> Finding:
    labels = tuple(mode_label(check) for check in stalled)
    return Finding(
        None,
        "New sessions stalled before login",
        f"The first session logged in, then the session opened to check {', '.join(labels)} stopped"
        f" ({stalled[0].error.split(';')[0]}): these modes were not tried, so they are not known to fail. A limit"
        " on sessions per client or per minute (vsftpd max_per_ip, proftpd MaxClientsPerHost, a firewall's"
        " connection rate limit) or a busy server does this; run diagnose again later or with a longer --wait.",
        labels,
    )


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


def _combine(obs: Observations, problems: Problems, findings: list[Finding]) -> None:
    tried = [check for check in obs.modes if not check.stalled]  # a stalled session says nothing of its mode
    passive = [check for check in tried if check.mode in PASSIVE_MODES]
    active = [check for check in tried if check.mode not in PASSIVE_MODES]
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
