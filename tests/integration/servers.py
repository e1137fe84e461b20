"""Real FTP daemons (vsftpd, pure-ftpd, proftpd) run in the foreground inside a test namespace.

Each serves a fresh temporary tree, allows uploads, listens on the given address (198.51.100.10:21 by
default) and announces its OWN address in 227: no pasv_address / ForcePassiveIP / MasqueradeAddress,
and the data-peer checks (vsftpd's pasv/port_promiscuous=NO) stay on, because that is what the gateway
must cope with.  pure-ftpd and proftpd run from the .debs that scripts/install-test-deps.sh unpacks.
With `tls=` (a certificate from tests/integration/pki.py) each one is an FTPS-only server: vsftpd with
require_ssl_reuse, proftpd mod_tls with TLSRequired on, pure-ftpd -Y 2.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from netns import Host, ManagedProcess, process_state
from pki import CertFiles

CACHE_DIR = Path(os.environ.get("FTP_ALG_TEST_CACHE", "/var/cache/ftp-alg-test"))
VSFTPD = Path("/usr/sbin/vsftpd")
PUREFTPD = CACHE_DIR / "pure-ftpd/usr/sbin/pure-ftpd"
PURE_PW = CACHE_DIR / "pure-ftpd/usr/bin/pure-pw"
PROFTPD = CACHE_DIR / "proftpd-core/usr/sbin/proftpd"
PROFTPD_MODULES = CACHE_DIR / "proftpd-core/usr/lib/proftpd"

KINDS = ("vsftpd", "pure-ftpd", "proftpd")
DEFAULT_PASV_PORTS = (30000, 30019)
READY_TIMEOUT_S = 5.0

# Unprivileged uid/gid the daemons map the test user to (nobody/nogroup on Debian).
TEST_UID = 65534
TEST_GID = 65534


@dataclass(frozen=True)
class FtpTarget:
    """Where a client should connect and how to log in (a server directly, or the gateway)."""

    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    user: str
    password: str

    def url(self, path: str = "") -> str:
        host = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"ftp://{host}:{self.port}/{path.lstrip('/')}"


@dataclass
class FtpServer:
    """A running daemon.  `root` is the served tree (read-only at its top; uploads go under upload/
    or dir/); `seeded` maps the seed files (hello.txt, small.bin, big.bin, dir/nested.txt, empty.txt)
    to their sha256."""

    kind: str
    host: Host
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    root: Path
    user: str
    password: str
    pasv_ports: tuple[int, int]
    workdir: Path
    process: ManagedProcess
    log_paths: list[Path] = field(default_factory=list)
    seeded: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 of the seed tree
    tls: CertFiles | None = None  # FTPS only (explicit AUTH TLS, or implicit_ssl for vsftpd) when set

    def target(self, addr: ipaddress.IPv4Address | str | None = None, port: int | None = None) -> FtpTarget:
        """Login data for a client; pass the gateway's address/port to go through it."""
        return FtpTarget(ipaddress.ip_address(str(addr or self.addr)), port or self.port, self.user, self.password)

    def url(self, path: str = "") -> str:
        return self.target().url(path)

    def path(self, relative: str) -> Path:
        return self.root / relative.lstrip("/")

    def sha256(self, relative: str) -> str:
        return sha256_file(self.path(relative))

    def put_file(self, relative: str, data: bytes) -> Path:
        """Add a file to the served tree (readable and writable by the daemon's user)."""
        path = self.path(relative)
        for parent in reversed(path.relative_to(self.root).parents[:-1]):
            directory = self.root / parent
            if not directory.exists():
                directory.mkdir()
                directory.chmod(0o777)  # the daemons run as unprivileged users
        path.write_bytes(data)
        path.chmod(0o666)
        return path

    def logs(self) -> str:
        parts = [f"==== {self.process.name} output ====\n{self.process.log()}"]
        for log in self.log_paths:
            if log.exists():
                parts.append(f"==== {log.name} ====\n{log.read_text(errors='replace')}")
        return "\n".join(parts)

    def stop(self) -> None:
        # SIGKILL at once: a test daemon has nothing to save, and proftpd's SIGTERM path sleeps.
        self.process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.kind == "pure-ftpd":
            _remove_dead_pureftpd_sessions()

    def __repr__(self) -> str:
        return f"<FtpServer {self.kind} {self.addr}:{self.port} root={self.root} pid={self.process.pid}>"


