"""The kernel data path (data_path: kernel) end to end: nftables mappings in ftp-alg's own table carry the
data connections; the table is gone at exit; where the kernel does not allow it, the gateway says so and
relays. The client/server/mode matrix over both data paths is in test_reverse.py and test_transparent.py.

Topology: client 203.0.113.10 -> gateway 203.0.113.1 | 198.51.100.1 (forwarding on) -> vsftpd 198.51.100.10.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from clients import curl_download, curl_upload
from gateway import random_file, sha256_file, wait_listening
from hostile import metric, scrape, start_gateway, wait_until
from netns import REPO_ROOT, Topology
from servers import FtpServer

pytestmark = pytest.mark.netns


@pytest.fixture
def vsftpd(reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer]) -> FtpServer:
    reverse_topo.gw.sysctl("net.ipv4.ip_forward", 1)
    return ftp_server_factory("vsftpd", reverse_topo.server)


def table(topo: Topology) -> list[dict[str, object]]:
    """Our table's objects in the gateway namespace (empty when the table does not exist)."""
    return [
        item
        for item in topo.gw.nft_json()["nftables"]
        if any(isinstance(v, dict) and v.get("table", v.get("name")) == "ftp_alg_data" for v in item.values())
    ]


def test_kernel_path_carries_both_directions_and_counts_the_bytes(
    reverse_topo: Topology, vsftpd: FtpServer, tmp_path: Path
) -> None:
    topo = reverse_topo
    gateway = start_gateway(topo, {"data_path": "kernel"})
    assert "data_path=kernel table=inet ftp_alg_data" in gateway.log()
    target = vsftpd.target(topo.public_addr)
    up = random_file(tmp_path / "up.bin", 3 << 20)
    for mode in ("pasv", "port"):
        dest = tmp_path / f"small-{mode}.bin"
        curl_download(topo.client, target, "small.bin", dest, mode=mode).check()
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == vsftpd.seeded["small.bin"]
        curl_upload(topo.client, target, up, f"upload/up-{mode}.bin", mode=mode).check()
        assert vsftpd.sha256(f"upload/up-{mode}.bin") == sha256_file(up)
    small = (vsftpd.path("small.bin")).stat().st_size
    expected_down, expected_up = 2 * small, 2 * (3 << 20)

    def counted() -> tuple[float, float] | None:  # the transfer log is written once the counters settle
        samples = scrape(topo)
        down = metric(samples, "ftp_alg_data_bytes_total", direction="download")
        upl = metric(samples, "ftp_alg_data_bytes_total", direction="upload")
        return (down, upl) if down >= expected_down and upl >= expected_up else None

    down, upl = wait_until("the kernel's byte counts", counted)
    # Counted on the wire: exact for segments with timestamps (the common case, see test_nftrules), off by a
    # retransmitted segment or an option-less packet (a RST) when the loaded machine causes one.
    assert expected_down <= down <= expected_down * 1.01, (down, expected_down)
    assert expected_up <= upl <= expected_up * 1.01, (upl, expected_up)

    def emptied() -> bool:  # every mapping and counter of the finished transfers is gone, the table stays
        listing = topo.gw.run(["nft", "list", "table", "inet", "ftp_alg_data"], check=True).stdout
        return "elements" not in listing and "counter m" not in listing and "chain prerouting" in listing

    wait_until("the transfers' mappings and counters removed", emptied)
    gateway.stop()
    assert table(topo) == [], "ftp-alg left its table behind"


