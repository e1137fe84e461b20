"""ftp-alg behind HAProxy speaking PROXY protocol v2 and v1: the real client is who rules, PORT checks, logs and
metrics see; data comes straight from the client or through the balancer; anyone else sending a header, or the
balancer not sending one, is refused and counted.

    client 203.0.113.10 ── lb 203.0.113.5 | 203.0.113.17 (HAProxy, forwards) ── gw 203.0.113.18 | 198.51.100.1
                                                                               ── vsftpd 198.51.100.10
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import ClientTls, curl, curl_download, curl_list, curl_upload
from conftest import require_netns, require_server, skip_or_fail
from hostile import RawFtp
from netns import ManagedProcess, Topology
from pki import issue_for
from scaleout import haproxy_missing, start_gateway, start_haproxy, value
from servers import FtpServer, start_server

from alg.net.proxyproto import V2_SIGNATURE, ProxyHeader, parse_header

CLIENT = "203.0.113.10"
VIP = "203.0.113.5"
LB_BACK = "203.0.113.17"
GW = "203.0.113.18"

HAPROXY_CONFIG = f"""
global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend control_v2
    bind {VIP}:21
    default_backend gateway_v2
backend gateway_v2
    # check-send-proxy: HAProxy's own checks arrive with a v2 LOCAL header
    server gw {GW}:21 send-proxy-v2 check check-send-proxy inter 2s
frontend control_v1
    bind {VIP}:2121
    default_backend gateway_v1
backend gateway_v1
    server gw {GW}:21 send-proxy
frontend implicit_ftps
    bind {VIP}:990
    default_backend gateway_implicit
backend gateway_implicit
    # TCP passthrough: the gateway terminates TLS; the header goes first, in clear
    server gw {GW}:990 send-proxy-v2
frontend passive
    # the published passive range is the gateway's plus 1000 (announced_port_offset)
    bind {VIP}:51000-51019
    default_backend gateway_passive
backend gateway_passive
    server gw {GW}:-1000
