"""The benchmark's world: the reverse topology with a routed direct path, the upstreams, the gateway process.

client 203.0.113.10 ─ gw 203.0.113.1 | 198.51.100.1 ─ server 198.51.100.10, built with the integration
harness (tests/integration/netns.py). For the direct path the client and the server get routes through
the gw namespace, which forwards: the same wires, the kernel instead of the gateway. Everything started
here is stopped here, by PID; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))

from netns import Host, ManagedProcess, Topology  # noqa: E402  (the harness lives with the tests)
from pki import CertFiles, Pki, make_pki  # noqa: E402
from servers import start_server  # noqa: E402

SERVER_ADDR = "198.51.100.10"
GATEWAY_ADDR = "203.0.113.1"
VSFTPD_PORT = 21
PYFTPDLIB_PORT = 2121
GATEWAY_PORT = 21  # in front of vsftpd
GATEWAY_IDLE_PORT = 2121  # in front of pyftpdlib
FTPS_PORT = 2990  # the FTPS vsftpd, and the gateway with TLS on both legs in front of it
FTPS_SERVER_PASSIVE = (20000, 29999)
FTPS_GATEWAY_PASSIVE = "35000-39999"
KERNEL_PATH_PORT = 2200  # ftp-alg with data_path: kernel, in front of vsftpd
HELPER_PORT = 2201  # the kernel's own FTP helper: DNAT to vsftpd, nf_conntrack_ftp + nf_nat_ftp attached
DEFENDER_PORT = 2202  # ftp-alg relaying, with the defender on (its cost on small files)
DEFENDER_PASSIVE_PORTS = "30000-34999"
PASSIVE_PORTS = "40000-49999"  # room for 1,000 concurrent sessions' data connections, in any worker
KERNEL_PASSIVE_PORTS = "50000-59999"  # the kernel-path gateway's, apart from the relay gateway's
NOFILE = 65536  # descriptors for the processes started here: 10,000 sessions hold 20,000 sockets

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def raise_nofile() -> None:
    """preexec_fn of the processes started here (only them): as many descriptors as this machine allows."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE: up to the hard limit we were given
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def descriptor_limit() -> int:
    """The RLIMIT_NOFILE the processes started here get (see raise_nofile), this process left as it is."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= NOFILE:
        return NOFILE
    return NOFILE if _has_capability(_CAP_SYS_RESOURCE) else hard


_CAP_SYS_RESOURCE = 24


def _has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


@dataclass(frozen=True)
class Target:
    addr: str
    port: int
    user: str = "anonymous"
    password: str = "bench@ftp-alg.test"
    ca_file: Path | None = None  # FTPS (explicit AUTH TLS, PROT P), verified against this CA

    def url(self, path: str = "") -> str:
        return f"ftp://{self.addr}:{self.port}/{path.lstrip('/')}"


class World:
    """One topology for a whole run: vsftpd (and pyftpdlib when asked) behind it, gateways started on demand."""

    def __init__(self, topology: Topology) -> None:
        self.topo = topology
        self.root = topology.workdir / "ftproot"
        self.client_files = topology.workdir / "client"
        self.vsftpd: ManagedProcess | None = None
        self.pyftpdlib: ManagedProcess | None = None
        self._pki: Pki | None = None

    @property
    def pki(self) -> Pki:
        """The FTPS workloads' certificates (tests/integration/pki.py), made on first use."""
        if self._pki is None:
            self._pki = make_pki(self.topo.workdir / "pki")
        return self._pki

    @property
    def client(self) -> Host:
        return self.topo.client

    # --- the direct path -------------------------------------------------------------------------------------

    def route_directly(self) -> None:
        """Client and server reach each other through the gw namespace, which forwards (no gateway involved)."""
        self.topo.client.ip("route", "add", "198.51.100.0/24", "via", GATEWAY_ADDR)
        self.topo.server.ip("route", "add", "203.0.113.0/24", "via", "198.51.100.1")
        self.topo.gw.sysctl("net.ipv4.ip_forward", 1)

    # --- files -----------------------------------------------------------------------------------------------

    def make_files(self, big_bytes: int, small_count: int, small_bytes: int) -> None:
        """The served tree: big.bin (zeros), small/f0000.. , upload/ (writable); the client's big.bin to send."""
        for directory in (self.root, self.root / "small", self.root / "upload", self.client_files):
            directory.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        (self.root / "upload").chmod(0o777)
        for path in (self.root / "big.bin", self.client_files / "big.bin"):
            _zero_file(path, big_bytes)
            _read_through(path)  # into the page cache: the first run must not pay for it
        payload = os.urandom(small_bytes)
        for index in range(small_count):
            path = self.root / "small" / f"f{index:04d}"
            path.write_bytes(payload)
            path.chmod(0o644)
        (self.root / "hello.txt").write_bytes(b"hello from the benchmark\r\n")

    def clear_uploads(self) -> None:
        """Uploaded files go before their dirty pages are written back, so no run waits for the disk."""
        for path in (self.root / "upload").iterdir():
            path.unlink()

    def kernel_helper(self, upstream: Target, port: int = HELPER_PORT) -> Target:
        """The reference: the gw namespace NATs its port `port` to the upstream's control port and attaches the
        kernel's FTP helper to those connections (nftables `ct helper`, as required since Linux 4.7), which
        rewrites the 227/PORT and opens each data connection itself. The server sees the gateway's address,
        as through ftp-alg, so active mode works only through the helper's rewriting."""
        self.topo.gw.nft(f"""
table inet bench_helper {{
    ct helper ftp-std {{ type "ftp" protocol tcp; }}
    chain to_server {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {GATEWAY_ADDR} tcp dport {port} dnat ip to {upstream.addr}:{upstream.port}
    }}
    chain attach {{
        type filter hook prerouting priority filter; policy accept;
        ct status dnat ip daddr {upstream.addr} tcp dport {upstream.port} ct helper set "ftp-std"
    }}
    chain from_gateway {{
        type nat hook postrouting priority srcnat; policy accept;
        ct status dnat ip daddr {upstream.addr} masquerade
    }}
}}
""")
        return Target(GATEWAY_ADDR, port, upstream.user, upstream.password)

    # --- upstreams -------------------------------------------------------------------------------------------

    def start_vsftpd(self, tls: CertFiles | None = None) -> Target:
        # The integration tests' vsftpd, with what a load test needs: this run's tree, unlimited clients, a wide
        # passive range, no per-session network namespace (isolate*: its set-up cost would be measured) and no
        # per-command log. Both paths meet the same server. tls: FTPS only (require_ssl_reuse) on FTPS_PORT.
        port = VSFTPD_PORT if tls is None else FTPS_PORT
        server = start_server(
            "vsftpd",
            self.topo.server,
            addr=SERVER_ADDR,
            port=port,
            pasv_ports=(30000, 39999) if tls is None else FTPS_SERVER_PASSIVE,
            tls=tls,
            options={
                "anon_root": str(self.root),
                "isolate": "NO",
                "isolate_network": "NO",
                "xferlog_enable": "NO",
                "log_ftp_protocol": "NO",
                "idle_session_timeout": "600",
                "data_connection_timeout": "120",
                "accept_timeout": "30",
                "connect_timeout": "30",
                "max_clients": "0",
                "max_per_ip": "0",
            },
        )
        if tls is None:
            self.vsftpd = server.process
            return Target(SERVER_ADDR, port)
        return Target(SERVER_ADDR, port, ca_file=self.pki.ca_file)

    def start_pyftpdlib(self) -> Target:
        """A light single-process upstream for the idle test (vsftpd would fork 10,000 processes)."""
        if self.pyftpdlib is None:
            self.pyftpdlib = self.python(
                self.topo.server,
                [REPO_ROOT / "bench" / "upstream.py", SERVER_ADDR, PYFTPDLIB_PORT, self.root],
                name="pyftpdlib",
            )
            self.topo.server.wait_port(SERVER_ADDR, PYFTPDLIB_PORT, process=self.pyftpdlib, timeout_s=15)
        return Target(SERVER_ADDR, PYFTPDLIB_PORT)

    # --- processes -------------------------------------------------------------------------------------------

    def python(
        self, host: Host, argv: Sequence[Any], *, name: str, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        """The benchmark's interpreter in a namespace, with the repository importable and many descriptors."""
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), full_env.get("PYTHONPATH"))))
        full_env["PYTHONUNBUFFERED"] = "1"
        return host.popen(
            [sys.executable, *map(str, argv)], name=name, env=full_env, cwd=REPO_ROOT, preexec_fn=raise_nofile
        )

    @contextlib.contextmanager
    def gateway(
        self,
        upstream: Target,
        *,
        port: int = GATEWAY_PORT,
        workers: int = 1,
        relay: str | None = None,
        data_path: str = "relay",
        passive_ports: str = PASSIVE_PORTS,
        defender: bool = False,
    ) -> Iterator[Gateway]:
        """ftp-alg in the gw namespace in front of `upstream`, at its defaults except the limits a load needs.

        An FTPS upstream (ca_file set) gets TLS on both legs: client TLS required with the gateway's
        certificate, upstream TLS required and verified."""
        config = self.topo.workdir / f"gateway-{port}-{workers}.yaml"
        text = f"""\
listen: {GATEWAY_ADDR}:{port}
upstream: {upstream.addr}:{upstream.port}
passive_ports: {passive_ports if upstream.ca_file is None else FTPS_GATEWAY_PASSIVE}
workers: {workers}
data_path: {data_path}
limits:
  max_sessions: 20000
  max_sessions_per_client: 20000
"""
        if defender:  # its defaults: every session is scored and checked at accept
            text += "defender: {enabled: true}\n"
        if upstream.ca_file is not None:
            text += f"""\
tls:
  client: {{mode: require, cert: {self.pki.gateway.cert}, key: {self.pki.gateway.key}}}
  upstream: {{mode: require, ca_file: {upstream.ca_file}}}
"""
        config.write_text(text)
        env = {"FTP_ALG_RELAY": relay} if relay else {}
        process = self.python(self.topo.gw, ["-m", "alg.cli", "run", "--config", config], name="gateway", env=env)
        target = Target(GATEWAY_ADDR, port, upstream.user, upstream.password, upstream.ca_file)
        gateway = Gateway(process, target, workers)
        try:
            gateway.wait_listening(self.topo.gw, port)
            if data_path == "kernel":
                gateway.wait_logged("listening on")
                if "data_path=kernel" not in process.log():
                    raise RuntimeError(f"the kernel data path did not start:\n{process.log()[-2000:]}")
            yield gateway
        finally:
            process.stop(timeout_s=10)
            self.topo.processes.remove(process)


