"""The defender wired into the gateway, over loopback: a scripted server answers 530 to every PASS; after the
threshold the client's address gets 421 at connect and no connection reaches the server; /bans lists and
lifts the ban; the per-address limit, the core's 530 and refused commands are scored."""

from __future__ import annotations

import asyncio
import json
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from alg.ftp.addresses import HostPort
from alg.ftp.control import ChannelSettings, ControlChannel, LoginFailed, SendToClient
from alg.ftp.reasons import Refusal
from alg.gateway.guard import offence_for_rule
from alg.gateway.server import Gateway
from alg.ops.config import settings_from_mapping
from alg.ops.defender import Offence
from alg.ops.http import AdminAccess, start_http

LOOPBACK = ip_address("127.0.0.1")


class ScriptedServer:
    """An FTP server that refuses every password; counts the connections that reach it."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 scripted\r\n")
        while line := await reader.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            answer = {b"USER": b"331 password", b"PASS": b"530 Login incorrect.", b"QUIT": b"221 bye"}
            writer.write(answer.get(verb, b"502 no") + b"\r\n")
            await writer.drain()
            if verb == b"QUIT":
                break
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def reply(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):
        return await reader.readline()


async def guess(port: int, times: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = [await reply(reader)]
    for _ in range(times):
        writer.write(b"USER admin\r\nPASS guess\r\n")
        answers += [await reply(reader), await reply(reader)]
    writer.write(b"QUIT\r\n")
    answers.append(await reply(reader))
    writer.close()
    await writer.wait_closed()
    return answers


async def ask(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request + b"\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def sample(gateway: Gateway, name: str, **labels: str) -> float:
    value = gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def banned_after_guesses(defender: dict[str, Any]) -> dict[str, Any]:
    upstream = ScriptedServer()
    port = await upstream.start()
    settings = settings_from_mapping(
        {"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{port}", "passive_ports": "50000-50009", "defender": defender}
    )
    gateway = Gateway(settings)
    await gateway.start()
    front = gateway.addresses[0].port
    admin = await start_http(HostPort(LOOPBACK, 0), gateway, admin=AdminAccess(_NoSessions(), bans=gateway.guard))
    seen: dict[str, Any] = {}
    try:
        seen["guesses"] = await guess(front, 5)
        reached = upstream.connections
        reader, writer = await asyncio.open_connection("127.0.0.1", front)
        seen["refusal"] = await reply(reader)
        if not seen["refusal"].startswith(b"421"):
            writer.write(b"QUIT\r\n")
        async with asyncio.timeout(5):
            seen["after"] = await reader.read()
        writer.close()
        seen["new_upstream_connections"] = upstream.connections - reached
        seen["bans_active"] = sample(gateway, "ftp_alg_defender_bans_active")
        seen["refused"] = sample(gateway, "ftp_alg_defender_refused_connections_total")
        seen["points"] = sample(gateway, "ftp_alg_defender_score_points_total", event="login_failed")
        seen["listed"] = await ask(admin.addresses[0].port, b"GET /bans HTTP/1.1")
        seen["wrong_unban"] = await ask(admin.addresses[0].port, b"DELETE /bans/127.0.0.2 HTTP/1.1")
        seen["unban"] = await ask(admin.addresses[0].port, b"DELETE /bans/127.0.0.1 HTTP/1.1")
        reader, writer = await asyncio.open_connection("127.0.0.1", front)
        seen["let_in"] = await reply(reader)
        writer.close()
    finally:
        admin.close()
        await gateway.stop(1.0)
        await upstream.stop()
    return seen


class _NoSessions:
    def snapshot(self) -> list[dict[str, Any]]:
        return []

    def end(self, number: int) -> bool:
        return False


def test_a_guesser_is_banned_refused_before_the_server_and_let_back_by_the_admin() -> None:
    seen = asyncio.run(banned_after_guesses({"enabled": True}))
    assert seen["guesses"][0].startswith(b"220")
    assert seen["guesses"].count(b"530 Login incorrect.\r\n") == 5
    assert seen["refusal"].startswith(b"421 ") and seen["after"] == b""
    assert seen["new_upstream_connections"] == 0
    assert (seen["bans_active"], seen["refused"], seen["points"]) == (1, 1, 10)
    status, body = seen["listed"]
    (ban,) = json.loads(body)["bans"]
    assert status == 200 and ban["client"] == "127.0.0.1/32" and ban["reason"] == "login_failed"
    assert ban["repeat"] == 1 and ban["duration_s"] == 900
    assert seen["wrong_unban"][0] == 404
    assert seen["unban"] == (200, b"ban on 127.0.0.1/32 lifted\n")
    assert seen["let_in"].startswith(b"220")


def test_the_allowlist_and_the_defender_off_let_the_guesser_in() -> None:
    for defender in ({"enabled": True, "allowlist": "127.0.0.0/8"}, {"enabled": False}):
        seen = asyncio.run(banned_after_guesses(defender))
        assert seen["refusal"].startswith(b"220"), defender
        assert seen["new_upstream_connections"] == 1 and seen["bans_active"] == 0


def test_the_core_reports_530_to_user_or_pass() -> None:
    channel = ControlChannel(HostPort(LOOPBACK, 40000), HostPort(LOOPBACK, 21), ChannelSettings())
    channel.server_data(b"220 ready\r\n")
    channel.client_data(b"USER alice\r\n")
    channel.server_data(b"331 password\r\n")
    channel.client_data(b"PASS wrong\r\n")
    actions = channel.server_data(b"530 Login incorrect.\r\n")
    assert LoginFailed("alice") in actions and SendToClient(b"530 Login incorrect.\r\n") in actions
    channel.client_data(b"USER root\r\n")
    assert LoginFailed("root") in channel.server_data(b"530 This FTP server is anonymous only.\r\n")
    channel.client_data(b"CWD /x\r\n")
    assert not any(isinstance(a, LoginFailed) for a in channel.server_data(b"530 Please login.\r\n"))


def test_which_refusals_are_hostile_acts() -> None:
    assert offence_for_rule(Refusal.BOUNCE) is Offence.BOUNCE
    assert offence_for_rule(Refusal.LINE_LENGTH) is Offence.OVERLONG_LINE
    assert offence_for_rule(Refusal.COMMAND_RULE) is Offence.REFUSED_COMMAND
    assert offence_for_rule(Refusal.TLS_PLAINTEXT) is Offence.TLS_GARBAGE
    for mistake in ("syntax", "unsupported", "server_reply", "data_endpoint", "limit", "tls_required", "tls_off"):
        assert offence_for_rule(Refusal(mistake)) is None


def test_bans_command_table_and_usage(capsys: Any) -> None:
    from alg.cli import main
    from alg.ops.admin_client import bans_table

    answer = {
        "enabled": True,
        "bans": [{"client": "203.0.113.7/32", "reason": "bounce", "repeat": 2, "remaining_s": 9}],
    }
    assert bans_table(answer).splitlines() == [
        "CLIENT          REASON  REPEAT  LEFT",
        "203.0.113.7/32  bounce  2       9s",
        "1 ban",
    ]
    assert bans_table({"enabled": False, "bans": []}).splitlines()[-1] == "0 bans (defender off)"
    assert main(["bans", "--url", "ftp://x", "--unban", "203.0.113.7"]) == 2
    assert "--url must start with http://" in capsys.readouterr().err
    assert main(["bans", "--url", "http://127.0.0.1:9", "--unban", "a\x1bb"]) == 2
    assert "--unban: expected an address" in capsys.readouterr().err


async def over_the_limit() -> dict[str, Any]:
    upstream = ScriptedServer()
    port = await upstream.start()
    settings = settings_from_mapping(
        {
            "listen": "127.0.0.1:0",
            "upstream": f"127.0.0.1:{port}",
            "passive_ports": "50000-50009",
            "limits": {"max_sessions_per_client": 1},
            "defender": {"enabled": True, "threshold": 2},
        }
    )
    gateway = Gateway(settings)
    await gateway.start()
    front = gateway.addresses[0].port
    seen: dict[str, Any] = {"answers": []}
    try:
        held_reader, held = await asyncio.open_connection("127.0.0.1", front)
        assert (await reply(held_reader)).startswith(b"220")
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", front)
            seen["answers"].append(await reply(reader))
            writer.close()
        seen["points"] = sample(gateway, "ftp_alg_defender_score_points_total", event="over_limit")
        seen["bans"] = sample(gateway, "ftp_alg_defender_bans_total", event="over_limit")
        held.close()
    finally:
        await gateway.stop(1.0)
        await upstream.stop()
    return seen


def test_connections_over_the_per_address_limit_are_scored() -> None:
    seen = asyncio.run(over_the_limit())
    limit, banning, banned = seen["answers"]
    assert limit.startswith(b"421 Too many connections from your address (1).")
    assert banning.startswith(b"421 Too many connections from your address (1).")  # this one crossed 2
    assert banned.startswith(b"421 Service not available: too many failed or refused attempts")
    assert (seen["points"], seen["bans"]) == (2, 1)


async def slowed_login(delay_s: float) -> float:
    upstream = ScriptedServer()
    port = await upstream.start()
    defender = {"enabled": True, "user_failures": 1, "user_delay_s": delay_s, "threshold": 100}
    settings = settings_from_mapping(
        {"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{port}", "passive_ports": "50000-50009", "defender": defender}
    )
    gateway = Gateway(settings)
    await gateway.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.addresses[0].port)
        await reply(reader)
        writer.write(b"USER admin\r\nPASS guess\r\n")
        assert (await reply(reader)).startswith(b"331") and (await reply(reader)).startswith(b"530")
        started = asyncio.get_running_loop().time()
        writer.write(b"USER admin\r\n")
        assert (await reply(reader)).startswith(b"331")
        waited = asyncio.get_running_loop().time() - started
        writer.close()
    finally:
        await gateway.stop(1.0)
        await upstream.stop()
    return waited


def test_a_user_under_attack_waits_after_a_failed_login() -> None:
    """user_failures 1: after the first 530 for `admin`, the client's next command waits user_delay_s (a lower
    bound only: it cannot come sooner, however fast the machine)."""
    assert asyncio.run(slowed_login(0.3)) >= 0.3


async def garbage_after_auth_tls(cert: Path, key: Path, *, per_user: bool) -> dict[str, Any]:
    upstream = ScriptedServer()
    port = await upstream.start()
    # per_user: the gateway answers AUTH TLS itself, before USER picks the upstream (server.Gateway._route).
    where: dict[str, Any] = {"upstream": f"127.0.0.1:{port}"}
    if per_user:
        where = {
            "upstreams": [{"address": f"127.0.0.1:{port}", "name": "a"}],
            "upstream_policy": "per_user",
            "upstream_users": {"alice": "a"},
        }
    settings = settings_from_mapping(
        {
            "listen": "127.0.0.1:0",
            **where,
            "passive_ports": "50000-50009",
            "tls": {"client": {"mode": "allow", "cert": str(cert), "key": str(key)}},
            "defender": {"enabled": True, "threshold": 3},
        }
    )
    gateway = Gateway(settings)
    await gateway.start()
    front = gateway.addresses[0].port
    seen: dict[str, Any] = {}
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front)
        await reply(reader)
        writer.write(b"AUTH TLS\r\n")
        seen["auth"] = await reply(reader)
        writer.write(b"\x16\x03\x01\x00\x05hello, not a ClientHello\r\n")  # a TLS record header, then junk
        async with asyncio.timeout(5):
            await reader.read()  # the gateway closes the failed session
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", front)
        seen["next"] = await reply(reader)
        writer.close()
        seen["bans"] = sample(gateway, "ftp_alg_defender_bans_total", event="tls_garbage")
    finally:
        await gateway.stop(1.0)
        await upstream.stop()
    return seen


def test_tls_garbage_after_auth_tls_is_scored(tmp_path: Path) -> None:
    import trustme

    leaf = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    for per_user in (False, True):
        seen = asyncio.run(garbage_after_auth_tls(cert, key, per_user=per_user))
        assert seen["auth"].startswith(b"234"), per_user
        assert seen["next"].startswith(b"421 Service not available"), per_user
        assert seen["bans"] == 1, per_user


async def reloaded(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Five wrong passwords under `first`, a SIGHUP-style reload to `second`, five more."""
    upstream = ScriptedServer()
    port = await upstream.start()
    base = {"listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{port}", "passive_ports": "50000-50009"}
    gateway = Gateway(settings_from_mapping({**base, "defender": first}))
    await gateway.start()
    front = gateway.addresses[0].port
    seen: dict[str, Any] = {}
    try:
        seen["before"] = await guess(front, 5)
        gateway.reload(lambda: settings_from_mapping({**base, "defender": second}))
        seen["threshold"] = gateway.guard.defender.settings.threshold
        seen["bans_after_reload"] = [ban.client for ban in gateway.guard.bans()]
        reader, writer = await asyncio.open_connection("127.0.0.1", front)
        seen["door"] = await reply(reader)
        writer.close()
        if seen["door"].startswith(b"220"):
            seen["after"] = await guess(front, 2)
            seen["bans_in_the_end"] = [ban.client for ban in gateway.guard.bans()]
        seen["reloads_ok"] = sample(gateway, "ftp_alg_reloads_total", result="ok")
    finally:
        await gateway.stop(1.0)
        await upstream.stop()
    return seen


def test_a_reload_reconfigures_the_defender_and_its_bans_survive() -> None:
    seen = asyncio.run(reloaded({"enabled": True}, {"enabled": True, "threshold": 4}))
    assert seen["reloads_ok"] == 1 and seen["threshold"] == 4
    assert seen["bans_after_reload"] == ["127.0.0.1/32"] and seen["door"].startswith(b"421 ")


def test_a_reload_turns_the_defender_on() -> None:
    seen = asyncio.run(reloaded({"enabled": False}, {"enabled": True, "threshold": 4}))
    assert seen["reloads_ok"] == 1 and seen["bans_after_reload"] == [] and seen["door"].startswith(b"220")
    # Two wrong passwords (4 points) after the reload reach its threshold: the defender scores from then on.
    assert seen["bans_in_the_end"] == ["127.0.0.1/32"]
