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
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only the wheel built from the sdist, with its demo extra, as pinned."""
    work = tmp_path_factory.mktemp("install")
    sdist = build_hook("build_sdist", ROOT, work / "dist")
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    (source,) = (work / "unpacked").iterdir()
    assert (source / "LICENSE").is_file() and (source / "README.md").is_file()
    wheel = build_hook("build_wheel", source, work / "dist")
    assert zipfile.ZipFile(wheel).read(f"ftp_alg-{__version__}.dist-info/licenses/LICENSE")
    env = work / "venv"
    run(sys.executable, "-m", "venv", env)
    run(env / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "-c", CONSTRAINTS, f"{wheel}[demo]")
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        # The invitation comes first, then the gateway's start line once it listens.
        deadline = time.monotonic() + 30
        while not any("listening on" in line for line in seen):
            try:
                seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no start line within 30 s (exit {process.poll()}): {seen}") from None
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
    reader.join(timeout=10)
    assert process.returncode in (0, 130), "".join([*seen, *lines.queue])


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
