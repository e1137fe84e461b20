"""upstream_data_mode with PROT P on both data legs (issue 23 item 1): the client's mode served by the other one
toward a TLS vsftpd, every byte checked, REST included. The world (tests/integration/ftps.py) is the FTPS
suite's: TLS required on both legs, certificates verified against the test CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import CURL_TLS_MODES, ClientTls, Mode, curl_download, curl_upload
from ftps import FtpsWorld, build_world
from gateway import sha256_file
from pki import Pki
from test_ftps_gateway import ftplib_round_trip

pytestmark = pytest.mark.netns

# The client's modes served by the other one: passive clients by an active server leg and the reverse. curl
# only in passive mode: Debian 12's curl hangs on TLS active-mode data (clients.CURL_TLS_MODES); ftplib does all.
CELLS = [("active", "pasv"), ("active", "epsv"), ("passive", "port"), ("passive", "eprt")]


@pytest.fixture(scope="module")
def world(pki: Pki, request: pytest.FixtureRequest) -> Iterator[FtpsWorld]:
    yield from build_world(pki, request, abor_file=False)


def _through(world: FtpsWorld, data_mode: str) -> int:
    key = f"data-mode:{data_mode}"
    if key not in world.setups:
        _, world.setups[key] = world.gateway("vsftpd", "--upstream-data-mode", data_mode)
    return world.setups[key]


@pytest.mark.parametrize(("data_mode", "mode"), [cell for cell in CELLS if cell[1] in CURL_TLS_MODES])
def test_curl_with_prot_p_in_the_other_mode_toward_the_server(
    world: FtpsWorld, data_mode: str, mode: Mode, tmp_path: Path
) -> None:
    server = world.servers["vsftpd"]
    target = server.target(world.topo.public_addr, _through(world, data_mode))
    tls = ClientTls(world.pki.ca_file)
    got = tmp_path / "big.bin"
    result = curl_download(world.topo.client, target, "big.bin", got, mode=mode, tls=tls).check()
    assert "PROT P" in result.sent(), result
    assert sha256_file(got) == server.seeded["big.bin"]
    partial = tmp_path / "resumed.bin"
    partial.write_bytes(got.read_bytes()[:700_001])
    curl_download(world.topo.client, target, "big.bin", partial, mode=mode, resume=True, tls=tls).check()
    assert sha256_file(partial) == server.seeded["big.bin"]
    remote = f"upload/data-mode-{data_mode}-{mode}.bin"
    curl_upload(world.topo.client, target, got, remote, mode=mode, tls=tls).check()
    assert server.sha256(remote) == server.seeded["big.bin"]
    server_verbs = ("PORT", "EPRT") if data_mode == "active" else ("PASV", "EPSV")
    assert any(f'"{verb} ' in server.logs() or f'"{verb}"' in server.logs() for verb in server_verbs)


@pytest.mark.parametrize(("data_mode", "mode"), CELLS)
def test_ftplib_round_trip_with_prot_p_in_the_other_mode(
    world: FtpsWorld, data_mode: str, mode: Mode, tmp_path: Path
) -> None:
    target = world.servers["vsftpd"].target(world.topo.public_addr, _through(world, data_mode))
    ftplib_round_trip(world, target, "vsftpd", mode, tmp_path, reuse=True)
