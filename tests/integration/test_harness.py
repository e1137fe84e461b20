"""The harness proves itself: topologies isolate as drawn, and every FTP daemon works directly."""

from __future__ import annotations

import errno
import ftplib
import hashlib
import ipaddress
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clients import MODES, Mode, curl_download, curl_list, curl_upload, ftplib_run, lftp
from netns import ALLOWED_NETS, DOC_NET6, GUARD_TABLE, NS_PREFIX, Topology, cleanup_stale_namespaces, list_namespaces
from servers import FtpServer, sha256_file

pytestmark = pytest.mark.netns

PROBE_PORT = 2100
SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>


# --------------------------------------------------------------------------- topology


def test_reverse_client_reaches_only_the_gateway(reverse_topo: Topology) -> None:
    topo = reverse_topo
    listeners = [
        topo.server.listen(topo.server_addr, PROBE_PORT),
        topo.gw.listen(topo.public_addr, PROBE_PORT),
        topo.client.listen(topo.client_addr, PROBE_PORT),
    ]
    try:
        topo.client.connect(topo.public_addr, PROBE_PORT).close()
        topo.gw.connect(topo.server_addr, PROBE_PORT).close()
        with pytest.raises(OSError) as to_server:
            topo.client.connect(topo.server_addr, PROBE_PORT, timeout_s=1)
        assert to_server.value.errno == errno.ENETUNREACH
        with pytest.raises(OSError) as to_client:
            topo.server.connect(topo.client_addr, PROBE_PORT, timeout_s=1)
        assert to_client.value.errno == errno.ENETUNREACH
        assert topo.gw.sysctl("net.ipv4.ip_forward") == "0"
        for host in (topo.client, topo.server):
            assert "default" not in host.ip("route", "show")
    finally:
        for listener in listeners:
            listener.close()


def test_reverse_gateway_does_not_forward(reverse_topo: Topology) -> None:
    """Even with a route through the gateway, the client's packets stop there (ip_forward=0)."""
    topo = reverse_topo
    listener = topo.server.listen(topo.server_addr, PROBE_PORT)
    try:
        topo.client.ip("route", "add", str(topo.server_addr), "via", str(topo.public_addr))
        with pytest.raises(OSError):
            topo.client.connect(topo.server_addr, PROBE_PORT, timeout_s=0.5)
    finally:
        listener.close()


def test_transparent_lan_reaches_external_server_masqueraded(transparent_topo: Topology) -> None:
    topo = transparent_topo
    assert topo.client.addr == ipaddress.IPv4Address("198.18.0.10")
    assert topo.server_addr == ipaddress.IPv4Address("203.0.113.20")
    listener = topo.server.listen(topo.server_addr, PROBE_PORT)
    try:
        with topo.client.connect(topo.server_addr, PROBE_PORT):
            accepted, peer = listener.accept()
            accepted.close()
        assert peer[0] == str(topo.public_addr)  # masqueraded behind the gateway
        with pytest.raises(OSError) as back:
            topo.server.connect(topo.client_addr, PROBE_PORT, timeout_s=1)
        assert back.value.errno == errno.ENETUNREACH
        assert topo.gw.sysctl("net.ipv4.ip_forward") == "1"
    finally:
        listener.close()


def test_transparent_intercept_redirects_ftp_to_the_gateway(transparent_topo: Topology) -> None:
    topo = transparent_topo
    listener = topo.gw.listen(topo.gw_inside_addr, 2121)
    topo.intercept(2121)
    try:
        with topo.client.connect(topo.server_addr, 21):
            accepted, peer = listener.accept()
            with accepted:
                raw = accepted.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, packed = struct.unpack_from("!2xH4s", raw)
        assert (ipaddress.IPv4Address(packed), port) == (topo.server_addr, 21)
        assert peer[0] == str(topo.client_addr)
    finally:
        listener.close()


