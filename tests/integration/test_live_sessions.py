"""Live sessions end to end: a client holds a download half-read through the gateway, an operator lists the
sessions with `ftp-alg sessions` (user, upstream, bytes so far), ends one with `--end ID` and the client reads
`421`; requests without or with a wrong token get 401 and are counted; the admin endpoint is served only on
its own address.

client 203.0.113.10 ─ gw 203.0.113.1 (ftp :21, metrics :9121, admin :9180) | 198.51.100.1 ─ vsftpd 198.51.100.10
"""

from __future__ import annotations

import ftplib
import json
import os
import socket
import sys
from pathlib import Path

import pytest
from conftest import HUGE
from hostile import Samples, metric, parse_samples
from netns import REPO_ROOT, Topology
from servers import FtpServer
from test_observability import http_get, wait_until

pytestmark = pytest.mark.netns

METRICS_PORT = 9121
ADMIN_PORT = 9180
TOKEN = "t0ken-for-the-test-3f9a"


def sessions_cli(topo: Topology, *args: str, token: str | None = TOKEN) -> tuple[int, str, str]:
    """`ftp-alg sessions ARGS` run in the client namespace, as an operator would run it."""
    env = {key: value for key, value in os.environ.items() if key != "FTP_ALG_ADMIN_TOKEN"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if token is not None:
        env["FTP_ALG_ADMIN_TOKEN"] = token
    url = f"http://{topo.public_addr}:{ADMIN_PORT}"
    result = topo.client.run([sys.executable, "-m", "alg.cli", "sessions", "--url", url, *args], env=env, timeout=30)
    return result.returncode, result.stdout, result.stderr


def scrape(topo: Topology) -> Samples:
    status, text = http_get(topo.client, f"http://{topo.public_addr}:{METRICS_PORT}/metrics")
    assert status == 200
    return parse_samples(text)


def test_list_and_end_a_live_session(reverse_topo: Topology, vsftpd: FtpServer, huge: str, tmp_path: Path) -> None:
    topo = reverse_topo
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(f"admin:\n  listen: {topo.public_addr}:{ADMIN_PORT}\n  token_file: {token_file}\n")
    gateway = topo.start_gateway(
        [
            "run",
            "--config",
            str(config),
            "--listen",
            f"{topo.public_addr}:21",
            "--upstream",
            f"{topo.server_addr}:21",
            "--passive-ports",
            "40000-40099",
            "--metrics-listen",
            f"{topo.public_addr}:{METRICS_PORT}",
        ],
        env={key: value for key, value in os.environ.items() if key != "FTP_ALG_ADMIN_TOKEN"},
    )
    topo.client.wait_port(topo.public_addr, ADMIN_PORT, process=gateway, timeout_s=10)

    # Only where configured: the metrics port has no /sessions, whatever the token.
    status, _ = http_get(topo.client, f"http://{topo.public_addr}:{METRICS_PORT}/sessions")
    assert status == 404

    code, out, err = sessions_cli(topo)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "0 sessions"

    # A client logs in and starts a 32 MiB download, reading only its first MiB.
    def open_download() -> tuple[ftplib.FTP, socket.socket]:
        ftp = ftplib.FTP()
        ftp.connect(str(topo.public_addr), 21, timeout=20)
        ftp.login(vsftpd.user, vsftpd.password)
        ftp.voidcmd("TYPE I")
        return ftp, ftp.transfercmd("RETR huge.bin")

    ftp, data = topo.client.call(open_download)
    received = 0
    while received < 1024 * 1024:
        chunk = data.recv(64 * 1024)
        assert chunk
        received += len(chunk)

    # The operator sees it: user, client, upstream, the transfer in flight with its bytes so far.
    code, out, err = sessions_cli(topo, "--json")
    assert code == 0, err
    (session,) = json.loads(out)["sessions"]
    assert session["client"].startswith(f"{topo.client_addr}:")
    assert (session["user"], session["logged_in"], session["upstream"]) == (vsftpd.user, True, f"{topo.server_addr}:21")
    assert session["started"].endswith("Z") and session["last_activity"] >= session["started"]
    (transfer,) = session["transfers"]
    assert (transfer["command"], transfer["path"], transfer["mode"]) == ("RETR", "huge.bin", "passive")
    assert received <= transfer["bytes_download"] < HUGE
    assert transfer["bytes_upload"] == 0
    code, out, _ = sessions_cli(topo)
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "CLIENT", "USER", "UPSTREAM", "STARTED", "IDLE", "TRANSFERS"]
    assert lines[1].split()[:4] == [str(session["id"]), session["client"], vsftpd.user, f"{topo.server_addr}:21"]
    assert "RETR huge.bin" in lines[1] and lines[-1] == "1 session"

    # No token, a wrong one: 401, counted, and the session lives on.
    before = scrape(topo)
    code, _, err = sessions_cli(topo, token=None)
    assert code == 1 and "401" in err and "--token-file" in err
    code, _, err = sessions_cli(topo, "--end", str(session["id"]), token="wrong")
    assert code == 1 and "401" in err
    after = scrape(topo)
    assert metric(after, "ftp_alg_admin_unauthorized_total") - metric(before, "ftp_alg_admin_unauthorized_total") == 2
    assert metric(after, "ftp_alg_sessions_active") == 1

    # Ending an unknown session says so; ending ours gives the client a 421.
    code, _, err = sessions_cli(topo, "--end", "999999")
    assert code == 1 and "404" in err
    code, out, err = sessions_cli(topo, "--end", str(session["id"]))
    assert (code, out.strip()) == (0, f"session {session['id']} ended"), err

    def read_421() -> str:
        ftp.sock.settimeout(10)
        while True:  # skip the 150 of the cut transfer
            line = ftp.getline()
            if not line.startswith("150"):
                return line

    assert topo.client.call(read_421).startswith("421 Session ended by the administrator")
    data.close()
    ftp.close()
    wait_until("session closed and counted", lambda: metric(scrape(topo), "ftp_alg_sessions_active") == 0)
    final = scrape(topo)
    assert metric(final, "ftp_alg_sessions_total", outcome="ended_by_admin") == 1
    assert metric(final, "ftp_alg_data_channels_active") == 0
    assert sessions_cli(topo)[1].splitlines()[-1] == "0 sessions"
    assert "session ended by the administrator" in gateway.log()
