"""Forward mode (issue 23 item 2): one gateway, two real servers reached by the name the login gives, and
destinations it must refuse without connecting to them.

client 203.0.113.10 ─ gw 203.0.113.1 | 198.51.100.1 ─ server: vsftpd 198.51.100.10:21, proftpd 198.51.100.11:21,
and 198.51.100.12:21 a bare listener that must never be reached. Names are the gateway's hosts file's.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from pathlib import Path

from clients import ClientTls, curl_download, ftplib_run, run_client
from netns import Topology
from pki import issue_for
from scaleout import start_gateway, value
from servers import FtpServer, FtpTarget

from alg.ops.proxy_users import user_line

GW = "203.0.113.1"
HOSTS = "127.0.0.1 localhost\n198.51.100.10 vs.ftp.test\n198.51.100.11 pro.ftp.test\n198.51.100.12 evil.ftp.test\n"


def _world(
    topo: Topology, factory: Callable[..., FtpServer], users_file: str | None = None, **extra: object
) -> tuple[FtpServer, FtpServer, socket.socket]:
    iface = next(iter(topo.server.interfaces))
    for address in ("198.51.100.11/24", "198.51.100.12/24"):
        topo.server.ip("addr", "add", address, "dev", iface)
    vs = factory("vsftpd", topo.server)
    pro = factory("proftpd", topo.server, addr="198.51.100.11")
    trap = topo.server.listen("198.51.100.12", 21)
    topo.gw.hosts_file(HOSTS)
    allow = ["198.51.100.10/32:21", "198.51.100.11/32:21", "*.ftp.test:21"]
    start_gateway(
        topo.gw,
        {
            "mode": "forward",
            "listen": f"{GW}:21",
            "passive_ports": "50000-50019",
            "forward": {"allow": allow, "users_file": users_file},
            **extra,
        },
    )
    return vs, pro, trap


def _nobody_came(trap: socket.socket) -> bool:
    trap.setblocking(False)
    try:
        trap.accept()
    except BlockingIOError:
        return True
    return False


def test_user_at_host_reaches_two_servers_through_one_gateway(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    topo = reverse_topo
    vs, pro, trap = _world(topo, ftp_server_factory)
    # ftplib, USER user@host as any client can send it.
    for server, name in ((vs, "vs.ftp.test"), (pro, "pro.ftp.test")):
        dest = tmp_path / f"ftplib-{name}.bin"
        target = FtpTarget(topo.public_addr, 21, f"{server.user}@{name}", server.password)
        result = ftplib_run(topo.client, target, [("retr", "big.bin", dest)])
        assert result.ok and result.data is not None and result.data["ok"], str(result)
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == server.seeded["big.bin"]
    # lftp with the gateway as its FTP proxy: it sends USER user@host itself.
    for server, name in ((vs, "vs.ftp.test"), (pro, "pro.ftp.test")):
        dest = tmp_path / f"lftp-{name}.bin"
        script = "; ".join(
            [
                "set cmd:fail-exit yes",
                "set net:max-retries 1",
                "set net:timeout 10",
                "set ftp:ssl-allow no",
                f"set ftp:proxy ftp://{GW}",
                f"open -u {server.user},{server.password} ftp://{name}",
                f"get big.bin -o {dest}",
            ]
        )
        result = run_client(topo.client, "lftp", ["lftp", "--norc", "-d", "-c", script])
        assert result.ok, result.stderr[-3000:]
        assert f"USER {server.user}@{name}" in result.stderr
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == server.seeded["big.bin"]
    assert _nobody_came(trap)
    assert value(topo.gw, "ftp_alg_sessions_total", outcome="refused_forward") == 0


def test_destinations_outside_the_allowlist_are_refused_without_a_connection(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    topo = reverse_topo
    _, _, trap = _world(topo, ftp_server_factory)
    cases = {
        "198.51.100.12": "530 Access to 198.51.100.12:21 is not allowed by this proxy.",  # not in the allowlist
        "evil.ftp.test": "530 Access to evil.ftp.test:21 is not allowed by this proxy.",  # a name pointed outside it
        "vs.ftp.test:2121": "530 Access to vs.ftp.test:2121 is not allowed by this proxy.",  # a port not allowed
        "nowhere.ftp.test": "530 nowhere.ftp.test: no such FTP server.",  # an unknown name
    }
    for where, expected in cases.items():
        target = FtpTarget(topo.public_addr, 21, f"anonymous@{where}", "x@ftp-alg.test")
        result = ftplib_run(topo.client, target, [("cmd", "NOOP")])
        assert result.data is not None and not result.data["ok"], str(result)
        assert expected in result.data["error"], (where, result.data)
    assert _nobody_came(trap)
    gw = topo.gw
    assert value(gw, "ftp_alg_refusals_total", reason="forward_not_allowed") == 3
    assert value(gw, "ftp_alg_refusals_total", reason="forward_unknown_host") == 1
    assert value(gw, "ftp_alg_sessions_total", outcome="refused_forward") == 4


def test_lftp_logs_in_to_the_proxy_first_when_a_users_file_is_set(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    topo = reverse_topo
    users = tmp_path / "proxy-users"
    users.write_text(user_line("bob", "right-horse") + "\n")
    vs, _, trap = _world(topo, ftp_server_factory, users_file=str(users))

    def lftp_via(proxy: str) -> tuple[bool, str, Path]:
        dest = tmp_path / f"lftp-{len(proxy)}.bin"
        script = "; ".join(
            [
                "set cmd:fail-exit yes",
                "set net:max-retries 1",
                "set net:timeout 10",
                "set ftp:ssl-allow no",
                f"set ftp:proxy {proxy}",
                f"open -u {vs.user},{vs.password} ftp://vs.ftp.test",
                f"get big.bin -o {dest}",
            ]
        )
        result = run_client(topo.client, "lftp", ["lftp", "--norc", "-d", "-c", script], timeout_s=30)
        return result.ok, result.stderr, dest

    ok, log, dest = lftp_via(f"ftp://bob:right-horse@{GW}")
    assert ok, log[-3000:]
    assert "USER bob" in log and f"USER {vs.user}@vs.ftp.test" in log
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == vs.seeded["big.bin"]
    ok, log, _ = lftp_via(f"ftp://bob:wrong@{GW}")
    assert not ok and "530 Login incorrect." in log
    ok, log, _ = lftp_via(f"ftp://{GW}")  # no proxy login at all
    assert not ok and "530 Log in to the proxy first" in log
    assert value(topo.gw, "ftp_alg_refusals_total", reason="forward_login") >= 2
    assert _nobody_came(trap)


def test_ftps_clients_name_the_server_inside_tls(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    """TLS required toward clients, plain servers inside: the gateway answers AUTH TLS itself, reads USER
    user@host inside TLS, and the session goes on encrypted (PROT P data) to the server named."""
    topo = reverse_topo
    ca_file, cert = issue_for(tmp_path / "pki", GW)
    tls = {"client": {"mode": "require", "cert": str(cert.cert), "key": str(cert.key)}}
    vs, pro, _ = _world(topo, ftp_server_factory, tls=tls)
    for server, name in ((vs, "vs.ftp.test"), (pro, "pro.ftp.test")):
        dest = tmp_path / f"curl-{name}.bin"
        target = FtpTarget(topo.public_addr, 21, f"{server.user}@{name}", server.password)
        result = curl_download(topo.client, target, "big.bin", dest, tls=ClientTls(ca_file))
        assert result.ok, result.stderr[-3000:]
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == server.seeded["big.bin"]
        assert "PROT P" in result.sent()
    plain = curl_download(
        topo.client,
        FtpTarget(topo.public_addr, 21, f"{vs.user}@vs.ftp.test", vs.password),
        "big.bin",
        tmp_path / "plain.bin",
    )
    assert not plain.ok and "530 TLS required" in plain.stderr