def _remove_dead_pureftpd_sessions() -> None:
    # pure-ftpd keeps a file per session in a compiled-in directory; a killed session leaves its own.
    for session in Path("/var/run/pure-ftpd").glob("client-*"):
        pid = session.name.removeprefix("client-")
        state = process_state(int(pid)) if pid.isdigit() else None
        if pid.isdigit() and (state is None or state[0] == "Z"):
            session.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def missing(kind: str) -> str | None:
    """Why `kind` cannot run here (binary not installed), or None."""
    if kind.startswith("pyftpdlib"):
        import importlib.util

        return None if importlib.util.find_spec("pyftpdlib") else "pyftpdlib is not installed (the test extra)"
    needed = {"vsftpd": [VSFTPD], "pure-ftpd": [PUREFTPD, PURE_PW], "proftpd": [PROFTPD]}[kind]
    for path in needed:
        if not os.access(path, os.X_OK):
            return f"{kind}: {path} not found (run scripts/install-test-deps.sh)"
    return None


def seed_tree(root: Path, kind: str) -> dict[str, str]:
    """Fill `root` with a few files and return {relative path: sha256}."""
    rng = random.Random(f"ftp-alg-{kind}")
    files = {
        "hello.txt": f"hello from {kind}\r\n".encode(),
        "small.bin": rng.randbytes(64 * 1024 + 7),
        "big.bin": rng.randbytes(2 * 1024 * 1024 + 3),
        "dir/nested.txt": b"nested\n",
        "empty.txt": b"",
    }
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o666)
    for directory in (root / "dir", root / "upload"):
        directory.mkdir(exist_ok=True)
        directory.chmod(0o777)
    return {relative: hashlib.sha256(data).hexdigest() for relative, data in files.items()}


def _password_hash(password: str) -> str:
    """A SHA-512 crypt(3) hash (`$6$...`), which both pure-ftpd and proftpd verify cheaply."""
    # `openssl passwd`, not the crypt module: that one is deprecated and gone in Python 3.13.
    done = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return done.stdout.strip()


def start_server(
    kind: str,
    host: Host,
    *,
    addr: ipaddress.IPv4Address | str | None = None,
    port: int = 21,
    pasv_ports: tuple[int, int] = DEFAULT_PASV_PORTS,
    ready_timeout_s: float = READY_TIMEOUT_S,
    options: Mapping[str, str] | None = None,
    tls: CertFiles | None = None,
    family: str = "ipv4",
) -> FtpServer:
    """Start an FTP daemon of `kind` in `host`'s namespace and wait until it accepts connections.

    `options` (vsftpd only) replace or add vsftpd.conf settings, e.g. {"max_clients": "2000"}, applied after
    the TLS ones (so {"require_ssl_reuse": "NO"} or {"implicit_ssl": "YES"} work).
    `tls`: serve FTPS only, with this certificate (TLS for logins and for data).
    `family`: "ipv4" (the host's IPv4 address), "ipv6" (its IPv6 address only) or "dual" (both: vsftpd on
    [::] with IPv4-mapped clients, pure-ftpd on every address, proftpd bound to both)."""
    reason = missing(kind)
    if options and kind != "vsftpd":
        raise ValueError(f"options are for vsftpd, not {kind}")
    if reason is not None:
        raise FileNotFoundError(reason)
    addr = ipaddress.ip_address(str(addr or (host.addr6 if family == "ipv6" else host.addr)))
    workdir = Path(tempfile.mkdtemp(prefix=f"{host.topology.id}-{kind}-", dir=host.topology.workdir))
    workdir.chmod(0o755)
    root = workdir / "root"
    root.mkdir()
    # vsftpd refuses an anonymous chroot that its user can write to; for the same behaviour everywhere,
    # every root is read-only and uploads go under upload/ (and dir/).
    root.chmod(0o755)
    seeded = seed_tree(root, kind)
    starter = {
        "vsftpd": _start_vsftpd,
        "pure-ftpd": _start_pureftpd,
        "proftpd": _start_proftpd,
        "pyftpdlib": _start_pyftpdlib,
        "pyftpdlib-rfc959": _start_pyftpdlib,
    }[kind]
    extra: dict[str, object] = {"options": options} if options else {}
    if tls is not None:
        extra["tls"] = tls
    if family != "ipv4":
        extra["family"] = family
    if kind == "pyftpdlib-rfc959":
        extra["rfc959"] = True
    server = starter(host, addr, port, pasv_ports, workdir, root, **extra)  # type: ignore[operator]
    server.seeded = seeded
    server.tls = tls
    try:
        host.wait_port(addr, port, timeout_s=ready_timeout_s, process=server.process)
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------- vsftpd


