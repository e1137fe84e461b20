"""The kernel data path (data_path: kernel) end to end: nftables mappings in ftp-alg's own table carry the
data connections; the table is gone at exit; where the kernel does not allow it, the gateway says so and
relays. The client/server/mode matrix over both data paths is in test_reverse.py and test_transparent.py.

Topology: client 203.0.113.10 -> gateway 203.0.113.1 | 198.51.100.1 (forwarding on) -> vsftpd 198.51.100.10.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from clients import curl_download, curl_upload
from gateway import random_file, sha256_file
from hostile import metric, scrape, start_gateway, wait_until
from netns import Topology
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

    def counted() -> tuple[float, float] | None:
        samples = scrape(topo)
        down = metric(samples, "ftp_alg_data_bytes_total", direction="download")
        upl = metric(samples, "ftp_alg_data_bytes_total", direction="upload")
        return (down, upl) if down >= expected_down and upl >= expected_up else None

    down, upl = wait_until("the kernel's byte counts", counted)
    assert (down, upl) == (expected_down, expected_up)
    gateway.stop()
    assert table(topo) == [], "ftp-alg left its table behind"
