"""Forward mode in-process over loopback: the gateway on 127.0.0.2, a scripted server on 127.0.0.1 reached by the
name the login gives (an injected resolver), refusals that never connect, and the proxy login."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from shellrig import Client, ScriptedServer, records, run

from alg.ftp.addresses import IPAddress
from alg.gateway.resolve import NameNotResolved
from alg.gateway.server import Gateway
from alg.ops.config import settings_from_mapping
from alg.ops.proxy_users import user_line

NAMES = {"ftp.test": "127.0.0.1", "inside.test": "127.0.0.9", "both.test": "127.0.0.1 127.0.0.9"}


async def fake_resolver(name: str, port: int) -> list[IPAddress]:
    if name not in NAMES:
        raise NameNotResolved(f"{name} does not resolve")
    return [ip_address(text) for text in NAMES[name].split()]


class Door:
    """A listener that only counts who connects: a destination the gateway must never reach."""

    def __init__(self) -> None:
        self.connections = 0

    async def start(self, host: str, port: int) -> int:
        async def count(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(count, host, port)
        return int(self.server.sockets[0].getsockname()[1])


async def session(port: int, lines: list[str]) -> list[tuple[int, bytes]]:
    client = Client(*await asyncio.open_connection("127.0.0.2", port))
    replies = [await client.reply()]
    try:
        for line in lines:
            replies.append(await client.command(line))
    finally:
        client.close()
    return replies


async def forward_run(extra: dict[str, Any], script: list[list[str]], users_file: str | None = None) -> dict[str, Any]:
    upstream = ScriptedServer()
    await upstream.start()
    door = Door()
    door_port = await door.start("127.0.0.9", upstream.port)  # where a name pointed inside would lead
    settings = {"mode": "forward", "listen": "127.0.0.2:0", "passive_ports": "50000-50009", **extra}
    allow = [f"127.0.0.1/32:{upstream.port}", "127.0.0.9/32:21"]
    gateway = Gateway(settings_from_mapping({"forward": {"allow": allow, "users_file": users_file}, **settings}))
    gateway.resolver = fake_resolver
    await gateway.start()
    seen: dict[str, Any] = {}
    try:
        front = gateway.addresses[0].port
        seen["replies"] = [
            await session(front, [line.format(port=upstream.port, door=door_port) for line in lines])
            for lines in script
        ]
        seen["commands"] = list(upstream.commands)
        seen["door"] = door.connections
        registry = gateway.metrics.registry
        seen["metric"] = lambda name, **labels: registry.get_sample_value(name, labels) or 0.0
    finally:
        await gateway.stop(1.0)
        await upstream.close()
        door.server.close()
    return seen


def test_user_at_host_reaches_the_named_server_and_replays_the_login() -> None:
    seen = run(lambda: forward_run({}, [["USER alice@ftp.test:{port}", "PASS secret", "NOOP", "QUIT"]]))
    replies = seen["replies"][0]
    assert replies[0][1].startswith(b"220 FTP proxy ready")
    assert [code for code, _ in replies[1:]] == [331, 230, 200, 221]
    assert seen["commands"][:3] == ["USER alice", "PASS secret", "NOOP"]


def test_refusals_never_connect_and_are_counted_by_reason() -> None:
    script = [
        ["USER a@nowhere.test:{port}"],  # unknown name
        ["USER a@inside.test:{port}"],  # a name that resolves to an address the allowlist does not hold
        ["USER a@both.test:{door}"],  # one address allowed, the other not: every address must pass
        ["USER a@127.0.0.9:{door}"],  # an IP literal allowed, but at another port
        ["USER a@127.0.0.2:{port}"],  # the gateway itself
    ]
    seen = run(lambda: forward_run({}, script))
    codes = [replies[1][0] for replies in seen["replies"]]
    assert codes == [530] * 5
    texts = [replies[1][1] for replies in seen["replies"]]
    assert texts[0] == b"530 nowhere.test: no such FTP server.\r\n"
    assert texts[1].startswith(b"530 Access to inside.test:")  # the name, never the address it resolved to
    assert not any(b"127.0.0.1" in text or b"127.0.0.9" in text for text in texts[:3])
    assert seen["door"] == 0 and seen["commands"] == []
    metric = seen["metric"]
    assert metric("ftp_alg_refusals_total", reason="forward_unknown_host") == 1
    assert metric("ftp_alg_refusals_total", reason="forward_not_allowed") == 4
    assert metric("ftp_alg_sessions_total", outcome="refused_forward") == 5


def test_a_user_without_host_is_told_how_to_log_in() -> None:
    seen = run(lambda: forward_run({}, [["USER alice", "USER alice@ftp.test:{port}", "QUIT"]]))
    replies = seen["replies"][0]
    assert replies[1] == (530, b"530 Log in as USER user@host[:port] to name the FTP server.\r\n")
    assert [code for code, _ in replies[2:]] == [331, 221]


def test_the_proxy_login_comes_first_when_a_users_file_is_set(tmp_path: Path) -> None:
    users = tmp_path / "proxy-users"
    users.write_text("# made by ftp-alg forward-passwd\n" + user_line("bob", "right horse") + "\n")
    script = [
        ["USER alice@ftp.test:{port}"],
        ["USER bob", "PASS wrong"],
        ["USER bob", "PASS right horse", "USER alice@ftp.test:{port}", "PASS x"],
    ]
    seen = run(lambda: forward_run({"defender": {"enabled": True}}, script, users_file=str(users)))
    first, wrong, right = seen["replies"]
    assert first[0][1].startswith(b"220 FTP proxy ready; log in to the proxy")
    assert first[1][0] == 530 and b"Log in to the proxy first" in first[1][1]
    assert [code for code, _ in wrong[1:]] == [331, 530]
    assert [code for code, _ in right[1:]] == [331, 230, 331, 230]
    assert seen["commands"][:2] == ["USER alice", "PASS x"]  # only the last session reached the server
    assert seen["metric"]("ftp_alg_refusals_total", reason="forward_login") == 2
    # The wrong password is a failed login to the defender (2 points); a missing proxy login is not.
    assert seen["metric"]("ftp_alg_defender_score_points_total", event="login_failed") == 2


def test_a_reload_changes_what_is_allowed_for_new_sessions() -> None:
    async def main() -> list[int]:
        upstream = ScriptedServer()
        await upstream.start()
        base = {"mode": "forward", "listen": "127.0.0.2:0", "passive_ports": "50000-50009"}
        allowed = settings_from_mapping({**base, "forward": {"allow": [f"127.0.0.1/32:{upstream.port}"]}})
        gateway = Gateway(allowed)
        gateway.resolver = fake_resolver
        await gateway.start()
        codes = []
        try:
            front = gateway.addresses[0].port
            login = [f"USER alice@ftp.test:{upstream.port}"]
            codes.append((await session(front, login))[1][0])
            gateway.reload(lambda: settings_from_mapping({**base, "forward": {"allow": []}}))
            codes.append((await session(front, login))[1][0])
        finally:
            await gateway.stop(1.0)
            await upstream.close()
        return codes

    assert run(main) == [331, 530]


def test_a_user_name_in_another_encoding_is_replayed_byte_for_byte() -> None:
    async def main() -> list[str]:
        upstream = ScriptedServer()
        await upstream.start()
        allow = [f"127.0.0.1/32:{upstream.port}"]
        settings = {"mode": "forward", "listen": "127.0.0.2:0", "passive_ports": "50000-50009"}
        gateway = Gateway(settings_from_mapping({**settings, "forward": {"allow": allow}}))
        gateway.resolver = fake_resolver
        await gateway.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.2", gateway.addresses[0].port)
            client = Client(reader, writer)
            await client.reply()
            writer.write(b"USER j\xf6rg@ftp.test:" + str(upstream.port).encode() + b"\r\n")  # latin-1
            assert (await client.reply())[0] == 331
            client.close()
        finally:
            await gateway.stop(1.0)
            await upstream.close()
        return upstream.commands

    assert run(main)[0] == "USER j\xf6rg"  # the scripted server reads latin-1: the byte 0xf6 arrived as sent


def test_an_empty_allowlist_is_warned_about_at_start(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        settings = {"mode": "forward", "listen": "127.0.0.2:0", "passive_ports": "50000-50009"}
        gateway = Gateway(settings_from_mapping(settings))
        await gateway.start()
        await gateway.stop(1.0)

    run(main)
    assert any("every destination is refused" in record.getMessage() for record in records(caplog, "ftp_alg.server"))


def test_a_destination_that_is_down_gets_421_without_its_address() -> None:
    async def main() -> tuple[tuple[int, bytes], float]:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        settings = {"mode": "forward", "listen": "127.0.0.2:0", "passive_ports": "50000-50009"}
        gateway = Gateway(settings_from_mapping({**settings, "forward": {"allow": [f"127.0.0.1/32:{closed}"]}}))
        gateway.resolver = fake_resolver
        await gateway.start()
        try:
            answer = (await session(gateway.addresses[0].port, [f"USER alice@ftp.test:{closed}"]))[1]
        finally:
            await gateway.stop(1.0)  # every session has ended, and is counted, when it returns
        count = gateway.metrics.registry.get_sample_value("ftp_alg_sessions_total", {"outcome": "upstream_unreachable"})
        return answer, count or 0.0

    (code, text), unreachable = run(main)
    assert code == 421 and b"cannot be reached" in text and b"127.0.0.1" not in text
    assert unreachable == 1
