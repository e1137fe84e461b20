"""The defender end to end, against vsftpd: a guesser is banned after the threshold and gets 421 with no new
connection reaching vsftpd (its log counts them), while another client address downloads throughout; an
operator lists and lifts the ban with `ftp-alg bans`; the repeat ban is twice as long; an allowlisted address
is never banned; a bounce attempt and a port-theft attempt add up to a ban; two workers share scores and bans.

client 203.0.113.10 (guesser), .11 (a real user), .12 (allowlisted) ─ gw 203.0.113.1 (ftp :21, admin :9180)
| 198.51.100.1 ─ vsftpd 198.51.100.10 (anonymous only: it answers USER root with 530)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import urllib.request

import pytest
from hostile import (
    RawFtp,
    add_address,
    connect,
    metric,
    parse_samples,
    port_argument,
    read_all,
    start_gateway,
    value,
    wait_until,
)
from netns import REPO_ROOT, Topology
from servers import FtpServer

pytestmark = pytest.mark.netns

GUESSER = "203.0.113.10"
USER = "203.0.113.11"
ALLOWED = "203.0.113.12"
ADMIN_PORT = 9180
BANS_ACTIVE = "ftp_alg_defender_bans_active"


def connects(vsftpd: FtpServer) -> int:
    return sum("CONNECT: Client" in line for line in vsftpd.logs().splitlines())


def guess(topo: Topology, source: str) -> int:
    """One wrong login on a connection of its own; the greeting's code (421 when banned)."""
    with RawFtp.open(topo.client, topo.public_addr, source=source) as ftp:
        greeting = ftp.reply()
        if greeting.code != 220:
            ftp.closed()
            return greeting.code
        ftp.expect("USER root", 530)
        ftp.expect("QUIT", 221)
        return greeting.code


def download(topo: Topology, source: str, name: str = "data.bin") -> str:
    """sha256 of `name` downloaded in passive mode from `source`."""
    with RawFtp.open(topo.client, topo.public_addr, source=source) as ftp:
        ftp.login()
        ftp.expect("TYPE I", 200)
        _, port = ftp.pasv()
        data = connect(topo.client, topo.public_addr, port, source=source)
        ftp.expect(f"RETR {name}", 150)
        digest = hashlib.sha256(read_all(data)).hexdigest()
        data.close()
        assert ftp.reply().code == 226
        ftp.expect("QUIT", 221)
    return digest


