"""deploy/systemd/ftp-alg.service: never root, port 21 through CAP_NET_BIND_SERVICE alone, the usual
hardening, a stop timeout longer than the default shutdown grace, and every directive known to systemd."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tools import external_tool

from alg.ops.config import Timeouts

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "ftp-alg.service"


def service() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_the_service_never_runs_as_root_and_keeps_only_cap_net_bind_service() -> None:
    values = service()
    assert values["User"][0] not in ("root", "0")
    assert values["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert values["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    for key, expected in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictSUIDSGID": "yes",
    }.items():
        assert values[key] == [expected], key


def test_systemd_waits_longer_than_the_default_shutdown_grace() -> None:
    """Else systemd would SIGKILL transfers the gateway means to let finish."""
    timeout = float(service()["TimeoutStopSec"][0])
    assert timeout >= Timeouts().shutdown_grace_s + 10
    assert service()["KillSignal"] == ["SIGTERM"]


def test_systemd_knows_every_directive(tmp_path: Path) -> None:
    analyze = external_tool("systemd-analyze", "Debian package systemd")
    unit = tmp_path / "ftp-alg.service"
    # ExecStart must exist for verify; the rest of the file is checked as shipped.
    text = "\n".join(
        "ExecStart=/bin/true" if line.startswith("ExecStart=") else line for line in UNIT.read_text().splitlines()
    )
    unit.write_text(text + "\n")
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "Unknown" not in done.stderr and "ignoring" not in done.stderr, done.stderr
