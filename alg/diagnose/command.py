"""`ftp-alg diagnose URL`: the handler behind the subcommand. URL and credentials in, a report and an exit
status out (0 every mode works, 1 some modes fail, 2 cannot connect or log in).

Rules: the password comes from the URL, --password-file, ~/.netrc or a prompt, and is never printed; every
network wait is bounded by --wait and the whole run by --time-limit.
"""

from __future__ import annotations

import argparse
import getpass
import json
import netrc
import os
import sys
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import unquote, urlsplit

from alg.diagnose.observations import IPAddress
from alg.diagnose.probe import Target, probe
from alg.diagnose.progress import Progress
from alg.diagnose.reasoning import diagnose
from alg.diagnose.report import render_text, to_json

ANONYMOUS = ("anonymous", "ftp-alg-diagnose@")
# Shorter passwords are not masked: masking every "a" or "12" would garble the report, not protect anything.
MIN_MASKED_PASSWORD = 4


class UsageError(ValueError):
    """A URL or option we cannot use; the CLI prints it as one line and exits 2."""


def run(args: argparse.Namespace) -> int:
    target = target_from(args)
    progress = Progress(sys.stderr)
    try:
        obs = probe(target, progress)
    finally:
        progress.finish()
    diagnosis = diagnose(obs)
    report = json.dumps(to_json(obs, diagnosis), indent=2) + "\n" if args.json else render_text(obs, diagnosis)
    print(hide_password(report, target.password), end="")
    return diagnosis.exit_status


def hide_password(report: str, password: str) -> str:
    """The report with any echo of the password (a server may quote it back in a reply) masked."""
    if len(password) < MIN_MASKED_PASSWORD:
        return report
    return report.replace(password, "***")


def target_from(args: argparse.Namespace) -> Target:
    url = urlsplit(args.url)
    if url.scheme not in ("ftp", "ftps"):
        raise UsageError(f"expected ftp://[user[:password]@]host[:port]/ or ftps://..., got scheme {url.scheme!r}")
    try:
        port = url.port or 21
    except ValueError:
        raise UsageError("the URL's port is not a number in 0-65535") from None
    host = url.hostname
    if not host:
        raise UsageError("the URL has no host")
    user = unquote(url.username) if url.username else None
    password = unquote(url.password) if url.password is not None else None
    user, password = _credentials(host, user, password, args.password_file)
    return Target(
        host=host,
        port=port,
        user=user,
        password=password,
        tls=args.tls or url.scheme == "ftps",
        insecure=args.insecure,
        wait_s=args.wait,
        total_s=args.time_limit,
        size=args.size,
        folder=unquote(url.path),
        active_address=_address(args.active_address, "--active-address"),
        internal_address=_address(args.internal_address, "--internal-address"),
    )


def _credentials(host: str, user: str | None, password: str | None, password_file: str | None) -> tuple[str, str]:
    if password is not None:
        return user or ANONYMOUS[0], password
    if password_file is not None:
        try:
            lines = Path(password_file).read_text().splitlines()
        except OSError as exc:
            raise UsageError(f"--password-file: {exc.strerror}: {password_file}") from None
        return user or ANONYMOUS[0], lines[0] if lines else ""
    from_netrc = _netrc(host, user)
    if from_netrc is not None:
        return from_netrc
    if user is None or user in ("anonymous", "ftp"):
        return user or ANONYMOUS[0], ANONYMOUS[1]
    if sys.stdin.isatty():
        return user, getpass.getpass(f"password for {user}@{host}: ")
    raise UsageError(f"no password for {user}@{host}: put it in the URL, --password-file or ~/.netrc")


def _netrc(host: str, user: str | None) -> tuple[str, str] | None:
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not path.exists():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    if entry is None:
        return None
    login, _, password = entry
    if user is not None and login and login != user:
        return None
    return user or login or ANONYMOUS[0], password or ""


def _address(text: str | None, option: str) -> IPAddress | None:
    if text is None:
        return None
    try:
        return ip_address(text)
    except ValueError:
        raise UsageError(f"{option}: expected an IP address, got {text!r}") from None


def byte_size(text: str) -> int:
    """--size: bytes, or with a K, M or G suffix (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].upper() in units and text[-1:].isalpha() else (text, "")
    if not number.isascii() or not number.isdigit() or len(number) > 9:
        raise argparse.ArgumentTypeError(f"expected a size such as 4096, 64K or 10M, got {text!r}")
    return int(number) * units[unit]


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 3600], got {text!r}")
    return value
