"""upstream_data_sources end to end (issue 23 item 3a): a server behind a virtual address, whose active-mode data
connections come from its own address instead.

The server namespace holds 198.51.100.20 (the "VIP") and DNATs port 21 on it to vsftpd at 198.51.100.10: the
gateway's control connection goes to the VIP, vsftpd's data connection to the gateway comes from .10, as a
cluster node's does. Without the setting the stranger is refused, the log names it and the setting, and the
client hears a 425/426 at once; with `upstream_data_sources: [198.51.100.10/32]` the transfer is byte-exact.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from clients import curl_download
from gateway import sha256_file
from hostile import add_address, start_gateway
from netns import Topology
from servers import FtpServer

pytestmark = pytest.mark.netns

VIP = "198.51.100.20"


def behind_vip(topo: Topology) -> None:
    add_address(topo.server, "eth0", f"{VIP}/24")
    topo.server.nft(
        "table ip vip {\n"
        "  chain pre { type nat hook prerouting priority -100; ip daddr " + VIP + " tcp dport 21"
        " dnat to 198.51.100.10:21; }\n"
        "}\n"
    )


@pytest.mark.parametrize("listed", [False, True], ids=["unlisted", "listed"])
def test_data_from_the_servers_other_address(
    reverse_topo: Topology, vsftpd: FtpServer, listed: bool, tmp_path: Path
) -> None:
    topo = reverse_topo
    behind_vip(topo)
    config = {"upstream_data_sources": ["198.51.100.10/32"]} if listed else {}
    gateway = start_gateway(topo, config, upstream=f"{VIP}:21", metrics=False)
    local = tmp_path / "small.bin"
    started = time.monotonic()
    result = curl_download(topo.client, vsftpd.target(topo.public_addr, gateway.port), "small.bin", local, mode="port")
    if listed:
        result.check()
        assert sha256_file(local) == vsftpd.seeded["small.bin"]
        assert "data port theft attempt" not in gateway.log()
        return
    assert not result.ok, result
    finals = [line for line in result.received() if line.startswith(("425", "426"))]
    assert finals, result
    # The server's own failure reply passes unchanged (the core's rule); when ours comes first, it names the cause.
    assert finals[0].startswith("426 Failure writing") or "upstream_data_sources" in finals[0], finals
    assert time.monotonic() - started < 15  # not the data_connect_s timeout (30 s) nor curl's own
    log = gateway.log()
    assert "data port theft attempt" in log and "from=198.51.100.10" in log and "setting=upstream_data_sources" in log
