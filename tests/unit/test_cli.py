"""The command line: exit codes, one-line errors, and nothing started when settings are bad."""

from __future__ import annotations

import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from alg import cli, demo
from alg.ops.config import LogSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "rules" / "gateway.example.yaml"
FLAGS = [
    "--listen",
    "203.0.113.1:21",
    "--upstream",
    "198.51.100.10:21",
    "--public-address",
    "203.0.113.1",
    "--passive-ports",
    "50000-50999",
]


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """alg.gateway.server replaced by a serve() that records its settings and returns at once."""
    served: list[Settings] = []

    async def serve(settings: Settings, worker: int = 0, **reloads: object) -> None:
        served.append(settings)

    module = types.ModuleType("alg.gateway.server")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "alg.gateway.server", module)
    return served


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("ftp-alg: error: ")
    return lines[0]


def test_check_good_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: mode=reverse listen=203.0.113.1:21,[2001:db8::1]:21 upstream=198.51.100.10:21")
    assert "passive_ports=50000-50999" in out


def test_check_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("upstream: 198.51.100.10\npassive_ports: 20:21\n")
    assert cli.main(["check", "--config", str(path)]) == 2
    line = one_error_line(capsys)
    assert line.endswith(
        "passive_ports (line 2): expected FIRST-LAST, got 1221: YAML 1.1 reads 20:21 as a base-60 number; quote it"
    )


def test_check_flag_overrides_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--config", str(EXAMPLE), "--passive-ports", "60000-60099", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "passive_ports=60000-60099" in out and "workers=2" in out


def test_check_flags_alone(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", *FLAGS]) == 0
    assert capsys.readouterr().out.startswith("ok: mode=reverse listen=203.0.113.1:21 upstream=198.51.100.10:21")
    assert cli.main(["check"]) == 2  # the defaults alone name no FTP server
    assert "upstream: required in reverse mode" in one_error_line(capsys)


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in one_error_line(capsys)
    assert cli.main(["run", "--workers", "two"]) == 2
    assert "expected a whole number, got 'two'" in one_error_line(capsys)
    assert cli.main([]) == 2
    one_error_line(capsys)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--help"]) == 0
    assert "--passive-ports" in capsys.readouterr().out


def test_run_with_flags_alone(fake_server: list[Settings]) -> None:
    assert cli.main(["run", *FLAGS]) == 0
    [settings] = fake_server
    assert str(settings.upstream) == "198.51.100.10:21"
    assert str(settings.public_address) == "203.0.113.1"


def test_run_bad_flag_starts_nothing(fake_server: list[Settings], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", *FLAGS, "--passive-ports", "70000-80000"]) == 2
    assert one_error_line(capsys) == "ftp-alg: error: --passive-ports: ports must be within 1024-65535, got 70000-80000"
    assert fake_server == []


def test_run_bad_file_starts_nothing(
    tmp_path: Path, fake_server: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("mode: transparent\nupstream: 198.51.100.10\n")
    assert cli.main(["run", "--config", str(path)]) == 2
    assert "upstream (line 2): not allowed in transparent mode" in one_error_line(capsys)
    assert fake_server == []


def test_run_interrupted_returns_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    async def serve(settings: Settings, worker: int = 0, **reloads: object) -> None:
        raise KeyboardInterrupt

    module = types.ModuleType("alg.gateway.server")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "alg.gateway.server", module)
    assert cli.main(["run", *FLAGS]) == 130
    assert capsys.readouterr().err == ""


def test_run_os_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    async def serve(settings: Settings, worker: int = 0, **reloads: object) -> None:
        raise PermissionError(13, "Permission denied")

    module = types.ModuleType("alg.gateway.server")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "alg.gateway.server", module)
    assert cli.main(["run", *FLAGS]) == 1
    assert "Permission denied" in one_error_line(capsys)


def test_demo_without_pyftpdlib(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "available", lambda: False)
    assert cli.main(["demo"]) == 2
    assert "pip install 'ftp-alg[demo]'" in one_error_line(capsys)


def test_demo_bad_flag_starts_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def no_upstream(gateway: object) -> None:
        raise AssertionError("the demo server must not start")

    monkeypatch.setattr(demo, "demo_upstream", no_upstream)
    assert cli.main(["demo", "--passive-ports", "1-2"]) == 2
    assert "--passive-ports: ports must be within 1024-65535" in one_error_line(capsys)


def test_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("listen: 203.0.113.1\n")
    result = subprocess.run(
        [sys.executable, "-m", "alg.cli", "check", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr == f"ftp-alg: error: {path}: listen[0] (line 1): expected ADDRESS:PORT, got '203.0.113.1'\n"


def test_key_value_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        cli.setup_logging(LogSettings(level="debug", format="kv"))
        logging.getLogger("alg.test").info('said "hi" twice', extra={"session": 7})
        line = capsys.readouterr().err.strip()
    finally:
        root.handlers[:], root.level = saved
    assert line.startswith("ts=")
    assert line.endswith('level=info logger=alg.test msg="said \\"hi\\" twice" session=7')


def test_upstream_data_mode_flag_reaches_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli._parser().parse_args(["check", "--config", str(EXAMPLE), "--upstream-data-mode", "active"])
    assert cli._load(args).upstream_data_mode == "active"
    assert cli.main(["check", *FLAGS, "--upstream-data-mode", "sideways"]) == 2
    assert "--upstream-data-mode: expected 'follow', 'passive' or 'active', got 'sideways'" in one_error_line(capsys)
