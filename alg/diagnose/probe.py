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
    ModeCheck,
    Observations,
)
from alg.diagnose.session import Stopped, Target, open_session, tls_opening_problem
from alg.diagnose.transfer import transfer

__all__ = ["Target", "default_gateway", "parse_default_gateway", "probe"]


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
        conn, control = open_session(target, budget, tls=target.tls, describe=True)
    except Stopped as stopped:
        return replace(base, control=stopped.control, out_of_time=budget.expired)
    except OutOfTime:
        return replace(base, out_of_time=True)
    conn.close()
    obs = replace(base, control=control)
    modes: list[ModeCheck] = []
    try:
        # RFC 2428: PASV and PORT carry IPv4 only; over IPv6 only the extended modes exist.
        for mode in MODES if isinstance(control.server, IPv4Address) else EXTENDED_MODES:
            modes.append(check_mode(target, budget, control, mode, tls=target.tls))
        tls_modes: list[ModeCheck] = []
        tls_skipped = ""
        if not target.tls and control.offers_tls:
            tls_skipped = tls_opening_problem(target, budget)
            if not tls_skipped:
                for mode in PASSIVE_MODES:
                    tls_modes.append(check_mode(target, budget, control, mode, tls=True))
        obs = replace(obs, modes=tuple(modes), tls_modes=tuple(tls_modes), tls_skipped=tls_skipped)
        if target.size:
            obs = replace(obs, transfer=transfer(target, budget, control, obs))
    except OutOfTime:
        return replace(obs, modes=tuple(modes), out_of_time=True)
    return obs


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
