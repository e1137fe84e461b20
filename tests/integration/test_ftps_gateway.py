"""FTPS through ftp-alg: every TLS daemon x every FTPS client x every data mode, every byte checked.

One topology and one set of daemons for the module (tests/integration/ftps.py); one gateway per set-up, made on
first use. Set-ups: TLS on both legs (client require, upstream require, certificates verified against the test
CA) in front of each TLS daemon; a TLS client in front of a plain server; a plain client in front of a TLS-only
server; an implicit FTPS listener. The headline: stock ftplib.FTP_TLS, which gets 522 from vsftpd's
require_ssl_reuse directly (test_ftps_direct), works through the gateway, whose upstream data connections
resume its own control session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import (
    CURL_TLS_MODES,
    MODES,
    ClientTls,
    Mode,
    curl_download,
    curl_list,
    curl_upload,
    ftplib_run,
    lftp,
)
from ftps import ABOR_FILE, TLS_KINDS, FtpsWorld, build_world
from gateway import sha256_file
from pki import Pki
from servers import FtpTarget

pytestmark = pytest.mark.netns

IMPLICIT_PORT = 990


@pytest.fixture(scope="module")
def world(pki: Pki, request: pytest.FixtureRequest) -> Iterator[FtpsWorld]:
    yield from build_world(pki, request)


def through(world: FtpsWorld, setup: str) -> FtpTarget:
    """Login data for the daemon behind the gateway of `setup`, started on first use:
    "tls:<kind>" TLS both legs, "to-plain" TLS client -> plain vsftpd, "plain-to-tls" plain client -> TLS
    vsftpd with PROT P on the server's leg, "implicit" implicit listener on :990 (TLS both legs, vsftpd)."""
    if setup not in world.setups:
        if setup.startswith("tls:"):
            _, port = world.gateway(setup.removeprefix("tls:"))
        elif setup == "to-plain":
            _, port = world.gateway("plain", *world.client_tls_flags(), tls_both=False)
        elif setup == "plain-to-tls":
            # data private: the client speaks no PROT, and vsftpd (force_anon_data_ssl) refuses clear data.
            flags = [*world.upstream_tls_flags(), "--tls-upstream-data", "private"]
            _, port = world.gateway("vsftpd", *flags, tls_both=False)
        elif setup == "implicit":
            implicit = f"{world.topo.public_addr}:{IMPLICIT_PORT}"
            _, port = world.gateway("vsftpd", "--tls-implicit-listen", implicit)
        else:
            raise ValueError(setup)
        world.setups[setup] = port
    server = world.servers[_server_of(setup)]
    port = IMPLICIT_PORT if setup == "implicit" else world.setups[setup]
    return server.target(world.topo.public_addr, port)


def _server_of(setup: str) -> str:
    if setup.startswith("tls:"):
        return setup.removeprefix("tls:")
    return {"to-plain": "plain", "plain-to-tls": "vsftpd", "implicit": "vsftpd"}[setup]


def tls(world: FtpsWorld, **kw: bool) -> ClientTls:
    return ClientTls(world.pki.ca_file, **kw)


# --------------------------------------------------------------------------- TLS on both legs