def _start_vsftpd(
    host: Host,
    addr: ipaddress.IPv4Address,
    port: int,
    pasv_ports: tuple[int, int],
    workdir: Path,
    root: Path,
    options: Mapping[str, str] | None = None,
    tls: CertFiles | None = None,
    family: str = "ipv4",
) -> FtpServer:
    # Anonymous login (any password), chrooted into the served tree, uploads allowed.  vsftpd refuses
    # a writable chroot unless allow_writeable_chroot; the anonymous user is `ftp` (created by the
    # Debian package), else nobody.
    empty = workdir / "empty"
    empty.mkdir()
    empty.chmod(0o755)
    log = workdir / "vsftpd.log"
    ftp_user = "ftp" if _user_exists("ftp") else "nobody"
    conf = workdir / "vsftpd.conf"
    settings = {
        "listen": "YES",
        "listen_ipv6": "NO",
        "listen_address": str(addr),
        "listen_port": str(port),
        "background": "NO",
        "anonymous_enable": "YES",
        "local_enable": "NO",
        "ftp_username": str(ftp_user),
        "anon_root": str(root),
        "write_enable": "YES",
        "anon_upload_enable": "YES",
        "anon_mkdir_write_enable": "YES",
        "anon_other_write_enable": "YES",
        "anon_world_readable_only": "NO",
        "anon_umask": "022",
        "allow_writeable_chroot": "YES",
        "pasv_enable": "YES",
        "pasv_min_port": str(pasv_ports[0]),
        "pasv_max_port": str(pasv_ports[1]),
        "port_enable": "YES",
        "connect_from_port_20": "NO",
        "pasv_promiscuous": "NO",
        "port_promiscuous": "NO",
        "pasv_addr_resolve": "NO",
        "secure_chroot_dir": str(empty),
        "seccomp_sandbox": "NO",
        "syslog_enable": "NO",
        "xferlog_enable": "YES",
        "dual_log_enable": "NO",
        "xferlog_std_format": "NO",
        "log_ftp_protocol": "YES",
        "vsftpd_log_file": str(log),
        "idle_session_timeout": "60",
        "data_connection_timeout": "30",
        "accept_timeout": "10",
        "connect_timeout": "10",
        "max_clients": "100",
        "max_per_ip": "100",
    }
    if tls is not None:
        settings.update(_vsftpd_tls(tls))
    if family != "ipv4":
        # vsftpd listens on one family per process; listen_ipv6 on [::] takes IPv4 clients too (dual).
        del settings["listen_address"]
        settings.update(listen="NO", listen_ipv6="YES")
        if family == "ipv6":
            settings["listen_address6"] = str(addr)
    settings.update(options or {})
    conf.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    conf.chmod(0o600)  # vsftpd insists that root owns its config file
    process = host.popen([VSFTPD, conf], name="vsftpd", log_path=workdir / "vsftpd.out")
    return FtpServer(
        "vsftpd",
        host,
        addr,
        port,
        root,
        "anonymous",
        "test@ftp-alg.test",
        pasv_ports,
        workdir,
        process,
        [log],
    )


def _vsftpd_tls(tls: CertFiles) -> dict[str, str]:
    # vsftpd 3.0.3's default ssl_ciphers (DES-CBC3-SHA) is not offered by Debian 12's OpenSSL 3: HIGH.
    # The tests log in anonymously, so the anon_ switches are the ones that force TLS; the local_ ones too.
    return {
        "ssl_enable": "YES",
        "rsa_cert_file": str(tls.cert),
        "rsa_private_key_file": str(tls.key),
        "ssl_ciphers": "HIGH",
        "require_ssl_reuse": "YES",
        "allow_anon_ssl": "YES",
        "force_anon_logins_ssl": "YES",
        "force_anon_data_ssl": "YES",
        "force_local_logins_ssl": "YES",
        "force_local_data_ssl": "YES",
        "ssl_sslv2": "NO",
        "ssl_sslv3": "NO",
        "ssl_tlsv1": "YES",
        "debug_ssl": "YES",
    }


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# --------------------------------------------------------------------------- pure-ftpd


