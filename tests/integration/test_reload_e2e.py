"""SIGHUP on a running gateway with `workers: 2`: the settings file is read again (by the parent), every worker
applies the same reload without dropping a session, keys that need a restart are named and kept, a bad file keeps
everything, and a worker started again later runs with the reloaded settings.

Topology: client 203.0.113.10 -> gateway 203.0.113.1 | 198.51.100.1 -> vsftpd 198.51.100.10.
"""

from __future__ import annotations

import ftplib
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from clients import ftplib_login
from gateway import Gateway, wait_listening
from netns import Topology
from servers import FtpServer

from alg.gateway.workers import MIN_UPTIME_S

pytestmark = pytest.mark.netns

METRICS_PORT = 9131  # worker 1 serves its metrics on 9132
READ_ONLY = "commands:\n  rules:\n    - deny: [DELE]\n      code: 553\n      text: Read-only gateway (test rule).\n"


@pytest.fixture
def topo(reverse_topo: Topology, vsftpd: FtpServer) -> tuple[Topology, FtpServer]:
    return reverse_topo, vsftpd  # conftest's: vsftpd at 198.51.100.10:21 behind the reverse topology


def write_config(path: Path, body: str, workers: int = 2) -> None:
    path.write_text(
        "listen: {PUBLIC}:21\npublic_address: {PUBLIC}\npassive_ports: 50000-50999\n"
        f"metrics_listen: 127.0.0.1:{METRICS_PORT}\nworkers: {workers}\n" + body
    )


def start(topo: Topology, config: Path) -> Gateway:
    config.write_text(config.read_text().replace("{PUBLIC}", str(topo.public_addr)))
    process = topo.start_gateway(["run", "--config", str(config)])
    gateway = Gateway(topo, process, topo.public_addr, 21)
    wait_listening(topo.gw, process, topo.public_addr, 21)
    wait_log(gateway, "listening on", 2)
    return gateway


def rewrite(topo: Topology, config: Path, body: str, workers: int) -> None:
    write_config(config, body, workers)
    config.write_text(config.read_text().replace("{PUBLIC}", str(topo.public_addr)))


def wait_log(gateway: Gateway, text: str, count: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while gateway.log().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} #{count} in the gateway log:\n{gateway.log()[-4000:]}"
        time.sleep(0.05)


def scrape(topo: Topology, worker: int) -> str:
    def body() -> str:
        url = f"http://127.0.0.1:{METRICS_PORT + worker}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    return str(topo.gw.call(body))


def sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split()[-1])
    return None


def reloads(topo: Topology, worker: int, result: str) -> float | None:
    return sample(scrape(topo, worker), f'ftp_alg_reloads_total{{result="{result}"}}')


def send(topo: Topology, ftp: ftplib.FTP, line: str) -> str:
    def body() -> str:
        try:
            return ftp.sendcmd(line)
        except ftplib.Error as error:
            return str(error)

    return str(topo.client.call(body))


def worker_pids(gateway: Gateway) -> dict[int, int]:
    """index -> pid of the workers started last, from the parent's log."""
    found = re.findall(r"worker started index=(\d+) pid=(\d+)", gateway.log())
    return {int(index): int(pid) for index, pid in found}


def test_sighup_reloads_the_file_in_every_worker_and_keeps_what_needs_a_restart(
    topo: tuple[Topology, FtpServer], tmp_path: Path
) -> None:
    net, server = topo
    rules = tmp_path / "read-only.yaml"
    rules.write_text(READ_ONLY)
    config = tmp_path / "gateway.yaml"
    write_config(config, f"upstream: {net.server_addr}:21\nrules: [{rules}]\n")
    gateway = start(net, config)
    started = time.monotonic()
    try:
        kept = ftplib_login(net, server)  # open across both reloads: never dropped
        server.put_file("upload/a.txt", b"a")
        assert send(net, kept, "DELE upload/a.txt") == "553 Read-only gateway (test rule)."

        # The rule file leaves the list, the single upstream becomes a named, weighted pool, workers change.
        rewrite(net, config, f"upstreams: [{{address: '{net.server_addr}:21', name: main, weight: 3}}]\n", workers=3)
        gateway.process.signal(signal.SIGHUP)
        wait_log(gateway, "settings reloaded", 2)
        assert gateway.log().count("reload: workers: 2 -> 3 waits for a restart") == 1
        for worker in (0, 1):
            text = scrape(net, worker)
            assert sample(text, 'ftp_alg_reloads_total{result="ok"}') == 1, worker
            assert sample(text, 'ftp_alg_upstream_sessions_total{upstream="main"}') is not None, worker
        assert gateway.log().count("worker started") == 2  # still the two workers: workers waits for a restart

        files = [server.put_file(f"upload/{n}.txt", b"x") for n in range(8)]
        for number, path in enumerate(files):  # new sessions, spread over both workers
            ftp = ftplib_login(net, server)
            assert send(net, ftp, f"DELE upload/{number}.txt").startswith("250")
            net.client.call(ftp.quit)
            assert not path.exists()
        assert send(net, kept, "NOOP").startswith("200")

        # A bad file keeps everything, says why once, and is counted by every worker.
        config.write_text("upstream: [unclosed\n")
        gateway.process.signal(signal.SIGHUP)
        wait_log(gateway, "reload failed, keeping the running settings", 1)
        deadline = time.monotonic() + 10
        while not all(reloads(net, worker, "failed") == 1 for worker in (0, 1)):
            assert time.monotonic() < deadline, "a worker did not count the failed reload"
            time.sleep(0.05)
        assert "invalid YAML" in gateway.log()
        ftp = ftplib_login(net, server)
        server.put_file("upload/b.txt", b"b")
        assert send(net, ftp, "DELE upload/b.txt").startswith("250")
        net.client.call(ftp.quit)
        assert send(net, kept, "NOOP").startswith("200")
        net.client.call(kept.quit)  # it may be worker 1's, which dies next

        # A worker that dies is started again with the settings in force (the pool named main); one that dies
        # sooner than MIN_UPTIME_S would stop the gateway as a start failure.
        time.sleep(max(0.0, started + MIN_UPTIME_S + 1 - time.monotonic()))
        old = worker_pids(gateway)[1]
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while worker_pids(gateway).get(1) in (None, old):
            assert time.monotonic() < deadline, gateway.log()[-3000:]
            time.sleep(0.05)
        wait_log(gateway, "listening on", 3)
        restarted = scrape(net, 1)
        assert sample(restarted, 'ftp_alg_upstream_sessions_total{upstream="main"}') is not None
        assert sample(restarted, 'ftp_alg_reloads_total{result="ok"}') == 0
    finally:
        assert gateway.stop() == 0, gateway.log()[-3000:]
