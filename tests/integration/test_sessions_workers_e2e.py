"""One name per session across workers (`workers: 2`): ids are WORKER-NUMBER and unique in the gateway, every log
line of a session carries its id and its worker, `ftp-alg sessions` (asking worker 0's admin port) lists every
worker's sessions, and `--end ID` ends exactly that session, whichever worker holds it.

client 203.0.113.10 ─ gw 203.0.113.1 (ftp :21, admin :9180 and :9181) | 198.51.100.1 ─ vsftpd 198.51.100.10
"""

from __future__ import annotations

import ftplib
import json
import re
from pathlib import Path

import pytest
from clients import ftplib_login
from gateway import Gateway, start_reverse_gateway
from netns import Topology
from servers import FtpServer
from test_live_sessions import ADMIN_PORT, TOKEN, sessions_cli

pytestmark = pytest.mark.netns

MAX_SESSIONS = 24  # SO_REUSEPORT hashes each connection: both workers hold some long before this


def listed(topo: Topology) -> list[dict[str, object]]:
    code, out, err = sessions_cli(topo, "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["workers"] == 2 and "unreachable_workers" not in document
    return list(document["sessions"])


def reply(topo: Topology, ftp: ftplib.FTP, line: str) -> str:
    def body() -> str:
        try:
            return ftp.sendcmd(line)
        except ftplib.Error as error:
            return str(error)
        except (EOFError, OSError) as error:
            return f"{type(error).__name__}: {error}"

    return str(topo.client.call(body))


def test_ids_name_one_session_in_the_whole_gateway(reverse_topo: Topology, vsftpd: FtpServer, tmp_path: Path) -> None:
    topo = reverse_topo
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(f"workers: 2\nadmin:\n  listen: {topo.public_addr}:{ADMIN_PORT}\n  token_file: {token_file}\n")
    gateway: Gateway = start_reverse_gateway(topo, "--config", str(config))
    clients: list[ftplib.FTP] = []
    try:
        while len(clients) < MAX_SESSIONS:
            clients.append(ftplib_login(topo, vsftpd))
            workers = {str(session["id"]).split("-")[0] for session in listed(topo)}
            if len(clients) >= 4 and workers == {"0", "1"}:
                break
        sessions = listed(topo)
        ids = [str(session["id"]) for session in sessions]
        assert len(ids) == len(clients) == len(set(ids)), ids
        assert all(re.fullmatch(r"[01]-[0-9]+", value) for value in ids), ids
        assert {value.split("-")[0] for value in ids} == {"0", "1"}

        # Every log line of a session names the session and its worker.
        for line in gateway.log().splitlines():
            found = re.search(r" session=([0-9]+-[0-9]+)", line)
            if found is not None:
                assert f" worker={found.group(1).split('-')[0]}" in line, line
        for value in ids:
            assert re.search(rf'msg="session start [^"]*" session={value} worker=', gateway.log()), value

        # Worker 1's session ended through worker 0's admin port: exactly that client gets the 421.
        target = next(value for value in ids if value.startswith("1-"))
        by_port = {session["client"]: str(session["id"]) for session in sessions}
        ended = next(ftp for ftp in clients if by_port[f"{topo.client_addr}:{ftp.sock.getsockname()[1]}"] == target)
        code, out, err = sessions_cli(topo, "--end", target)
        assert (code, out.strip()) == (0, f"session {target} ended"), err
        assert reply(topo, ended, "NOOP").startswith("421")
        for ftp in clients:
            if ftp is not ended:
                assert reply(topo, ftp, "NOOP").startswith("200")
        assert sorted(str(session["id"]) for session in listed(topo)) == sorted(set(ids) - {target})
        code, _, err = sessions_cli(topo, "--end", target.split("-")[1])  # a bare number names no session here
        assert code == 1 and "WORKER-NUMBER" in err
    finally:
        for ftp in clients:
            topo.client.call(ftp.close)
        assert gateway.stop() == 0, gateway.log()[-3000:]