@pytest.mark.parametrize("mode", CURL_TLS_MODES)
@pytest.mark.parametrize("kind", TLS_KINDS)
def test_curl_list_retr_stor_resume_with_tls_on_both_legs(
    world: FtpsWorld, kind: str, mode: Mode, tmp_path: Path
) -> None:
    server, client = world.servers[kind], world.topo.client
    target = through(world, f"tls:{kind}")
    listing = curl_list(client, target, mode=mode, tls=tls(world)).check()
    assert "big.bin" in listing.stdout and "small.bin" in listing.stdout, listing
    assert "PROT P" in listing.sent(), listing

    got = tmp_path / "big.bin"
    curl_download(client, target, "big.bin", got, mode=mode, tls=tls(world)).check()
    assert sha256_file(got) == server.seeded["big.bin"]

    partial = tmp_path / "resumed.bin"
    partial.write_bytes(got.read_bytes()[:700_001])
    resumed = curl_download(client, target, "big.bin", partial, mode=mode, resume=True, tls=tls(world)).check()
    assert "REST 700001" in resumed.sent(), resumed
    assert sha256_file(partial) == server.seeded["big.bin"]

    remote = f"upload/curl-{mode}.bin"
    curl_upload(client, target, got, remote, mode=mode, tls=tls(world)).check()
    assert server.sha256(remote) == server.seeded["big.bin"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", TLS_KINDS)
def test_session_reusing_ftplib_round_trip_with_tls_on_both_legs(
    world: FtpsWorld, kind: str, mode: Mode, tmp_path: Path
) -> None:
    """LIST, NLST, RETR, REST+RETR, STOR then APPE, in one session, every data mode (PORT/EPRT included)."""
    result = ftplib_round_trip(world, through(world, f"tls:{kind}"), kind, mode, tmp_path, reuse=True)
    assert result["cipher"], "the control connection to the gateway is TLS"


def ftplib_round_trip(
    world: FtpsWorld, target: FtpTarget, kind: str, mode: Mode, tmp_path: Path, *, reuse: bool
) -> dict[str, object]:
    server = world.servers[kind]
    source = server.path("big.bin").read_bytes()
    half = len(source) // 2
    resumed = tmp_path / "resumed.bin"
    resumed.write_bytes(source[:half])
    up = tmp_path / "up.bin"
    up.write_bytes(b"uploaded through ftp-alg over TLS\r\n" * 3000)
    remote = f"upload/ftplib-{mode}-{'reuse' if reuse else 'stock'}.bin"
    result = ftplib_run(
        world.topo.client,
        target,
        [
            ("list",),
            ("nlst",),
            ("retr", "big.bin", tmp_path / "big.bin"),
            ("rest_retr", "big.bin", resumed, half),
            ("stor", up, remote),
            ("appe", up, remote),
            ("retr", "empty.txt", tmp_path / "empty.txt"),
        ],
        mode=mode,
        tls=tls(world, reuse=reuse),
    )
    assert result.ok, str(result)
    assert result.data is not None
    assert any("big.bin" in line for line in result.data["results"][0]["lines"]), "LIST"
    assert "small.bin" in result.data["results"][1]["names"], "NLST"
    assert sha256_file(tmp_path / "big.bin") == server.seeded["big.bin"], "RETR"
    assert sha256_file(resumed) == server.seeded["big.bin"], "REST resume"
    assert server.path(remote).read_bytes() == up.read_bytes() * 2, "STOR then APPE"
    assert (tmp_path / "empty.txt").read_bytes() == b"", "empty file"
    return result.data


@pytest.mark.parametrize("mode", MODES)
def test_stock_ftp_tls_through_the_gateway_to_require_ssl_reuse_vsftpd(
    world: FtpsWorld, mode: Mode, tmp_path: Path
) -> None:
    """The headline: the client that gets 522 from this vsftpd directly (test_ftps_direct) works through
    ftp-alg, which terminates its TLS and resumes its own session toward vsftpd on every data connection."""
    ftplib_round_trip(world, through(world, "tls:vsftpd"), "vsftpd", mode, tmp_path, reuse=False)


@pytest.mark.parametrize("kind", TLS_KINDS)
def test_lftp_ssl_force_protect_data_ls_get_put_reget(world: FtpsWorld, kind: str, tmp_path: Path) -> None:
    server = world.servers[kind]
    target = through(world, f"tls:{kind}")
    got, partial, up = tmp_path / "big.bin", tmp_path / "partial.bin", tmp_path / "up.bin"
    partial.write_bytes(server.path("big.bin").read_bytes()[:123_457])
    up.write_bytes(b"lftp over TLS\n" * 5000)
    for mode in ("pasv", "port"):
        result = lftp(
            world.topo.client,
            target,
            ["ls", f"get big.bin -o {got}", f"reget big.bin -o {partial}", f"put {up} -o upload/lftp-{mode}.bin"],
            mode=mode,
            tls=tls(world),
        ).check()
        assert "small.bin" in result.stdout, result
        assert "PROT P" in result.sent(), result
        assert sha256_file(got) == server.seeded["big.bin"]
        assert sha256_file(partial) == server.seeded["big.bin"], "reget resumed with REST"
        assert server.path(f"upload/lftp-{mode}.bin").read_bytes() == up.read_bytes()
        partial.write_bytes(got.read_bytes()[:99_999])


# proftpd's mod_tls once ended the whole session (426, 421; "panic: SSL_ERROR_SYSCALL ... Broken pipe") when the
# gateway closed the data leg under the running RETR with the server's data unread; the gateway lingers on that
# leg since (datachannels._linger). proftpd then answers RETR with 226 and ABOR with 426 (or the reverse), both
# passed as sent (test_abor_pairing). pure-ftpd at times answers RETR and ABOR with one 226; the gateway pairs
# the next reply with the next command, as the client does.
@pytest.mark.parametrize("kind", TLS_KINDS)
def test_abor_of_a_tls_transfer_keeps_the_session(world: FtpsWorld, kind: str, tmp_path: Path) -> None:
    result = ftplib_run(
        world.topo.client,
        through(world, f"tls:{kind}"),
        [("abor_retr", ABOR_FILE), ("cmd", "NOOP"), ("retr", "small.bin", tmp_path / "after.bin")],
        tls=tls(world),
        timeout_s=40,
        io_timeout_s=15,
    )
    assert result.ok, str(result)
    assert result.data is not None
    abor = result.data["results"][0]
    assert abor["received"] > 0 and {"225", "226"} & set(abor["codes"]), abor
    assert result.data["results"][1]["reply"].startswith("200"), result.data
    assert sha256_file(tmp_path / "after.bin") == world.servers[kind].seeded["small.bin"]


# --------------------------------------------------------------------------- one leg TLS, implicit


@pytest.mark.parametrize("mode", MODES)
def test_tls_client_to_plain_internal_server(world: FtpsWorld, mode: Mode, tmp_path: Path) -> None:
    """TLS toward the client, plain FTP toward the server: the gateway encrypts one leg only."""
    server = world.servers["plain"]
    result = ftplib_round_trip(world, through(world, "to-plain"), "plain", mode, tmp_path, reuse=False)
    assert result["cipher"]
    if mode in CURL_TLS_MODES:
        got = tmp_path / "curl.bin"
        curl_download(world.topo.client, through(world, "to-plain"), "big.bin", got, mode=mode, tls=tls(world)).check()
        assert sha256_file(got) == server.seeded["big.bin"]
    log = server.logs()
    assert "AUTH" not in log and "PROT" not in log, "the server's leg stays plain FTP"


@pytest.mark.parametrize("mode", MODES)
def test_plain_client_to_tls_only_server(world: FtpsWorld, mode: Mode, tmp_path: Path) -> None:
    """A plain client on a trusted LAN reaches a server that refuses plain FTP (test_ftps_direct)."""
    server = world.servers["vsftpd"]
    target = through(world, "plain-to-tls")
    result = ftplib_run(
        world.topo.client,
        target,
        [("list",), ("retr", "big.bin", tmp_path / "big.bin"), ("stor", tmp_path / "big.bin", f"upload/p-{mode}")],
        mode=mode,
    )
    assert result.ok, str(result)
    assert sha256_file(tmp_path / "big.bin") == server.seeded["big.bin"]
    assert server.sha256(f"upload/p-{mode}") == server.seeded["big.bin"]
    assert not any(line.startswith(("AUTH", "PROT")) for line in result.sent())
    if mode in ("pasv", "port"):
        listing = curl_list(world.topo.client, target, mode=mode).check()
        assert "big.bin" in listing.stdout


def test_implicit_ftps_listener_with_curl_ftps_url(world: FtpsWorld, tmp_path: Path) -> None:
    server, client = world.servers["vsftpd"], world.topo.client
    target = through(world, "implicit")
    implicit = tls(world, implicit=True)
    listing = curl_list(client, target, tls=implicit).check()
    assert "big.bin" in listing.stdout
    assert not {"AUTH TLS", "AUTH SSL"} & set(listing.sent()), "implicit: TLS from the first byte"
    for mode in CURL_TLS_MODES:
        got = tmp_path / f"{mode}.bin"
        curl_download(client, target, "big.bin", got, mode=mode, tls=implicit).check()
        assert sha256_file(got) == server.seeded["big.bin"]
    got = tmp_path / "lftp.bin"
    lftp(client, target, [f"get small.bin -o {got}"], tls=implicit).check()
    assert sha256_file(got) == server.seeded["small.bin"]