def _start_pureftpd(
    host: Host,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    pasv_ports: tuple[int, int],
    workdir: Path,
    root: Path,
    tls: CertFiles | None = None,
    family: str = "ipv4",
) -> FtpServer:
    # A PureDB virtual user (no system account) mapped to nobody, chrooted into the served tree.
    user, password = "test", "test-pass"
    passwd, pdb = workdir / "pureftpd.passwd", workdir / "pureftpd.pdb"
    # The passwd line is written here with a SHA-512 crypt hash: pure-pw's default (argon2 via
    # libsodium) costs seconds of CPU per login.  Fields: user:hash:uid:gid:gecos:home/./ then unused.
    passwd.write_text(f"{user}:{_password_hash(password)}:{TEST_UID}:{TEST_GID}::{root}/./::::::::::::\n")
    passwd.chmod(0o600)
    subprocess.run([PURE_PW, "mkdb", pdb, "-f", passwd], capture_output=True, check=True, timeout=10)
    options: list[tuple[str, ...]] = [
        ("-S", str(port) if family == "dual" else f"{addr},{port}"),
        ("-l", f"puredb:{pdb}"),
        ("-E",),  # no anonymous
        ("-A",),  # chroot everyone
        ("-H",),  # no reverse DNS
        *((("-4",),) if family == "ipv4" else ()),
        ("-p", f"{pasv_ports[0]}:{pasv_ports[1]}"),
        ("-c", "100"),  # clients
        ("-C", "100"),  # clients per IP
        ("-I", "5"),  # idle minutes
        ("-u", "1"),  # minimum uid (nobody is 65534 anyway)
        ("-O", f"stats:{workdir / 'pureftpd.xfer.log'}"),
        ("-g", str(workdir / "pure-ftpd.pid")),
        ("-d",),  # verbose (to syslog, where there is one)
    ]
    if tls is not None:
        options += [("-Y", "2"), ("-2", f"{tls.cert},{tls.key}")]  # 2: TLS sessions only
    argv = [str(PUREFTPD), *(part for option in options for part in option)]
    process = host.popen(argv, name="pure-ftpd", log_path=workdir / "pureftpd.out")
    return FtpServer(
        "pure-ftpd",
        host,
        addr,
        port,
        root,
        user,
        password,
        pasv_ports,
        workdir,
        process,
        [workdir / "pureftpd.xfer.log"],
    )


# --------------------------------------------------------------------------- proftpd


