"""The leak test for FTPS: TLS sessions aborted in every way leave the gateway as they found it.

Sessions (500 by default, 25 at a time) hang up before AUTH TLS, send garbage or half a ClientHello after it
(reset, or left for the handshake timeout), log in over TLS and leave a passive port unused, reset a data
connection mid-handshake, send a data connection in clear after PROT P, vanish mid-RETR or mid-STOR, ABOR,
or finish a transfer. Afterwards the gateway's descriptors, tasks, sessions, data channels and ports are back
where they were after a warm-up. TLS on both legs, toward vsftpd with require_ssl_reuse.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import test_leaks as leaks
from hostile import metric, scrape, start_gateway, wait_until
from netns import Topology
from pki import Pki
from servers import FtpServer
from test_leaks import GATEWAY, Ftp, _reset, data_to, footprint

pytestmark = pytest.mark.netns

SESSIONS = int(os.environ.get("FTP_ALG_TLS_LEAK_SESSIONS", "500"))
CONCURRENCY = 25
SESSION_TIMEOUT_S = 20.0
RUN_TIMEOUT_S = 150.0
HANDSHAKE_TIMEOUT_S = 2


class Tls:
    """The driver's TLS context and a ClientHello's bytes (made once, with a memory BIO)."""

    context: ssl.SSLContext
    hello: bytes

    @classmethod
    def load(cls, ca_file: Path) -> None:
        cls.context = ssl.create_default_context(cafile=str(ca_file))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            cls.context.wrap_bio(incoming, outgoing, server_hostname=GATEWAY).do_handshake()
        except ssl.SSLWantReadError:
            cls.hello = outgoing.read()


async def secure(ftp: Ftp) -> None:
    assert await ftp.reply() == 220, ftp.last
    assert await ftp.cmd("AUTH TLS") == 234, ftp.last
    await ftp.writer.start_tls(Tls.context, server_hostname=GATEWAY)


async def tls_login(ftp: Ftp) -> None:
    await secure(ftp)
    assert await ftp.cmd("USER anonymous") == 331, ftp.last
    assert await ftp.cmd("PASS leak@test") == 230, ftp.last
    assert await ftp.cmd("PBSZ 0") == 200, ftp.last
    assert await ftp.cmd("PROT P") == 200, ftp.last
    assert await ftp.cmd("TYPE I") == 200, ftp.last


async def transfer(ftp: Ftp, command: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """As ftplib does it: TCP connect to the passive port, send the command, TLS on the data after the 150."""
    reader, writer = await data_to(await ftp.pasv())
    assert await ftp.cmd(command) == 150, ftp.last
    await writer.start_tls(Tls.context, server_hostname=GATEWAY)
    return reader, writer


async def final_code(ftp: Ftp) -> int:
    code = await ftp.reply()
    while code < 200:
        code = await ftp.reply()
    return code


async def drop_before_auth(ftp: Ftp) -> None:
    assert await ftp.reply() == 220, ftp.last
    ftp.reset()


async def garbage_after_auth(ftp: Ftp) -> None:
    assert await ftp.reply() == 220, ftp.last
    assert await ftp.cmd("AUTH TLS") == 234, ftp.last
    ftp.writer.write(b"GET / HTTP/1.0\r\n\r\n")
    while await ftp.reader.read(4096):  # until the gateway hangs up
        pass


async def half_hello_reset(ftp: Ftp) -> None:
    assert await ftp.reply() == 220, ftp.last
    assert await ftp.cmd("AUTH TLS") == 234, ftp.last
    ftp.writer.write(Tls.hello[:100])
    await ftp.writer.drain()
    ftp.reset()


async def half_hello_stall(ftp: Ftp) -> None:
    assert await ftp.reply() == 220, ftp.last
    assert await ftp.cmd("AUTH TLS") == 234, ftp.last
    ftp.writer.write(Tls.hello[:100])
    assert await ftp.reader.read() == b"", "dropped after the handshake timeout"


async def login_quit(ftp: Ftp) -> None:
    await tls_login(ftp)
    await ftp.quit()


async def pasv_never_connect(ftp: Ftp) -> None:
    await tls_login(ftp)
    await ftp.pasv()
    await ftp.quit()


async def data_handshake_reset(ftp: Ftp) -> None:
    await tls_login(ftp)
    _, writer = await data_to(await ftp.pasv())
    writer.write(Tls.hello[:100])
    await writer.drain()
    _reset(writer)
    assert await ftp.cmd("NOOP") == 200, ftp.last
    await ftp.quit()


async def clear_data_after_prot_p(ftp: Ftp) -> None:
    await tls_login(ftp)
    _, writer = await data_to(await ftp.pasv())
    ftp.writer.write(f"STOR upload/leak-clear-{id(ftp)}.bin\r\n".encode())
    writer.write(b"clear text where a ClientHello belongs\r\n" * 100)
    writer.write_eof()
    assert await final_code(ftp) >= 400, ftp.last
    writer.close()
    await ftp.quit()


async def retr_vanish(ftp: Ftp) -> None:
    await tls_login(ftp)
    reader, writer = await transfer(ftp, "RETR big.bin")
    await reader.read(65536)
    ftp.reset()
    _reset(writer)


async def retr_abor(ftp: Ftp) -> None:
    await tls_login(ftp)
    reader, writer = await transfer(ftp, "RETR big.bin")
    await reader.read(65536)
    writer.transport.abort()
    ftp.writer.write(b"ABOR\r\n")
    codes = [await ftp.reply()]
    while codes[-1] not in (225, 226) and len(codes) < 3:
        codes.append(await ftp.reply())
    assert codes[-1] in (225, 226), codes
    await ftp.quit()


async def retr_complete(ftp: Ftp) -> None:
    await tls_login(ftp)
    reader, writer = await transfer(ftp, "RETR hello.txt")
    assert (await reader.read()).startswith(b"hello from")
    writer.close()
    assert await ftp.reply() == 226, ftp.last
    await ftp.quit()


async def stor_vanish(ftp: Ftp) -> None:
    await tls_login(ftp)
    _, writer = await transfer(ftp, f"STOR upload/leak-{id(ftp)}.bin")
    writer.write(b"u" * 100_000)
    await writer.drain()
    _reset(writer)
    ftp.reset()


SCENARIOS: list[Callable[[Ftp], Awaitable[None]]] = [
    drop_before_auth,
    garbage_after_auth,
    half_hello_reset,
    half_hello_stall,
    login_quit,
    pasv_never_connect,
    data_handshake_reset,
    clear_data_after_prot_p,
    retr_vanish,
    retr_abor,
    retr_complete,
    stor_vanish,
]


async def drive(count: int) -> dict[str, collections.Counter[str]]:
    return await leaks.drive(count, SCENARIOS, CONCURRENCY)


@pytest.fixture
def tls_vsftpd(reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer], pki: Pki) -> FtpServer:
    """vsftpd, FTPS only with require_ssl_reuse, with room for lingering sessions (see test_leaks.vsftpd)."""
    return ftp_server_factory(
        "vsftpd",
        reverse_topo.server,
        pasv_ports=(30000, 30999),
        options={"max_clients": "2000", "max_per_ip": "2000"},
        tls=pki.upstream,
    )


def test_tls_sessions_aborted_in_every_way_leave_nothing_behind(
    reverse_topo: Topology, tls_vsftpd: FtpServer, pki: Pki
) -> None:
    topo = reverse_topo
    gateway = start_gateway(
        topo,
        {
            "active_ports": "41000-41999",
            "timeouts": {"data_connect_s": 2},
            "limits": {"max_sessions_per_client": 1000},
            "tls": {
                "client": {
                    "mode": "require",
                    "cert": str(pki.gateway.cert),
                    "key": str(pki.gateway.key),
                    "handshake_timeout_s": HANDSHAKE_TIMEOUT_S,
                },
                "upstream": {"mode": "require", "ca_file": str(pki.ca_file)},
            },
        },
        "--log-level",
        "info",
    )
    pid = gateway.process.pid
    Tls.load(pki.ca_file)
    driver = topo.client.loop()

    warm = driver.run(drive(len(SCENARIOS)), timeout_s=60)
    problems = {name: dict(counts) for name, counts in warm.items() if set(counts) != {"ok"}}
    assert not problems, f"{problems}\n{gateway.log()[-3000:]}"
    before = wait_until("idle after warm-up", lambda: (f := footprint(topo, pid))["sessions"] == 0 and f, 20)

    started = time.monotonic()
    tally = driver.run(drive(SESSIONS), timeout_s=RUN_TIMEOUT_S)
    print(f"tls leak test: {SESSIONS} sessions in {time.monotonic() - started:.1f} s; before {before}")
    problems = {name: dict(counts) for name, counts in tally.items() if set(counts) != {"ok"}}
    assert not problems, f"{problems}\n{gateway.log()[-3000:]}"

    after = leaks.back_to(topo, pid, before, timeout_s=20)
    print(f"tls leak test: after {after}")
    samples = scrape(topo)
    outcomes = {dict(k)["outcome"]: v for (n, k), v in samples.items() if n == "ftp_alg_sessions_total" and v}
    assert sum(outcomes.values()) == SESSIONS + len(SCENARIOS), outcomes
    handshakes = {
        tuple(dict(k)[n] for n in ("side", "channel", "outcome")): v
        for (n, k), v in samples.items()
        if n == "ftp_alg_tls_handshakes_total"
    }
    print(f"tls leak test: handshakes {handshakes}")
    runs = {s.__name__: 1 + len(range(SCENARIOS.index(s), SESSIONS, len(SCENARIOS))) for s in SCENARIOS}
    # Each stalled ClientHello is one handshake timeout; each garbage or reset one a failure.
    assert handshakes[("client", "control", "timeout")] == runs["half_hello_stall"], handshakes
    assert handshakes[("client", "control", "failed")] >= runs["garbage_after_auth"], handshakes
    assert handshakes[("client", "data", "ok")] >= runs["retr_complete"] + runs["retr_abor"], handshakes
    assert handshakes[("server", "data", "ok")] >= runs["retr_complete"], handshakes
    assert handshakes[("client", "data", "failed")] >= runs["data_handshake_reset"], handshakes
    protected = metric(samples, "ftp_alg_data_channels_protection_total", client_leg="tls", server_leg="tls")
    assert protected >= runs["retr_complete"] + runs["retr_abor"], protected
    assert metric(samples, "ftp_alg_tls_certificate_expiry_timestamp_seconds") > time.time() + 365 * 86400
    errors = [line for line in gateway.log().splitlines() if "level=error" in line or "Traceback" in line]
    assert not errors, errors[:3]
    assert after["sessions"] == after["data_channels"] == after["public_ports"] == after["internal_ports"] == 0
    assert gateway.process.alive()
