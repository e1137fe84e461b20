"""`ftp-alg demo`: a throw-away pyftpdlib server on 127.0.0.1, for the gateway to stand in front of.

Rules: pyftpdlib is optional and imported only here, only when the demo runs; the server runs in its own
thread on a port the kernel picks, serves a fresh temporary folder, and both are gone when the block ends.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from alg.ftp.addresses import HostPort
from alg.ops.config import Settings

# pyftpdlib's permission letters: list, read, and every kind of write, so uploads can be tried too.
_ANONYMOUS_PERMISSIONS = "elradfmwMT"

_README = """\
This folder is served by the ftp-alg demo: a pyftpdlib server on 127.0.0.1, reached through the gateway.
Anonymous users may read and write here; the folder is deleted when the demo stops.

Try:
  curl ftp://{gateway}/                                  list this folder (passive mode)
  curl ftp://{gateway}/README.txt                        download this file
  curl -P - ftp://{gateway}/sample.bin -o sample.bin     download in active mode
  curl -T somefile ftp://{gateway}/                      upload
"""


@dataclass(frozen=True)
class DemoUpstream:
    address: HostPort
    root: Path


def available() -> bool:
    return importlib.util.find_spec("pyftpdlib") is not None


def dial_address(settings: Settings) -> HostPort:
    """The first listen address as a client would dial it: an unspecified address becomes loopback."""
    address = settings.listen[0]
    if address.ip.is_unspecified:
        loopback = IPv4Address("127.0.0.1") if address.ip.version == 4 else IPv6Address("::1")
        address = HostPort(loopback, address.port)
    return address


def invitation(settings: Settings, upstream: DemoUpstream) -> str:
    """One line telling the user what to try."""
    return (
        f"ftp-alg demo: gateway on {settings.listen[0]} in front of pyftpdlib on {upstream.address}"
        f" serving {upstream.root}; try: curl ftp://{dial_address(settings)}/  (Ctrl-C stops)"
    )


@contextmanager
def demo_upstream(gateway: HostPort) -> Iterator[DemoUpstream]:
    """A pyftpdlib server with anonymous read-write access to a new temporary folder, until the block ends."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    quiet = logging.getLogger("pyftpdlib")
    quiet.setLevel(logging.WARNING)
    # With a handler of its own, pyftpdlib does not install its console logging at INFO.
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())

    with tempfile.TemporaryDirectory(prefix="ftp-alg-demo-") as folder:
        root = Path(folder)
        (root / "README.txt").write_text(_README.format(gateway=gateway))
        (root / "sample.bin").write_bytes(bytes(range(256)) * 256)

        authorizer = DummyAuthorizer()
        with warnings.catch_warnings():
            # pyftpdlib warns about write access for anonymous users, which is the point here.
            warnings.simplefilter("ignore", RuntimeWarning)
            authorizer.add_anonymous(folder, perm=_ANONYMOUS_PERMISSIONS)
        # A subclass, so the settings stay off pyftpdlib's shared FTPHandler class.
        handler = type("DemoHandler", (FTPHandler,), {"authorizer": authorizer, "banner": "ftp-alg demo upstream"})
        server = FTPServer(("127.0.0.1", 0), handler)
        host, port = server.address[:2]
        stop = threading.Event()

        def serve() -> None:
            try:
                # One poll at a time, so the loop notices `stop` within the poll timeout.
                while not stop.is_set():
                    server.serve_forever(timeout=0.1, blocking=False, handle_exit=False)
            finally:
                server.close_all()

        thread = threading.Thread(target=serve, name="demo upstream", daemon=True)
        thread.start()
        try:
            yield DemoUpstream(HostPort(IPv4Address(host), port), root)
        finally:
            stop.set()
            thread.join()
