"""The optional larger transfer (--size): STOR a file of that size, RETR it, compare, DELE, through the first
passive mode that works, to catch transfers that stall mid-way.
"""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
from collections.abc import Iterator

from alg.diagnose.findings import mode_status
from alg.diagnose.ftpclient import Budget, ControlClosed, ControlConnection
from alg.diagnose.observations import (
    PASSIVE_MODES,
    Control,
    HostPort,
    Mode,
    Observations,
    Transfer,
    TransferResult,
)
from alg.diagnose.session import Stopped, Target, open_session, path_failure, tls_context
from alg.errors import ServerProtocolError
from alg.ftp.addresses import find_227, find_229
from alg.ftp.wire import strip_telnet

TRANSFER_NAME = "ftp-alg-diagnose.bin"


CHUNK_BYTES = 1 << 16


def transfer(target: Target, budget: Budget, control: Control, obs: Observations) -> Transfer | None:
    """STOR `size` bytes, RETR them, compare, DELE: through the first passive mode that works (None if none).

    The bytes are made and checked a chunk at a time (a seeded generator and a running sha256), so a large
    --size costs no memory."""
    working = [check for check in obs.modes if check.mode in PASSIVE_MODES and mode_status(check) == "ok"]
    if not working:
        return None
    mode = working[0].mode
    try:
        conn, _ = open_session(target, budget, tls=target.tls)
    except Stopped as stopped:
        return Transfer(mode, target.size, "failed", 0, stopped.control.detail)
    try:
        if target.folder.strip("/"):
            reply = conn.command(f"CWD {target.folder}")
            if reply.code >= 300:
                return Transfer(mode, target.size, "upload_refused", 0, reply.text)
        conn.command("TYPE I")
        sent, digest, result, detail = _store(conn, target, control, mode)
        if result != "ok":
            return Transfer(mode, target.size, result, sent, detail)
        received, back, result, detail = _retrieve(conn, target, control, mode)
        conn.command(f"DELE {TRANSFER_NAME}")
        if result != "ok":
            return Transfer(mode, target.size, result, received, detail)
        if received != target.size or back != digest:
            return Transfer(mode, target.size, "mismatch", received, "the bytes read back differ")
        return Transfer(mode, target.size, "ok", received)
    except (TimeoutError, ControlClosed, OSError) as exc:
        return Transfer(mode, target.size, "failed", 0, f"control connection: {exc}")
    finally:
        conn.close()


def _payload(size: int) -> Iterator[bytes]:
    rng = random.Random(size)
    left = size
    while left:
        chunk = rng.randbytes(min(left, CHUNK_BYTES))
        left -= len(chunk)
        yield chunk


def _data_socket(conn: ControlConnection, target: Target, control: Control, mode: Mode) -> socket.socket | str:
    """A data connection through `mode`, or the reason there is none."""
    assert control.server is not None
    reply = conn.command(mode)
    try:
        if mode == "PASV" and reply.code == 227:
            where, _, _ = find_227(strip_telnet(reply.last))
        elif mode == "EPSV" and reply.code == 229:
            where = HostPort(control.server, find_229(strip_telnet(reply.last))[0])
        else:
            return reply.text
    except ServerProtocolError as exc:
        return f"{reply.text}: {exc}"
    try:
        return socket.create_connection((str(where.ip), where.port), timeout=conn.budget.wait())
    except OSError as exc:
        return f"data connection to {where}: {path_failure(exc)}"


def _store(
    conn: ControlConnection, target: Target, control: Control, mode: Mode
) -> tuple[int, bytes, TransferResult, str]:
    data = _data_socket(conn, target, control, mode)
    if isinstance(data, str):
        return 0, b"", "failed", data
    sent = 0
    digest = hashlib.sha256()
    with data:
        first = conn.command(f"STOR {TRANSFER_NAME}")
        if first.code >= 400:
            return 0, b"", "upload_refused", first.text
        stream = _wrap(data, conn, target)
        try:
            for chunk in _payload(target.size):
                digest.update(chunk)
                stream.settimeout(conn.budget.wait())
                stream.sendall(chunk)
                sent += len(chunk)
            if isinstance(stream, ssl.SSLSocket):
                stream = stream.unwrap()  # RFC 4217 12.5: close_notify, so the server knows the file is whole
        except (TimeoutError, OSError):
            return sent, b"", "stalled", "the upload stopped"
        finally:
            stream.close()
    final = conn.read_reply()
    return sent, digest.digest(), ("ok" if final.code < 300 else "failed"), final.text


def _retrieve(
    conn: ControlConnection, target: Target, control: Control, mode: Mode
) -> tuple[int, bytes, TransferResult, str]:
    data = _data_socket(conn, target, control, mode)
    if isinstance(data, str):
        return 0, b"", "failed", data
    received = 0
    digest = hashlib.sha256()
    with data:
        first = conn.command(f"RETR {TRANSFER_NAME}")
        if first.code >= 400:
            return 0, b"", "failed", first.text
        stream = _wrap(data, conn, target)
        try:
            while chunk := _recv(stream, conn.budget):
                digest.update(chunk)
                received += len(chunk)
        except (TimeoutError, OSError):
            return received, b"", "stalled", "the download stopped"
        finally:
            stream.close()
    final = conn.read_reply()
    return received, digest.digest(), ("ok" if final.code < 300 else "failed"), final.text


def _recv(stream: socket.socket, budget: Budget) -> bytes:
    stream.settimeout(budget.wait())
    return stream.recv(CHUNK_BYTES)


def _wrap(data: socket.socket, conn: ControlConnection, target: Target) -> socket.socket:
    if not target.tls:
        return data
    data.settimeout(conn.budget.wait())
    return tls_context(target).wrap_socket(data, server_hostname=target.host, session=conn.tls_session)
