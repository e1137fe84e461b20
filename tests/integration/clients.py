"""Real FTP clients (curl, lftp, Python's ftplib) run inside a test namespace.

Every helper is bounded by a timeout and returns a ClientResult (argv, returncode, stdout, stderr,
timed_out) instead of raising, so a test can assert on failures as well as on successes.  Clients are
told to use the addresses the server (or gateway) announces: curl --no-ftp-skip-pasv-ip, lftp
ftp:fix-pasv-address no, ftplib trust_server_pasv_ipv4_address.

Modes: "pasv" (PASV/227), "epsv" (EPSV/229), "port" (PORT), "eprt" (EPRT), over IPv4.

FTPS: pass `tls=ClientTls(ca_file)` to curl, lftp or ftplib_run: AUTH TLS before login, PBSZ 0 / PROT P
(unless protect_data=False), certificates verified against the test CA; implicit=True for TLS from the first
byte (curl ftps://, lftp ftps://). ftplib's stock FTP_TLS does not resume the control connection's TLS session
on data connections; reuse=True runs a subclass that does (curl and lftp always resume).
"""

from __future__ import annotations

import ftplib
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from netns import Host, Topology
from servers import FtpServer, FtpTarget

Mode = Literal["pasv", "epsv", "port", "eprt"]
MODES: tuple[Mode, ...] = ("pasv", "epsv", "port", "eprt")

CLIENT_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 3.0

# curl exit codes that mean "could not connect / timed out" (curl(1) EXIT CODES).
CURL_CONNECT_FAILURES = frozenset({7, 28})
CURL_FTP_WEIRD_PASV_REPLY = 13
CURL_FTP_CANT_GET_HOST = 15
CURL_FTP_PORT_FAILED = 30
CURL_FTP_ACCEPT_FAILED = 10
CURL_FTP_ACCEPT_TIMEOUT = 12


# curl 7.88 (Debian 12) lost its TLS filter on active-mode data connections (curl/curl#10666, fixed in 8.0 by
# #10669): with --ssl-reqd, PORT/EPRT transfers hang. FTPS in active mode is tested with ftplib and lftp.
CURL_TLS_MODES: tuple[Mode, ...] = ("pasv", "epsv")


@dataclass(frozen=True)
class ClientTls:
    ca_file: Path
    implicit: bool = False
    protect_data: bool = True  # PROT P (else PROT C: TLS on the control connection only)
    reuse: bool = True  # ftplib only: resume the control session on data connections (stock FTP_TLS: no)


@dataclass
class ClientResult:
    tool: str
    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    data: dict[str, Any] | None = None  # ftplib runner: its JSON report

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def check(self) -> ClientResult:
        """Return self if the client succeeded; raise AssertionError with all its output otherwise."""
        if not self.ok:
            raise AssertionError(f"{self.tool} failed:\n{self}")
        return self

    def sent(self) -> list[str]:
        """Control lines the client sent (curl -v `> `, lftp -d `---> `, ftplib transcript)."""
        return _transcript(self, outgoing=True)

    def received(self) -> list[str]:
        """Reply lines the client received."""
        return _transcript(self, outgoing=False)

    def __str__(self) -> str:
        state = "timed out" if self.timed_out else f"exit {self.returncode}"
        return (
            f"$ {' '.join(self.argv)}\n[{state}]\n--- stdout ---\n{self.stdout[-6000:]}\n"
            f"--- stderr ---\n{self.stderr[-6000:]}"
        )


_CURL_LINE = re.compile(r"^([<>]) (.*)$")
_LFTP_LINE = re.compile(r"^(--->|<---) (.*)$")


def _transcript(result: ClientResult, *, outgoing: bool) -> list[str]:
    if result.tool == "ftplib":
        entries = (result.data or {}).get("transcript", [])
        return [line for direction, line in entries if (direction == ">") == outgoing]
    lines = []
    pattern, out_mark = (_CURL_LINE, ">") if result.tool == "curl" else (_LFTP_LINE, "--->")
    for raw in result.stderr.splitlines():
        match = pattern.match(raw.strip())
        if match and (match.group(1) == out_mark) == outgoing:
            lines.append(match.group(2).rstrip())
    return lines


