"""Several upstreams (two vsftpd), health checks, /readyz, failover, per-user routing; and split horizon.

client 203.0.113.10 ─ gw 203.0.113.1 | 198.51.100.1 ─ vsftpd a 198.51.100.10:21, vsftpd b 198.51.100.10:2121
(split horizon adds lan 198.18.0.10 ─ gw 198.18.0.1)
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

from clients import ClientTls, curl_download
from netns import REPO_ROOT, Topology
from pki import Pki, issue_for
from scaleout import http_get, start_gateway, value, wait_for
from servers import FtpServer, FtpTarget

GW = "203.0.113.1"


def _two(topo: Topology, factory: Callable[..., FtpServer]) -> tuple[FtpServer, FtpServer]:
    a = factory("vsftpd", topo.server)
    b = factory("vsftpd", topo.server, port=2121, pasv_ports=(30100, 30119))
    a.put_file("who.txt", b"a\n")
    b.put_file("who.txt", b"b\n")
    return a, b


def _who(topo: Topology, tmp_path: Path, user: str = "anonymous", tls: ClientTls | None = None) -> str:
    """Which upstream served a session: each has its own who.txt."""
    dest = tmp_path / f"who-{time.monotonic_ns()}.txt"
    target = FtpTarget(topo.public_addr, 21, user, "x@ftp-alg.test")
    result = curl_download(topo.client, target, "who.txt", dest, tls=tls)
    assert result.ok, result.stderr[-2000:]
    return dest.read_text().strip()


def _upstreams(**extra: object) -> dict[str, object]:
    return {
        "listen": f"{GW}:21",
        "passive_ports": "50000-50019",
        "upstreams": [
            {"address": "198.51.100.10:21", "name": "a"},
            {"address": "198.51.100.10:2121", "name": "b"},
        ],
        **extra,
    }


def test_health_checks_take_an_upstream_out_and_back(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    topo = reverse_topo
    a, b = _two(topo, ftp_server_factory)
    check = {"interval_s": 0.5, "timeout_s": 1.0, "rise": 1, "fall": 2}
    start_gateway(topo.gw, _upstreams(health_check=check))
    gw = topo.gw
    assert sorted(_who(topo, tmp_path) for _ in range(4)) == ["a", "a", "b", "b"]  # round robin
    assert value(gw, "ftp_alg_upstream_sessions_total", upstream="a") == 2
    assert value(gw, "ftp_alg_upstream_healthy", upstream="b") == 1

    b.stop()
    stopped = time.monotonic()
    wait_for("b marked down", lambda: value(gw, "ftp_alg_upstream_healthy", upstream="b") == 0, timeout_s=10)
    took = time.monotonic() - stopped
    # fall 2 checks half a second apart: about 1 s; bounded by fall x interval + timeout + a scrape.
    assert took < 2 * 0.5 + 1.0 + 2.0, took
    print(f"upstream b out of rotation {took:.2f} s after it stopped (fall 2, interval 0.5 s)")
    assert http_get(gw, "/readyz")[0] == 200
    failures = value(gw, "ftp_alg_upstream_connect_failures_total", upstream="b")
    # Every new session goes to a, and nobody even tries b any more.
    dest = tmp_path / "big.bin"
    for _ in range(3):
        assert _who(topo, tmp_path) == "a"
    result = curl_download(topo.client, a.target(GW, 21), "big.bin", dest)
    assert result.ok and hashlib.sha256(dest.read_bytes()).hexdigest() == a.seeded["big.bin"]
    assert value(gw, "ftp_alg_upstream_connect_failures_total", upstream="b") == failures

    a.stop()
    wait_for("a marked down", lambda: value(gw, "ftp_alg_upstream_healthy", upstream="a") == 0, timeout_s=10)
    status, body = http_get(gw, "/readyz")
    assert status == 503 and "no upstream is healthy" in body, body
    assert value(gw, "ftp_alg_upstream_ready") == 0

    back = ftp_server_factory("vsftpd", topo.server, port=2121, pasv_ports=(30100, 30119))
    back.put_file("who.txt", b"b again\n")
    wait_for("b back", lambda: http_get(gw, "/readyz")[0] == 200, timeout_s=10)
    assert value(gw, "ftp_alg_upstream_healthy", upstream="b") == 1
    assert _who(topo, tmp_path) == "b again"


def test_failover_when_an_upstream_refuses_the_connection(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    """An upstream that the health checks still think alive (one failure of fall 3) refuses: the sessions it
    would have had go to the next upstream, with nothing lost."""
    topo = reverse_topo
    a = ftp_server_factory("vsftpd", topo.server)
    settings = _upstreams(health_check={"interval_s": 60, "fall": 3})
    settings["upstreams"] = [
        {"address": "198.51.100.10:21", "name": "a"},
        {"address": "198.51.100.10:2199", "name": "dead"},  # nothing listens there
    ]
    start_gateway(topo.gw, settings)
    for index in range(4):
        dest = tmp_path / f"small-{index}.bin"
        result = curl_download(topo.client, a.target(GW, 21), "small.bin", dest)
        assert result.ok, result.stderr[-2000:]
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == a.seeded["small.bin"]
    gw = topo.gw
    assert value(gw, "ftp_alg_upstream_sessions_total", upstream="a") == 4
    assert value(gw, "ftp_alg_upstream_sessions_total", upstream="dead") == 0
    assert value(gw, "ftp_alg_upstream_connect_failures_total", upstream="dead") >= 2  # its round-robin turns
    assert value(gw, "ftp_alg_upstream_healthy", upstream="dead") == 1  # the checks have not decided yet
    assert value(gw, "ftp_alg_sessions_total", outcome="upstream_unreachable") == 0


def test_per_user_routing_replays_the_login(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    topo = reverse_topo
    _, b = _two(topo, ftp_server_factory)
    start_gateway(topo.gw, _upstreams(upstream_policy="per_user", upstream_users={"ftp": "a", "anonymous": "b"}))
    assert [_who(topo, tmp_path, "ftp") for _ in range(2)] == ["a", "a"]
    assert [_who(topo, tmp_path, "anonymous") for _ in range(2)] == ["b", "b"]
    dest = tmp_path / "big.bin"
    target = FtpTarget(topo.public_addr, 21, "anonymous", "x@ftp-alg.test")
    result = curl_download(topo.client, target, "big.bin", dest, mode="port")
    assert result.ok and hashlib.sha256(dest.read_bytes()).hexdigest() == b.seeded["big.bin"]
    assert result.received()[0].startswith("220 FTP gateway ready")  # our greeting; vsftpd's was held
    assert value(topo.gw, "ftp_alg_upstream_sessions_total", upstream="b") == 3


def test_per_user_routing_of_ftps_clients(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    """TLS required toward clients, plain internal servers: the gateway answers AUTH TLS itself, reads USER inside
    TLS, and the session goes on encrypted (PROT P data) on the upstream that user maps to."""
    topo = reverse_topo
    _, b = _two(topo, ftp_server_factory)
    ca_file, cert = issue_for(tmp_path / "pki", GW)
    tls = {"client": {"mode": "require", "cert": str(cert.cert), "key": str(cert.key)}}
    users = {"ftp": "a", "anonymous": "b"}
    start_gateway(topo.gw, _upstreams(upstream_policy="per_user", upstream_users=users, tls=tls))
    client_tls = ClientTls(ca_file)
    assert [_who(topo, tmp_path, user, tls=client_tls) for user in ("ftp", "anonymous", "ftp")] == ["a", "b", "a"]
    dest = tmp_path / "big.bin"
    target = FtpTarget(topo.public_addr, 21, "anonymous", "x@ftp-alg.test")
    for mode in ("pasv", "epsv"):  # curl 7.88 hangs on active TLS data connections (curl/curl#10666)
        result = curl_download(topo.client, target, "big.bin", dest, mode=mode, tls=client_tls)
        assert result.ok, result.stderr[-3000:]
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == b.seeded["big.bin"]
        assert "PROT P" in result.sent() and "AUTH SSL" in result.sent()
    assert value(topo.gw, "ftp_alg_tls_handshakes_total", side="client", channel="control", outcome="ok") == 5
    assert value(topo.gw, "ftp_alg_upstream_sessions_total", upstream="b") == 3
    # In clear, the login is refused before any upstream is asked.
    plain = curl_download(topo.client, target, "who.txt", tmp_path / "plain.txt")
    assert not plain.ok and "530 TLS required" in plain.stderr
    assert value(topo.gw, "ftp_alg_upstream_sessions_total", upstream="b") == 3


def test_split_horizon_two_client_lans_get_different_227(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    """Internet clients are told the public address (203.0.113.100, NATed to the gateway); LAN clients the
    gateway's LAN address, which is the only one they can reach."""
    topo = reverse_topo
    server = ftp_server_factory("vsftpd", topo.server)
    gw = topo.gw
    lan = topo.add_host("lan", {"eth0": "198.18.0.10/24"})
    topo.link(gw, "lan", lan, "eth0")
    gw.ip("addr", "add", "198.18.0.1/24", "dev", "lan")
    gw.nft("""
table ip public_nat {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "pub" ip daddr 203.0.113.100 dnat to 203.0.113.1
    }
}
""")
    topo.client.ip("route", "add", "203.0.113.100/32", "via", GW)
    start_gateway(
        gw,
        {
            "listen": "0.0.0.0:21",
            "upstream": "198.51.100.10:21",
            "passive_ports": "50000-50019",
            "public_address": "203.0.113.100",
            "advertise": [{"clients": "198.18.0.0/24", "address": "198.18.0.1"}],
        },
    )
    for host, dial, announced in ((topo.client, GW, "203,0,113,100"), (lan, "198.18.0.1", "198,18,0,1")):
        dest = tmp_path / f"big-{host.role}.bin"
        result = curl_download(host, server.target(dial, 21), "big.bin", dest, mode="pasv")
        assert result.ok, result.stderr[-2000:]
        assert f"227 Entering Passive Mode ({announced}," in result.stderr
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == server.seeded["big.bin"]


