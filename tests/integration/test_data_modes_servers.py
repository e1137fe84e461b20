"""upstream_data_mode against proftpd and pure-ftpd (issue 23 item 1): both take either mode, so nothing fails
directly; what is checked is that each serves a client's mode through the other one toward it, byte-exact, in
both directions, and that the server got the other mode (the gateway's `translated` log line)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clients import Mode, curl_download, curl_upload
from conftest import require_netns, require_server
from gateway import Gateway, random_file, sha256_file, start_reverse_gateway
from netns import Topology
from servers import FtpServer, start_server

pytestmark = pytest.mark.netns

KINDS = ("proftpd", "pure-ftpd")


@dataclass
class Setup:
    topo: Topology
    server: FtpServer
    gateways: dict[str, Gateway]  # by upstream_data_mode
    files: Path


@pytest.fixture(scope="module", params=KINDS)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    kind = request.param
    require_netns()
    require_server(kind)
    files = tmp_path_factory.mktemp(f"data-modes-{kind}")
    random_file(files / "big.bin", 8 << 20)
    with Topology("reverse") as topo:
        server = start_server(kind, topo.server)
        server.put_file("big.bin", (files / "big.bin").read_bytes())
        gateways: dict[str, Gateway] = {}
        try:
            for offset, data_mode in enumerate(("active", "passive")):
                gateways[data_mode] = start_reverse_gateway(
                    topo,
                    "--upstream-data-mode",
                    data_mode,
                    listen_port=2101 + offset,
                    passive_ports=f"{50000 + 100 * offset}-{50099 + 100 * offset}",
                )
            yield Setup(topo, server, gateways, files)
        finally:
            for gateway in gateways.values():
                gateway.stop()
            server.stop()


@pytest.mark.parametrize(
    ("data_mode", "mode"), [("active", "pasv"), ("active", "epsv"), ("passive", "port"), ("passive", "eprt")]
)
def test_each_client_mode_through_the_other_one(setup: Setup, data_mode: str, mode: Mode, tmp_path: Path) -> None:
    target = setup.server.target(setup.topo.public_addr, setup.gateways[data_mode].port)
    got = tmp_path / "big.bin"
    curl_download(setup.topo.client, target, "big.bin", got, mode=mode).check()
    assert sha256_file(got) == sha256_file(setup.files / "big.bin")
    remote = f"upload/{data_mode}-{mode}.bin"
    curl_upload(setup.topo.client, target, got, remote, mode=mode).check()
    assert setup.server.sha256(remote) == sha256_file(setup.files / "big.bin")
    # Toward an IPv4 server: PORT for any passive client, PASV for any active one.
    translated = "PORT" if data_mode == "active" else "PASV"
    assert f"translated {mode.upper()} -> {translated}" in setup.gateways[data_mode].log()
