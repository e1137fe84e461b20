"""Scale-out end to end: HAProxy (the Debian package, configured from deploy/haproxy/haproxy.cfg) in front of
three ftp-alg instances, each in its own namespace (the "nodes"), with two vsftpd upstreams behind them.

 client 203.0.113.10 ── lb 203.0.113.1 (HAProxy: :21 → PROXY v2 to a ready gateway; each passive slice → its
                           │ 198.51.100.1        gateway, port for port)
             ┌─────────────┴─ switch (a bridge) ──┬───────────────┬───────────────┬───────────────┐
        gw0 198.51.100.21    gw1 198.51.100.22    gw2 198.51.100.23   ftp0 198.51.100.10   ftp1 198.51.100.11
        :2121, passive 50000-50099 / 50100-50199 / 50200-50299 (FTP_ALG_INSTANCE of 3), metrics :9121

Phase 1: SESSIONS concurrent sessions, each LIST + RETR (sha256 checked) + STOR (sha256 checked on the server's
disk), spread over the instances; once a third of them are logged in, gw1 gets SIGTERM: its transfers in
flight complete within the grace period, new sessions go to the others (a 421 at a command boundary makes the
client reconnect and go on), and no session or transfer is lost. Each instance's metrics and transfer log
show its share. Phase 2: ftp1 is stopped: the health checks take it out within their fall count, /readyz
stays ready, new sessions go to ftp0; it is started again and comes back.

Run alone: ./dev test tests/integration/test_scaleout_e2e.py -m scaleout -s  (prints the figures)
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import os
import random
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import skip_or_fail
from hostile import Samples, metric, parse_samples, wait_until
from netns import REPO_ROOT, Host, ManagedProcess, Topology
from servers import VSFTPD, FtpServer, start_server
from test_observability import http_get, log_lines

pytestmark = [pytest.mark.netns, pytest.mark.scaleout]

SESSIONS = 300
RAMP_S = 3.0  # sessions start spread over this
SESSION_TIMEOUT_S = 150.0
GRACE_S = 30.0
INSTANCES = 3
SLICE = 100  # passive ports per instance
FIRST_PASSIVE = 50000
HAPROXY = Path("/usr/sbin/haproxy")
EXAMPLE = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"
LOAD = Path(__file__).with_name("scaleout_load.py")
HEALTH = {"interval_s": 0.5, "timeout_s": 1.0, "rise": 2, "fall": 2}
DOWNLOAD = "load.bin"
DOWNLOAD_BYTES = 1024 * 1024
POLL_S = 0.1


def build(topo: Topology) -> None:
    client = topo.add_host("client", {"eth0": "203.0.113.10/24"})
    lb = topo.add_host("lb", {"pub": "203.0.113.1/24", "int": "198.51.100.1/24"})
    switch = topo.add_host("switch", {})
    topo.link(lb, "pub", client, "eth0")
    switch.ip("link", "add", "br0", "type", "bridge")
    switch.ip("link", "set", "br0", "up")
    members: list[tuple[Host, str]] = [(lb, "int")]
    for index in range(INSTANCES):
        members.append((topo.add_host(f"gw{index}", {"eth0": f"198.51.100.{21 + index}/24"}), "eth0"))
    for index in range(2):
        members.append((topo.add_host(f"ftp{index}", {"eth0": f"198.51.100.{10 + index}/24"}), "eth0"))
    for number, (host, iface) in enumerate(members):
        port = f"sw{number}"
        topo.link(host, iface, switch, port)
        switch.ip("link", "set", port, "master", "br0")


def gateway_addr(index: int) -> str:
    return f"198.51.100.{21 + index}"


def haproxy_config(workdir: Path) -> Path:
    """deploy/haproxy/haproxy.cfg with this test's slices (100 ports each) and a stats socket to watch it."""
    text = EXAMPLE.read_text()
    for index in range(INSTANCES):
        first = FIRST_PASSIVE + index * 10
        wider = f"{FIRST_PASSIVE + index * SLICE}-{FIRST_PASSIVE + (index + 1) * SLICE - 1}"
        text, done = re.subn(rf"bind 203\.0\.113\.1:{first}-{first + 9}\n", f"bind 203.0.113.1:{wider}\n", text)
        assert done == 1, f"the example has no slice {first}-{first + 9}"
    # The test's descriptor limit is lower than the example's maxconn asks for (2 per connection).
    text = text.replace("maxconn 20000", "maxconn 4000")
    stats = workdir / "haproxy.sock"
    text = text.replace("global\n", f"global\n    stats socket {stats} mode 600 level admin\n", 1)
    path = workdir / "haproxy.cfg"
    path.write_text(text)
    return path