def ftplib_login(topo: Topology, server: FtpServer) -> ftplib.FTP:
    """A session logged in through the gateway (the client namespace to its public address, port 21), left open:
    for the tests that count, list or end live sessions."""

    def body() -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=10)
        ftp.connect(str(topo.public_addr), 21)
        ftp.login(server.user, server.password)
        return ftp

    result: ftplib.FTP = topo.client.call(body)
    return result


def run_client(
    host: Host,
    tool: str,
    argv: Sequence[str | Path],
    *,
    timeout_s: float = CLIENT_TIMEOUT_S,
    input: str | None = None,
) -> ClientResult:
    words = [str(a) for a in argv]
    try:
        done = host.run(words, timeout=timeout_s, input=input, errors="replace")
    except subprocess.TimeoutExpired as exc:
        return ClientResult(tool, words, None, _text(exc.stdout), _text(exc.stderr), timed_out=True)
    return ClientResult(tool, words, done.returncode, done.stdout, done.stderr)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- curl


def curl_mode_args(mode: Mode, port_addr: str = "-") -> list[str]:
    """curl flags forcing one data-connection mode (`port_addr` "-": the control connection's address).

    curl has no switch to stop its fallbacks: after a refused EPSV, or a 229 whose port it cannot
    connect to, it tries PASV; after a refused EPRT it tries PORT.  A test of EPSV/EPRT should check
    result.sent() for the fallback command."""
    return {
        "pasv": ["--ftp-pasv", "--disable-epsv"],
        "epsv": ["--ftp-pasv"],
        "port": ["--ftp-port", port_addr, "--disable-eprt"],
        "eprt": ["--ftp-port", port_addr],
    }[mode]


def curl(
    host: Host,
    target: FtpTarget,
    path: str = "",
    *args: str | Path,
    mode: Mode = "pasv",
    port_addr: str = "-",
    timeout_s: float = CLIENT_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    tls: ClientTls | None = None,
) -> ClientResult:
    """curl -v against target's URL for `path`, with `args` appended (e.g. "-o", dest)."""
    url = target.url(path)
    tls_args: list[str] = []
    if tls is not None:
        # --ssl-reqd: TLS for login and data (PROT P); --ftp-ssl-control: login only, data in clear.
        tls_args = ["--ssl-reqd" if tls.protect_data else "--ftp-ssl-control", "--cacert", str(tls.ca_file)]
        if tls.implicit:
            url = "ftps://" + url.removeprefix("ftp://")
    argv = [
        "curl",
        "-q",
        "-sS",
        "-v",
        "--connect-timeout",
        str(connect_timeout_s),
        "--max-time",
        str(max(1.0, timeout_s - 2)),
        "--no-ftp-skip-pasv-ip",
        "--user",
        f"{target.user}:{target.password}",
        *curl_mode_args(mode, port_addr),
        *tls_args,
        *map(str, args),
        url,
    ]
    return run_client(host, "curl", argv, timeout_s=timeout_s)


def curl_list(host: Host, target: FtpTarget, directory: str = "", *, mode: Mode = "pasv", **kw: Any) -> ClientResult:
    """LIST of a directory (stdout is the listing)."""
    path = directory.rstrip("/") + "/" if directory else ""
    return curl(host, target, path, mode=mode, **kw)


def curl_download(
    host: Host,
    target: FtpTarget,
    remote: str,
    dest: Path,
    *,
    mode: Mode = "pasv",
    resume: bool = False,
    **kw: Any,
) -> ClientResult:
    """RETR into `dest`; resume=True continues a partial `dest` (-C -, i.e. REST)."""
    extra: list[str | Path] = ["-C", "-"] if resume else []
    return curl(host, target, remote, *extra, "-o", dest, mode=mode, **kw)


def curl_upload(
    host: Host,
    target: FtpTarget,
    src: Path,
    remote: str,
    *,
    mode: Mode = "pasv",
    append: bool = False,
    resume: bool = False,
    **kw: Any,
) -> ClientResult:
    """STOR `src` as `remote`; append=True uses APPE; resume=True continues after the remote size."""
    extra: list[str | Path] = []
    if append:
        extra.append("--append")
    if resume:
        extra += ["-C", "-"]
    return curl(host, target, remote, *extra, "-T", src, mode=mode, **kw)


# --------------------------------------------------------------------------- lftp


