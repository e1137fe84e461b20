"""Many FTP sessions from one process (run inside the client namespace): an asyncio client, no threads.

  python bench/sessions.py concurrent HOST PORT N TIMEOUT_S FILE
      N sessions at once, each: connect, banner, USER/PASS, PASV+LIST, PASV+RETR FILE, QUIT.
      Prints one JSON report: successes, failures, banner waits, seconds.
  python bench/sessions.py files HOST PORT COUNT TIMEOUT_S
      COUNT RETRs of small/f0000... in one session, with ftplib (curl 7.88 sometimes sleeps 1 s between an
      EPSV reply and its data connection when the reply comes fast, which made the direct path look slow).
  python bench/sessions.py idle HOST PORT TIMEOUT_S
      Reads commands on stdin: "open K" opens sessions (logged in, then idle) until K are open and prints
      a JSON line; "close" (or end of input) ends. Used to measure the gateway's memory per idle session.

One process with asyncio rather than 1,000 ftplib threads: threads would measure the client's GIL, not the
gateway. Every session is bounded by TIMEOUT_S; connections are opened at most CONNECT_BURST at a time.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from typing import Any

USER, PASSWORD = b"anonymous", b"bench@ftp-alg.test"
CONNECT_BURST = 200  # idle test: connections being set up at once
_SIX = re.compile(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


class FtpError(Exception):
    pass


async def reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    line = await reader.readline()
    if len(line) < 4:
        raise FtpError(f"connection closed or short reply: {line!r}")
    code = line[:3]
    if line[3:4] == b"-":  # RFC 959 multi-line reply: until "code "
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
    if code not in want:
        raise FtpError(f"{text.split()[0].decode()}: {line.decode(errors='replace').strip()}")
    return line


async def login(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    code, line = await reply(reader)
    banner_wait = time.monotonic() - started
    if code != 220:
        writer.close()
        raise FtpError(f"banner: {line.decode(errors='replace').strip()}")
    await command(reader, writer, b"USER " + USER, 331, 230)
    await command(reader, writer, b"PASS " + PASSWORD, 230)
    return reader, writer, banner_wait


async def transfer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, verb: bytes) -> int:
    line = await command(reader, writer, b"PASV", 227)
    match = _SIX.search(line)
    if match is None:
        raise FtpError(f"PASV: {line!r}")
    numbers = [int(n) for n in match.groups()]
    data_reader, data_writer = await asyncio.open_connection(
        ".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]
    )
    try:
        await command(reader, writer, verb, 150, 125)
        size = 0
        while chunk := await data_reader.read(65536):
            size += len(chunk)
    finally:
        data_writer.close()
    code, end = await reply(reader)
    if code != 226:
        raise FtpError(f"after {verb.split()[0].decode()}: {end.decode(errors='replace').strip()}")
    return size


async def one_session(host: str, port: int, path: str) -> float:
    reader, writer, banner_wait = await login(host, port)
    try:
        await transfer(reader, writer, b"LIST")
        await transfer(reader, writer, b"RETR " + path.encode())
        await command(reader, writer, b"QUIT", 221)
    finally:
        writer.close()
    return banner_wait


async def concurrent(host: str, port: int, count: int, timeout_s: float, path: str) -> dict[str, Any]:
    start = asyncio.Event()
    banner_waits: list[float] = []
    errors: dict[str, int] = {}

    async def session() -> None:
        await start.wait()
        try:
            async with asyncio.timeout(timeout_s):
                banner_waits.append(await one_session(host, port, path))
        except (OSError, FtpError, TimeoutError, EOFError) as error:
            key = f"{type(error).__name__}: {error}"[:120]
            errors[key] = errors.get(key, 0) + 1

    tasks = [asyncio.create_task(session()) for _ in range(count)]
    await asyncio.sleep(0)  # every task is waiting at the start line
    started = time.monotonic()
    start.set()
    await asyncio.gather(*tasks)
    seconds = time.monotonic() - started
    waits = sorted(banner_waits)
    return {
        "sessions": count,
        "ok": len(waits),
        "failed": count - len(waits),
        "banner_max_s": waits[-1] if waits else None,
        "banner_p50_s": waits[len(waits) // 2] if waits else None,
        "banner_p99_s": waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else None,
        "seconds": seconds,
        "errors": dict(sorted(errors.items(), key=lambda item: -item[1])[:5]),
    }


async def idle(host: str, port: int, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    held: list[asyncio.StreamWriter] = []
    errors: dict[str, int] = {}
    burst = asyncio.Semaphore(CONNECT_BURST)

    async def open_one() -> None:
        async with burst:
            try:
                async with asyncio.timeout(timeout_s):
                    _, writer, _ = await login(host, port)
                held.append(writer)
            except (OSError, FtpError, TimeoutError) as error:
                key = f"{type(error).__name__}: {error}"[:120]
                errors[key] = errors.get(key, 0) + 1

    while line := (await stdin.readline()).decode().split():
        if line[0] == "open":
            wanted = int(line[1])
            started = time.monotonic()
            await asyncio.gather(*(open_one() for _ in range(max(0, wanted - len(held)))))
            report = {
                "open": len(held),
                "failed": sum(errors.values()),
                "errors": errors,
                "seconds": time.monotonic() - started,
            }
            print(json.dumps(report), flush=True)
        elif line[0] == "close":
            break
    for writer in held:
        writer.close()


def files(host: str, port: int, count: int, timeout_s: float) -> dict[str, Any]:
    """`count` RETRs of small/f0000.. in ONE session with ftplib (passive): files per second."""
    import ftplib

    class Client(ftplib.FTP):
        trust_server_pasv_ipv4_address = True  # use the address in the 227, which the gateway rewrote

    received = 0

    def sink(block: bytes) -> None:
        nonlocal received
        received += len(block)

    ftp = Client(timeout=timeout_s)
    ftp.connect(host, port)
    ftp.login(USER.decode(), PASSWORD.decode())
    ftp.voidcmd("TYPE I")
    started = time.monotonic()
    deadline = started + timeout_s
    done = 0
    slowest = (0.0, -1)
    for index in range(count):
        before = time.monotonic()
        if before > deadline:
            break
        ftp.retrbinary(f"RETR small/f{index:04d}", sink, blocksize=65536)
        slowest = max(slowest, (time.monotonic() - before, index))
        done += 1
    seconds = time.monotonic() - started
    ftp.quit()
    return {"files": done, "bytes": received, "seconds": seconds, "slowest_s": slowest[0], "slowest_file": slowest[1]}


def main(argv: list[str]) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    kind, host, port = argv[0], argv[1], int(argv[2])
    if kind == "concurrent":
        report = run(concurrent(host, port, int(argv[3]), float(argv[4]), argv[5]))
        print(json.dumps(report))
    elif kind == "files":
        print(json.dumps(files(host, port, int(argv[3]), float(argv[4]))))
    elif kind == "idle":
        run(idle(host, port, float(argv[3])))
    else:
        raise SystemExit(f"unknown mode {kind}")


if __name__ == "__main__":
    main(sys.argv[1:])
