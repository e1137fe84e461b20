"""The type checker and the linter are part of the suite: a change that breaks either fails here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(tool, path=str(Path(sys.executable).parent)) is None:
        pytest.fail(f"{tool} is not installed in the test environment (pip install '.[test]')")
    return subprocess.run(
        [sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_mypy_strict_on_the_package() -> None:
    done = run("mypy", "--strict", "alg")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_check() -> None:
    paths = [name for name in ("alg", "tests", "bench") if (ROOT / name).exists()]
    done = run("ruff", "check", *paths)
    assert done.returncode == 0, done.stdout + done.stderr


def test_test_modules_have_unique_names() -> None:
    # tests/ has no __init__.py: pytest imports each test file by its base name, so two files with one name
    # in unit/ and integration/ stop the whole run at collection.
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path
