"""A certificate renewed while the gateway runs as an unprivileged user (`user: nobody`): the files are laid out as
certbot leaves them (key readable by root only, live/ symlinks into archive/) or with a group-readable key; a
renewal and a SIGHUP serve the new certificate (the parent process keeps root to read it), a renewal gone
wrong keeps the old one and the log names the file and why.

Topology: client 203.0.113.10 -> gateway 203.0.113.1 | 198.51.100.1 -> vsftpd 198.51.100.10.
"""

from __future__ import annotations

import ftplib
import grp
import os
import signal
import ssl
import time
from pathlib import Path

import pytest
import trustme
from gateway import Gateway, start_reverse_gateway
from netns import Topology
from servers import FtpServer

pytestmark = pytest.mark.netns


@pytest.fixture
def site(reverse_topo: Topology, vsftpd: FtpServer) -> tuple[Topology, FtpServer]:
    return reverse_topo, vsftpd  # conftest's: vsftpd at 198.51.100.10:21 behind the reverse topology


class CertbotLayout:
    """/etc/letsencrypt as certbot writes it: archive/NAME/{fullchainN,privkeyN}.pem, live/NAME/* symlinks."""

    def __init__(self, root: Path, ca: trustme.CA, *, key_mode: int, key_group: int) -> None:
        self.root, self.ca, self.key_mode, self.key_group = root, ca, key_mode, key_group
        self.archive = root / "archive" / "ftp"
        self.live = root / "live" / "ftp"
        self.archive.mkdir(parents=True)
        self.live.mkdir(parents=True)
        for directory in (root / "archive", root / "live"):
            directory.chmod(0o700)  # certbot's own modes: only root may enter
        self.version = 0

    @property
    def cert(self) -> Path:
        return self.live / "fullchain.pem"

    @property
    def key(self) -> Path:
        return self.live / "privkey.pem"

    def renew(self) -> bytes:
        """A new certificate and key, as `certbot renew` leaves them; the leaf's DER."""
        self.version += 1
        leaf = self.ca.issue_cert("203.0.113.1", "ftp-alg.test")
        chain = self.archive / f"fullchain{self.version}.pem"
        key = self.archive / f"privkey{self.version}.pem"
        chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        os.chown(key, 0, self.key_group)
        key.chmod(self.key_mode)
        for link, target in ((self.cert, chain), (self.key, key)):
            temporary = link.with_suffix(".new")
            temporary.symlink_to(os.path.relpath(target, link.parent))
            temporary.replace(link)
        return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def served_certificate(topo: Topology, gateway: Gateway) -> bytes:
    """The leaf certificate the gateway shows after AUTH TLS (DER)."""

    def body() -> bytes:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        ftp = ftplib.FTP_TLS(context=context, timeout=10)
        ftp.connect(str(gateway.addr), gateway.port)
        ftp.auth()
        der = ftp.sock.getpeercert(binary_form=True)
        ftp.close()
        assert der is not None
        return der

    return bytes(topo.client.call(body))


def wait_log(gateway: Gateway, text: str, count: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while gateway.log().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} #{count} in the gateway log:\n{gateway.log()[-4000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize("layout", ["root-only key", "group-readable key"])
def test_a_renewed_certificate_is_served_after_sighup_under_user(
    site: tuple[Topology, FtpServer], tmp_path: Path, layout: str
) -> None:
    topo, _ = site
    group = grp.getgrnam("nogroup").gr_gid if layout == "group-readable key" else 0
    mode = 0o640 if layout == "group-readable key" else 0o600
    files = CertbotLayout(tmp_path / "letsencrypt", trustme.CA(), key_mode=mode, key_group=group)
    first = files.renew()
    tls = ["--tls-client", "allow", "--tls-cert", str(files.cert), "--tls-key", str(files.key)]
    gateway = start_reverse_gateway(topo, "--user", "nobody", *tls)
    try:
        wait_log(gateway, "running as user=nobody", 1)
        assert served_certificate(topo, gateway) == first

        second = files.renew()
        gateway.process.signal(signal.SIGHUP)
        wait_log(gateway, "settings reloaded", 1)
        assert served_certificate(topo, gateway) == second
        assert "Permission denied" not in gateway.log()

        # A renewal gone wrong: the live key names a file that is not there. The old certificate stays.
        files.key.unlink()
        files.key.symlink_to("../../archive/ftp/privkey9.pem")
        gateway.process.signal(signal.SIGHUP)
        wait_log(gateway, "reload failed, keeping the running settings", 1)
        assert f"tls.client.key: cannot read {files.key}: No such file or directory" in gateway.log()
        assert served_certificate(topo, gateway) == second
    finally:
        assert gateway.stop() == 0, gateway.log()[-3000:]
