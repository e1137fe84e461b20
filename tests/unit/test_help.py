"""`ftp-alg COMMAND --help` teaches: every flag of every subcommand has a help text and says its default;
the defaults it states are the settings model's; `run --help` and `check --help` name the config file and
every FTP_ALG_* environment variable the code reads."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from alg import cli
from alg.ops.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_every_flag_of_every_subcommand_has_help_and_says_its_default() -> None:
    problems = []
    for name, parser in subcommands().items():
        for action in flags(parser):
            flag = f"{name} {action.option_strings[0]}"
            if not action.help or action.help == argparse.SUPPRESS:
                problems.append(f"{flag}: no help")
            elif action.nargs != 0 and not action.required and "default" not in action.help:
                problems.append(f"{flag}: no default in {action.help!r}")
    assert problems == []
    assert set(subcommands()) >= {"run", "check", "demo", "diagnose", "sessions"}


def stated(dest: str) -> str:
    (action,) = [a for a in flags(subcommands()["run"]) if a.dest == dest]
    assert action.help is not None
    match = re.search(r"\(default: (.+?)(?:[),;]|: )", action.help)
    assert match, action.help
    return match.group(1)


def test_the_defaults_run_help_states_are_the_settings_defaults() -> None:
    settings = load_config(None, upstream="198.51.100.10")
    tls = settings.tls
    values = {
        "mode": settings.mode,
        "listen": ",".join(map(str, settings.listen)),
        "passive_ports": str(settings.passive_ports),
        "workers": str(settings.workers),
        "log_level": settings.log.level,
        "log_format": settings.log.format,
        "data_path": settings.data_path,
        "tls_client": tls.client.mode,
        "tls_client_data": tls.client.data,
        "tls_upstream": tls.upstream.mode,
        "tls_upstream_data": tls.upstream.data,
        "dual_stack": "on" if settings.dual_stack else "off",
        "tls_require_session_reuse": "on" if tls.client.require_session_reuse else "off",
        "tls_upstream_verify": "verify" if tls.upstream.verify else "no verify",
    }
    assert {dest: stated(dest) for dest in values} == values
    for dest in ("upstream", "metrics_listen", "admin_listen", "user", "tls_cert", "tls_key"):
        assert stated(dest) == "none", dest


@pytest.mark.parametrize("command", ["run", "check"])
def test_help_names_the_config_file_and_every_environment_variable(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    used = set()
    for path in (ROOT / "alg").rglob("*.py"):
        used |= set(re.findall(r"FTP_ALG_[A-Z_]+", path.read_text()))
    assert used >= {"FTP_ALG_PUBLIC_ADDRESS", "FTP_ALG_PASSIVE_PORTS", "FTP_ALG_ADMIN_TOKEN"}
    assert {name for name in used if name not in text} == set()
    assert "--config FILE" in text and "gateway.example.yaml" in text