@dataclass
class Gateway:
    process: ManagedProcess
    target: Target
    workers: int

    def pids(self) -> list[int]:
        """The gateway's processes: the supervisor and its workers, or the one process."""
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [pid, *map(int, children)]

    def worker_pids(self) -> list[int]:
        pids = self.pids()
        return pids[1:] if self.workers > 1 else pids[:1]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss_bytes(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids())

    def wait_logged(self, text: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.process.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway never logged {text!r}:\n{self.process.log()[-2000:]}")
            time.sleep(0.05)

    def wait_listening(self, gw: Host, port: int, timeout_s: float = 15.0) -> None:
        """Until every worker listens on the control port (each binds its own SO_REUSEPORT socket)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.process.log()[-4000:]}")
            listening = gw.run(["ss", "-Hltn", f"sport = :{port}"]).stdout.splitlines()
            if len(listening) >= self.workers:
                return
            time.sleep(0.05)
        raise TimeoutError(f"gateway not listening on :{port} after {timeout_s} s:\n{self.process.log()[-4000:]}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (/proc/stat: user, nice, system, irq, softirq), all CPUs."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[:7])
    return (user + nice + system + irq + softirq) / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    except OSError:
        return 0


def _zero_file(path: Path, size: int) -> None:
    """`size` zero bytes, at once: fallocate where the file system has it (reads come from no disk)."""
    if path.exists() and path.stat().st_size == size:
        return
    path.unlink(missing_ok=True)
    if shutil.which("fallocate") and subprocess.run(["fallocate", "-l", str(size), path]).returncode == 0:
        pass
    else:
        with open(path, "wb") as f:
            f.truncate(size)
    path.chmod(0o644)


def _read_through(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