def _start_proftpd(
    host: Host,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    pasv_ports: tuple[int, int],
    workdir: Path,
    root: Path,
    tls: CertFiles | None = None,
    family: str = "ipv4",
) -> FtpServer:
    # A user from an AuthUserFile (no system account), mapped to nobody, chrooted (DefaultRoot ~).
    user, password = "test", "test-pass"
    passwd, group = workdir / "proftpd.passwd", workdir / "proftpd.group"
    passwd.write_text(f"{user}:{_password_hash(password)}:{TEST_UID}:{TEST_GID}:ftp-alg test:{root}:/bin/sh\n")
    group.write_text(f"testgroup:x:{TEST_GID}:\n")
    for path in (passwd, group):
        path.chmod(0o600)  # mod_auth_file refuses world-readable/writable files
    system_log, ext_log, xfer_log = (
        workdir / "proftpd.log",
        workdir / "proftpd.ext.log",
        workdir / "proftpd.xfer.log",
    )
    conf = workdir / "proftpd.conf"
    conf.write_text(f"""\
ServerName "ftp-alg test proftpd"
ServerType standalone
DefaultServer on
SocketBindTight on
DefaultAddress {addr}{f" {host.addr6}" if family == "dual" else ""}
Port {port}
UseIPv6 {"off" if family == "ipv4" else "on"}
# While proftpd sends a file with sendfile(2) it reads no command, ABOR included (even without a gateway).
UseSendfile off
User nobody
Group nogroup
Umask 022
MaxInstances 100
PidFile {workdir / "proftpd.pid"}
ScoreboardFile {workdir / "proftpd.scoreboard"}
WtmpLog off
UseReverseDNS off
AuthOrder mod_auth_file.c mod_auth_unix.c
AuthUserFile {passwd}
AuthGroupFile {group}
AuthPAM off
RequireValidShell off
DefaultRoot ~
AllowOverwrite on
AllowStoreRestart on
AllowRetrieveRestart on
PassivePorts {pasv_ports[0]} {pasv_ports[1]}
TimeoutIdle 60
TimeoutNoTransfer 60
SystemLog {system_log}
TransferLog {xfer_log}
LogFormat full "%h %u %r -> %s"
ExtendedLog {ext_log} ALL full
<IfModule mod_delay.c>
  DelayEngine off
</IfModule>
<IfModule mod_dso.c>
  ModulePath {PROFTPD_MODULES}
</IfModule>
<IfModule mod_ctrls.c>
  ControlsEngine off
</IfModule>
""")
    if tls is not None:
        tls_log = workdir / "proftpd.tls.log"
        tls_logs = [tls_log]
        # mod_tls comes from proftpd-mod-crypto (copied into the core's ModulePath by install-test-deps.sh).
        # It requires the data connections to reuse the control connection's session, like vsftpd.
        with open(conf, "a") as f:
            f.write(f"""\
<IfModule mod_dso.c>
  LoadModule mod_tls.c
</IfModule>
<IfModule mod_tls.c>
  TLSEngine on
  TLSRequired on
  TLSProtocol TLSv1.2 TLSv1.3
  TLSRSACertificateFile {tls.cert}
  TLSRSACertificateKeyFile {tls.key}
  TLSVerifyClient off
  TLSRenegotiate none
  TLSLog {tls_log}
</IfModule>
""")
    else:
        tls_logs = []
    argv = [PROFTPD, "-n", *(["-4"] if family == "ipv4" else []), "-c", conf]
    process = host.popen(argv, name="proftpd", log_path=workdir / "proftpd.out")
    return FtpServer(
        "proftpd",
        host,
        addr,
        port,
        root,
        user,
        password,
        pasv_ports,
        workdir,
        process,
        [system_log, ext_log, xfer_log, *tls_logs],
    )


# --------------------------------------------------------------------------- pyftpdlib

# pyftpdlib in its own process in the namespace. "pyftpdlib-rfc959" knows no EPSV/EPRT (RFC 2428) and answers
# them with 500, as old and embedded servers do: the case where the gateway must speak PASV/PORT upstream.
# With a certificate (the test extra's pyOpenSSL) it is FTPS only: TLS required for logins and for data; unlike
# the other daemons it implements REIN and a second USER, and forgets PBSZ and PROT on both.
_PYFTPDLIB = """
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

addr, port, root, first, last, rfc959 = sys.argv[1], int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:7])
authorizer = DummyAuthorizer()
authorizer.add_user("test", "test-pass", root, perm="elradfmwMT")
base, tls = FTPHandler, {}
if len(sys.argv) > 7:
    from pyftpdlib.handlers import TLS_FTPHandler as base
    tls = {"certfile": sys.argv[7], "keyfile": sys.argv[8], "tls_control_required": True, "tls_data_required": True}
commands = dict(base.proto_cmds)
if rfc959:
    for verb in ("EPSV", "EPRT"):
        del commands[verb]
Handler = type("Handler", (base,), {
    "authorizer": authorizer, "proto_cmds": commands, "passive_ports": range(first, last + 1),
    "permit_foreign_addresses": False, **tls,
})
FTPServer((addr, port), Handler).serve_forever(timeout=0.5)
"""


def _start_pyftpdlib(
    host: Host,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    pasv_ports: tuple[int, int],
    workdir: Path,
    root: Path,
    family: str = "ipv4",
    rfc959: bool = False,
    tls: CertFiles | None = None,
) -> FtpServer:
    argv = ["-c", _PYFTPDLIB, *map(str, (addr, port, root, *pasv_ports, int(rfc959)))]
    if tls is not None:
        argv += [str(tls.cert), str(tls.key)]
    process = host.exec_python(argv, log_path=workdir / "pyftpdlib.out", name="pyftpdlib")
    kind = "pyftpdlib-rfc959" if rfc959 else "pyftpdlib"
    return FtpServer(kind, host, addr, port, root, "test", "test-pass", pasv_ports, workdir, process, [])
