"""The admin endpoints without sockets: /sessions routes answered for a stand-in sessions view, the bearer token
(missing, wrong, right; from a file or the environment), 401s counted, the settings, and the table that
`ftp-alg sessions` prints."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fakewriter import FakeWriter
from prometheus_client.parser import text_string_to_metric_families

from alg import cli
from alg.errors import ConfigError
from alg.gateway.workers import worker_settings
from alg.ops import admin, admin_client, admin_peers, http
from alg.ops.config import load_config
from alg.ops.metrics import Metrics

TOKEN = "s3cret-token"
SESSION = {
    "id": "0-7",
    "client": "203.0.113.10:40000",
    "user": "alice",
    "logged_in": True,
    "upstream": "198.51.100.10:21",
    "started": "2026-12-02T00:10:00.000Z",
    "last_activity": "2026-12-02T00:11:00.000Z",
    "idle_s": 3.2,
    "transfers": [
        {
            "command": "RETR",
            "direction": "download",
            "path": "big.bin",
            "mode": "passive",
            "state": "relaying",
            "started": "2026-12-02T00:11:00.000Z",
            "bytes_download": 3 * 1024 * 1024,
            "bytes_upload": 0,
        }
    ],
}


class FakeSessions:
    def __init__(self) -> None:
        self.ended: list[str] = []

    def snapshot(self) -> list[dict[str, Any]]:
        return [SESSION]

    def end(self, session_id: str) -> bool:
        if session_id != "0-7":
            return False
        self.ended.append(session_id)
        return True


def listener(token: str | None = TOKEN, *, metrics: bool = True, with_admin: bool = True) -> http.HttpListener:
    gateway = SimpleNamespace(stopping=False, ready=asyncio.Event(), settings=SimpleNamespace(), metrics=Metrics())
    access = http.AdminAccess(FakeSessions(), token) if with_admin else None
    return http.HttpListener(gateway, metrics=metrics, admin=access)  # type: ignore[arg-type]


def ask(server: http.HttpListener, request: bytes) -> tuple[int, dict[str, str], bytes]:
    async def go() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(request)
        reader.feed_eof()
        writer = FakeWriter()
        await server._serve_one(reader, writer)  # type: ignore[arg-type]
        return bytes(writer.data)

    head, _, body = asyncio.run(go()).partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    return int(status_line.split()[1]), dict(line.split(": ", 1) for line in lines), body


def unauthorized_count(server: http.HttpListener) -> float:
    status, _, body = ask(server, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "ftp_alg_admin_unauthorized_total":
                return sample.value
    raise AssertionError("ftp_alg_admin_unauthorized_total not exported")


def auth(token: str) -> bytes:
    return f"Authorization: Bearer {token}\r\n".encode()


# ---- routes and the token --------------------------------------------------------------------------------------


def test_sessions_listed_as_json_with_the_right_token() -> None:
    server = listener()
    status, headers, body = ask(server, b"GET /sessions HTTP/1.1\r\nHost: x\r\n" + auth(TOKEN) + b"\r\n")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"sessions": [SESSION], "workers": 1}
    assert unauthorized_count(server) == 0


@pytest.mark.parametrize(
    "header",
    [
        b"",
        auth("wrong"),
        auth(TOKEN + "x"),
        f"Authorization: Basic {TOKEN}\r\n".encode(),
        b"Authorization: Bearer\r\n",
    ],
)
def test_missing_or_wrong_token_gets_401_and_is_counted(header: bytes) -> None:
    server = listener()
    for request in (b"GET /sessions HTTP/1.1\r\n", b"DELETE /sessions/7 HTTP/1.1\r\n", b"GET /sessions/x HTTP/1.1\r\n"):
        status, headers, body = ask(server, request + header + b"\r\n")
        assert (status, body) == (401, b"unauthorized\n")
        assert headers["WWW-Authenticate"] == 'Bearer realm="ftp-alg"'
    assert server.admin is not None
    assert server.admin.sessions.ended == []  # type: ignore[attr-defined]
    assert unauthorized_count(server) == 3


def test_header_name_and_scheme_are_case_insensitive() -> None:
    status, _, _ = ask(listener(), b"GET /sessions HTTP/1.1\r\nauthorization: bearer " + TOKEN.encode() + b"\r\n\r\n")
    assert status == 200


def test_no_token_configured_lets_requests_through() -> None:
    assert ask(listener(None), b"GET /sessions HTTP/1.1\r\n\r\n")[0] == 200


def test_end_a_session() -> None:
    server = listener()
    status, _, body = ask(server, b"DELETE /sessions/0-7 HTTP/1.1\r\n" + auth(TOKEN) + b"\r\n")
    assert (status, body) == (200, b"session 0-7 ended\n")
    status, _, _ = ask(server, b"POST /sessions/0-7/end HTTP/1.1\r\nContent-Length: 0\r\n" + auth(TOKEN) + b"\r\n")
    assert status == 200
    # With one worker a bare number is that worker's session: there is no other it could name.
    status, _, body = ask(server, b"DELETE /sessions/7 HTTP/1.1\r\n" + auth(TOKEN) + b"\r\n")
    assert (status, body) == (200, b"session 0-7 ended\n")
    assert server.admin is not None
    assert server.admin.sessions.ended == ["0-7", "0-7", "0-7"]  # type: ignore[attr-defined]
    status, _, body = ask(server, b"DELETE /sessions/0-8 HTTP/1.1\r\n" + auth(TOKEN) + b"\r\n")
    assert (status, body) == (404, b"no session 0-8\n")


def test_with_several_workers_a_bare_number_names_no_session() -> None:
    server = listener()
    assert server.admin is not None
    server.admin.peers = admin_peers.Peers(worker=0, workers=2)
    status, _, body = ask(server, b"DELETE /sessions/7 HTTP/1.1\r\n" + auth(TOKEN) + b"\r\n")
    assert status == 404 and b"give the id as WORKER-NUMBER" in body
    status, _, body = ask(server, b"DELETE /sessions/1-7 HTTP/1.1\r\n" + auth(TOKEN) + b"\r\n")
    assert (status, body) == (404, b"no session 1-7: worker 1 did not answer\n")  # its address is unknown (port 0)
    assert server.admin.sessions.ended == []  # type: ignore[attr-defined]
    status, _, body = ask(server, b"GET /sessions HTTP/1.1\r\n" + auth(TOKEN) + b"\r\n")
    assert json.loads(body) == {"sessions": [SESSION], "workers": 2, "unreachable_workers": [1]}


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"POST /sessions HTTP/1.1", 405),
        (b"GET /sessions/7 HTTP/1.1", 405),
        (b"POST /sessions/7 HTTP/1.1", 405),
        (b"DELETE /sessions/7/end HTTP/1.1", 405),
        (b"DELETE /sessions/-1 HTTP/1.1", 404),
        (b"DELETE /sessions/7x HTTP/1.1", 404),
        (b"DELETE /sessions/1234567890123456789012 HTTP/1.1", 404),
        (b"HEAD /sessions HTTP/1.1", 200),
    ],
)
def test_admin_paths_and_methods(request_line: bytes, status: int) -> None:
    assert ask(listener(), request_line + b"\r\n" + auth(TOKEN) + b"\r\n")[0] == status


def test_admin_routes_exist_only_where_configured() -> None:
    plain = listener(with_admin=False)
    assert ask(plain, b"GET /sessions HTTP/1.1\r\n" + auth(TOKEN) + b"\r\n")[0] == 404
    assert unauthorized_count(plain) == 0
    admin_only = listener(metrics=False)
    assert ask(admin_only, b"GET /metrics HTTP/1.1\r\n\r\n")[0] == 404
    assert ask(admin_only, b"GET /readyz HTTP/1.1\r\n\r\n")[0] == 404
    assert ask(admin_only, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 200
    assert ask(admin_only, b"GET /sessions HTTP/1.1\r\n" + auth(TOKEN) + b"\r\n")[0] == 200


# ---- the token's source -------------------------------------------------------------------------------------


def test_token_from_file_first_line(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}  \nsecond line\n")
    assert admin.read_token(path, {admin.TOKEN_ENV: "from-env"}) == TOKEN


def test_token_from_environment_or_none() -> None:
    assert admin.read_token(None, {admin.TOKEN_ENV: " from-env\n"}) == "from-env"
    assert admin.read_token(None, {admin.TOKEN_ENV: ""}) is None
    assert admin.read_token(None, {}) is None


def test_unreadable_or_empty_token_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"admin\.token_file.*cannot read the admin token"):
        admin.read_token(tmp_path / "missing", {})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        admin.read_token(empty, {})


# ---- settings ------------------------------------------------------------------------------------------------


def test_admin_settings(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "upstream: 198.51.100.10\nmetrics_listen: 127.0.0.1:9121\n"
        "admin:\n  listen: 127.0.0.1:9180\n  token_file: secrets/token\n"
    )
    settings = load_config(config)
    assert str(settings.admin.listen) == "127.0.0.1:9180"
    assert settings.admin.token_file == tmp_path / "secrets" / "token"  # relative to the config file
    assert str(load_config(config, admin_listen="127.0.0.2:9999").admin.listen) == "127.0.0.2:9999"
    second = worker_settings(settings.model_copy(update={"workers": 2}), 1)
    assert (second.metrics_listen.port, second.admin.listen.port) == (9122, 9181)
    config.write_text("upstream: 198.51.100.10\nadmin:\n  listn: 127.0.0.1:9180\n")
    with pytest.raises(ConfigError, match=r"admin\.listn.*did you mean 'listen'"):
        load_config(config)


# ---- ftp-alg sessions ---------------------------------------------------------------------------------------


def test_table_escapes_and_aligns() -> None:
    hostile = dict(SESSION, id="1-12", user="eve\x1b[2J\r\n", transfers=[])
    text = admin_client.table([SESSION, hostile])
    lines = text.splitlines()
    assert lines[0].split() == list(admin_client.COLUMNS)
    assert lines[1].split()[:4] == ["0-7", "203.0.113.10:40000", "alice", "198.51.100.10:21"]
    assert lines[1].endswith("RETR big.bin 3.0 MiB")
    assert "\x1b" not in text and "eve\\x1b[2J\\r\\n" in lines[2]
    assert lines[1].index("198.51.100.10:21") == lines[2].index("198.51.100.10:21")
    assert lines[-1] == "2 sessions"


def test_sessions_command_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["sessions", "--end", "abc"]) == 2
    assert "expected a session id" in capsys.readouterr().err
    assert cli.main(["sessions", "--url", "ftp://x"]) == 2
    assert "--url must start with http://" in capsys.readouterr().err
    config = tmp_path / "gw.yaml"
    config.write_text("upstream: 198.51.100.10\n")
    assert cli.main(["sessions", "--config", str(config)]) == 2
    assert "admin.listen is not set" in capsys.readouterr().err
