"""The scale-out test's clients: N FTP sessions from one asyncio process (run inside the client namespace).

  python scaleout_load.py HOST PORT COUNT RAMP_S TIMEOUT_S FILE SHA256 OUT.json [PROGRESS]

Each session: banner, USER/PASS, PASV+LIST, PASV+RETR FILE (bytes hashed, compared with SHA256), PASV+STOR
of its own random bytes to upload/, QUIT. Sessions start spread over RAMP_S seconds and read downloads at a
bounded pace, so transfers are in flight whenever the test acts. A `421` at a command boundary (a gateway
shutting down, or not taking new sessions) is not a failure: the session reconnects through the balancer and
goes on from the step it had reached, and the retry is counted. Anything else is a failure, in particular
any error inside a transfer. The PASV port names the gateway (each owns a slice), so each step records which
gateway served it. Writes one JSON report to OUT; PROGRESS gets one line per session logged in.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

USER, PASSWORD = b"anonymous", b"scaleout@ftp-alg.test"
UPLOAD_BYTES = 96 * 1024
READ_BYTES = 64 * 1024
READ_PAUSE_S = 0.25  # per 64 KiB read: a 1 MiB download takes about 4 s, so all sessions overlap
_SIX = re.compile(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")
STEPS = ("LIST", "RETR", "STOR")
ACTIVE = {"now": 0, "max": 0}  # sessions between their first connect and their end, across all of them


class FtpError(Exception):
    pass


class Shutdown(Exception):
    """A 421 at a command boundary: reconnect and go on."""


async def reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    line = await reader.readline()
    if len(line) < 4:
        raise FtpError(f"connection closed or short reply: {line!r}")
    code = line[:3]
    if line[3:4] == b"-":
        while True:
            more = await reader.readline()
            if not more:
                raise FtpError("connection closed in a multi-line reply")
            if more[:3] == code and more[3:4] == b" ":
                break
    return int(code), line


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: bytes, *want: int) -> bytes:
    writer.write(text + b"\r\n")
    code, line = await reply(reader)
    if code == 421:
        raise Shutdown(line.decode(errors="replace").strip())
    if code not in want:
        raise FtpError(f"{text.split()[0].decode()}: {line.decode(errors='replace').strip()}")
    return line


class Session:
    def __init__(self, number: int, host: str, port: int, path: str, sha: str, progress: Any) -> None:
        self.number = number
        self.host, self.port, self.path, self.sha = host, port, path, sha
        self.progress = progress
        self.done: dict[str, int] = {}  # step -> data port that served it
        self.retries: list[str] = []
        self.upload = random.Random(number).randbytes(UPLOAD_BYTES)
        self.upload_name = f"upload/s{number:04d}.bin"
        self.logged_in_at: float | None = None

    async def run(self) -> None:
        ACTIVE["now"] += 1
        ACTIVE["max"] = max(ACTIVE["max"], ACTIVE["now"])
        try:
            while True:
                try:
                    await self.attempt()
                    return
                except Shutdown as shutdown:
                    self.retries.append(str(shutdown)[:80])
                    if len(self.retries) > 5:
                        raise FtpError(f"421 five times: {self.retries}") from None
        finally:
            ACTIVE["now"] -= 1

    async def attempt(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            code, line = await reply(reader)
            if code == 421:
                raise Shutdown(line.decode(errors="replace").strip())
            if code != 220:
                raise FtpError(f"banner: {line!r}")
            await command(reader, writer, b"USER " + USER, 331, 230)
            await command(reader, writer, b"PASS " + PASSWORD, 230)
            if self.logged_in_at is None:
                self.logged_in_at = time.monotonic()
                self.progress.write(f"{self.number}\n")
                self.progress.flush()
            await command(reader, writer, b"TYPE I", 200)
            for step in STEPS:
                if step not in self.done:
                    self.done[step] = await self.transfer(reader, writer, step)
            await command(reader, writer, b"QUIT", 221)
        finally:
            writer.close()

    async def transfer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, step: str) -> int:
        line = await command(reader, writer, b"PASV", 227)
        match = _SIX.search(line)
        if match is None:
            raise FtpError(f"PASV: {line!r}")
        numbers = [int(n) for n in match.groups()]
        port = numbers[4] * 256 + numbers[5]
        # Inside a transfer nothing is retried: a 421 or an error here is a lost transfer.
        data_reader, data_writer = await asyncio.open_connection(".".join(map(str, numbers[:4])), port)
        try:
            verbs = {
                "LIST": b"LIST",
                "RETR": b"RETR " + self.path.encode(),
                "STOR": b"STOR " + self.upload_name.encode(),
            }
            writer.write(verbs[step] + b"\r\n")
            code, first = await reply(reader)
            if code not in (125, 150):
                raise FtpError(f"{step} (in transfer): {first.decode(errors='replace').strip()}")
            digest = hashlib.sha256()
            size = 0
            if step == "STOR":
                data_writer.write(self.upload)
                await data_writer.drain()
                data_writer.write_eof()
                await data_reader.read()  # the gateway closes once the server has it all
            else:
                while chunk := await data_reader.read(READ_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    if step == "RETR":
                        await asyncio.sleep(READ_PAUSE_S)
        finally:
            data_writer.close()
        code, end = await reply(reader)
        if code != 226:
            raise FtpError(f"{step} (in transfer): {end.decode(errors='replace').strip()} after {size} bytes")
        if step == "RETR" and digest.hexdigest() != self.sha:
            raise FtpError(f"RETR: sha256 mismatch after {size} bytes")
        if step == "LIST" and size == 0:
            raise FtpError("LIST: empty listing")
        return port


async def main(
    host: str, port: int, count: int, ramp_s: float, timeout_s: float, path: str, sha: str
) -> dict[str, Any]:
    progress_path = Path(sys.argv[9]) if len(sys.argv) > 9 else Path("/dev/null")
    failures: dict[int, str] = {}
    sessions = []
    with progress_path.open("a") as progress:

        async def one(number: int) -> Session:
            await asyncio.sleep(ramp_s * number / count)
            session = Session(number, host, port, path, sha, progress)
            try:
                async with asyncio.timeout(timeout_s):
                    await session.run()
            except (OSError, FtpError, TimeoutError, EOFError, Shutdown) as error:
                failures[number] = f"{type(error).__name__}: {error}"[:200]
            return session

        started = time.monotonic()
        sessions = await asyncio.gather(*(one(number) for number in range(count)))
        seconds = time.monotonic() - started
    return {
        "sessions": count,
        "ok": count - len(failures),
        "max_concurrent": ACTIVE["max"],
        "failed": failures,
        "seconds": round(seconds, 2),
        "retries": {s.number: s.retries for s in sessions if s.retries},
        "steps": {s.number: s.done for s in sessions},
        "uploads": {s.upload_name: hashlib.sha256(s.upload).hexdigest() for s in sessions if "STOR" in s.done},
    }


if __name__ == "__main__":
    host, port, count, ramp_s, timeout_s, path, sha, out = sys.argv[1:9]
    report = asyncio.run(main(host, int(port), int(count), float(ramp_s), float(timeout_s), path, sha))
    Path(out).write_text(json.dumps(report))
