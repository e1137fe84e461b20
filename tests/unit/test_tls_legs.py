"""TLS data legs (alg/net/tls.py) over socketpairs, on both event loops: bytes both ways, close_notify versus a
bare FIN (truncation), session resumption from the control connection's session, TLS 1.2 and 1.3."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import threading
from typing import Any

import pytest
import trustme
from loops import LOOPS, run_on

from alg.net.relay import RelayResult
from alg.net.tls import PlainLeg, TlsLeg, TlsTruncated, relay_legs, server_context, upstream_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, trustme.CA, Any]:
    ca = trustme.CA()
    cert = ca.issue_cert("ftp.internal.test")
    directory = tmp_path_factory.mktemp("pki")
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return server_context(directory / "cert.pem", directory / "key.pem"), ca, directory


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("clean", [True, False])
def test_a_download_ends_cleanly_with_close_notify_and_raises_on_a_bare_fin(
    pki: tuple[ssl.SSLContext, trustme.CA, Any], loop_kind: str, clean: bool
) -> None:
    """Server leg (the gateway as TLS client) -> plain client leg: what a server sends arrives; a stream cut
    without close_notify raises TlsTruncated, which the session turns into 426."""
    server_ctx, _, directory = pki
    payload = os.urandom(600_000)
    client_ctx = upstream_context(directory / "ca.pem")

    def ftp_server(sock: socket.socket) -> None:
        with server_ctx.wrap_socket(sock, server_side=True) as tls:
            tls.sendall(payload)
            if clean:
                tls.unwrap().close()
            else:
                tls.shutdown(socket.SHUT_RDWR)  # FIN, no close_notify

    def ftp_client(sock: socket.socket, got: list[bytes]) -> None:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        got.append(data)
        sock.close()

    async def main() -> tuple[RelayResult | BaseException, bytes]:
        server_ours, server_theirs = _pair()
        client_ours, client_theirs = _pair()
        got: list[bytes] = []
        threads = [
            threading.Thread(target=ftp_server, args=(server_theirs,)),
            threading.Thread(target=ftp_client, args=(client_theirs, got)),
        ]
        for thread in threads:
            thread.start()
        leg = TlsLeg.wrap(server_ours, client_ctx, server_side=False, server_hostname="ftp.internal.test")
        eofs: list[bool] = []  # forward or not, per end of file delivered
        try:
            await leg.handshake()
            result: RelayResult | BaseException = await relay_legs(
                leg,
                PlainLeg(client_ours),
                idle_timeout_s=5,
                on_eof=eofs.append,
                result=RelayResult(),
            )
        except TlsTruncated as error:
            result = error
        finally:
            server_ours.close()
            client_ours.close()
        for thread in threads:
            await asyncio.to_thread(thread.join, 10)
        assert (True in eofs) == clean, "the end of the download is reported only for a clean end"
        return result, got[0]

    result, got = run_on(loop_kind, main)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    if clean:
        assert isinstance(result, RelayResult) and result.to_b == len(payload)
    else:
        assert isinstance(result, TlsTruncated)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_a_data_leg_resumes_the_control_sessions_session(
    pki: tuple[ssl.SSLContext, trustme.CA, Any], loop_kind: str, version: str
) -> None:
    """What vsftpd's require_ssl_reuse checks: the data connection resumes the control connection's session,
    read when the data connection opens (a TLS 1.3 ticket arrives after the handshake)."""
    server_ctx, _, directory = pki
    client_ctx = upstream_context(directory / "ca.pem")
    client_ctx.maximum_version = getattr(ssl.TLSVersion, version.replace(".", "_").replace("TLSv", "TLSv"))

    def tls_server(sock: socket.socket, reused: list[bool]) -> None:
        with server_ctx.wrap_socket(sock, server_side=True) as tls:
            reused.append(tls.session_reused)
            tls.sendall(b"220 hello\r\n")
            tls.recv(100)

    async def connect(session: ssl.SSLSession | None) -> tuple[TlsLeg, list[bool], threading.Thread]:
        ours, theirs = _pair()
        reused: list[bool] = []
        thread = threading.Thread(target=tls_server, args=(theirs, reused))
        thread.start()
        leg = TlsLeg.wrap(ours, client_ctx, server_side=False, server_hostname="ftp.internal.test", session=session)
        await leg.handshake()
        assert await leg.recv() == b"220 hello\r\n"  # a reply came back: the 1.3 ticket is in by now
        return leg, reused, thread

    async def main() -> tuple[bool, bool]:
        control, control_reused, first = await connect(None)
        data, data_reused, second = await connect(control.tls.session)
        for leg, thread in ((data, second), (control, first)):
            await leg.send(b"bye")
            await asyncio.to_thread(thread.join, 10)
            leg.sock.close()
        return control_reused[0], data_reused[0] and data.session_reused

    assert run_on(loop_kind, main) == (False, True)


def test_a_client_without_close_notify_on_an_upload_is_accepted_when_not_strict(
    pki: tuple[ssl.SSLContext, trustme.CA, Any],
) -> None:
    """Client legs are lenient (uploads that end with a bare FIN are common, and vsftpd accepts them)."""
    server_ctx, _, directory = pki
    client_ctx = upstream_context(directory / "ca.pem")

    def ftp_client(sock: socket.socket) -> None:
        with client_ctx.wrap_socket(sock, server_hostname="ftp.internal.test") as tls:
            tls.sendall(b"x" * 1000)
            tls.shutdown(socket.SHUT_WR)  # a FIN without close_notify
            try:
                while tls.recv(4096):  # until the gateway closes (it sends no close_notify back here)
                    pass
            except (ssl.SSLError, OSError):
                pass

    async def main() -> tuple[bytes, bool]:
        ours, theirs = _pair()
        thread = threading.Thread(target=ftp_client, args=(theirs,))
        thread.start()
        leg = TlsLeg.wrap(ours, server_ctx, server_side=True, strict=False)
        await leg.handshake()
        data = b""
        while chunk := await leg.recv():
            data += chunk
        ours.close()
        await asyncio.to_thread(thread.join, 10)
        return data, leg.ragged

    assert run_on("asyncio", main) == (b"x" * 1000, True)
