"""Network-namespace topologies for the integration tests.

Rules of this file: every namespace is named ``falg-<creator pid>-<n>-<role>`` and talks only to its
peers, through veth pairs created directly inside the namespaces (the root namespace never gets an
interface or an address); each namespace carries an nftables table whose output (and forward) chain
accepts loopback and the three test ranges and drops everything else; whatever a topology starts it
stops by PID, and its namespaces are deleted on exit.  Every wait is bounded in count and in time.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Socket = socket.socket
Arg = str | os.PathLike[str]

# The only addresses the integration tests ever use (docs/architecture.md, "Tests").
PUBLIC_NET = ipaddress.IPv4Network("203.0.113.0/24")
INTERNAL_NET = ipaddress.IPv4Network("198.51.100.0/24")
LAN_NET = ipaddress.IPv4Network("198.18.0.0/24")
ALLOWED_NETS = (PUBLIC_NET, INTERNAL_NET, LAN_NET)
DOC_NET6 = ipaddress.IPv6Network("2001:db8::/32")  # IPv6 test hosts: the documentation prefix only

NS_PREFIX = "falg-"
NETNS_DIR = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")  # per-namespace /etc files that `ip netns exec` binds over /etc
REPO_ROOT = Path(__file__).resolve().parents[2]
GUARD_TABLE = "falg_guard"

COMMAND_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.02

_CLONE_NEWNET = 0x40000000
_STALE_NAME = re.compile(r"falg-(\d+)-.*")
_STALE_WORKDIR = re.compile(r"falg-(\d+)-\d+-\w+")  # Topology workdirs: falg-<pid>-<n>-<random>
_counter = itertools.count()
_open_topologies: weakref.WeakSet[Topology] = weakref.WeakSet()
_libc = ctypes.CDLL(None, use_errno=True)


class HarnessError(RuntimeError):
    """The harness itself could not do what a test asked (not a failure of the code under test)."""


# --------------------------------------------------------------------------- availability


_availability: str | bool | None = False  # False: not probed yet; None: available; str: why not


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they can (probed once)."""
    global _availability
    if _availability is not False:
        return _availability  # type: ignore[return-value]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "integration tests need root (network namespaces, veth, nftables)"
    elif shutil.which("ip") is None:
        reason = "iproute2 `ip` not found (run scripts/install-test-deps.sh)"
    else:
        probe = f"{NS_PREFIX}{os.getpid()}-probe"
        added = _ip("netns", "add", probe, check=False)
        if added.returncode != 0:
            reason = f"`ip netns add` failed: {added.stderr.strip()}"
        else:
            _ip("netns", "del", probe, check=False)
    _availability = reason
    return reason


# --------------------------------------------------------------------------- small helpers


