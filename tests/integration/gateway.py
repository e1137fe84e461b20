"""Start ftp-alg inside a test namespace and talk to it."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netns import Host, ManagedProcess, Topology

GATEWAY_PORT = 21
PASSIVE_PORTS = "50000-50999"


@dataclass
class Gateway:
    topology: Topology
    process: ManagedProcess
    addr: ipaddress.IPv4Address
    port: int

    def log(self) -> str:
        return self.process.log()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        if self.process.alive():
            self.process.signal(sig)
            return self.process.wait(timeout_s)
        return self.process.returncode


def start_reverse_gateway(
    topo: Topology,
    *extra: str,
    upstream: str = "198.51.100.10:21",
    listen_port: int = GATEWAY_PORT,
    passive_ports: str = PASSIVE_PORTS,
    env: dict[str, str] | None = None,
) -> Gateway:
    """The issue's own command line: listen on the public address, upstream the internal server."""
    public = topo.public_addr
    args: list[str] = [
        "run",
        "--listen",
        f"{public}:{listen_port}",
        "--upstream",
        upstream,
        "--public-address",
        str(public),
        "--passive-ports",
        passive_ports,
        "--log-level",
        "debug",
        *extra,
    ]
    process = topo.start_gateway(args, env=env)
    wait_listening(topo.gw, process, public, listen_port)
    return Gateway(topo, process, public, listen_port)


def wait_listening(host: Host, process: ManagedProcess, ip: ipaddress.IPv4Address, port: int) -> None:
    # The gateway logs "listening on" once every listener is bound; connect-polling would open sessions.
    import time

    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if not process.alive():
            raise AssertionError(f"gateway exited with {process.returncode}:\n{process.log()[-4000:]}")
        if "listening on" in process.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"gateway did not start listening on {ip}:{port}:\n{process.log()[-4000:]}")


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 1 << 22))
            f.write(chunk)
            remaining -= len(chunk)
    return path


def sent_verbs(lines: Sequence[str]) -> list[str]:
    return [line.split(" ", 1)[0].upper() for line in lines if line]
