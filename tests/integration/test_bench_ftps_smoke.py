"""`python -m bench --quick --only ftps`: the FTPS rows run end to end, direct and through the gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from netns import REPO_ROOT

pytestmark = pytest.mark.netns


def test_quick_ftps_benchmark_measures_both_paths(tmp_path: Path) -> None:
    from conftest import require_netns

    require_netns()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "ftps", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = tmp_path.glob("bench-*-quick.json")
    results = json.loads(path.read_text())["results"]["ftps"]
    for verb in ("retr", "stor"):
        figures = results[verb]["passive"]
        assert figures["direct_mb_s"] > 0 and figures["gateway_mb_s"] > 0, figures
        assert figures["gateway_cpu_s_per_gib"] > 0, figures
    assert "FTPS PROT P RETR" in done.stdout and "FTPS RETR passive ratio" in done.stdout