@pytest.mark.parametrize("layout", ["reverse", "transparent"])
def test_guard_table_drops_everything_else(topology_factory: Callable[[str], Topology], layout: str) -> None:
    topo = topology_factory(layout)
    allowed = {(str(net.network_address), net.prefixlen) for net in ALLOWED_NETS}
    for host in topo.hosts.values():
        objects = [item for item in host.nft_json()["nftables"] if "metainfo" not in item]
        chains = {
            item["chain"]["name"]: item["chain"]
            for item in objects
            if "chain" in item and item["chain"]["table"] == GUARD_TABLE
        }
        assert chains["output"]["hook"] == "output" and chains["output"]["policy"] == "drop", host
        assert chains["forward"]["policy"] == "drop", host
        output_rules = [
            item["rule"]["expr"]
            for item in objects
            if "rule" in item and item["rule"]["table"] == GUARD_TABLE and item["rule"]["chain"] == "output"
        ]
        assert len(output_rules) == 4, output_rules
        assert output_rules[0][0]["match"]["right"] == "lo"
        prefixes = {(p["prefix"]["addr"], p["prefix"]["len"]) for p in output_rules[1][0]["match"]["right"]["set"]}
        assert prefixes == allowed
        # IPv6: the documentation prefix, and neighbour solicitations to solicited-node multicast only.
        v6 = output_rules[2][0]["match"]
        assert v6["left"]["payload"] == {"protocol": "ip6", "field": "daddr"}
        assert v6["right"]["prefix"] == {"addr": str(DOC_NET6.network_address), "len": DOC_NET6.prefixlen}
        solicit = output_rules[3]
        assert solicit[0]["match"]["right"]["prefix"] == {"addr": "ff02::1:ff00:0", "len": 104}
        assert solicit[1]["match"]["right"] == "nd-neighbor-solicit"
        assert all("accept" in rule[-1] for rule in output_rules)


def test_namespaces_are_named_by_run_and_removed(topology_factory: Callable[[str], Topology]) -> None:
    topo = topology_factory("reverse")
    names = [host.netns for host in topo.hosts.values()]
    assert all(name.startswith(f"{topo.id}-") for name in names)
    # A namespace whose creating PID is dead is stale; ours (live PID) is left alone.
    proc = subprocess.Popen(["true"])
    proc.wait()
    stale = f"{NS_PREFIX}{proc.pid}-0-stale"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        removed = cleanup_stale_namespaces()
        assert stale in removed
        assert set(names) <= set(list_namespaces())
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
    topo.close()
    assert not set(names) & set(list_namespaces())


# --------------------------------------------------------------------------- FTP servers, directly


def _seeded_names(server: FtpServer) -> set[str]:
    return {name.split("/")[0] for name in server.seeded} | {"upload"}


@pytest.mark.parametrize("mode", MODES)
def test_server_directly_with_curl(upstream: FtpServer, reverse_topo: Topology, tmp_path: Path, mode: Mode) -> None:
    """curl in the server's own namespace: listing, exact download, upload, append, resume."""
    host, target = reverse_topo.server, upstream.target()

    listing = curl_list(host, target, mode=mode).check()
    assert _seeded_names(upstream) <= {line.split()[-1] for line in listing.stdout.splitlines()}
    if mode == "pasv":  # the daemon announces its own internal address
        assert any(line.startswith("227") and "(198,51,100,10," in line for line in listing.received())
    expected_command = {"pasv": "PASV", "epsv": "EPSV", "port": "PORT", "eprt": "EPRT"}[mode]
    assert any(line.startswith(expected_command) for line in listing.sent()), listing
    fallback = {"epsv": "PASV", "eprt": "PORT"}.get(mode)
    assert fallback is None or not any(line.startswith(fallback) for line in listing.sent()), listing

    dest = tmp_path / "big.bin"
    curl_download(host, target, "big.bin", dest, mode=mode).check()
    assert sha256_file(dest) == upstream.seeded["big.bin"]

    src = tmp_path / "up.bin"
    src.write_bytes(hashlib.sha256(mode.encode()).digest() * 5000)
    curl_upload(host, target, src, "upload/up.bin", mode=mode).check()
    assert upstream.sha256("upload/up.bin") == sha256_file(src)

    tail = tmp_path / "tail.bin"
    tail.write_bytes(b"appended\n" * 100)
    curl_upload(host, target, tail, "upload/up.bin", mode=mode, append=True).check()
    assert upstream.path("upload/up.bin").read_bytes() == src.read_bytes() + tail.read_bytes()

    partial = tmp_path / "partial.bin"
    partial.write_bytes(upstream.path("small.bin").read_bytes()[:10_000])
    resumed = curl_download(host, target, "small.bin", partial, mode=mode, resume=True).check()
    assert any(line.startswith("REST 10000") for line in resumed.sent())
    assert sha256_file(partial) == upstream.seeded["small.bin"]


