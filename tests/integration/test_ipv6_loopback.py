"""IPv6 clients in front of an IPv4-only server: EPSV and EPRT cross address families at the gateway.

Loopback only (::1 toward the gateway, 127.0.0.1 toward a pyftpdlib upstream in this process): ftplib speaks
EPSV/EPRT on IPv6 by itself, and the gateway must answer in the client's family while it talks IPv4 upstream.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    root = tmp_path_factory.mktemp("v6root")
    (root / "data.bin").write_bytes(os.urandom(300_000))
    authorizer = DummyAuthorizer()
    authorizer.add_user("user", "secret", str(root), perm="elradfmw")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer})
    server = FTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.1}, daemon=True)
    thread.start()
    yield server.socket.getsockname()[1], root
    server.close_all()
    thread.join(5)


@pytest.fixture(scope="module")
def gateway(upstream: tuple[int, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not ipv6_loopback():
        skip_or_fail("no IPv6 loopback on this machine")
    port, _ = upstream
    log = tmp_path_factory.mktemp("v6gw") / "gateway.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alg.cli",
                "run",
                "--listen",
                "[::1]:0",
                "--upstream",
                f"127.0.0.1:{port}",
                "--passive-ports",
                "52000-52019",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            match = re.search(r"listening on \[::1\]:(\d+)", log.read_text())
            if match:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"gateway did not start:\n{log.read_text()}")
        yield int(match.group(1))
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("passive", [True, False], ids=["EPSV", "EPRT"])
def test_ipv6_client_ipv4_server(gateway: int, upstream: tuple[int, Path], passive: bool) -> None:
    _, root = upstream
    ftp = ftplib.FTP(timeout=10)
    ftp.connect("::1", gateway)
    ftp.login("user", "secret")
    ftp.set_pasv(passive)
    sent: list[str] = []
    putline = ftp.putline
    ftp.putline = lambda line: (sent.append(line), putline(line))[1]  # type: ignore[method-assign]
    got = io.BytesIO()
    ftp.retrbinary("RETR data.bin", got.write)
    name = f"up-{'epsv' if passive else 'eprt'}.bin"
    ftp.storbinary(f"STOR {name}", io.BytesIO(got.getvalue()))
    ftp.quit()
    assert hashlib.sha256(got.getvalue()).digest() == hashlib.sha256((root / "data.bin").read_bytes()).digest()
    assert (root / name).read_bytes() == got.getvalue()
    verbs = {line.split(" ")[0] for line in sent}
    assert ("EPSV" if passive else "EPRT") in verbs, sent
    if not passive:
        assert any(line.startswith("EPRT |2|::1|") for line in sent), sent