def test_without_forwarding_the_gateway_says_so_and_relays(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    topo = reverse_topo  # this layout's gateway does not forward (ip_forward=0)
    server = ftp_server_factory("vsftpd", topo.server)
    gateway = start_gateway(topo, {"data_path": "kernel"})
    assert "data_path kernel is not available: this host does not forward IP packets" in gateway.log()
    assert "data_path=relay" in gateway.log()
    dest = tmp_path / "small.bin"
    curl_download(topo.client, server.target(topo.public_addr), "small.bin", dest).check()
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == server.seeded["small.bin"]
    assert table(topo) == []


def test_without_cap_net_admin_the_gateway_says_so_and_relays(
    reverse_topo: Topology, vsftpd: FtpServer, tmp_path: Path
) -> None:
    topo = reverse_topo
    # Root without CAP_NET_ADMIN (dropped from the bounding set), as in a container or a unit without it.
    argv = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable, "-m", "alg.cli", "run"]
    argv += ["--listen", f"{topo.public_addr}:21", "--upstream", "198.51.100.10:21", "--data-path", "kernel"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = topo.gw.popen(argv, env=env, cwd=REPO_ROOT, name="gateway")
    wait_listening(topo.gw, process, topo.public_addr, 21)
    assert "nftables needs CAP_NET_ADMIN; data connections use the relay" in process.log(), process.log()
    dest = tmp_path / "small.bin"
    curl_download(topo.client, vsftpd.target(topo.public_addr), "small.bin", dest, mode="port").check()
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == vsftpd.seeded["small.bin"]


ABORT_THEN_WHOLE = r"""
import ftplib, hashlib, io, json, sys
spec = json.load(sys.stdin)
source = open(spec["file"], "rb").read()
out = {}
for mode in ("pasv", "port"):
    ftp = ftplib.FTP()
    ftp.connect(spec["host"], 21, timeout=20)
    ftp.login(spec["user"], spec["password"])
    ftp.set_pasv(mode == "pasv")
    ftp.voidcmd("TYPE I")

    def drain():  # servers differ in how many replies an ABOR gets: read up to our NOOP's 200
        ftp.putcmd("NOOP")
        while not ftp.getmultiline().startswith("200"):
            pass

    # Download: read 1 MiB, abort, then the whole file.
    conn = ftp.transfercmd("RETR abort.bin")
    head = b""
    while len(head) < 1 << 20:
        head += conn.recv((1 << 20) - len(head))
    conn.close()
    ftp.abort()
    drain()
    whole = io.BytesIO()
    ftp.retrbinary("RETR abort.bin", whole.write)
    # Upload: send 1 MiB, abort, then the whole file.
    conn = ftp.transfercmd(f"STOR upload/abort-{mode}.bin")
    conn.sendall(source[: 1 << 20])
    conn.close()
    ftp.abort()
    drain()
    ftp.storbinary(f"STOR upload/abort-{mode}.bin", io.BytesIO(source))
    ftp.quit()
    out[mode] = {"head": hashlib.sha256(head).hexdigest(), "whole": hashlib.sha256(whole.getvalue()).hexdigest()}
print(json.dumps(out))
"""


@pytest.mark.parametrize("data_path", ["relay", "kernel"])
def test_abort_mid_transfer_then_every_byte_of_the_next_both_ways(
    reverse_topo: Topology, vsftpd: FtpServer, tmp_path: Path, data_path: str
) -> None:
    """ABOR in the middle of a RETR and of a STOR (passive and active, ftplib): the bytes that arrived before
    it are the file's, and the next transfer in the same session is byte-exact."""
    topo = reverse_topo
    start_gateway(topo, {"data_path": data_path})
    upload = random_file(tmp_path / "up.bin", 24 << 20)
    vsftpd.put_file("abort.bin", upload.read_bytes())
    spec = {"host": str(topo.public_addr), "user": vsftpd.user, "password": vsftpd.password, "file": str(upload)}
    done = topo.client.run([sys.executable, "-c", ABORT_THEN_WHOLE], input=json.dumps(spec), timeout=120)
    assert done.returncode == 0, done.stderr + topo.logs()
    report = json.loads(done.stdout.strip().splitlines()[-1])
    source = upload.read_bytes()
    for mode in ("pasv", "port"):
        assert report[mode]["head"] == hashlib.sha256(source[: 1 << 20]).hexdigest(), mode
        assert report[mode]["whole"] == hashlib.sha256(source).hexdigest(), mode
        assert vsftpd.sha256(f"upload/abort-{mode}.bin") == sha256_file(upload), mode
