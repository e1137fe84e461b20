"""`ftp-alg check` is `run` minus the sockets: the real command line, run as a process, refuses what `run`
refuses, in the same words, and lists every problem (a config file, flags alone, or both)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trustme

ROOT = Path(__file__).resolve().parents[2]
# run would listen here if it started: a loopback port of our own, never reached when the settings are refused.
FLAGS = ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:21", "--passive-ports", "50000-50099"]


def ftp_alg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alg.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("ftp-alg: error: ")]


def test_every_problem_run_refuses_is_listed_by_check_in_the_same_words(tmp_path: Path) -> None:
    bad_rule = tmp_path / "bad.yaml"
    bad_rule.write_text("commands:\n  rules:\n    - deny: RETR\n      argument: '(unclosed'\n")
    missing = tmp_path / "missing.yaml"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"rules: [{bad_rule}, {missing}]\n")
    args = ["--config", str(config), *FLAGS, "--user", "nosuchuser-ftp-alg"]

    checked = ftp_alg("check", *args)
    ran = ftp_alg("run", *args)

    assert checked.returncode == 2 and ran.returncode == 2
    assert errors(checked) == errors(ran)
    listed = errors(checked)
    assert len(listed) == 3, checked.stderr
    assert "bad.yaml: commands.rules[0].argument (line 4): invalid regular expression" in listed[0]
    assert f"{missing}: cannot read the file: No such file or directory" in listed[1]
    assert listed[2] == "ftp-alg: error: user: no such user 'nosuchuser-ftp-alg'"
    assert "ok:" not in checked.stdout


def test_unreadable_tls_files_are_refused_by_both_with_file_and_reason(tmp_path: Path) -> None:
    cert, key = tmp_path / "missing-cert.pem", tmp_path / "missing-key.pem"
    args = [*FLAGS, "--tls-client", "allow", "--tls-cert", str(cert), "--tls-key", str(key)]

    checked, ran = ftp_alg("check", *args), ftp_alg("run", *args)

    expected = f"ftp-alg: error: tls.client.cert: cannot load {cert} with {key}: No such file or directory"
    assert checked.returncode == ran.returncode == 2
    assert errors(checked) == errors(ran) == [expected]


def test_every_settings_problem_is_listed_not_only_the_first(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("upstream: 127.0.0.1\npassive_ports: 20:21\nworkers: two\n")

    checked = ftp_alg("check", "--config", str(config), "--log-level", "loud")

    assert checked.returncode == 2
    listed = errors(checked)
    assert len(listed) == 3, checked.stderr
    assert listed[0].startswith("ftp-alg: error: --log-level: expected 'debug', 'info', 'warning' or 'error'")
    assert listed[1].endswith(
        "passive_ports (line 2): expected FIRST-LAST, got 1221: YAML 1.1 reads 20:21 as a base-60 number; quote it"
    )
    assert listed[2].endswith("workers (line 3): expected a whole number, got 'two'")
    assert not any("more problem" in line for line in listed)


def test_check_on_flags_alone_says_ok() -> None:
    checked = ftp_alg("check", *FLAGS)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok: mode=reverse listen=127.0.0.1:0 upstream=127.0.0.1:21")


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user needs root")
def test_check_as_root_warns_about_files_the_user_could_not_read() -> None:
    # Not under tmp_path: pytest's base folder is root's alone, and nobody could not even pass through it.
    tmp_path = Path(tempfile.mkdtemp(prefix="ftp-alg-check-"))
    try:
        _warns_about_the_root_only_key(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _warns_about_the_root_only_key(tmp_path: Path) -> None:
    trust = trustme.CA()
    leaf = trust.issue_cert("ftp-alg.test")
    private = tmp_path / "private"  # certbot's archive/: root only
    private.mkdir(mode=0o700)
    key, cert = private / "privkey.pem", tmp_path / "fullchain.pem"
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    cert.chmod(0o644)
    tmp_path.chmod(0o755)
    args = [*FLAGS, "--user", "nobody", "--tls-client", "allow", "--tls-cert", str(cert), "--tls-key", str(key)]

    checked = ftp_alg("check", *args)

    assert checked.returncode == 0, checked.stderr  # the gateway's root parent reads the key: it works
    warnings = [line for line in checked.stdout.splitlines() if "user nobody" in line]
    assert warnings == [
        f"warning: tls.client.key: user nobody cannot read {key} (Permission denied); fine while the gateway is "
        "started as root: its parent process keeps root to read it at start and at reload (docs/operations.md)"
    ]
