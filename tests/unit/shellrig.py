"""The gateway shell in-process over loopback: a real Session between a raw FTP client and a small scripted FTP
server, no namespaces and no root. For the shell's unit tests (sessions, data channels, failure injection).

The server speaks just enough FTP for a login and passive or active transfers: RETR sends PAYLOAD (or what a
test put in `files`), STOR keeps what arrived in `uploads`; a RETR whose data connection breaks gets 426.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import trustme

from alg.ftp.addresses import HostPort
from alg.ftp.control import ChannelSettings
from alg.gateway import secure
from alg.gateway.session import GatewayContext, Session, Timeouts
from alg.net.tls import ServerCertificate
from alg.ops.metrics import Metrics

LOOPBACK = "127.0.0.1"
PAYLOAD = bytes(range(256)) * 800  # 204,800 bytes: larger than one relay buffer, small enough for seconds
STEP_S = 10.0  # no await in a test waits longer than this for anything


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the scripted FTP server -----------------------------------------------------------------------------------


@dataclass
class ScriptedServer:
    files: dict[str, bytes] = field(default_factory=lambda: {"file.bin": PAYLOAD})
    uploads: dict[str, bytes] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    tls: ssl.SSLContext | None = None  # AUTH TLS answered with 234 and a handshake
    data_timeout_s: float = STEP_S  # a data connection that does not come in time: 425
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        session = _ServerSession(self, reader, writer)
        try:
            await session.run()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            session.close()
            writer.close()
            self._tasks.discard(task)


class _ServerSession:
    def __init__(self, server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.listener: socket.socket | None = None
        self.target: tuple[str, int] | None = None

    async def say(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        await self.say("220 scripted")
        while line := await self.reader.readline():
            # An ABOR may come behind Telnet IP and synch (IAC IP IAC DM, the DM maybe taken out of band).
            command = line.decode("latin-1").lstrip("\xff\xf4\xf2").strip()
            self.server.commands.append(command)
            verb, _, argument = command.partition(" ")
            handler = getattr(self, f"do_{verb.upper()}", None)
            if handler is None:
                await self.say("502 not here")
            elif await handler(argument):
                return

    async def do_USER(self, _: str) -> None:
        await self.say("331 password")

    async def do_PASS(self, _: str) -> None:
        await self.say("230 in")

    async def do_TYPE(self, _: str) -> None:
        await self.say("200 type")

    async def do_NOOP(self, _: str) -> None:
        await self.say("200 noop")

    async def do_QUIT(self, _: str) -> bool:
        await self.say("221 bye")
        return True

    async def do_AUTH(self, _: str) -> None:
        if self.server.tls is None:
            await self.say("502 no tls")
            return
        await self.say("234 go")
        await self.writer.start_tls(self.server.tls)

    async def do_PBSZ(self, _: str) -> None:
        await self.say("200 pbsz")

    async def do_PROT(self, _: str) -> None:
        await self.say("200 prot")

    async def do_FEAT(self, _: str) -> None:
        await self.say("211-features\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n EPSV\r\n211 end")

    async def do_PASV(self, _: str) -> None:
        port = self._listen()
        await self.say(f"227 passive (127,0,0,1,{port >> 8},{port & 0xFF})")

    async def do_EPSV(self, _: str) -> None:
        await self.say(f"229 passive (|||{self._listen()}|)")

    async def do_PORT(self, argument: str) -> None:
        numbers = [int(n) for n in argument.split(",")]
        self.target = (".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5])
        await self.say("200 port")

    async def do_EPRT(self, argument: str) -> None:
        fields = argument[1:-1].split(argument[0])
        self.target = (fields[1], int(fields[2]))
        await self.say("200 eprt")

    async def do_ABOR(self, _: str) -> None:
        await self.say("226 abor")

    async def do_RETR(self, argument: str) -> None:
        data = self.server.files.get(argument)
        if data is None:
            await self.say("550 no such file")
            return
        await self.say("150 opening")
        try:
            sock = await self._data()
        except TimeoutError:
            await self.say("425 no data connection")
            return
        try:
            with sock:
                await asyncio.get_running_loop().sock_sendall(sock, data)
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            await self.say("426 transfer aborted")
            return
        await self.say("226 Transfer complete")

    async def do_STOR(self, argument: str) -> None:
        await self.say("150 send it")
        received = bytearray()
        loop = asyncio.get_running_loop()
        try:
            sock = await self._data()
            with sock:
                while chunk := await loop.sock_recv(sock, 65536):
                    received += chunk
        except OSError:
            await self.say("426 transfer aborted")
            return
        self.server.uploads[argument] = bytes(received)
        await self.say("226 stored")

    def _listen(self) -> int:
        self.close()
        self.listener = socket.socket()
        self.listener.bind((LOOPBACK, 0))
        self.listener.listen(1)
        self.listener.setblocking(False)
        port: int = self.listener.getsockname()[1]
        return port

    async def _data(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.server.data_timeout_s):
            if self.listener is not None:
                sock, _ = await loop.sock_accept(self.listener)
                self.close()
                return sock
            assert self.target is not None
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, self.target)
            return sock

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None


# ---- TLS --------------------------------------------------------------------------------------------------------


@dataclass
class Pki:
    """A throwaway CA and a certificate for 127.0.0.1: the gateway's toward its clients, or a server's."""

    directory: Path

    def __post_init__(self) -> None:
        self.ca = trustme.CA(organization_name="ftp-alg shell test CA")
        cert = self.ca.issue_cert(LOOPBACK)
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.directory / "both.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.directory / "cert.pem"))
        cert.private_key_pem.write_to_path(str(self.directory / "key.pem"))

    def runtime(self) -> secure.TlsRuntime:
        """The gateway accepts AUTH TLS from clients with this certificate."""
        certificate = ServerCertificate(self.directory / "cert.pem", self.directory / "key.pem", "TLSv1.2")
        return secure.TlsRuntime(client_mode="allow", certificate=certificate)

    def server_context(self) -> ssl.SSLContext:
        """For a ScriptedServer that answers AUTH TLS."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.directory / "cert.pem", self.directory / "key.pem")
        return context

    def upstream_runtime(self) -> secure.TlsRuntime:
        """The gateway's control connection toward the server is TLS (AUTH TLS, required); its data stays clear."""
        return secure.TlsRuntime(upstream_mode="require", upstream_data="clear", upstream_context=self.client_context())

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