def lftp(
    host: Host,
    target: FtpTarget,
    commands: Sequence[str],
    *,
    mode: Mode = "pasv",
    timeout_s: float = CLIENT_TIMEOUT_S,
    port_addr: str | None = None,
    tls: ClientTls | None = None,
) -> ClientResult:
    """Run lftp commands (e.g. "ls", "get hello.txt -o /tmp/x", "put /tmp/y -o upload/y", "reget ...").

    lftp speaks EPRT only over IPv6, so "eprt" is not offered; "port" is plain PORT."""
    if mode == "eprt":
        raise ValueError("lftp sends EPRT only for IPv6; use curl or ftplib for EPRT over IPv4")
    settings = [
        "set cmd:fail-exit yes",
        "set cmd:interactive no",
        f"set net:timeout {int(CONNECT_TIMEOUT_S) + 2}",
        "set net:max-retries 1",
        "set net:persist-retries 0",
        "set net:reconnect-interval-base 1",
        *_lftp_tls(tls),
        f"set ftp:passive-mode {'off' if mode == 'port' else 'on'}",
        f"set ftp:prefer-epsv {'yes' if mode == 'epsv' else 'no'}",
        "set ftp:auto-passive-mode no",  # never switch modes behind the test's back
        "set ftp:fix-pasv-address no",  # use the 227 address even if it looks private
        "set ftp:ignore-pasv-address no",
        "set xfer:clobber on",
    ]
    if port_addr is not None:
        settings.append(f"set ftp:port-ipv4 {port_addr}")
    script = "; ".join(
        [
            *settings,
            f"open -u '{target.user}','{target.password}' -p {target.port} "
            + ("ftps://" if tls is not None and tls.implicit else "")
            + str(target.addr),
            *commands,
        ]
    )
    return run_client(host, "lftp", ["lftp", "--norc", "-d", "-c", script], timeout_s=timeout_s)


def _lftp_tls(tls: ClientTls | None) -> list[str]:
    if tls is None:
        return ["set ftp:ssl-allow no"]
    protect = "yes" if tls.protect_data else "no"
    return [
        "set ftp:ssl-allow yes",
        "set ftp:ssl-force yes",
        f"set ftp:ssl-protect-data {protect}",
        f"set ftp:ssl-protect-list {protect}",
        f"set ssl:ca-file {tls.ca_file}",
        "set ssl:verify-certificate yes",
        "set ssl:check-hostname yes",
    ]


# --------------------------------------------------------------------------- ftplib

