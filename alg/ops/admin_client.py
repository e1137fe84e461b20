"""`ftp-alg sessions`: list a running gateway's live sessions as a table, or end one (`--end ID`);
`ftp-alg bans`: list the defender's bans, or lift one (`--unban ADDRESS`).

Rules: talks only to the admin URL it is given (or the one the config's admin.listen names); the token comes
from --token-file, --token or $FTP_ALG_ADMIN_TOKEN; exit 0 done, 1 the gateway refused or could not be
reached, 2 bad usage. Everything printed from the gateway is escaped (user names and paths come from clients).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any, TextIO

from alg.ops.admin import TOKEN_ENV, parse_session_id, read_token
from alg.ops.logs import printable

DEFAULT_URL = "http://127.0.0.1:9180"
TIMEOUT_S = 10.0
COLUMNS = ("ID", "CLIENT", "USER", "UPSTREAM", "STARTED", "IDLE", "TRANSFERS")


class UsageError(Exception):
    pass


def add_parser(commands: Any) -> None:
    sessions = commands.add_parser(
        "sessions",
        help="list the live sessions of a running gateway, or end one",
        description="List the live sessions of a running gateway (its admin endpoint, admin.listen), or end "
        "one: the client gets a 421. Exit status: 0 done, 1 refused or unreachable, 2 bad usage.",
    )
    _add_target(sessions)
    sessions.add_argument(
        "--end", type=_session_id, metavar="ID", help="end session ID, whose client gets 421 (default: none, list them)"
    )
    sessions.add_argument("--json", action="store_true", help="print the gateway's JSON as it is (default: a table)")


def add_bans_parser(commands: Any) -> None:
    bans = commands.add_parser(
        "bans",
        help="list the defender's bans on a running gateway, or lift one",
        description="List the client addresses the defender has banned (its admin endpoint, admin.listen), or "
        "lift a ban with --unban. Exit status: 0 done, 1 refused, unreachable or no such ban, 2 bad usage.",
    )
    _add_target(bans)
    bans.add_argument(
        "--unban", metavar="ADDRESS", help="lift the ban on ADDRESS or its network, e.g. a /64 (default: none, list)"
    )
    bans.add_argument("--json", action="store_true", help="print the gateway's JSON as it is (default: a table)")


def _add_target(parser: Any) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", metavar="URL", help=f"the gateway's admin URL (default {DEFAULT_URL})")
    where.add_argument(
        "--config", metavar="FILE", help="take the URL (admin.listen) and token file from here (default: none, --url)"
    )
    parser.add_argument("--token-file", metavar="FILE", help=f"bearer token file (default: --token, else ${TOKEN_ENV})")
    parser.add_argument(
        "--token", metavar="TOKEN", help="bearer token, visible to other users: prefer a file (default: none)"
    )


def _session_id(text: str) -> str:
    if parse_session_id(text) is None:
        raise argparse.ArgumentTypeError(f"expected a session id (WORKER-NUMBER, as listed), got {printable(text)!r}")
    return text


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """(base URL, token) from the arguments, the config file and the environment."""
    token_file: Path | None = Path(args.token_file) if args.token_file else None
    url = args.url or DEFAULT_URL
    if args.config:
        from alg.ops.config import load_config

        settings = load_config(args.config)
        listen = settings.admin.listen
        if listen is None:
            raise UsageError(f"{args.config}: admin.listen is not set, so the gateway serves no /sessions")
        host = listen.ip
        if host.is_unspecified:
            host = IPv6Address("::1") if isinstance(host, IPv6Address) else type(host)("127.0.0.1")
        url = f"http://[{host}]:{listen.port}" if isinstance(host, IPv6Address) else f"http://{host}:{listen.port}"
        token_file = token_file or settings.admin.token_file
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, got {url!r}")
    token = args.token or read_token(token_file, dict(os.environ))
    return url.rstrip("/"), token


def _request(url: str, method: str, token: str | None) -> bytes:
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        body: bytes = response.read()
        return body


def _call(url: str, method: str, token: str | None) -> bytes | None:
    """The answer's body; None (and one line on stderr) when the gateway refused or could not be reached."""
    try:
        return _request(url, method, token)
    except urllib.error.HTTPError as error:
        detail = error.read(200).decode("utf-8", "replace").strip()
        hint = " (give the token with --token-file or $FTP_ALG_ADMIN_TOKEN)" if error.code == 401 else ""
        print(f"ftp-alg: error: {url}: {error.code} {printable(detail)}{hint}", file=sys.stderr)
        return None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        print(f"ftp-alg: error: cannot reach {url}: {printable(str(reason))}", file=sys.stderr)
        return None


