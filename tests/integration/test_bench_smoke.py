"""`python -m bench --quick` on a subset: the benchmark itself still runs end to end (seconds, not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from netns import REPO_ROOT

pytestmark = pytest.mark.netns


def test_quick_benchmark_measures_both_paths(tmp_path: Path) -> None:
    from conftest import require_netns

    require_netns()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "retr,small", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = tmp_path.glob("bench-*-quick.json")
    results = json.loads(path.read_text())["results"]
    for mode in ("passive", "active"):
        figures = results["retr"][mode]
        assert figures["direct_mb_s"] > 0 and figures["gateway_mb_s"] > 0, figures
        assert figures["gateway_cpu_s_per_gib"] > 0, figures
        assert figures["kernel_mb_s"] > 0 and figures["helper_mb_s"] > 0, figures  # every path, same run
    assert results["small"]["files"] == 100
    assert results["small"]["direct_files_s"] > 0 and results["small"]["gateway_files_s"] > 0
    assert results["small"]["kernel_files_s"] > 0 and results["small"]["helper_files_s"] > 0
    assert results["small"]["defender_files_s"] > 0 and results["small"]["defender_cost_ratio"] > 0
    assert "defender on" in done.stdout
    assert "ratio" in done.stdout and "targets:" in done.stdout
