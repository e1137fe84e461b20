"""The optional larger transfer (--size): STOR a file of that size, RETR it, compare, DELE, through the first
passive mode that works, to catch transfers that stall mid-way.
"""

from __future__ import annotations

import hashlib
import random
import socket
import ssl

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
from alg.diagnose.session import Stopped, Target, open_session, tls_context
from alg.ftp.addresses import find_227, find_229
from alg.ftp.wire import strip_telnet

TRANSFER_NAME = "ftp-alg-diagnose.bin"


def transfer(target: Target, budget: Budget, control: Control, obs: Observations) -> Transfer | None:
    """STOR `size` bytes, RETR them, compare, DELE: through the first passive mode that works."""

    working = [check for check in obs.modes if check.mode in PASSIVE_MODES and mode_status(check) == "ok"]
    if not working:
        return None
    mode = working[0].mode
    payload = random.Random(target.size).randbytes(target.size)
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
        moved, result, detail = _store(conn, target, control, mode, payload)
        if result != "ok":
            return Transfer(mode, target.size, result, moved, detail)
        back, result, detail = _retrieve(conn, target, control, mode)
        conn.command(f"DELE {TRANSFER_NAME}")
        if result != "ok":
            return Transfer(mode, target.size, result, len(back), detail)
        if hashlib.sha256(back).digest() != hashlib.sha256(payload).digest():
            return Transfer(mode, target.size, "mismatch", len(back), "the bytes read back differ")
        return Transfer(mode, target.size, "ok", len(back))
    except (TimeoutError, ControlClosed, OSError) as exc:
        return Transfer(mode, target.size, "failed", 0, f"control connection: {exc}")
    finally:
        conn.close()


def _data_socket(conn: ControlConnection, target: Target, control: Control, mode: Mode) -> socket.socket | str:
    assert control.server is not None
    reply = conn.command(mode)
    if reply.code not in (227, 229):
        return reply.text
    if mode == "PASV":
        where, _, _ = find_227(strip_telnet(reply.last))
    else:
        where = HostPort(control.server, find_229(strip_telnet(reply.last))[0])
    return socket.create_connection((str(where.ip), where.port), timeout=conn.budget.wait())


def _store(
    conn: ControlConnection, target: Target, control: Control, mode: Mode, payload: bytes
) -> tuple[int, TransferResult, str]:
    data = _data_socket(conn, target, control, mode)
    if isinstance(data, str):
        return 0, "failed", data
    sent = 0
    with data:
        first = conn.command(f"STOR {TRANSFER_NAME}")
        if first.code >= 400:
            return 0, "upload_refused", first.text
        stream = _wrap(data, conn, target)
        try:
            view = memoryview(payload)
            while sent < len(payload):
                stream.settimeout(conn.budget.wait())
                sent += stream.send(view[sent : sent + 65536])
        except (TimeoutError, OSError):
            return sent, "stalled", "the upload stopped"
        finally:
            if target.tls and isinstance(stream, ssl.SSLSocket):
                stream = stream.unwrap()
            stream.close()
    final = conn.read_reply()
    return sent, ("ok" if final.code < 300 else "failed"), final.text


def _retrieve(
    conn: ControlConnection, target: Target, control: Control, mode: Mode
) -> tuple[bytes, TransferResult, str]:
    data = _data_socket(conn, target, control, mode)
    if isinstance(data, str):
        return b"", "failed", data
    received = bytearray()
    with data:
        first = conn.command(f"RETR {TRANSFER_NAME}")
        if first.code >= 400:
            return b"", "failed", first.text
        stream = _wrap(data, conn, target)
        try:
            while chunk := _recv(stream, conn.budget):
                received += chunk
        except (TimeoutError, OSError):
            return bytes(received), "stalled", "the download stopped"
        finally:
            stream.close()
    final = conn.read_reply()
    return bytes(received), ("ok" if final.code < 300 else "failed"), final.text


def _recv(stream: socket.socket, budget: Budget) -> bytes:
    stream.settimeout(budget.wait())
    return stream.recv(1 << 16)


def _wrap(data: socket.socket, conn: ControlConnection, target: Target) -> socket.socket:
    if not target.tls:
        return data
    data.settimeout(conn.budget.wait())
    return tls_context(target).wrap_socket(data, server_hostname=target.host, session=conn.tls_session)
