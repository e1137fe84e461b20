"""The package as an operator gets it: an sdist and a wheel built from this checkout with the PEP 517 hooks
`python -m build` calls (the wheel made from the sdist, so a file missing from the sdist shows), installed
into a fresh virtualenv with the tested pins (constraints.txt), then `ftp-alg --version` and `ftp-alg demo`
serving a real listing and download through the gateway, stopped by its PID.

No root and no namespace: everything is on 127.0.0.1. pip takes the dependencies from the configured index
(its cache makes a second run quick)."""

from __future__ import annotations

import ftplib
import hashlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from conftest import skip_or_fail

from alg import __version__

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
# alg/demo.py serves this as sample.bin.
SAMPLE_SHA256 = hashlib.sha256(bytes(range(256)) * 256).hexdigest()


def run(*argv: str | Path, cwd: Path = ROOT, timeout: float = 120) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def build_hook(hook: str, source: Path, out: Path) -> Path:
    """One PEP 517 hook of setuptools.build_meta, run in `source` as `python -m build` would run it."""
    out.mkdir(exist_ok=True)
    code = f"import sys; from setuptools import build_meta; print('built:', build_meta.{hook}(sys.argv[1]))"
    output = run(sys.executable, "-c", code, out, cwd=source)
    assert "deprecat" not in output.lower(), output
    (name,) = re.findall(r"^built: (\S+)$", output, re.MULTILINE)
    return out / name


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from the sdist built from this checkout."""
    work = tmp_path_factory.mktemp("build")
    sdist = build_hook("build_sdist", ROOT, work / "dist")
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    (source,) = (work / "unpacked").iterdir()
    assert (source / "LICENSE").is_file() and (source / "README.md").is_file()
    wheel = build_hook("build_wheel", source, work / "dist")
    assert zipfile.ZipFile(wheel).read(f"ftp_alg-{__version__}.dist-info/licenses/LICENSE")
    return wheel


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only the wheel, with its demo extra, as pinned."""
    env = tmp_path_factory.mktemp("install") / "venv"
    run(sys.executable, "-m", "venv", env)
    run(env / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "-c", CONSTRAINTS, f"{wheel}[demo]")
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Output:
    """A process's output read line by line in a thread, so a wait for a line is bounded."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True)
        self.reader.start()

    def until(self, text: str, timeout_s: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.seen):
            try:
                self.seen.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                if time.monotonic() > deadline or not self.reader.is_alive():  # timed out, or the process ended
                    raise AssertionError(f"no {text!r} within {timeout_s} s: {self.seen}") from None
        return self.seen

    def rest(self) -> str:
        self.reader.join(timeout=10)
        return "".join([*self.seen, *self.lines.queue])


@pytest.fixture
def demo(venv: Path) -> Iterator[int]:
    """`ftp-alg demo` from the fresh venv on a free port; yields the port once the invitation is printed."""
    port, passive = free_port(), free_port()
    process = subprocess.Popen(
        [venv / "bin" / "ftp-alg", "demo", "--listen", f"127.0.0.1:{port}", "--passive-ports", f"{passive}-{passive}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=venv,  # not the checkout: the installed package must not find ./alg
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert process.stdout is not None
    output = Output(process.stdout)
    try:
        seen = output.until("listening on")  # the invitation comes first, then the gateway's start line
        assert f"try: curl ftp://127.0.0.1:{port}/" in seen[0], seen
        assert f"version={__version__}" in seen[-1], seen
        yield port
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C, as the invitation says
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode in (0, 130), output.rest()


def test_the_installed_command_names_its_version(venv: Path) -> None:
    assert run(venv / "bin" / "ftp-alg", "--version", cwd=venv).strip() == f"ftp-alg {__version__}"
    located = run(venv / "bin" / "python", "-c", "import alg; print(alg.__file__)", cwd=venv)
    assert located.strip().startswith(str(venv)), "the package comes from the venv, not from the checkout"
    metadata = run(venv / "bin" / "python", "-c", "import importlib.metadata as m; print(m.version('ftp-alg'))")
    assert metadata.strip() == __version__


def test_the_installed_demo_lists_and_serves_a_file_through_the_gateway(demo: int) -> None:
    with ftplib.FTP() as client:
        client.connect("127.0.0.1", demo, timeout=10)
        assert client.login().startswith("230")
        assert {"README.txt", "sample.bin"} <= set(client.nlst())
        digest = hashlib.sha256()
        assert client.retrbinary("RETR sample.bin", digest.update).startswith("226")
    assert digest.hexdigest() == SAMPLE_SHA256


# ---- the systemd install: deploy/install.sh ------------------------------------------------------------------


def unit_values(unit: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in unit.read_text().splitlines() if "=" in line and not line.startswith("#")
    )


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """deploy/install.sh run once under a fresh --root; its root and what it printed."""
    root = tmp_path_factory.mktemp("systemd") / "root"
    return root, run("bash", ROOT / "deploy" / "install.sh", "--root", root, "--wheel", wheel, timeout=180)


def healthz(port: int, timeout_s: float = 30) -> int:
    """GET /healthz, asked again while the listener is not bound yet (it starts after the start line)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                status: int = answer.status
                return status
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_install_sh_puts_every_file_where_the_unit_expects_it_and_keeps_an_edited_config(
    installed: tuple[Path, str], wheel: Path, tmp_path: Path
) -> None:
    root, output = installed
    assert f"installed ftp-alg {__version__}" in output and "ok: mode=reverse" in output
    unit = root / "etc/systemd/system/ftp-alg.service"
    assert unit.read_text() == (ROOT / "deploy/systemd/ftp-alg.service").read_text()
    values = unit_values(unit)
    binary, command, flag, config_path = values["ExecStart"].split()
    assert (command, flag) == ("run", "--config")
    program, config = root / binary.lstrip("/"), root / config_path.lstrip("/")
    assert os.access(program, os.X_OK), binary
    assert config.read_text() == (ROOT / "deploy/systemd/gateway.yaml").read_text()
    assert (root / values["Documentation"].removeprefix("file:///")).is_file()
    assert (root / "etc/ftp-alg/gateway.example.yaml").is_file()

    # The unit's own command line, from the installed files (on loopback: port 21 is the unit's business).
    port, metrics, admin = free_port(), free_port(), free_port()
    flags = ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}"]
    flags += ["--admin-listen", f"127.0.0.1:{admin}"]
    process = subprocess.Popen([program, "run", "--config", config, *flags], stderr=subprocess.PIPE, text=True)
    output = Output(process.stderr)
    try:
        started = output.until("listening on")[-1]
        # Once /healthz answers, the signal handlers are in place too (they come after the HTTP listeners).
        assert healthz(metrics) == 200
    finally:
        process.send_signal(signal.SIGTERM)  # systemctl stop (KillSignal=SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, output.rest()
    assert f"listening on 127.0.0.1:{port}" in started and f"version={__version__}" in started, started

    # An upgrade (the same command again) replaces the package and the unit, never the operator's config.
    edited = config.read_text().replace("127.0.0.1:2121", "198.51.100.10:21")
    config.write_text(edited)
    output_again = run("bash", ROOT / "deploy" / "install.sh", "--root", root, "--wheel", wheel, timeout=180)
    assert "kept " in output_again and "upstream=198.51.100.10:21" in output_again
    assert config.read_text() == edited


