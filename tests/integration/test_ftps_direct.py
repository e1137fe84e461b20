"""FTPS without the gateway: the test daemons and clients are real FTPS, and the problem of issue 9 is real.

The clients run in the gateway's namespace (198.51.100.1), which reaches the daemons at 198.51.100.10
directly. Shown here: every TLS daemon serves every FTPS client (so a failure through the gateway is the
gateway's); they refuse plain FTP; stock ftplib.FTP_TLS, which does not resume the control connection's TLS
session on its data connections, fails against vsftpd's require_ssl_reuse=YES with 522, and the same client
with session reuse passes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import CURL_TLS_MODES, MODES, ClientTls, Mode, curl_download, curl_list, ftplib_run, lftp
from ftps import ABOR_FILE, ABOR_SIZE, TLS_KINDS, FtpsWorld, build_world
from gateway import sha256_file
from pki import Pki

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def world(pki: Pki, request: pytest.FixtureRequest) -> Iterator[FtpsWorld]:
    yield from build_world(pki, request, abor_file=False)


def tls(world: FtpsWorld, **kw: bool) -> ClientTls:
    return ClientTls(world.pki.ca_file, **kw)


@pytest.mark.parametrize("mode", CURL_TLS_MODES)
def test_curl_ssl_reqd_retrieves_from_vsftpd(world: FtpsWorld, mode: Mode, tmp_path: Path) -> None:
    server = world.servers["vsftpd"]
    dest = tmp_path / "big.bin"
    result = curl_download(world.topo.gw, server.target(), "big.bin", dest, mode=mode, tls=tls(world)).check()
    assert sha256_file(dest) == server.seeded["big.bin"]
    sent = result.sent()
    assert {"AUTH TLS", "AUTH SSL"} & set(sent) and "PROT P" in sent, sent  # curl tries AUTH SSL first


@pytest.mark.parametrize("mode", MODES)
def test_session_reusing_ftplib_transfers_with_vsftpd_in_every_mode(
    world: FtpsWorld, mode: Mode, tmp_path: Path
) -> None:
    server = world.servers["vsftpd"]
    dest = tmp_path / "big.bin"
    result = ftplib_run(world.topo.gw, server.target(), [("retr", "big.bin", dest)], mode=mode, tls=tls(world))
    assert result.ok, str(result)
    assert sha256_file(dest) == server.seeded["big.bin"]


@pytest.mark.parametrize("kind", TLS_KINDS)
def test_every_tls_daemon_serves_curl_lftp_and_session_reusing_ftplib(
    world: FtpsWorld, kind: str, tmp_path: Path
) -> None:
    server = world.servers[kind]
    client = world.topo.gw
    listing = curl_list(client, server.target(), tls=tls(world)).check()
    assert "small.bin" in listing.stdout
    got = tmp_path / "lftp.bin"
    lftp(client, server.target(), [f"get small.bin -o {got}"], tls=tls(world)).check()
    assert sha256_file(got) == server.seeded["small.bin"]
    up = tmp_path / "up.bin"
    up.write_bytes(b"direct ftps upload\r\n" * 1000)
    result = ftplib_run(
        client,
        server.target(),
        [("stor", up, "upload/direct-ftplib.bin"), ("retr", "big.bin", tmp_path / "ftplib.bin")],
        tls=tls(world, reuse=True),
    )
    assert result.ok, str(result)
    assert server.path("upload/direct-ftplib.bin").read_bytes() == up.read_bytes()
    assert sha256_file(tmp_path / "ftplib.bin") == server.seeded["big.bin"]


@pytest.mark.parametrize("kind", TLS_KINDS)
def test_tls_only_daemons_refuse_plain_ftp(world: FtpsWorld, kind: str) -> None:
    result = curl_list(world.topo.gw, world.servers[kind].target())
    assert not result.ok, str(result)
    codes = [line[:3] for line in result.received()]
    # vsftpd "530 Non-anonymous sessions must use encryption." / proftpd "550 SSL/TLS required on the
    # control channel" / pure-ftpd "421 Sorry, cleartext sessions and weak ciphers are not accepted".
    assert {"530", "550", "421"} & set(codes), result


def test_stock_ftp_tls_fails_against_require_ssl_reuse_vsftpd_with_522(world: FtpsWorld, tmp_path: Path) -> None:
    """The headline problem, directly: the login works, the first data connection is refused."""
    server = world.servers["vsftpd"]
    result = ftplib_run(
        world.topo.gw, server.target(), [("retr", "small.bin", tmp_path / "x.bin")], tls=tls(world, reuse=False)
    )
    assert not result.ok, str(result)
    assert result.data is not None
    assert "522" in str(result.data["error"]) or any(line.startswith("522") for line in result.received()), result
    assert any(line.startswith("230") for line in result.received()), "the login itself succeeded"


def test_session_reusing_ftp_tls_passes_against_require_ssl_reuse_vsftpd(world: FtpsWorld, tmp_path: Path) -> None:
    server = world.servers["vsftpd"]
    dest = tmp_path / "small.bin"
    result = ftplib_run(
        world.topo.gw,
        server.target(),
        [("list",), ("retr", "small.bin", dest), ("retr", "big.bin", tmp_path / "big.bin")],
        tls=tls(world, reuse=True),
    )
    assert result.ok, str(result)
    assert sha256_file(dest) == server.seeded["small.bin"]
    assert sha256_file(tmp_path / "big.bin") == server.seeded["big.bin"]


@pytest.mark.parametrize("kind", TLS_KINDS)
def test_abor_of_a_tls_transfer_directly(world: FtpsWorld, kind: str, tmp_path: Path) -> None:
    """What each daemon answers to ABOR over TLS after the client dropped the data connection: the baseline for
    test_ftps_gateway's ABOR test."""
    server = world.servers[kind]
    server.put_file(ABOR_FILE, random.Random(1).randbytes(ABOR_SIZE))
    result = ftplib_run(
        world.topo.gw,
        server.target(),
        [("abor_retr", ABOR_FILE), ("cmd", "NOOP"), ("retr", "small.bin", tmp_path / "after.bin")],
        tls=tls(world),
        timeout_s=40,
        io_timeout_s=15,
    )
    print(result.data)
    assert result.ok, str(result)
    assert result.data is not None
    codes = result.data["results"][0]["codes"]
    assert {"225", "226"} & set(codes), result.data["results"][0]
    assert sha256_file(tmp_path / "after.bin") == server.seeded["small.bin"]
