"""The probe: real sockets against the server, every wait bounded, the results as Observations.

Rules: each data mode runs in a control session of its own, so one that hangs cannot confuse the next; the
total time limit is checked before each wait (OutOfTime ends the run with what was seen so far); no password
is kept in what this returns.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

from alg.diagnose.datapaths import check_mode
from alg.diagnose.ftpclient import Budget, OutOfTime
from alg.diagnose.observations import (
    EXTENDED_MODES,
    MODES,
    PASSIVE_MODES,
    Control,
    IPAddress,
    Mode,
    ModeCheck,
    Observations,
)
from alg.diagnose.progress import QUIET, Progress
from alg.diagnose.session import Stopped, Target, open_session, tls_opening_problem
from alg.diagnose.transfer import transfer

__all__ = ["Target", "default_gateway", "parse_default_gateway", "probe"]


def probe(target: Target, progress: Progress = QUIET) -> Observations:
    budget = Budget(target.total_s, target.wait_s)
    base = Observations(
        control=Control(target.host, target.port, target.user),
        wait_s=target.wait_s,
        default_gateway=default_gateway(),
        internal_address=target.internal_address,
        folder=target.folder,
    )
    progress.start(f"log in to {target.host}:{target.port}")
    try:
        conn, control = open_session(target, budget, tls=target.tls, describe=True)
    except Stopped as stopped:
        progress.done(f"stopped at {stopped.control.stopped_at}: {stopped.control.detail}")
        return replace(base, control=stopped.control, out_of_time=budget.expired)
    except OutOfTime:
        progress.done("out of time")
        return replace(base, out_of_time=True)
    progress.done("ok")
    conn.close()
    obs = replace(base, control=control)
    modes: list[ModeCheck] = []
    try:
        # RFC 2428: PASV and PORT carry IPv4 only; over IPv6 only the extended modes exist.
        for mode in MODES if isinstance(control.server, IPv4Address) else EXTENDED_MODES:
            modes.append(_checked(progress, target, budget, control, mode, tls=target.tls))
        tls_modes: list[ModeCheck] = []
        tls_skipped = ""
        if not target.tls and control.offers_tls:
            progress.start("AUTH TLS offered: open a TLS session")
            tls_skipped = tls_opening_problem(target, budget)
            progress.done(tls_skipped or "ok")
            if not tls_skipped:
                for mode in PASSIVE_MODES:
                    tls_modes.append(_checked(progress, target, budget, control, mode, tls=True))
        obs = replace(obs, modes=tuple(modes), tls_modes=tuple(tls_modes), tls_skipped=tls_skipped)
        if target.size:
            progress.start(f"transfer {target.size} bytes up and back")
            moved = transfer(target, budget, control, obs)
            progress.done("no passive mode to use" if moved is None else moved.result.replace("_", " "))
            obs = replace(obs, transfer=moved)
    except OutOfTime:
        progress.done("out of time")
        return replace(obs, modes=tuple(modes), out_of_time=True)
    return obs


def _checked(
    progress: Progress, target: Target, budget: Budget, control: Control, mode: Mode, *, tls: bool
) -> ModeCheck:
    progress.start(f"{mode} (TLS)" if tls else mode)
    check = check_mode(target, budget, control, mode, tls=tls)
    progress.done(summary(check))
    return check


def summary(check: ModeCheck) -> str:
    """A mode's outcome in a few words, for the progress line (the report says more)."""
    if check.error:
        return check.error
    if not check.paths:
        return check.reply or "no reply"
    results = [path.result.replace("_", " ") for path in check.paths]
    return "listed" if results[0] == "listed" else " / ".join(results)


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
