"""--log-format json: every line the gateway writes over a whole session (login, transfers, a refusal, the end) is
one JSON object, and each event's fields are keys of their own (session, client, upstream, user, rule, bytes...),
with a short sentence as msg.

client 203.0.113.10 ─ gw 203.0.113.1 | 198.51.100.1 ─ vsftpd 198.51.100.10:21
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clients import ftplib_run
from hostile import RawFtp
from netns import Topology
from scaleout import start_gateway, wait_for
from servers import FtpServer

GW = "203.0.113.1"


def test_every_line_of_a_session_is_json_with_its_fields(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], tmp_path: Path
) -> None:
    topo = reverse_topo
    server = ftp_server_factory("vsftpd", topo.server)
    settings = {"listen": f"{GW}:21", "upstream": "198.51.100.10", "log": {"level": "info", "format": "json"}}
    process = start_gateway(topo.gw, settings)
    up = tmp_path / "up.bin"
    up.write_bytes(b"x" * 5000)
    ops = [("list",), ("retr", "small.bin", tmp_path / "small.bin"), ("stor", up, "upload/json.bin")]
    assert ftplib_run(topo.client, server.target(GW, 21), ops, mode="pasv").ok
    control = RawFtp.open(topo.client, GW)
    control.login()
    assert control.cmd("PORT 198,51,100,10,0,21").code == 504  # a bounce: refused by the gateway
    control.cmd("QUIT")
    control.closed()

    def events() -> list[dict[str, Any]]:
        return [json.loads(line) for line in process.log().splitlines() if line.strip()]  # every line, or fails

    def one(msg: str, **wanted: object) -> dict[str, Any]:
        found = [e for e in events() if e["msg"] == msg and all(e.get(k) == v for k, v in wanted.items())]
        assert found, f"no {msg!r} with {wanted} in:\n" + "\n".join(map(json.dumps, events()))
        return found[0]

    wait_for(
        "the second session's end",
        lambda: any(e["msg"] == "session end" and e.get("session") == "0-2" for e in events()),
    )
    start = one("session start", session="0-1", upstream="198.51.100.10:21")
    assert start["client"].startswith("203.0.113.10:") and start["level"] == "info" and start["worker"] == 0
    assert one("logged in", session="0-1")["user"] == "anonymous"
    download = one("transfer", session="0-1", command="RETR")
    assert download["bytes"] == 64 * 1024 + 7 and download["path"] == "small.bin" and download["outcome"] == "complete"
    assert one("transfer", session="0-1", command="STOR")["bytes_upload"] == 5000
    refused = one("refused", session="0-2", verb="PORT", code=504)
    assert refused["rule"] and "198.51.100.10" in refused["detail"]
    assert one("session end", session="0-1")["outcome"] == "quit"
    assert all(" client=" not in e["msg"] and " upstream=" not in e["msg"] for e in events())