# Runs inside the namespace with the test interpreter.  Reads a JSON spec on stdin, prints a JSON report.
_FTPLIB_RUNNER = r"""
import ftplib, json, socket, ssl, sys

spec = json.load(sys.stdin)
mode = spec["mode"]
tls = spec.get("tls")
transcript = []

class Client(ftplib.FTP_TLS if tls else ftplib.FTP):
    trust_server_pasv_ipv4_address = True

    if tls and tls["reuse"]:
        # What stock FTP_TLS lacks: the data connection resumes the control connection's TLS session (read
        # now, after replies came over TLS: in TLS 1.3 the ticket arrives after the handshake).
        def ntransfercmd(self, cmd, rest=None):
            conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
            if self._prot_p:
                conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
            return conn, size

    def putline(self, line):
        transcript.append((">", line))
        super().putline(line)

    def getline(self):
        line = super().getline()
        transcript.append(("<", line))
        return line

    def makepasv(self):
        if mode == "epsv":  # ftplib uses EPSV only over IPv6
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        return super().makepasv()

    def makeport(self):
        # ftplib uses EPRT only over IPv6; listen on the control connection's address ourselves.
        sock = socket.create_server((self.sock.getsockname()[0], 0), family=self.sock.family, backlog=1)
        host, port = sock.getsockname()[:2]
        if mode == "eprt":
            self.sendeprt(host, port)
        else:
            self.sendport(host, port)
        sock.settimeout(self.timeout)
        return sock

results = []
report = {"ok": False, "error": None, "results": results, "transcript": transcript}
try:
    if tls:
        ftp = Client(context=ssl.create_default_context(cafile=tls["ca_file"]), timeout=spec["timeout"])
    else:
        ftp = Client(timeout=spec["timeout"])
    ftp.connect(spec["host"], spec["port"])
    ftp.login(spec["user"], spec["password"])  # FTP_TLS: AUTH TLS first
    if tls:
        ftp.prot_p() if tls["protect_data"] else ftp.prot_c()
        report["cipher"] = ftp.sock.cipher()
    ftp.set_pasv(mode in ("pasv", "epsv"))
    for op in spec["ops"]:
        name, args = op[0], op[1:]
        if name == "list":
            lines = []
            ftp.retrlines("LIST" + (" " + args[0] if args else ""), lines.append)
            results.append({"op": name, "lines": lines})
        elif name == "nlst":
            results.append({"op": name, "names": ftp.nlst(*args)})
        elif name in ("retr", "rest_retr"):
            remote, local = args[0], args[1]
            rest = args[2] if name == "rest_retr" else None
            with open(local, "ab" if rest else "wb") as f:
                reply = ftp.retrbinary("RETR " + remote, f.write, rest=rest)
            results.append({"op": name, "reply": reply})
        elif name in ("stor", "appe"):
            local, remote = args[0], args[1]
            with open(local, "rb") as f:
                reply = ftp.storbinary(name.upper() + " " + remote, f)
            results.append({"op": name, "reply": reply})
        elif name == "cmd":
            results.append({"op": name, "reply": ftp.sendcmd(args[0])})
        elif name == "drop_retr":
            # Read the start of a transfer, then drop the data connection (no ABOR): the RETR's own final reply.
            conn = ftp.transfercmd("RETR " + args[0])
            received = len(conn.recv(32768))
            conn.close()
            results.append({"op": name, "received": received, "reply": ftp.getmultiline()})
        elif name == "abor_retr":
            # Read the start of a transfer, drop the data connection, ABOR: collect the replies up to 225/226.
            conn = ftp.transfercmd("RETR " + args[0])
            received = len(conn.recv(65536))
            conn.close()
            ftp.putline("ABOR")
            codes = []
            while not codes or codes[-1] not in ("225", "226"):
                codes.append(ftp.getmultiline()[:3])
                if len(codes) > 3 or codes[-1][0] in "45" and codes[-1] != "426":
                    break
            if codes == ["226"]:
                # proftpd at times answers ABOR before the transfer: 226, then the RETR's 426.
                ftp.sock.settimeout(1.0)
                try:
                    codes.append(ftp.getmultiline()[:3])
                except (TimeoutError, OSError):
                    pass
                ftp.sock.settimeout(spec["timeout"])
            results.append({"op": name, "received": received, "codes": codes})
        else:
            raise ValueError("unknown op " + name)
    ftp.quit()
    report["ok"] = True
except Exception as exc:
    report["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report))
sys.exit(0 if report["ok"] else 1)
"""


def ftplib_run(
    host: Host,
    target: FtpTarget,
    ops: Sequence[Sequence[Any]],
    *,
    mode: Mode = "pasv",
    timeout_s: float = CLIENT_TIMEOUT_S,
    io_timeout_s: float = 5.0,
    tls: ClientTls | None = None,
) -> ClientResult:
    """Run ftplib operations in the namespace with the test interpreter.

    ops: ("list", [dir]), ("nlst", [dir]), ("retr", remote, local), ("rest_retr", remote, local, offset),
    ("stor", local, remote), ("appe", local, remote), ("cmd", "RAW COMMAND"),
    ("abor_retr", remote): start a RETR, read 64 KiB, close the data connection, ABOR (result: codes).
    ("drop_retr", remote): start a RETR, read up to 32 KiB, close the data connection (result: the final reply).
    The report (result.data) has ok, error, results (one per op) and transcript [(">"|"<", line)]."""
    spec = {
        "host": str(target.addr),
        "port": target.port,
        "user": target.user,
        "password": target.password,
        "mode": mode,
        "timeout": io_timeout_s,
        "ops": [[str(part) if isinstance(part, Path) else part for part in op] for op in ops],
        "tls": None
        if tls is None
        else {"ca_file": str(tls.ca_file), "reuse": tls.reuse, "protect_data": tls.protect_data},
    }
    result = run_client(
        host, "ftplib", [sys.executable, "-c", _FTPLIB_RUNNER], timeout_s=timeout_s, input=json.dumps(spec)
    )
    try:
        result.data = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result.data = None
    return result
