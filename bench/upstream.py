"""A light upstream for the idle test: pyftpdlib, one process, anonymous read-only, no connection limits.

Usage (inside the server namespace): python bench/upstream.py ADDRESS PORT ROOT
"""

from __future__ import annotations

import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main(address: str, port: int, root: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(root)
    handler = FTPHandler
    handler.authorizer = authorizer
    handler.timeout = 900  # longer than any idle hold of the benchmark
    handler.banner = "pyftpdlib ready"
    server = FTPServer((address, port), handler, backlog=1024)  # bursts of logins: see bench/sessions.py
    server.max_cons = 0  # no limit: the benchmark holds 10,000 sessions
    server.max_cons_per_ip = 0
    server.serve_forever(timeout=1.0, handle_exit=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