@pytest.mark.parametrize("mode", ["pasv", "epsv", "port"])
def test_server_directly_with_lftp(upstream: FtpServer, reverse_topo: Topology, tmp_path: Path, mode: Mode) -> None:
    host, target = reverse_topo.server, upstream.target()
    src = tmp_path / "put.bin"
    src.write_bytes(b"lftp upload\n" * 1000)
    partial = tmp_path / "partial.bin"
    partial.write_bytes(upstream.path("small.bin").read_bytes()[:5000])
    result = lftp(
        host,
        target,
        [
            "ls",
            f"get big.bin -o {tmp_path / 'big.bin'}",
            f"put {src} -o upload/put.bin",
            f"reget small.bin -o {partial}",
        ],
        mode=mode,
    ).check()
    assert "hello.txt" in result.stdout
    assert sha256_file(tmp_path / "big.bin") == upstream.seeded["big.bin"]
    assert upstream.sha256("upload/put.bin") == sha256_file(src)
    assert sha256_file(partial) == upstream.seeded["small.bin"]
    expected_command = {"pasv": "PASV", "epsv": "EPSV", "port": "PORT"}[mode]
    assert any(line.startswith(expected_command) for line in result.sent()), result


@pytest.mark.parametrize("mode", MODES)
def test_server_directly_with_ftplib(upstream: FtpServer, reverse_topo: Topology, tmp_path: Path, mode: Mode) -> None:
    host, target = reverse_topo.server, upstream.target()
    src = tmp_path / "stor.bin"
    src.write_bytes(b"ftplib upload\n" * 2000)
    partial = tmp_path / "partial.bin"
    partial.write_bytes(upstream.path("small.bin").read_bytes()[:1234])
    result = ftplib_run(
        host,
        target,
        [
            ("list",),
            ("retr", "big.bin", tmp_path / "big.bin"),
            ("stor", src, "upload/stor.bin"),
            ("appe", src, "upload/stor.bin"),
            ("rest_retr", "small.bin", partial, 1234),
        ],
        mode=mode,
    ).check()
    assert result.data is not None and result.data["ok"], result
    assert any(line.endswith("hello.txt") for line in result.data["results"][0]["lines"])
    assert sha256_file(tmp_path / "big.bin") == upstream.seeded["big.bin"]
    assert upstream.path("upload/stor.bin").read_bytes() == src.read_bytes() * 2
    assert sha256_file(partial) == upstream.seeded["small.bin"]
    expected_command = {"pasv": "PASV", "epsv": "EPSV", "port": "PORT", "eprt": "EPRT"}[mode]
    assert any(line.startswith(expected_command) for line in result.sent()), result


def test_vsftpd_refuses_data_from_another_address(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer]
) -> None:
    """vsftpd keeps pasv_promiscuous=NO: a data connection from another address than the control
    connection's is refused.  The gateway must connect data from its control-connection address."""
    topo = reverse_topo
    server = ftp_server_factory("vsftpd", topo.server)

    def session() -> Any:
        ftp = ftplib.FTP(timeout=5)
        ftp.connect(str(server.addr), server.port)  # control from 198.51.100.10 (server namespace)
        ftp.login(server.user, server.password)
        ip, port = ftplib.parse227(ftp.sendcmd("PASV"))
        return ftp, ip, port

    ftp, ip, port = topo.server.call(session)
    try:
        data = topo.gw.connect(ip, port)  # data from 198.51.100.1 (gateway namespace)
        try:
            ftp.putcmd("LIST")
            reply = ftp.getline()
        finally:
            data.close()
        assert reply.startswith("425"), reply
    finally:
        ftp.close()