# ---- the raw client --------------------------------------------------------------------------------------------

_PASSIVE = re.compile(rb"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)")


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def reply(self) -> tuple[int, bytes]:
        """One whole reply (multi-line included): its code and its last line."""
        async with asyncio.timeout(STEP_S):
            line = await self.reader.readline()
            assert line, "the gateway closed the control connection"
            if line[3:4] == b"-":
                end = line[:3] + b" "
                while not line.startswith(end):
                    line = await self.reader.readline()
                    assert line
        return int(line[:3]), line

    async def command(self, line: str) -> tuple[int, bytes]:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def expect(self, line: str, code: int) -> bytes:
        got, text = await self.command(line)
        assert got == code, (line, text)
        return text

    async def login(self) -> None:
        assert (await self.reply())[0] == 220
        await self.expect("USER u", 331)
        await self.expect("PASS p", 230)
        await self.expect("TYPE I", 200)

    async def secure(self, pki: Pki, *, protect: bool = True) -> None:
        """AUTH TLS on the control connection, then PBSZ 0 and PROT P (or C)."""
        await self.expect("AUTH TLS", 234)
        await self.writer.start_tls(pki.client_context(), server_hostname=LOOPBACK)
        await self.expect("PBSZ 0", 200)
        await self.expect(f"PROT {'P' if protect else 'C'}", 200)

    async def pasv(self, *, rcvbuf: int | None = None) -> socket.socket:
        """PASV and the data connection to the port the gateway announced (`rcvbuf`: a small receive window)."""
        match = _PASSIVE.search(await self.expect("PASV", 227))
        assert match is not None
        numbers = [int(n) for n in match.groups()]
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        async with asyncio.timeout(STEP_S):
            await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, numbers[4] * 256 + numbers[5]))
        return sock

    async def retr(self, name: str = "file.bin") -> tuple[bytes, int]:
        """A passive download: the bytes that arrived and the transfer's final reply code."""
        sock = await self.pasv()
        with sock:
            await self.expect(f"RETR {name}", 150)
            data = await read_all(sock)
        return data, (await self.reply())[0]

    def close(self) -> None:
        self.writer.close()


async def read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    received = bytearray()
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(STEP_S):
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
    return bytes(received)


# ---- the gateway between them ----------------------------------------------------------------------------------


@dataclass
class Rig:
    server: ScriptedServer
    metrics: Metrics
    context: GatewayContext
    port: int = 0
    sessions: list[Session] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)  # each session's outcome, once it ended
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    loop_errors: list[dict[str, Any]] = field(default_factory=list)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = HostPort(ip_address(LOOPBACK), self.server.port)
        session = Session(len(self.sessions) + 1, self.context, reader, writer, upstream)
        self.sessions.append(session)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self.ended.append(await session.run())

    async def client(self) -> Client:
        reader, writer = await asyncio.open_connection(LOOPBACK, self.port)
        return Client(reader, writer)

    async def logged_in(self) -> Client:
        client = await self.client()
        await client.login()
        return client

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def rig(
    *, server: ScriptedServer | None = None, tls: secure.TlsRuntime | None = None, **timeouts: float
) -> AsyncIterator[Rig]:
    """A gateway session per client connection, toward `server` (a ScriptedServer by default)."""
    server = server or ScriptedServer()
    await server.start()
    metrics = Metrics()
    context = GatewayContext(
        channel_settings=ChannelSettings(tls=(tls or secure.TlsRuntime()).policy),
        timeouts=Timeouts(**{"data_connect_s": 5.0, "data_idle_s": 5.0, **timeouts}),
        metrics=metrics,
        public_pool=None,
        internal_pool=None,
        tls=tls or secure.TlsRuntime(),
    )
    the_rig = Rig(server, metrics, context)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, details: the_rig.loop_errors.append(details))
    listener = await asyncio.start_server(the_rig._accept, LOOPBACK, 0)
    the_rig.port = listener.sockets[0].getsockname()[1]
    try:
        yield the_rig
    finally:
        listener.close()
        for session in the_rig.sessions:
            session.close("shutdown")
        if the_rig.tasks:
            await asyncio.wait(the_rig.tasks, timeout=STEP_S)
        await server.close()
        gc.collect()  # a task whose exception nobody retrieved says so when it is collected
        loop.set_exception_handler(None)


def run(main: Callable[[], Any]) -> Any:
    """One test's coroutine on a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(main(), 30))


def records(caplog: Any, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == name]