def haproxy_states(workdir: Path) -> dict[str, str]:
    """server name -> status (UP, DOWN, ...) of the control backend, from HAProxy's stats socket."""
    data = b""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        try:
            sock.connect(str(workdir / "haproxy.sock"))
        except (FileNotFoundError, ConnectionRefusedError):
            return {}  # HAProxy has not opened it yet
        sock.sendall(b"show stat\n")
        while chunk := sock.recv(65536):
            data += chunk
    states = {}
    for line in data.decode().splitlines():
        fields = line.split(",")
        if len(fields) > 17 and fields[0] == "ftp_alg_control" and fields[1].startswith("gw"):
            states[fields[1]] = fields[17]
    return states


wait_for = functools.partial(wait_until, poll_s=POLL_S)


def scrape(lb: Host, index: int) -> Samples:
    status, text = http_get(lb, f"http://{gateway_addr(index)}:9121/metrics")
    assert status == 200, text
    return parse_samples(text)


def readyz(lb: Host, index: int) -> int:
    return http_get(lb, f"http://{gateway_addr(index)}:9121/readyz")[0]


def start_vsftpd(host: Host) -> FtpServer:
    # Every gateway connects from its own address, up to all the sessions at once.
    options = {"max_clients": "1000", "max_per_ip": "1000", "idle_session_timeout": "120"}
    return start_server("vsftpd", host, pasv_ports=(30000, 30299), options=options)


def restart_vsftpd(server: FtpServer) -> None:
    """The same daemon, config and tree again, after server.process was killed."""
    server.process = server.host.popen([VSFTPD, server.workdir / "vsftpd.conf"], name="vsftpd")
    server.host.wait_port(server.addr, server.port, timeout_s=5, process=server.process)


def start_gateway(topo: Topology, index: int) -> ManagedProcess:
    config = topo.workdir / f"gw{index}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"{gateway_addr(index)}:2121",
                "upstreams": [
                    {"name": "ftp0", "address": "198.51.100.10:21"},
                    {"name": "ftp1", "address": "198.51.100.11:21"},
                ],
                "upstream_policy": "least_sessions",
                "health_check": HEALTH,
                "proxy_protocol": {"trusted": ["198.51.100.1/32"], "data_from": "balancer"},
                "public_address": "203.0.113.1",
                "passive_ports": f"{FIRST_PASSIVE}-{FIRST_PASSIVE + INSTANCES * SLICE - 1}",
                "metrics_listen": f"{gateway_addr(index)}:9121",
                "timeouts": {"shutdown_grace_s": GRACE_S},
                # Every session comes from one client address (the PROXY header's).
                "limits": {"max_sessions_per_client": 1000},
            }
        )
    )
    env = {"FTP_ALG_INSTANCE": f"ftp-alg-{index}", "FTP_ALG_INSTANCES": str(INSTANCES)}
    process = topo.hosts[f"gw{index}"].exec_python(
        ["-m", "alg.cli", "run", "--config", config], env={**os.environ, **env}, name=f"gateway{index}"
    )
    return process


def instance_of(port: int) -> int:
    return (port - FIRST_PASSIVE) // SLICE


def transfers(process: ManagedProcess) -> list[dict[str, str]]:
    return [line for line in log_lines(process.log()) if line.get("logger") == "ftp_alg.transfer"]