def _run(
    argv: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a PID from /proc, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces and parens
    return fields[0], int(fields[2])


def living_group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid` that are not zombies."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = process_state(int(entry.name))
            if state is not None and state[1] == pgid and state[0] != "Z":
                members.append(int(entry.name))
    return members


def list_namespaces() -> list[str]:
    result = _ip("netns", "list", check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _namespace_pids(netns: str) -> list[int]:
    result = _ip("netns", "pids", netns, check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def _kill_namespace_processes(netns: str) -> None:
    """SIGKILL, by PID, the processes still living in one of our namespaces; wait until they are gone."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for _ in range(100):
        pids = [pid for pid in _namespace_pids(netns) if pid != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL_INTERVAL_S)


def _delete_namespace(netns: str) -> None:
    _kill_namespace_processes(netns)
    _ip("netns", "del", netns, check=False)
    shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)


def cleanup_stale_namespaces() -> list[str]:
    """Delete `falg-<pid>-*` namespaces (and temp workdirs) whose creating process is dead.

    Returns the names of the namespaces removed.

    Processes still inside such a namespace were started by that dead harness run (servers, gateways);
    they are killed by PID, never by name.
    """
    removed = []
    for name in list_namespaces():
        match = _STALE_NAME.fullmatch(name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        _delete_namespace(name)
        removed.append(name)
    for workdir in Path(tempfile.gettempdir()).glob(f"{NS_PREFIX}*"):
        match = _STALE_WORKDIR.fullmatch(workdir.name)
        if match is not None and workdir.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(workdir, ignore_errors=True)
    return removed


def _enter_netns(netns: str) -> None:
    """Move the *calling thread* into a namespace (network namespaces are per thread)."""
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- processes


class ManagedProcess:
    """A process started in a namespace, in its own process group, with output captured to a file."""

    def __init__(self, popen: subprocess.Popen[bytes], argv: Sequence[Arg], log_path: Path | None, name: str) -> None:
        self.popen = popen
        self.argv = [str(part) for part in argv]
        self.log_path = log_path
        self.name = name

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        return self.popen.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the process group (its leader is our PID), then SIGKILL it if it lingers."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            # The group id is our child's PID (start_new_session); daemons' forked children are in it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)
            try:
                self.popen.wait(timeout=timeout_s)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # children that outlived their leader
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout_s)
        self._wait_group_gone()
        return self.popen.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once, reap the leader, wait (bounded) for the rest."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        self._wait_group_gone()
        return self.popen.returncode

    def _wait_group_gone(self, timeout_s: float = 2.0) -> None:
        # Orphaned children are reaped by PID 1 whenever it gets to it: zombies count as gone.
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / POLL_INTERVAL_S) + 1):
            if not living_group_members(self.pid) or time.monotonic() > deadline:
                return
            time.sleep(POLL_INTERVAL_S)

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} rc={self.returncode}>"


# --------------------------------------------------------------------------- hosts


class Host:
    """One network namespace of a topology."""

    def __init__(
        self,
        topology: Topology,
        role: str,
        netns: str,
        interfaces: Mapping[str, ipaddress.IPv4Interface],
        addresses6: Mapping[str, ipaddress.IPv6Interface] | None = None,
    ) -> None:
        self.topology = topology
        self.role = role
        self.netns = netns
        self.interfaces = dict(interfaces)  # each interface's IPv4 address
        self.interfaces6 = dict(addresses6 or {})  # and its IPv6 one, on hosts built with ipv6=True

    @property
    def addr(self) -> ipaddress.IPv4Address:
        """The host's primary address (for the gateway: its public one)."""
        return next(iter(self.interfaces.values())).ip

    def hosts_file(self, text: str) -> None:
        """/etc/hosts as processes in this namespace see it: `ip netns exec` binds /etc/netns/NAME/hosts over
        /etc/hosts. Rewritten in place (same inode), so a process already running sees each new version."""
        path = NETNS_ETC / self.netns / "hosts"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as hosts:
            hosts.write(text)

    def iface_addr(self, iface: str) -> ipaddress.IPv4Address:
        return self.interfaces[iface].ip

    def iface_addr6(self, iface: str) -> ipaddress.IPv6Address:
        return self.interfaces6[iface].ip

    @property
    def addr6(self) -> ipaddress.IPv6Address:
        """The host's primary IPv6 address (hosts built with ipv6=True)."""
        return next(iter(self.interfaces6.values())).ip

    def argv(self, argv: Sequence[Arg]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *map(str, argv)]

    # --- subprocesses

    def run(
        self,
        argv: Sequence[Arg],
        *,
        timeout: float = COMMAND_TIMEOUT_S,
        check: bool = False,
        capture_output: bool = True,
        text: bool = True,
        **kw: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside the namespace; output captured as text by default."""
        return subprocess.run(
            self.argv(argv), timeout=timeout, check=check, capture_output=capture_output, text=text, **kw
        )

    def popen(
        self,
        argv: Sequence[Arg],
        *,
        log_path: Path | None = None,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        **kw: Any,
    ) -> ManagedProcess:
        """Start a long-lived process in the namespace; the topology stops it on exit.

        stdout and stderr go to `log_path` (or a file in the topology's workdir)."""
        name = name or Path(str(argv[0])).name
        if log_path is None:
            log_path = self.topology.workdir / f"{self.role}-{name}-{next(_counter)}.log"
        full_env = dict(os.environ if env is None else env)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                self.argv(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=full_env,
                cwd=cwd,
                **kw,
            )
        process = ManagedProcess(popen, argv, log_path, f"{self.role}:{name}")
        self.topology.processes.append(process)
        return process

    def exec_python(
        self,
        args: Sequence[Arg],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        name: str = "python",
    ) -> ManagedProcess:
        """Run the test interpreter (the venv's python) in the namespace, with the repo on PYTHONPATH."""
        full_env = dict(os.environ if env is None else env)
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        return self.popen([sys.executable, *map(str, args)], env=full_env, log_path=log_path, name=name, cwd=REPO_ROOT)

    # --- in-process work inside the namespace

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float = COMMAND_TIMEOUT_S) -> T:
        """Run fn(*args) in a short-lived thread that has entered this namespace; return its result.

        Sockets created by fn belong to the namespace and keep working after the thread ends."""
        outcome: dict[str, Any] = {}

        def body() -> None:
            try:
                _enter_netns(self.netns)
                outcome["value"] = fn(*args)
            except BaseException as exc:  # handed to the caller below
                outcome["error"] = exc

        thread = threading.Thread(target=body, name=f"netns:{self.netns}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"{fn!r} did not finish in {timeout_s}s inside {self.netns}")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]  # type: ignore[no-any-return]

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> Socket:
        """A socket that lives in this namespace (use it from any thread)."""
        return self.call(socket.socket, family, type)

    def connect(self, ip: ipaddress.IPv4Address | str, port: int, *, timeout_s: float = 3.0) -> Socket:
        """A TCP connection made from this namespace; raises OSError as socket.create_connection does."""
        return self.call(socket.create_connection, (str(ip), port), timeout_s, timeout_s=timeout_s + 5)

    def listen(
        self, ip: ipaddress.IPv4Address | str, port: int = 0, *, backlog: int = 16, timeout_s: float | None = 10.0
    ) -> Socket:
        """A listening TCP socket bound in this namespace (port 0: the kernel picks).

        accept() on it gives up after `timeout_s` (None: blocking; asyncio makes it non-blocking anyway)."""
        listener = self.call(lambda: socket.create_server((str(ip), port), backlog=backlog))
        listener.settimeout(timeout_s)
        return listener

    def loop(self) -> NetnsLoop:
        """An asyncio event loop running in a thread inside this namespace (stopped with the topology)."""
        loop = NetnsLoop(self)
        self.topology.loops.append(loop)
        return loop

    def wait_port(
        self,
        ip: ipaddress.IPv4Address | str,
        port: int,
        *,
        timeout_s: float = 5.0,
        process: ManagedProcess | None = None,
    ) -> None:
        """Wait until a TCP connect from this namespace to ip:port succeeds.

        Bounded by `timeout_s`; fails at once if `process` (the thing expected to listen) has exited."""
        deadline = time.monotonic() + timeout_s
        last_error: OSError | None = None
        for _ in range(int(timeout_s / POLL_INTERVAL_S) + 1):
            if process is not None and not process.alive():
                raise HarnessError(
                    f"{process.name} exited with {process.returncode} before "
                    f"{ip}:{port} accepted; log:\n{process.log()[-4000:]}"
                )
            try:
                self.connect(ip, port, timeout_s=max(0.1, min(1.0, deadline - time.monotonic()))).close()
                return
            except OSError as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
        log = f"; log:\n{process.log()[-4000:]}" if process is not None else ""
        raise TimeoutError(
            f"{ip}:{port} not accepting from {self.netns} after {timeout_s}s (last error: {last_error}){log}"
        )

    # --- configuration

    def nft(self, ruleset: str) -> None:
        """Load an nftables script (`nft -f -`) into this namespace."""
        result = self.run(["nft", "-f", "-"], input=ruleset)
        if result.returncode != 0:
            raise HarnessError(f"nft in {self.netns}: {result.stderr.strip()}\n{ruleset}")

    def nft_json(self) -> dict[str, Any]:
        """`nft -j list ruleset` of this namespace, parsed."""
        result = self.run(["nft", "-j", "list", "ruleset"], check=True)
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def sysctl(self, key: str, value: str | int | None = None) -> str:
        """Read (value None) or write a sysctl of this namespace (net.* keys are per namespace)."""
        argv = ["sysctl", "-n", key] if value is None else ["sysctl", "-w", f"{key}={value}"]
        result = self.run(argv)
        if result.returncode != 0:
            raise HarnessError(f"sysctl {key} in {self.netns}: {result.stderr.strip()}")
        return str(result.stdout).strip()

    def ip(self, *args: str) -> str:
        return _ip("-n", self.netns, *args).stdout

    def __repr__(self) -> str:
        addrs = ", ".join(f"{name}={iface}" for name, iface in self.interfaces.items())
        return f"<Host {self.role} {self.netns} {addrs}>"


class NetnsLoop:
    """An asyncio loop in a thread that entered a namespace: `run(coro)` runs a coroutine there."""

    def __init__(self, host: Host) -> None:
        import asyncio

        self.host = host
        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._error: BaseException | None = None

        def body() -> None:
            try:
                _enter_netns(host.netns)
            except BaseException as exc:
                self._error = exc
                ready.set()
                return
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=body, name=f"loop:{host.netns}", daemon=True)
        self.thread.start()
        if not ready.wait(COMMAND_TIMEOUT_S) or self._error is not None:
            raise HarnessError(f"event loop in {host.netns} did not start: {self._error}")

    def run(self, coro: Any, *, timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
        """Run a coroutine on the namespace's loop and wait (bounded) for its result."""
        future = self._asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    def submit(self, coro: Any) -> Any:
        """Start a coroutine on the namespace's loop; returns a concurrent.futures.Future."""
        return self._asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        if self.thread.is_alive():

            async def cancel_all() -> None:
                tasks = [t for t in self._asyncio.all_tasks() if t is not self._asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await self._asyncio.gather(*tasks, return_exceptions=True)

            with contextlib.suppress(Exception):
                self.run(cancel_all(), timeout_s=STOP_TIMEOUT_S)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(STOP_TIMEOUT_S)
        if not self.thread.is_alive():
            self.loop.close()


# --------------------------------------------------------------------------- topologies


def guard_ruleset() -> str:
    """The per-namespace table: only loopback and the three test ranges may be sent to (or forwarded)."""
    nets = ", ".join(str(net) for net in ALLOWED_NETS)
    # IPv6 hosts (off unless a layout asks) resolve neighbours through solicited-node multicast; nothing else
    # outside 2001:db8::/32 leaves (router solicitations and MLD reports are dropped here).
    return f"""
table inet {GUARD_TABLE} {{
    chain output {{
        type filter hook output priority 0; policy drop;
        oifname "lo" accept
        ip daddr {{ {nets} }} accept
        ip6 daddr {DOC_NET6} accept
        ip6 daddr ff02::1:ff00:0/104 icmpv6 type nd-neighbor-solicit accept
    }}
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ip daddr {{ {nets} }} accept
        ip6 daddr {DOC_NET6} accept
    }}
}}
"""


LAYOUTS = ("reverse", "transparent")
Builder = Callable[["Topology"], None]


class Topology:
    """Namespaces joined by veth pairs; use as a context manager.

    reverse:      client 203.0.113.10 ─ [pub 203.0.113.1  gw  int 198.51.100.1] ─ server 198.51.100.10
                  no default routes, gw ip_forward=0: the client can reach only the gateway.
    transparent:  lan 198.18.0.10 (default via .1) ─ [lan 198.18.0.1  gw  pub 203.0.113.1] ─
                  server 203.0.113.20; gw forwards and masquerades 198.18.0.0/24 out of `pub`.
    """

    def __init__(self, layout: str = "reverse", *, workdir: Path | None = None, builder: Builder | None = None) -> None:
        """`layout` is a built-in one, or any name when `builder` is given: a function that makes the hosts
        with add_host() and joins them with link() (the roles client/lan, gw and server as it chooses)."""
        if layout not in LAYOUTS and builder is None:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self._builder = builder
        self.id = f"{NS_PREFIX}{os.getpid()}-{next(_counter)}"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(_mkdtemp(prefix=f"{self.id}-"))
        self.hosts: dict[str, Host] = {}
        self.processes: list[ManagedProcess] = []
        self.loops: list[NetnsLoop] = []
        self._namespaces: list[str] = []
        self._closed = False

    @classmethod
    def reverse(cls, **kw: Any) -> Topology:
        return cls("reverse", **kw)

    @classmethod
    def transparent(cls, **kw: Any) -> Topology:
        return cls("transparent", **kw)

    # --- roles

    @property
    def client(self) -> Host:
        return self.hosts["lan" if "lan" in self.hosts and "client" not in self.hosts else "client"]

    @property
    def gw(self) -> Host:
        return self.hosts["gw"]

    @property
    def server(self) -> Host:
        return self.hosts["server"]

    @property
    def public_addr(self) -> ipaddress.IPv4Address:
        """The gateway's public address (203.0.113.1)."""
        return self.gw.iface_addr("pub")

    @property
    def gw_inside_addr(self) -> ipaddress.IPv4Address:
        """The gateway's address on the server side (reverse) or the LAN side (transparent)."""
        return self.gw.iface_addr("int" if self.layout == "reverse" else "lan")

    @property
    def client_addr(self) -> ipaddress.IPv4Address:
        return self.client.addr

    @property
    def server_addr(self) -> ipaddress.IPv4Address:
        return self.server.addr

    # --- life cycle

    def __enter__(self) -> Topology:
        self.build()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add_host(self, role: str, interfaces: Mapping[str, str | Sequence[str]], *, ipv6: bool = False) -> Host:
        """A namespace for `role`; each interface gets its address (or addresses: "203.0.113.10/24",
        "2001:db8:1::10/64"). IPv6 stays off unless `ipv6`, and then only 2001:db8::/32 may be used."""
        v4: dict[str, ipaddress.IPv4Interface] = {}
        v6: dict[str, ipaddress.IPv6Interface] = {}
        for name, given in interfaces.items():
            for text in [given] if isinstance(given, str) else given:
                address = ipaddress.ip_interface(text)
                if isinstance(address, ipaddress.IPv6Interface):
                    if not ipv6 or address.ip not in DOC_NET6:
                        raise HarnessError(f"{address}: IPv6 needs ipv6=True and 2001:db8::/32")
                    v6.setdefault(name, address)
                else:
                    if not any(address.ip in net for net in ALLOWED_NETS):
                        raise HarnessError(f"{address} is outside the test ranges")
                    v4.setdefault(name, address)
        netns = f"{self.id}-{role}"
        _ip("netns", "add", netns)
        self._namespaces.append(netns)
        host = Host(self, role, netns, v4, v6)
        self.hosts[role] = host
        # The guard goes in before any interface exists; without ipv6, interfaces created later get no IPv6
        # (no link-local addresses, router solicitations or MLD reports); lo keeps ::1.
        host.nft(guard_ruleset())
        if ipv6:
            host.sysctl("net.ipv6.conf.default.accept_ra", 0)
            # No link-local address: neighbour discovery then speaks from the 2001:db8:: address, inside the guard.
            host.sysctl("net.ipv6.conf.default.addr_gen_mode", 1)
            host.sysctl("net.ipv6.conf.default.router_solicitations", 0)
        else:
            host.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
        host.ip("link", "set", "lo", "up")
        return host

    _add_host = add_host

    def link(self, a: Host, a_iface: str, b: Host, b_iface: str) -> None:
        """A veth pair between two hosts, each end with the addresses add_host() gave that interface."""
        # Both ends are created directly inside their namespaces: nothing appears in the root namespace.
        _ip(*f"link add {a_iface} netns {a.netns} type veth peer name {b_iface} netns {b.netns}".split())
        for host, iface in ((a, a_iface), (b, b_iface)):
            if iface in host.interfaces:
                host.ip("addr", "add", str(host.interfaces[iface]), "dev", iface)
            if iface in host.interfaces6:
                # nodad: the address is usable at once (no duplicate detection wait, no probe sent).
                host.ip("-6", "addr", "add", str(host.interfaces6[iface]), "dev", iface, "nodad")
            host.ip("link", "set", iface, "up")

    _link = link

    def build(self) -> Topology:
        reason = unavailable_reason()
        if reason is not None:
            raise HarnessError(reason)
        if shutil.which("nft") is None:
            raise HarnessError("nft not found (run scripts/install-test-deps.sh)")
        _open_topologies.add(self)
        try:
            if self._builder is not None:
                self._builder(self)
                return self
            if self.layout == "reverse":
                client = self._add_host("client", {"eth0": "203.0.113.10/24"})
                gw = self._add_host("gw", {"pub": "203.0.113.1/24", "int": "198.51.100.1/24"})
                server = self._add_host("server", {"eth0": "198.51.100.10/24"})
                self._link(gw, "pub", client, "eth0")
                self._link(gw, "int", server, "eth0")
                forward = 0
            else:
                client = self._add_host("lan", {"eth0": "198.18.0.10/24"})
                gw = self._add_host("gw", {"pub": "203.0.113.1/24", "lan": "198.18.0.1/24"})
                server = self._add_host("server", {"eth0": "203.0.113.20/24"})
                self._link(gw, "lan", client, "eth0")
                self._link(gw, "pub", server, "eth0")
                client.ip("route", "add", "default", "via", "198.18.0.1")
                forward = 1
            gw.sysctl("net.ipv4.ip_forward", forward)
            if self.layout == "transparent":
                gw.nft("""
table ip falg_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "pub" ip saddr 198.18.0.0/24 masquerade
    }
}
""")
        except BaseException:
            self.close()
            raise
        return self

    def intercept(self, to_port: int, *, dport: int = 21) -> None:
        """transparent: redirect LAN connections to any host's `dport` to the gateway's `to_port`
        (nftables `redirect`; the gateway finds the original destination with SO_ORIGINAL_DST)."""
        if self.layout != "transparent":
            raise HarnessError("intercept() is for the transparent layout")
        self.gw.nft(f"""
table ip falg_intercept {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "lan" tcp dport {dport} redirect to :{to_port}
    }}
}}
""")

    def start_gateway(self, args: Sequence[Arg], *, env: Mapping[str, str] | None = None) -> ManagedProcess:
        """`python -m alg.cli <args>` inside the gw namespace (log in the topology workdir)."""
        return self.gw.exec_python(["-m", "alg.cli", *args], env=env, name="gateway")

    def logs(self) -> str:
        """Output of every process started in this topology (for failure reports)."""
        return "\n".join(f"==== {p.name} pid={p.pid} rc={p.returncode} ====\n{p.log()[-8000:]}" for p in self.processes)

    def close(self) -> None:
        """Stop loops and processes, delete the namespaces and (unless FTP_ALG_KEEP_WORKDIR=1) the workdir."""
        if self._closed:
            return
        self._closed = True
        for loop in reversed(self.loops):
            with contextlib.suppress(Exception):
                loop.close()
        for process in reversed(self.processes):
            process.stop()
        for netns in reversed(self._namespaces):
            _delete_namespace(netns)
        if self._own_workdir and os.environ.get("FTP_ALG_KEEP_WORKDIR") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
        _open_topologies.discard(self)

    def __repr__(self) -> str:
        return f"<Topology {self.layout} {self.id} {list(self.hosts.values())}>"


def _mkdtemp(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)  # servers drop privileges; they must be able to traverse it
    return path


@contextlib.contextmanager
def topology(layout: str = "reverse", **kw: Any) -> Iterator[Topology]:
    with Topology(layout, **kw) as topo:
        yield topo


def wait_port(
    host: Host,
    ip: ipaddress.IPv4Address | str,
    port: int,
    timeout_s: float = 5.0,
    process: ManagedProcess | None = None,
) -> None:
    """Module-level spelling of Host.wait_port."""
    host.wait_port(ip, port, timeout_s=timeout_s, process=process)


@atexit.register
def _close_leftovers() -> None:
    for topo in list(_open_topologies):
        with contextlib.suppress(Exception):
            topo.close()
