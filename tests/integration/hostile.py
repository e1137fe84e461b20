"""Tools for the attack, fault, limit and leak tests: a raw-socket FTP client that sends exactly the bytes a
test writes, a gateway started from a YAML config written by the test, metric scrapes, and bounded waits.

Rules: every socket is made inside a test namespace (Host.call), every read has a timeout, every wait a
deadline; nothing here sleeps to wait for readiness.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from gateway import Gateway, start_reverse_gateway
from netns import Host, Topology
from prometheus_client.parser import text_string_to_metric_families

METRICS = "127.0.0.1:9121"  # inside the gateway's namespace: scraped from there
IO_TIMEOUT_S = 5.0
POLL_S = 0.05
_configs = itertools.count()

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --------------------------------------------------------------------------- waiting


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 10.0, poll_s: float = POLL_S) -> Any:
    """check() until it returns something truthy, within a bounded time; its last answer goes in the error."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")
        time.sleep(poll_s)


# --------------------------------------------------------------------------- the gateway


def start_gateway(
    topo: Topology,
    config: dict[str, Any] | None = None,
    *flags: str,
    upstream: str = "198.51.100.10:21",
    passive_ports: str = "50000-50099",
    metrics: bool = True,
) -> Gateway:
    """The gateway in `topo`'s gw namespace with `config` written as its YAML file (plus metrics on METRICS)."""
    settings = dict(config or {})
    if metrics:
        settings.setdefault("metrics_listen", METRICS)
    path = topo.workdir / f"gateway-{next(_configs)}.yaml"
    path.write_text(yaml.safe_dump(settings))
    gateway = start_reverse_gateway(topo, "--config", str(path), *flags, upstream=upstream, passive_ports=passive_ports)
    if metrics:
        host, port = METRICS.rsplit(":", 1)
        topo.gw.wait_port(host, int(port), process=gateway.process, timeout_s=10)
    return gateway


def scrape(topo: Topology) -> Samples:
    """Every sample of the gateway's /metrics, read from inside its namespace."""

    def get() -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{METRICS}/metrics", timeout=IO_TIMEOUT_S) as response:
            return str(response.read().decode())

    return parse_samples(topo.gw.call(get, timeout_s=IO_TIMEOUT_S + 5))