def run_load(topo: Topology, count: int, ramp_s: float, name: str, sha: str) -> tuple[ManagedProcess, Path, Path]:
    out, progress = topo.workdir / f"{name}.json", topo.workdir / f"{name}.progress"
    progress.write_text("")
    argv = [LOAD, "203.0.113.1", 21, count, ramp_s, SESSION_TIMEOUT_S, DOWNLOAD, sha, out, progress]
    return topo.client.exec_python(argv, name=name), out, progress


def finish_load(process: ManagedProcess, out: Path, timeout_s: float) -> dict[str, Any]:
    process.wait(timeout_s=timeout_s)
    assert process.returncode == 0, process.log()[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report


@pytest.fixture
def world() -> Iterator[Topology]:
    if not HAPROXY.exists():
        skip_or_fail("haproxy is not installed (scripts/install-test-deps.sh installs it)")
    with Topology("scaleout", builder=build) as topo:
        yield topo


def test_three_gateways_behind_haproxy(world: Topology, capsys: pytest.CaptureFixture[str]) -> None:
    topo, lb = world, world.hosts["lb"]
    payload = random.Random(300).randbytes(DOWNLOAD_BYTES)
    sha = hashlib.sha256(payload).hexdigest()
    upstreams = [start_vsftpd(topo.hosts[f"ftp{index}"]) for index in range(2)]
    try:
        for server in upstreams:
            server.put_file(DOWNLOAD, payload)
        gateways = [start_gateway(topo, index) for index in range(INSTANCES)]
        for index, gateway in enumerate(gateways):
            lb.wait_port(ipaddress.ip_address(gateway_addr(index)), 9121, timeout_s=15, process=gateway)
        haproxy = lb.popen([HAPROXY, "-db", "-f", haproxy_config(topo.workdir)], name="haproxy")
        topo.client.wait_port("203.0.113.1", 21, timeout_s=10, process=haproxy)
        wait_for("HAProxy sees three ready gateways", lambda: set(haproxy_states(topo.workdir).values()) == {"UP"}, 15)
        figures = phase_sigterm(topo, lb, gateways, upstreams, sha)
        figures.update(phase_upstream_down(topo, lb, upstreams, sha))
    finally:
        for server in upstreams:
            server.stop()
    with capsys.disabled():
        print("\nscale-out figures: " + json.dumps(figures))


def phase_sigterm(
    topo: Topology, lb: Host, gateways: list[ManagedProcess], upstreams: list[FtpServer], sha: str
) -> dict[str, Any]:
    started = time.monotonic()
    load, out, progress = run_load(topo, SESSIONS, RAMP_S, "load", sha)

    def half_logged_in() -> bool:
        assert load.alive(), load.log()[-3000:]
        return len(progress.read_text().split()) >= SESSIONS // 2

    wait_for("half the sessions logged in", half_logged_in, 60)
    before_term = [scrape(lb, index) for index in range(INSTANCES)]
    in_flight = metric(before_term[1], "ftp_alg_data_channels_active")
    sessions_at_term = metric(before_term[1], "ftp_alg_sessions_active")
    open_at_term = sum(metric(samples, "ftp_alg_sessions_active") for samples in before_term)
    term_at = time.monotonic()
    gateways[1].signal(signal.SIGTERM)
    marked_down = wait_for("HAProxy takes gw1 out", lambda: haproxy_states(topo.workdir).get("gw1") != "UP", 10)
    down_s = time.monotonic() - term_at
    code = gateways[1].wait(timeout_s=GRACE_S + 15)
    exit_s = time.monotonic() - term_at
    report = finish_load(load, out, SESSION_TIMEOUT_S + RAMP_S + 30)
    total_s = time.monotonic() - started

    # Nothing lost: every session did its three transfers, every byte checked.
    assert report["failed"] == {}, report["failed"]
    assert report["ok"] == SESSIONS
    assert in_flight >= 1  # the SIGTERM did land on transfers in flight
    assert code == 0, gateways[1].log()[-3000:]
    assert exit_s < GRACE_S + 5
    for name, digest in report["uploads"].items():
        on_disk = [s.sha256(name) for s in upstreams if s.path(name).exists()]
        assert on_disk == [digest], name
    assert len(report["uploads"]) == SESSIONS

    # Each step names the instance that served it (its passive port's slice); sessions that got a 421 from
    # the stopping instance went on elsewhere.
    steps = [(step, instance_of(port)) for done in report["steps"].values() for step, port in done.items()]
    share = Counter(instance for step, instance in steps if step == "RETR")
    assert sum(share.values()) == SESSIONS and all(share[index] > 0 for index in range(INSTANCES))
    # gw1's transfers after the SIGTERM all completed (its transfer log), none failed anywhere.
    for index, gateway in enumerate(gateways):
        records = transfers(gateway)
        assert all(record["outcome"] == "complete" for record in records), index
        retrs = sum(1 for record in records if record["command"] == "RETR")
        assert retrs == share[index], (index, retrs, share)
    for index in (0, 2):
        samples = scrape(lb, index)
        assert metric(samples, "ftp_alg_commands_total", verb="RETR") == share[index]
        assert sum(v for (n, _), v in samples.items() if n == "ftp_alg_data_channels_failed_total") == 0
    assert "shutting down" in gateways[1].log()
    return {
        "sessions": SESSIONS,
        "ok": report["ok"],
        "seconds": round(total_s, 1),
        "max_concurrent_client_side": report["max_concurrent"],
        "sessions_open_at_sigterm": open_at_term,
        "retr_per_instance": {f"gw{index}": share[index] for index in range(INSTANCES)},
        "gw1_at_sigterm": {"sessions": sessions_at_term, "data_connections": in_flight},
        "gw1_marked_down_s": round(down_s, 2),
        "gw1_exit_s": round(exit_s, 2),
        "sessions_retried_after_421": len(report["retries"]),
        "haproxy_state": marked_down,
    }


def phase_upstream_down(topo: Topology, lb: Host, upstreams: list[FtpServer], sha: str) -> dict[str, Any]:
    alive = (0, 2)

    def upstream_metric(name: str, upstream: str) -> float:
        return sum(metric(scrape(lb, index), name, upstream=upstream) for index in alive)

    assert upstream_metric("ftp_alg_upstream_healthy", "ftp1") == len(alive)
    used_before = upstream_metric("ftp_alg_upstream_sessions_total", "ftp1")
    assert used_before > 0  # phase 1 spread sessions over both upstreams
    upstreams[1].process.kill()
    killed_at = time.monotonic()
    not_ready: list[tuple[int, int]] = []

    def taken_out() -> bool:
        for index in alive:
            status = readyz(lb, index)
            if status != 200:
                not_ready.append((index, status))
        return upstream_metric("ftp_alg_upstream_healthy", "ftp1") == 0

    wait_for("health checks take ftp1 out", taken_out, 15)
    out_s = time.monotonic() - killed_at
    # fall 2 at 0.5 s, each check bounded by 1 s: out within fall * (interval + timeout), plus a scrape.
    assert out_s <= HEALTH["fall"] * (HEALTH["interval_s"] + HEALTH["timeout_s"]) + 1.5
    assert not_ready == []

    batch, out, _ = run_load(topo, 30, 1.0, "batch-down", sha)
    report = finish_load(batch, out, 90)
    assert report["failed"] == {} and report["ok"] == 30
    assert upstream_metric("ftp_alg_upstream_sessions_total", "ftp1") == used_before
    assert all(readyz(lb, index) == 200 for index in alive)

    restart_vsftpd(upstreams[1])
    restarted_at = time.monotonic()
    wait_for("ftp1 back", lambda: upstream_metric("ftp_alg_upstream_healthy", "ftp1") == len(alive), 15)
    back_s = time.monotonic() - restarted_at
    batch, out, _ = run_load(topo, 30, 1.0, "batch-up", sha)
    report = finish_load(batch, out, 90)
    assert report["failed"] == {} and report["ok"] == 30
    assert upstream_metric("ftp_alg_upstream_sessions_total", "ftp1") > used_before
    return {"ftp1_taken_out_s": round(out_s, 2), "ftp1_back_s": round(back_s, 2), "readyz_non_200": len(not_ready)}