def bans_cli(topo: Topology, *args: str) -> tuple[int, str, str]:
    """`ftp-alg bans ARGS` from the client namespace, as an operator would run it."""
    env = {key: value for key, value in os.environ.items() if key != "FTP_ALG_ADMIN_TOKEN"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    url = f"http://{topo.public_addr}:{ADMIN_PORT}"
    result = topo.client.run([sys.executable, "-m", "alg.cli", "bans", "--url", url, *args], env=env, timeout=30)
    return result.returncode, result.stdout, result.stderr


def listed(topo: Topology) -> list[dict[str, object]]:
    code, out, err = bans_cli(topo, "--json")
    assert code == 0, err
    bans: list[dict[str, object]] = json.loads(out)["bans"]
    return bans


@pytest.fixture
def payload(vsftpd: FtpServer) -> str:
    data = random.Random(24).randbytes(1 << 20)
    vsftpd.put_file("data.bin", data)
    return hashlib.sha256(data).hexdigest()


def test_a_guesser_is_banned_before_vsftpd_while_another_client_downloads(
    reverse_topo: Topology, vsftpd: FtpServer, payload: str
) -> None:
    topo = reverse_topo
    for address in (USER, ALLOWED):
        add_address(topo.client, "eth0", f"{address}/24")
    admin = {"listen": f"{topo.public_addr}:{ADMIN_PORT}"}
    gateway = start_gateway(topo, {"admin": admin, "defender": {"enabled": True, "allowlist": [f"{ALLOWED}/32"]}})
    assert download(topo, USER) == payload

    # Defaults: 2 points a failed login, threshold 10: the fifth is banned, the sixth never reaches vsftpd.
    assert [guess(topo, GUESSER) for _ in range(5)] == [220] * 5
    before = connects(vsftpd)
    assert guess(topo, GUESSER) == 421
    assert download(topo, USER) == payload  # the real user goes on during the ban
    assert connects(vsftpd) == before + 1  # that download's session only
    (ban,) = listed(topo)
    assert (ban["client"], ban["reason"], ban["repeat"], ban["duration_s"]) == (
        f"{GUESSER}/32",
        "login_failed",
        1,
        900,
    )
    assert "defender ban client=203.0.113.10/32 reason=login_failed repeat=1 for_s=900" in gateway.log()
    assert value(topo, "ftp_alg_defender_bans_active") == 1
    assert value(topo, "ftp_alg_defender_refused_connections_total") == 1

    # The allowlist holds whatever the score.
    assert [guess(topo, ALLOWED) for _ in range(8)] == [220] * 8

    # The operator lets the guesser back; its next ban is twice as long.
    code, out, _ = bans_cli(topo, "--unban", GUESSER)
    assert code == 0 and out == f"ban on {GUESSER}/32 lifted\n"
    assert "defender unban client=203.0.113.10/32 reason=admin" in gateway.log()
    assert listed(topo) == []
    assert [guess(topo, GUESSER) for _ in range(5)] == [220] * 5
    assert guess(topo, GUESSER) == 421
    (again,) = listed(topo)
    assert (again["repeat"], again["duration_s"]) == (2, 1800)
    code, out, _ = bans_cli(topo)
    assert code == 0 and out.splitlines()[1].split()[:3] == [f"{GUESSER}/32", "login_failed", "2"]
    assert bans_cli(topo, "--unban", "203.0.113.99")[0] == 1
    assert value(topo, "ftp_alg_defender_bans_total", event="login_failed") == 2
    assert value(topo, "ftp_alg_defender_score_points_total", event="login_failed") == 20
    assert download(topo, USER) == payload


def test_a_bounce_and_a_port_theft_add_up_to_a_ban(reverse_topo: Topology, vsftpd: FtpServer, payload: str) -> None:
    topo = reverse_topo
    add_address(topo.client, "eth0", f"{USER}/24")
    start_gateway(topo, {"defender": {"enabled": True}})
    with RawFtp.open(topo.client, topo.public_addr, source=GUESSER) as guesser:
        guesser.login()
        guesser.expect(f"PORT {port_argument('198.51.100.10', 2121)}", 504)  # a bounce: 5 points
    assert value(topo, "ftp_alg_defender_score_points_total", event="bounce") == 5

    with RawFtp.open(topo.client, topo.public_addr, source=USER) as user:
        user.login()
        user.expect("TYPE I", 200)
        _, port = user.pasv()
        thief = connect(topo.client, topo.public_addr, port, source=GUESSER)  # not the user: 5 points, banned
        wait_until("the theft scored", lambda: value(topo, "ftp_alg_defender_bans_active") == 1)
        thief.close()
        data = connect(topo.client, topo.public_addr, port, source=USER)
        user.expect("RETR data.bin", 150)
        assert hashlib.sha256(read_all(data)).hexdigest() == payload
        data.close()
        assert user.reply().code == 226
    assert value(topo, "ftp_alg_defender_bans_total", event="port_theft") == 1
    assert guess(topo, GUESSER) == 421


def worker_value(topo: Topology, worker: int, name: str, **labels: str) -> float:
    """A sample from worker `worker`'s own /metrics (metrics_listen port + index)."""

    def get() -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{9121 + worker}/metrics", timeout=5) as response:
            return str(response.read().decode())

    return metric(parse_samples(topo.gw.call(get, timeout_s=10)), name, **labels)


def test_two_workers_share_scores_and_bans(reverse_topo: Topology, vsftpd: FtpServer, payload: str) -> None:
    """workers: 2: the kernel spreads the guesser's connections over both; their points add up (banned at the
    fifth failed login, not the tenth), both workers refuse it, and one of them logs the ban, once; a SIGHUP
    keeps the ban."""
    topo = reverse_topo
    add_address(topo.client, "eth0", f"{USER}/24")
    gateway = start_gateway(topo, {"workers": 2, "defender": {"enabled": True}})
    topo.gw.wait_port("127.0.0.1", 9122, process=gateway.process, timeout_s=10)
    assert [guess(topo, GUESSER) for _ in range(5)] == [220] * 5
    wait_until("both workers hold the ban", lambda: [worker_value(topo, w, BANS_ACTIVE) for w in (0, 1)] == [1, 1])
    sessions = [worker_value(topo, w, "ftp_alg_sessions_total", outcome="quit") for w in (0, 1)]
    assert min(sessions) >= 1, sessions  # the guesses really went through both workers
    before = connects(vsftpd)
    assert [guess(topo, GUESSER) for _ in range(8)] == [421] * 8
    refused = [worker_value(topo, w, "ftp_alg_defender_refused_connections_total") for w in (0, 1)]
    assert sum(refused) == 8 and min(refused) >= 1, refused
    assert connects(vsftpd) == before
    assert gateway.log().count("defender ban client=203.0.113.10/32") == 1
    assert sum(worker_value(topo, w, "ftp_alg_defender_bans_total", event="login_failed") for w in (0, 1)) == 1
    gateway.process.signal(signal.SIGHUP)
    wait_until("reloaded", lambda: gateway.log().count("defender reconfigured enabled=True bans=1") == 2)
    assert guess(topo, GUESSER) == 421
    assert download(topo, USER) == payload