def parse_samples(text: str) -> Samples:
    """Prometheus text format -> {(name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def value(topo: Topology, name: str, **labels: str) -> float:
    return metric(scrape(topo), name, **labels)


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


# --------------------------------------------------------------------------- the raw client


class Closed(Exception):
    """The peer closed the connection before a whole reply arrived; .data is what came before."""

    def __init__(self, data: bytes) -> None:
        super().__init__(f"connection closed after {data[-200:]!r}")
        self.data = data


@dataclass
class Reply:
    code: int
    lines: list[bytes]

    @property
    def text(self) -> str:
        return b"".join(self.lines).decode("utf-8", "replace")

    def __str__(self) -> str:
        return self.text.strip()


_CODE = re.compile(rb"(\d{3})([ -])")
_SIX = re.compile(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


def connect(
    host: Host, ip: ipaddress.IPv4Address | str, port: int, *, source: str | None = None, rcvbuf: int | None = None
) -> socket.socket:
    """A TCP connection made from `host`'s namespace, optionally from a given address or with a small buffer."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source is not None:
                sock.bind((source, 0))
            sock.settimeout(IO_TIMEOUT_S)
            sock.connect((str(ip), port))
        except BaseException:
            sock.close()
            raise
        return sock

    return host.call(make, timeout_s=IO_TIMEOUT_S + 5)


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashing client or a hostile one does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_all(sock: socket.socket, timeout_s: float = 20.0) -> bytes:
    sock.settimeout(timeout_s)
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def peer_closed(sock: socket.socket, timeout_s: float = 2.0) -> bool:
    """True when the peer closed (EOF or RST) within timeout_s without sending anything."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


class RawFtp:
    """An FTP control connection on a plain socket: the test writes the bytes, reads the replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.received = b""

    @classmethod
    def open(cls, host: Host, ip: ipaddress.IPv4Address | str, port: int = 21, *, source: str | None = None) -> RawFtp:
        return cls(connect(host, ip, port, source=source))

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self, timeout_s: float = IO_TIMEOUT_S) -> bytes:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no whole line within {timeout_s} s; have {self.buffer[-200:]!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed(self.received)
            self.buffer += chunk
            self.received += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def reply(self, timeout_s: float = IO_TIMEOUT_S) -> Reply:
        """One whole reply (RFC 959 4.2: a multi-line reply ends with its code and a space)."""
        first = self.line(timeout_s)
        match = _CODE.match(first)
        if match is None:
            raise AssertionError(f"not a reply line: {first!r}")
        lines = [first]
        if match.group(2) == b"-":
            end = match.group(1) + b" "
            while not lines[-1].startswith(end):
                lines.append(self.line(timeout_s))
        return Reply(int(match.group(1)), lines)

    def cmd(self, line: bytes | str, timeout_s: float = IO_TIMEOUT_S) -> Reply:
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.reply(timeout_s)

    def expect(self, line: bytes | str, *codes: int, timeout_s: float = IO_TIMEOUT_S) -> Reply:
        answer = self.cmd(line, timeout_s)
        assert answer.code in codes, f"{line!r}: expected {codes}, got {answer}"
        return answer

    def login(self, user: str = "anonymous", password: str = "test@ftp-alg.test") -> None:
        banner = self.reply()
        assert banner.code == 220, banner
        self.expect(f"USER {user}", 331, 230)
        self.expect(f"PASS {password}", 230)

    def pasv(self) -> tuple[str, int]:
        answer = self.expect("PASV", 227)
        match = _SIX.search(answer.lines[-1])
        assert match is not None, answer
        numbers = [int(n) for n in match.groups()]
        return ".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]

    def epsv(self) -> int:
        answer = self.expect("EPSV", 229)
        match = re.search(rb"\(\|\|\|(\d+)\|\)", answer.lines[-1])
        assert match is not None, answer
        return int(match.group(1))

    def closed(self, timeout_s: float = IO_TIMEOUT_S) -> bytes:
        """Everything the gateway sends until it closes the connection (AssertionError if it does not)."""
        deadline = time.monotonic() + timeout_s
        data = self.buffer
        self.buffer = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection still open after {timeout_s} s; got {data[-300:]!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            except TimeoutError:
                continue
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawFtp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def port_argument(ip: str, port: int) -> str:
    return ",".join([*ip.split("."), str(port // 256), str(port % 256)])


# --------------------------------------------------------------------------- the upstream's view


def vsftpd_commands(log_text: str) -> list[str]:
    """The commands vsftpd received (its log_ftp_protocol lines: FTP command: Client "...", "PORT ...")."""
    return re.findall(r'FTP command: Client "[^"]*", "([^"]*)"', log_text)


def established(host: Host, port: int | None = None) -> list[str]:
    """Established TCP connections in `host`'s namespace (local port `port` if given), as `ss` lists them."""
    argv = ["ss", "-Htn", "state", "established"]
    if port is not None:
        argv += [f"( sport = :{port} )"]
    return [line for line in host.run(argv).stdout.splitlines() if line.strip()]


# --------------------------------------------------------------------------- a scripted upstream


class FakeServer:
    """A hostile FTP server for one connection: `script(control, server)` runs in a thread with the accepted
    control connection (a RawFtp, so .line() reads the gateway's commands). Listens in `host`'s namespace."""

    def __init__(self, host: Host, ip: str, port: int, script: Callable[[RawFtp, FakeServer], None]) -> None:
        import threading

        self.host = host
        self.listener = host.listen(ip, port, timeout_s=IO_TIMEOUT_S)
        self.script = script
        self.error: BaseException | None = None
        self.commands: list[bytes] = []
        self.thread = threading.Thread(target=self._run, name="fake-ftp-server", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with RawFtp(conn) as control:
                self.script(control, self)
        except BaseException as error:  # handed to the test by join()
            self.error = error
        finally:
            self.listener.close()

    def command(self, control: RawFtp, timeout_s: float = IO_TIMEOUT_S) -> bytes:
        line = control.line(timeout_s)
        self.commands.append(line)
        return line

    def join(self, timeout_s: float = 10.0) -> None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the fake server's script did not finish"
        if self.error is not None:
            raise self.error


def add_address(host: Host, interface: str, address: str) -> None:
    """A second address on a test host (only inside the test ranges)."""
    net = ipaddress.ip_interface(address).network
    assert any(
        net.subnet_of(allowed)
        for allowed in (
            ipaddress.ip_network("203.0.113.0/24"),
            ipaddress.ip_network("198.51.100.0/24"),
            ipaddress.ip_network("198.18.0.0/24"),
        )
    )
    host.ip("addr", "add", address, "dev", interface)
