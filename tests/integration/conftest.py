"""Fixtures for the namespace-based integration tests.

Needs root and `ip netns`; without them the tests are skipped, except under CI=true, where a missing
prerequisite is a failure (so a broken CI machine cannot pass by skipping everything).
Import the helpers as plain modules: `from netns import Topology`, `from servers import start_server`,
`from clients import curl_list` (this directory is put on sys.path below).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netns
import servers
from netns import Host, Topology
from pki import Pki, make_pki
from servers import FtpServer


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """pytest.skip(reason), or pytest.fail(reason) under CI=true (never skip in CI)."""
    print(f"integration: {reason}", file=sys.stderr)
    if in_ci():
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


def require_netns() -> None:
    reason = netns.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)


def require_server(kind: str) -> None:
    reason = servers.missing(kind)
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture(scope="session", autouse=True)
def _stale_namespaces() -> None:
    """Remove namespaces left by aborted runs (their creating PID is dead) before anything starts."""
    if netns.unavailable_reason() is None:
        removed = netns.cleanup_stale_namespaces()
        if removed:
            print(f"integration: removed stale namespaces {removed}", file=sys.stderr)


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is not None and bool(report.failed)


def _topology(request: pytest.FixtureRequest, layout: str) -> Iterator[Topology]:
    require_netns()
    with Topology(layout) as topo:
        yield topo
        if _failed(request) and topo.processes:
            print(topo.logs())


@pytest.fixture
def reverse_topo(request: pytest.FixtureRequest) -> Iterator[Topology]:
    """client 203.0.113.10 ─ gw (203.0.113.1 | 198.51.100.1, no forwarding) ─ server 198.51.100.10."""
    yield from _topology(request, "reverse")


@pytest.fixture
def transparent_topo(request: pytest.FixtureRequest) -> Iterator[Topology]:
    """lan 198.18.0.10 ─ gw (198.18.0.1 | 203.0.113.1, forwarding + masquerade) ─ server 203.0.113.20."""
    yield from _topology(request, "transparent")


@pytest.fixture
def topology_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Topology]]:
    """Build extra topologies in one test: factory("reverse" | "transparent"); all closed after."""
    require_netns()
    built: list[Topology] = []

    def make(layout: str) -> Topology:
        topo = Topology(layout).build()
        built.append(topo)
        return topo

    yield make
    for topo in reversed(built):
        if _failed(request) and topo.processes:
            print(topo.logs())
        topo.close()


@pytest.fixture
def ftp_server_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., FtpServer]]:
    """factory(kind, host, **start_server kwargs) -> FtpServer; stopped after the test.

    On a failing test, the servers' logs are printed (shown by pytest with the failure)."""
    started: list[FtpServer] = []

    def make(kind: str, host: Host, **kw: Any) -> FtpServer:
        require_server(kind)
        server = servers.start_server(kind, host, **kw)
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        if _failed(request):
            print(server.logs()[-8000:])
        server.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The FTPS tests' certificates (tests/integration/pki.py): a CA, the gateway's and the upstreams'
    certificates, and expired, wrong-name and untrusted ones for the fault tests."""
    return make_pki(tmp_path_factory.mktemp("pki"))


# More than every socket buffer on the path can hold: a client that stops reading stalls the transfer.
HUGE = 32 * 1024 * 1024


@pytest.fixture
def vsftpd(reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer]) -> FtpServer:
    """vsftpd at 198.51.100.10:21 in `reverse_topo`."""
    return ftp_server_factory("vsftpd", reverse_topo.server)


@pytest.fixture
def huge(vsftpd: FtpServer) -> str:
    """sha256 of huge.bin, a 32 MiB file on `vsftpd`."""
    payload = random.Random(32).randbytes(HUGE)
    vsftpd.put_file("huge.bin", payload)
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture(params=servers.KINDS)
def ftp_kind(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over vsftpd, pure-ftpd and proftpd."""
    return str(request.param)


@pytest.fixture
def upstream(reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], ftp_kind: str) -> FtpServer:
    """An FTP server of each kind at 198.51.100.10:21 in `reverse_topo`'s server namespace."""
    return ftp_server_factory(ftp_kind, reverse_topo.server)


@pytest.fixture
def external_server(
    transparent_topo: Topology, ftp_server_factory: Callable[..., FtpServer], ftp_kind: str
) -> FtpServer:
    """An FTP server of each kind at 203.0.113.20:21 in `transparent_topo`'s server namespace."""
    return ftp_server_factory(ftp_kind, transparent_topo.server)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Keep each phase's report on the item so fixtures can print logs only for failed tests.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