def test_the_installed_unit_passes_systemd_analyze_verify(installed: tuple[Path, str], tmp_path: Path) -> None:
    """verify checks every directive and that ExecStart's binary exists and is executable: here the installed
    binary under --root, through a copy of the unit whose paths carry that root."""
    if shutil.which("systemd-analyze") is None:
        skip_or_fail("systemd-analyze is not installed (Debian package systemd)")
    root = installed[0]
    text = (root / "etc/systemd/system/ftp-alg.service").read_text()
    rooted = text.replace("/opt/ftp-alg/", f"{root}/opt/ftp-alg/").replace("/etc/ftp-alg/", f"{root}/etc/ftp-alg/")
    copy = tmp_path / "ftp-alg.service"
    copy.write_text(rooted)
    done = subprocess.run(["systemd-analyze", "verify", copy], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    broken = tmp_path / "broken" / "ftp-alg.service"
    broken.parent.mkdir()
    broken.write_text(rooted.replace(f"{root}/opt/ftp-alg/.venv", f"{root}/opt/nothing"))
    failed = subprocess.run(["systemd-analyze", "verify", broken], capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "not executable" in failed.stderr


# ---- the README's pip install, as written ----------------------------------------------------------------------


def readme_block(marker: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split(f"<!-- {marker} -->\n```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_pip_install_works_as_written(tmp_path: Path) -> None:
    commands = readme_block("install: pip")
    assert commands[0].startswith("python3 -m venv /opt/ftp-alg/.venv")
    prefix = tmp_path / "opt" / "ftp-alg"  # the README's folder, under this test's own root
    script = "\n".join(line.replace("/opt/ftp-alg", str(prefix)) for line in commands)
    output = run("bash", "-euc", script, timeout=240)
    assert f"ftp-alg {__version__}" in output.splitlines()
    assert "deprecat" not in output.lower()
    checked = run(prefix / ".venv/bin/ftp-alg", "check", "--config", ROOT / "rules/gateway.example.yaml")
    assert checked.startswith("ok: mode=reverse")


def test_the_readme_recipe_edits_the_installed_config_into_one_that_passes_check(installed: tuple[Path, str]) -> None:
    """The five lines at the top of the README, on the files install.sh wrote (under its --root, without sudo;
    `./dev install` is the fixture, systemctl is the machine's)."""
    root = installed[0]
    commands = readme_block("recipe")
    assert commands[0].startswith("sudo ./dev install") and commands[-1].startswith("sudo systemctl enable --now")
    for line in commands[1:-1]:
        command = line.split("  #")[0].removeprefix("sudo ")
        command = command.replace("/etc/ftp-alg/", f"{root}/etc/ftp-alg/").replace(
            "/opt/ftp-alg/", f"{root}/opt/ftp-alg/"
        )
        output = run("bash", "-euc", command)
    assert "upstream=198.51.100.10:21" in output and "public_address=203.0.113.1" in output