def test_upstream_host_names_from_a_hosts_file(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    """The gateway's namespace has its own /etc/hosts: the name's first address refuses (nothing listens on
    198.51.100.11), the second is vsftpd; the name then vanishes (unhealthy, counted, logged once) and comes back."""
    topo = reverse_topo
    server = ftp_server_factory("vsftpd", topo.server)
    topo.server.ip("addr", "add", "198.51.100.11/24", "dev", next(iter(topo.server.interfaces)))
    gw = topo.gw
    gw.hosts_file("127.0.0.1 localhost\n198.51.100.11 ftp.internal.example\n198.51.100.10 ftp.internal.example\n")
    upstream = {"address": "ftp.internal.example:21", "name": "web", "resolve_interval_s": 0.2}
    process = start_gateway(gw, {"listen": f"{GW}:21", "passive_ports": "50000-50019", "upstreams": [upstream]})

    def download(index: int) -> None:
        dest = tmp_path / f"big-{index}.bin"
        result = curl_download(topo.client, server.target(GW, 21), "big.bin", dest)
        assert result.ok, result.stderr[-2000:]
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == server.seeded["big.bin"]
        assert "198.51.100" not in result.stderr and "ftp.internal" not in result.stderr

    download(0)
    assert value(gw, "ftp_alg_upstream_sessions_total", upstream="web") == 1
    assert value(gw, "ftp_alg_upstream_connect_failures_total", upstream="web") == 1  # .11 refused, .10 served

    gw.hosts_file("127.0.0.1 localhost\n")
    wait_for("name gone", lambda: value(gw, "ftp_alg_upstream_healthy", upstream="web") == 0, timeout_s=10)
    wait_for("counted", lambda: value(gw, "ftp_alg_upstream_resolve_failures_total", upstream="web") >= 2)
    assert process.log().count("upstream name does not resolve upstream=web") == 1  # once per change
    status, body = http_get(gw, "/readyz")
    assert status == 503 and "no upstream is healthy: web" in body, body

    gw.hosts_file("127.0.0.1 localhost\n198.51.100.10 ftp.internal.example\n")
    wait_for("name back", lambda: value(gw, "ftp_alg_upstream_healthy", upstream="web") == 1, timeout_s=10)
    assert "upstream resolved upstream=web addresses=198.51.100.10:21" in process.log()
    download(1)
    assert value(gw, "ftp_alg_upstream_connect_failures_total", upstream="web") == 1  # only .10 is tried now


def test_an_upstream_name_that_does_not_resolve_stops_the_start(reverse_topo: Topology) -> None:
    gw = reverse_topo.gw
    gw.hosts_file("127.0.0.1 localhost\n")
    result = gw.run(
        [sys.executable, "-m", "alg.cli", "run", "--listen", f"{GW}:21", "--upstream", "nowhere.internal.example"],
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "upstream: nowhere.internal.example does not resolve" in result.stderr
    assert "give a name this host resolves (/etc/hosts, DNS) or an IP address" in result.stderr
    # check is run minus the sockets: the same refusal, in the same words, before anything is started.
    checked = gw.run(
        [sys.executable, "-m", "alg.cli", "check", "--listen", f"{GW}:21", "--upstream", "nowhere.internal.example"],
        cwd=REPO_ROOT,
    )
    assert checked.returncode == 2, checked.stdout + checked.stderr
    refusal = [line for line in result.stderr.splitlines() if "does not resolve" in line]
    assert refusal and refusal == [line for line in checked.stderr.splitlines() if "does not resolve" in line]


def test_tls_to_an_upstream_given_by_name_checks_the_certificate_against_the_name(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], pki: Pki, tmp_path: Path
) -> None:
    """vsftpd's certificate names other.test only (not its address): the gateway, dialling other.test from its
    hosts file, verifies it against that name, as a client dialling the name would, and the session goes on."""
    topo = reverse_topo
    server = ftp_server_factory("vsftpd", topo.server, tls=pki.wrong_name)
    topo.gw.hosts_file("127.0.0.1 localhost\n198.51.100.10 other.test\n")
    tls = {"upstream": {"mode": "require", "ca_file": str(pki.ca_file)}}
    start_gateway(topo.gw, {"listen": f"{GW}:21", "passive_ports": "50000-50019", "upstream": "other.test", "tls": tls})
    dest = tmp_path / "big.bin"
    result = curl_download(topo.client, server.target(GW, 21), "big.bin", dest)
    assert result.ok, result.stderr[-2000:]
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == server.seeded["big.bin"]
    assert value(topo.gw, "ftp_alg_tls_handshakes_total", side="server", channel="data", outcome="ok") >= 1
