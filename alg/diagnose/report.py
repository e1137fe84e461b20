"""The diagnosis for people (a table, the findings, the fixes) and for scripts (`--json`).

Rules: pure; no timestamps, durations or anything else that changes between two runs on the same network
(golden files compare it byte for byte); the target is shown without its password.
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict
from typing import Any

from alg.diagnose.findings import mode_status
from alg.diagnose.observations import DataPath, ModeCheck, Observations
from alg.diagnose.reasoning import Diagnosis

WIDTH = 100
SCHEMA_VERSION = 1


def target_url(obs: Observations) -> str:
    control = obs.control
    scheme = "ftps" if control.tls else "ftp"
    host = f"[{control.host}]" if ":" in control.host else control.host
    return f"{scheme}://{control.user}@{host}:{control.port}/{obs.folder.lstrip('/')}"


def render_text(obs: Observations, diagnosis: Diagnosis) -> str:
    out = [f"ftp-alg diagnose {target_url(obs)}", ""]
    rows = [("check", "result", "detail")] + [(row.check, row.result, row.detail) for row in diagnosis.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for index, (check, result, detail) in enumerate(rows):
        out.append(_table_line(check, result, detail, widths))
        if index == 0:
            out.append(_table_line("-" * widths[0], "-" * widths[1], "-" * 6, widths))
    out += ["", f"Diagnosis: {diagnosis.verdict} (exit status {diagnosis.exit_status})"]
    for finding in diagnosis.findings:
        scenario = f" (scenario {finding.scenario})" if finding.scenario is not None else ""
        modes = f" [{', '.join(finding.modes)}]" if finding.modes else ""
        out.append(f"  {finding.title}{scenario}{modes}")
        out += _wrap(finding.text, "    ")
    for note in diagnosis.notes:
        out += _wrap(f"Note: {note}", "  ", "        ")
    if diagnosis.fixes:
        out += ["", "Fixes, best first:"]
        for number, fix in enumerate(diagnosis.fixes, 1):
            out.append(f"  {number}. {fix.title}")
            out += [f"       {line}" for line in fix.lines]
            if fix.note:
                out += _wrap(fix.note, "     ")
    return "\n".join(out) + "\n"


def _table_line(check: str, result: str, detail: str, widths: list[int]) -> str:
    indent = " " * (widths[0] + widths[1] + 4)
    first = f"{check:<{widths[0]}}  {result:<{widths[1]}}  "
    wrapped = textwrap.wrap(detail, WIDTH - len(indent), break_on_hyphens=False) or [""]
    return "\n".join([(first + wrapped[0]).rstrip()] + [indent + line for line in wrapped[1:]])


def _wrap(text: str, indent: str, subsequent: str | None = None) -> list[str]:
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=indent,
        subsequent_indent=subsequent if subsequent is not None else indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def to_json(obs: Observations, diagnosis: Diagnosis) -> dict[str, Any]:
    """The same report as data: the verdict, the table, each mode's paths, findings and fixes."""
    control = obs.control
    return {
        "schema": SCHEMA_VERSION,
        "target": target_url(obs),
        "exit_status": diagnosis.exit_status,
        "verdict": diagnosis.verdict,
        "control": {
            "host": control.host,
            "port": control.port,
            "user": control.user,
            "server": _text(control.server),
            "client": _text(control.client),
            "ok": control.ok,
            "stopped_at": control.stopped_at,
            "failure": control.failure,
            "detail": control.detail,
            "banner": control.banner,
            "features": list(control.features),
            "system": control.system,
            "tls": control.tls,
        },
        "checks": [asdict(row) for row in diagnosis.rows],
        "modes": [_mode(check) for check in obs.modes + obs.tls_modes],
        "failing": list(diagnosis.failing),
        "findings": [
            {"scenario": f.scenario, "title": f.title, "text": f.text, "modes": list(f.modes)}
            for f in diagnosis.findings
        ],
        "notes": list(diagnosis.notes),
        "fixes": [
            {"kind": fix.kind, "title": fix.title, "lines": list(fix.lines), "note": fix.note, "command": fix.command}
            for fix in diagnosis.fixes
        ],
    }


def _mode(check: ModeCheck) -> dict[str, Any]:
    return {
        "mode": check.mode,
        "tls": check.protected,
        "status": mode_status(check),
        "reply": check.reply,
        "address": str(check.address) if check.address is not None else None,
        "error": check.error,
        "paths": [_path(path) for path in check.paths],
    }


def _path(path: DataPath) -> dict[str, Any]:
    return {
        "target": str(path.target),
        "via": path.via,
        "result": path.result,
        "reply": path.reply,
        "peer": _text(path.peer),
        "lines": path.lines,
    }


def _text(value: object) -> str | None:
    return None if value is None else str(value)