"""


def _build(topo: Topology) -> None:
    client = topo.add_host("client", {"eth0": f"{CLIENT}/28"})
    lb = topo.add_host("lb", {"front": f"{VIP}/28", "back": f"{LB_BACK}/28"})
    gw = topo.add_host("gw", {"pub": f"{GW}/28", "int": "198.51.100.1/24"})
    server = topo.add_host("server", {"eth0": "198.51.100.10/24"})
    topo.link(lb, "front", client, "eth0")
    topo.link(lb, "back", gw, "pub")
    topo.link(gw, "int", server, "eth0")
    # Clients can also reach the gateway directly (data_from: client), through the balancer's host.
    lb.sysctl("net.ipv4.ip_forward", 1)
    client.ip("route", "add", "203.0.113.16/28", "via", VIP)
    gw.ip("route", "add", "203.0.113.0/28", "via", LB_BACK)


@pytest.fixture
def balanced(request: pytest.FixtureRequest) -> Iterator[tuple[Topology, FtpServer]]:
    require_netns()
    require_server("vsftpd")
    reason = haproxy_missing()
    if reason is not None:
        skip_or_fail(reason)
    topo = Topology("balancer", builder=_build).build()
    server = None
    try:
        server = start_server("vsftpd", topo.server)
        yield topo, server
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(topo.logs())
            if server is not None:
                print(server.logs()[-4000:])
        if server is not None:
            server.stop()
        topo.close()


def _gateway_then_balancer(topo: Topology, settings: dict[str, object]) -> ManagedProcess:
    # HAProxy marks a server it cannot check as down at once: the gateway goes first.
    process = start_gateway(topo.gw, settings)
    start_haproxy(topo.hosts["lb"], HAPROXY_CONFIG)
    topo.hosts["lb"].wait_port(VIP, 21, timeout_s=10)
    return process


def _settings(**extra: object) -> dict[str, object]:
    return {
        "listen": f"{GW}:21",
        "upstream": "198.51.100.10:21",
        "passive_ports": "50000-50019",
        "proxy_protocol": {"trusted": [f"{LB_BACK}/32"], "header_timeout_s": 1.0},
        **extra,
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_haproxy_v2_and_v1_the_real_client_is_seen(balanced: tuple[Topology, FtpServer], tmp_path: Path) -> None:
    """Passive data straight from the client to the gateway, PORT naming the real client accepted (it would be a
    bounce from the balancer's address), the client's address in the logs and the transfer log."""
    topo, server = balanced
    gateway = _gateway_then_balancer(topo, _settings())
    client = topo.client
    via_v2 = server.target(VIP, 21)
    via_v1 = server.target(VIP, 2121)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    upload = tmp_path / "up.bin"
    upload.write_bytes(payload)

    for mode in ("pasv", "port"):
        dest = tmp_path / f"small-{mode}.bin"
        result = curl_download(client, via_v2, "small.bin", dest, mode=mode)
        assert result.ok, result.stderr[-2000:]
        assert _sha(dest) == server.seeded["small.bin"]
    result = curl_upload(client, via_v2, upload, "upload/up.bin")
    assert result.ok, result.stderr[-2000:]
    assert server.sha256("upload/up.bin") == hashlib.sha256(payload).hexdigest()
    # 227 names the gateway's own address: data goes straight there.
    assert f"({GW.replace('.', ',')}," in result.stderr

    dest = tmp_path / "v1.bin"
    result = curl_download(client, via_v1, "small.bin", dest, mode="port")
    assert result.ok, result.stderr[-2000:]
    assert _sha(dest) == server.seeded["small.bin"]

    gw = topo.gw
    assert value(gw, "ftp_alg_proxy_protocol_headers_total", version="2") >= 3
    assert value(gw, "ftp_alg_proxy_protocol_headers_total", version="1") == 1
    assert value(gw, "ftp_alg_refusals_total", reason="bounce") == 0
    assert value(gw, "ftp_alg_refusals_total", reason="port_theft") == 0
    assert value(gw, "ftp_alg_data_channels_opened_total", mode="active", direction="download") == 2
    log = gateway.log()
    assert f"client={CLIENT}:" in log and f"via={LB_BACK}" in log
    transfers = [line for line in log.splitlines() if "logger=ftp_alg.transfer" in line]
    assert len(transfers) == 4 and all(re.search(rf"\bclient={re.escape(CLIENT)}\b", line) for line in transfers)


def test_data_through_the_balancer_with_a_port_offset(balanced: tuple[Topology, FtpServer], tmp_path: Path) -> None:
    """data_from: balancer and `advertise: local`: the 227 names the balancer's address the client dialled, with
    the published port (gateway port + 1000); the data connection arrives from the balancer and is accepted."""
    topo, server = balanced
    _gateway_then_balancer(
        topo,
        _settings(
            proxy_protocol={"trusted": [f"{LB_BACK}/32"], "data_from": "balancer"},
            advertise=[{"address": "local"}],
            announced_port_offset=1000,
        ),
    )
    dest = tmp_path / "big.bin"
    result = curl_download(topo.client, server.target(VIP, 21), "big.bin", dest, mode="pasv")
    assert result.ok, result.stderr[-2000:]
    assert _sha(dest) == server.seeded["big.bin"]
    assert "227 Entering Passive Mode (203,0,113,5,199," in result.stderr  # 51000-51019 = 199*256 + 56..75
    listing = curl(topo.client, server.target(VIP, 21), "", mode="epsv")
    assert listing.ok and "hello.txt" in listing.stdout, listing.stderr[-2000:]
    assert value(topo.gw, "ftp_alg_refusals_total", reason="port_theft") == 0


def test_refused_without_trust_or_without_header(balanced: tuple[Topology, FtpServer]) -> None:
    topo, server = balanced
    start_gateway(topo.gw, _settings())  # no balancer running: its health checks would be counted too
    gw, lb = topo.gw, topo.hosts["lb"]

    # A direct client (not trusted) without a header is served as before.
    listing = curl(topo.client, server.target(GW, 21), "")
    assert listing.ok and "hello.txt" in listing.stdout, listing.stderr[-2000:]

    # A direct client sending a header: it may not claim another address.
    with RawFtp.open(topo.client, GW, 21) as raw:
        assert raw.reply().code == 220
        raw.send(f"PROXY TCP4 198.18.0.99 {GW} 1234 21\r\n")
        assert raw.reply().text.startswith("421 PROXY protocol is accepted only from trusted balancers")
    assert value(gw, "ftp_alg_proxy_protocol_refusals_total", reason="untrusted") == 1

    # The balancer's address without a header, with garbage, or silent: closed without a word.
    with RawFtp.open(lb, GW, 21) as raw:
        raw.send("USER anonymous\r\n")
        assert raw.closed() == b""
    with RawFtp.open(lb, GW, 21) as raw:
        raw.send(V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 65000))
        assert raw.closed() == b""
    with RawFtp.open(lb, GW, 21) as raw:
        raw.send("PROXY TCP4 198.18.0.99\r\n")
        assert raw.closed() == b""
    with RawFtp.open(lb, GW, 21) as raw:
        assert raw.closed(timeout_s=10) == b""  # header_timeout_s: 1
    expected = {"missing": 1, "oversized": 1, "malformed": 1, "timeout": 1, "untrusted": 1}
    got = {reason: value(gw, "ftp_alg_proxy_protocol_refusals_total", reason=reason) for reason in expected}
    assert got == expected


def test_proxy_protocol_towards_the_upstream(balanced: tuple[Topology, FtpServer]) -> None:
    """An upstream with proxy_protocol: v2 (v1 likewise) hears the real client and the address it dialled."""
    topo, _ = balanced
    heard: list[bytes] = []
    listener = topo.server.listen("198.51.100.10", 2200)

    def fake_upstream() -> None:
        # Until the real client's session: HAProxy's port probe (wait_port) makes a session of its own first.
        for _ in range(5):
            conn, _ = listener.accept()  # the socket lives in the server's namespace whichever thread accepts
            with conn:
                conn.settimeout(5)
                data = b""
                while not isinstance(header := parse_header(data), ProxyHeader):
                    chunk = conn.recv(1)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"220 fake server\r\n")
                if isinstance(header, ProxyHeader) and header.client and str(header.client.ip) == CLIENT:
                    heard.append(data)
                    conn.recv(100)
                    return

    balancer = None
    for version in ("v2", "v1"):
        process = start_gateway(
            topo.gw,
            _settings(upstream=None, upstreams=[{"address": "198.51.100.10:2200", "proxy_protocol": version}]),
        )
        thread = threading.Thread(target=fake_upstream, daemon=True)
        thread.start()
        if balancer is None:
            balancer = start_haproxy(topo.hosts["lb"], HAPROXY_CONFIG.replace(" check check-send-proxy inter 2s", ""))
            topo.hosts["lb"].wait_port(VIP, 21, timeout_s=10)
        with RawFtp.open(topo.client, VIP, 21) as raw:
            assert raw.reply().text == "220 fake server\r\n"
            raw.send("QUIT\r\n")
        thread.join(10)
        process.stop()
    headers = [parse_header(data) for data in heard]
    assert [h.version for h in headers if isinstance(h, ProxyHeader)] == [2, 1]
    for header in headers:
        assert isinstance(header, ProxyHeader) and header.client is not None and header.destination is not None
        assert str(header.client.ip) == CLIENT
        assert (str(header.destination.ip), header.destination.port) == (VIP, 21)


def test_implicit_ftps_behind_the_balancer(balanced: tuple[Topology, FtpServer], tmp_path: Path) -> None:
    """HAProxy passes implicit FTPS (port 990) through with a PROXY v2 header in front of the ClientHello: the
    gateway reads the header from the bare socket, then terminates TLS; the real client is who it sees. A client
    sending a header itself is refused before any TLS, and counted."""
    topo, server = balanced
    ca_file, cert = issue_for(tmp_path / "pki", VIP, GW)
    tls = {"mode": "allow", "cert": str(cert.cert), "key": str(cert.key)}
    gateway = _gateway_then_balancer(topo, _settings(tls={"client": {**tls, "implicit_listen": [f"{GW}:990"]}}))
    implicit = ClientTls(ca_file, implicit=True)
    topo.hosts["lb"].wait_port(VIP, 990, timeout_s=10)

    for mode in ("pasv", "epsv"):  # curl 7.88 hangs on active TLS data connections (curl/curl#10666)
        dest = tmp_path / f"ftps-{mode}.bin"
        result = curl_download(topo.client, server.target(VIP, 990), "big.bin", dest, mode=mode, tls=implicit)
        assert result.ok, result.stderr[-2000:] + gateway.log()[-3000:]
        assert _sha(dest) == server.seeded["big.bin"]
    listing = curl_list(topo.client, server.target(VIP, 990), tls=implicit)
    assert listing.ok and "hello.txt" in listing.stdout, listing.stderr[-2000:]
    assert value(topo.gw, "ftp_alg_refusals_total", reason="port_theft") == 0  # data came from the real client
    assert f"client={CLIENT}:" in gateway.log() and f"via={LB_BACK}" in gateway.log()

    # Straight to the gateway, not trusted: a client's header is refused before TLS; a plain TLS client is served.
    with RawFtp.open(topo.client, GW, 990) as raw:
        raw.send(f"PROXY TCP4 198.18.0.99 {GW} 1234 990\r\n")
        assert raw.closed() == b""
    assert value(topo.gw, "ftp_alg_proxy_protocol_refusals_total", reason="untrusted") == 1
    direct = curl_list(topo.client, server.target(GW, 990), tls=implicit)
    assert direct.ok and "hello.txt" in direct.stdout, direct.stderr[-2000:]
    # The balancer's address without a header: refused as on the plain listener.
    with RawFtp.open(topo.hosts["lb"], GW, 990) as raw:
        raw.send(b"\x16\x03\x01\x00\x05hello")
        assert raw.closed() == b""
    assert value(topo.gw, "ftp_alg_proxy_protocol_refusals_total", reason="missing") == 1