def run_bans(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    base, token = _target(args)
    if args.unban is not None:
        if not args.unban.strip() or not args.unban.isascii() or not args.unban.isprintable():
            raise UsageError(f"--unban: expected an address or ADDRESS/PREFIX, got {args.unban!r}")
        url, method = f"{base}/bans/{urllib.parse.quote(args.unban.strip(), safe=':')}", "DELETE"
    else:
        url, method = f"{base}/bans", "GET"
    body = _call(url, method, token)
    if body is None:
        return 1
    if args.unban is not None or args.json:
        text = body.decode("utf-8", "replace")
        out.write(text if args.json and args.unban is None else printable(text.strip()) + "\n")
        return 0
    out.write(bans_table(json.loads(body)))
    return 0


def bans_table(answer: dict[str, Any]) -> str:
    """The bans as aligned columns (client, reason, repeat, time left), then a count; every field escaped."""
    rows = [("CLIENT", "REASON", "REPEAT", "LEFT")]
    for ban in answer.get("bans") or []:
        rows.append(
            (
                printable(str(ban.get("client", "?")), 64),
                printable(str(ban.get("reason", "?")), 32),
                str(int(ban.get("repeat") or 0)),
                f"{float(ban.get('remaining_s') or 0):.0f}s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]
    count = len(rows) - 1
    lines.append(f"{count} ban{'s' if count != 1 else ''}" + ("" if answer.get("enabled", True) else " (defender off)"))
    return "\n".join(line.rstrip() for line in lines) + "\n"


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    base, token = _target(args)
    if args.end is not None:
        url, method = f"{base}/sessions/{args.end}", "DELETE"
    else:
        url, method = f"{base}/sessions", "GET"
    body = _call(url, method, token)
    if body is None:
        return 1
    if args.end is not None:
        print(printable(body.decode("utf-8", "replace").strip()), file=out)
        return 0
    if args.json:
        out.write(body.decode("utf-8", "replace"))
        return 0
    document = json.loads(body)
    out.write(table(document["sessions"]))
    silent = document.get("unreachable_workers") or []
    if silent:
        listed = ", ".join(printable(str(index)) for index in silent)
        print(f"ftp-alg: warning: not listed: the sessions of worker(s) {listed} (no answer)", file=sys.stderr)
        return 1
    return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _transfers(transfers: list[dict[str, Any]]) -> str:
    shown = []
    for transfer in transfers:
        moved = int(transfer.get("bytes_download") or 0) + int(transfer.get("bytes_upload") or 0)
        verb = transfer.get("command") or transfer.get("mode") or "?"
        path = transfer.get("path")
        text = f"{verb} {path}" if path else str(verb)
        shown.append(f"{printable(text, 40)} {_size(moved)}")
    return ", ".join(shown) or "-"


def table(sessions: list[dict[str, Any]]) -> str:
    """The sessions as aligned columns, one line each, with a header; every field escaped."""
    rows = [COLUMNS]
    for session in sessions:
        rows.append(
            (
                str(session.get("id", "?")),
                printable(str(session.get("client", "-"))),
                printable(str(session.get("user") or "-"), 32),
                printable(str(session.get("upstream", "-"))),
                printable(str(session.get("started", "-"))).replace("T", " ").rstrip("Z")[:19],
                f"{float(session.get('idle_s') or 0):.0f}s",
                _transfers(session.get("transfers") or []),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]
    lines.append(f"{len(sessions)} session{'s' if len(sessions) != 1 else ''}")
    return "\n".join(line.rstrip() for line in lines) + "\n"
