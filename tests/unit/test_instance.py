"""Per-instance settings from the environment: the passive range (FTP_ALG_PASSIVE_PORTS) and this instance's
slice of it (FTP_ALG_INSTANCE of FTP_ALG_INSTANCES, a pod name allowed), as `ftp-alg check` and `run` see them."""

from __future__ import annotations

from pathlib import Path

import pytest

from alg import cli
from alg.errors import ConfigError
from alg.gateway.instance import for_instance, instance_slice
from alg.ops.config import load_config

SETTINGS = load_config(None, upstream="198.51.100.10", passive_ports="50000-50029")


@pytest.mark.parametrize(
    ("instance", "count", "ports"),
    [
        ("0", "3", (50000, 50009)),
        ("ftp-alg-1", "3", (50010, 50019)),
        ("ftp-alg-2", "3", (50020, 50029)),
        ("0", "1", (50000, 50029)),
        ("gw-3", "4", (50023, 50029)),
    ],
)
def test_each_instance_takes_its_slice(instance: str, count: str, ports: tuple[int, int]) -> None:
    mine = for_instance(SETTINGS, {"FTP_ALG_INSTANCE": instance, "FTP_ALG_INSTANCES": count}).passive_ports
    assert (mine.first, mine.last) == ports


def test_slices_cover_the_range_once() -> None:
    seen: list[int] = []
    for index in range(7):
        env = {"FTP_ALG_INSTANCE": str(index), "FTP_ALG_INSTANCES": "7"}
        seen.extend(for_instance(SETTINGS, env).passive_ports)
    assert seen == list(SETTINGS.passive_ports)


def test_no_environment_changes_nothing() -> None:
    assert for_instance(SETTINGS, {}) is SETTINGS


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FTP_ALG_INSTANCE": "1"}, "FTP_ALG_INSTANCES: set both"),
        ({"FTP_ALG_INSTANCES": "3"}, "FTP_ALG_INSTANCE: set both"),
        ({"FTP_ALG_INSTANCE": "ftp-alg", "FTP_ALG_INSTANCES": "3"}, "ending in -NUMBER"),
        ({"FTP_ALG_INSTANCE": "3", "FTP_ALG_INSTANCES": "3"}, "counts from 0 to 2"),
        ({"FTP_ALG_INSTANCE": "0", "FTP_ALG_INSTANCES": "0"}, "at least 1"),
        ({"FTP_ALG_INSTANCE": "0", "FTP_ALG_INSTANCES": "x"}, "at least 1"),
        ({"FTP_ALG_INSTANCE": "0", "FTP_ALG_INSTANCES": "31"}, "30 passive ports cannot be shared among 31"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        if instance_slice(env) is not None:
            for_instance(SETTINGS, env)


def test_check_applies_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("upstream: 198.51.100.10\npassive_ports: 50000-50029\n")
    monkeypatch.setenv("FTP_ALG_PASSIVE_PORTS", "40000-40099")
    monkeypatch.setenv("FTP_ALG_INSTANCE", "ftp-alg-1")
    monkeypatch.setenv("FTP_ALG_INSTANCES", "4")
    assert cli.main(["check", "--config", str(config)]) == 0
    assert "passive_ports=40025-40049" in capsys.readouterr().out
    # A flag still wins over the environment; the slice applies to whichever range is in force.
    assert cli.main(["check", "--config", str(config), "--passive-ports", "41000-41003"]) == 0
    assert "passive_ports=41001-41001" in capsys.readouterr().out
    monkeypatch.setenv("FTP_ALG_INSTANCES", "zero")
    assert cli.main(["check", "--config", str(config)]) == 2
    assert "FTP_ALG_INSTANCES" in capsys.readouterr().err
