"""One version, defined once in alg/__init__.py: `ftp-alg --version`, the gateway's start line and the
package metadata (pyproject.toml reads it from there) all say the same."""

from __future__ import annotations

import asyncio
import logging
import re
import tomllib
from pathlib import Path

import pytest

from alg import __version__, cli
from alg.ops.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ftp-alg {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_pyproject_takes_the_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "alg.__version__"}


def test_the_start_line_names_the_version(caplog: pytest.LogCaptureFixture) -> None:
    from alg.gateway.server import Gateway
    from alg.ops.logs import KeyValueFormatter

    settings = load_config(None, listen=["127.0.0.1:0"], upstream="198.51.100.10:21", passive_ports="50000-50009")

    async def start_and_stop() -> None:
        gateway = Gateway(settings)
        await gateway.start()
        await gateway.stop(0)

    with caplog.at_level(logging.INFO):
        asyncio.run(start_and_stop())
    (record,) = [record for record in caplog.records if record.getMessage().startswith("listening on")]
    assert KeyValueFormatter().format(record).endswith(f' version={__version__}"')
