"""`ftp-alg run|check|demo|diagnose|sessions|bans`: flags and a config file in, an exit code out.

Rules: the only module that picks the event loop, prints errors for people or returns exit codes
(0 done, 1 failed at run time, 2 bad usage or config, 130 interrupted). An error is one line, no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from alg import __version__
from alg.errors import ConfigError
from alg.ops.config import Settings, apply_overrides, load_config
from alg.ops.config_yaml import ConfigProblems, each_problem
from alg.ops.logs import quoted as _quoted
from alg.ops.logs import setup_logging

PROG = "ftp-alg"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _whole_number(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override the config file)")
    group.add_argument(
        "--mode",
        metavar="{reverse,transparent,forward}",
        help="reverse: clients dial the gateway, which forwards to --upstream; transparent: a firewall redirects "
        "clients' FTP connections here; forward: clients log in as USER user@host (default: reverse)",
    )
    group.add_argument(
        "--listen",
        action="append",
        metavar="ADDR:PORT",
        help="control listener; replaces the file's list; repeat for more (default: 0.0.0.0:21)",
    )
    group.add_argument(
        "--upstream", metavar="ADDR[:PORT]", help="the FTP server, reverse mode (default: none; port 21)"
    )
    group.add_argument(
        "--public-address",
        metavar="IP",
        help="the address written into 227 replies; env FTP_ALG_PUBLIC_ADDRESS "
        "(default: the address the client dialled)",
    )
    group.add_argument(
        "--public-address6",
        metavar="IPV6",
        help="the public address shown to IPv6 clients (default: the gateway's own)",
    )
    group.add_argument(
        "--dual-stack", action="store_const", const=True, help="a [::] listener takes IPv4 clients too (default: off)"
    )
    _add_ports_and_process(group)
    _add_defender_override(group)
    _add_forward_overrides(group)
    _add_tls_overrides(parser)


def _add_ports_and_process(group: Any) -> None:
    """Data ports, listeners of the HTTP side, processes and logs."""
    group.add_argument(
        "--passive-ports",
        metavar="FIRST-LAST",
        help="ports for passive data connections from clients; env FTP_ALG_PASSIVE_PORTS (default: 50000-50999)",
    )
    group.add_argument(
        "--active-ports",
        metavar="FIRST-LAST",
        help="ports for active-mode data connections from the server (default: the kernel's ephemeral ports)",
    )
    group.add_argument(
        "--upstream-data-mode",
        metavar="{follow,passive,active}",
        help="the data mode toward the server: the client's own, or always passive or active (default: follow)",
    )
    group.add_argument(
        "--metrics-listen", metavar="ADDR:PORT", help="/metrics, /healthz and /readyz (default: none, not served)"
    )
    group.add_argument(
        "--admin-listen",
        metavar="ADDR:PORT",
        help="where /sessions is served, admin.listen (default: none, not served)",
    )
    group.add_argument(
        "--workers",
        type=_whole_number,
        metavar="N",
        help="processes sharing the listeners, about one per core (default: 1)",
    )
    group.add_argument("--log-level", metavar="{debug,info,warning,error}", help="the main log's level (default: info)")
    group.add_argument("--log-format", metavar="{kv,json}", help="key=value or JSON lines on stderr (default: kv)")
    group.add_argument(
        "--user", metavar="USER", help="switch to this user after binding (default: none, stay as started)"
    )
    group.add_argument(
        "--data-path",
        metavar="{relay,kernel}",
        help="relay: ftp-alg carries the data bytes; kernel: nftables NAT mappings (default: relay)",
    )


def _add_forward_overrides(group: Any) -> None:
    group.add_argument(
        "--forward-allow",
        action="append",
        metavar="ENTRY",
        help="mode forward: a destination clients may reach, CIDR:PORTS, NAME:PORTS or *.DOMAIN:PORTS; replaces "
        "the file's list; repeat for more (default: none, nothing reachable)",
    )
    group.add_argument(
        "--forward-users-file",
        metavar="FILE",
        help="mode forward: NAME:HASH lines; clients log in to the proxy first (default: none, no proxy login)",
    )


def _add_defender_override(group: Any) -> None:
    group.add_argument(
        "--defender",
        action="store_const",
        const=True,
        help="ban password guessers and hostile clients, with the defender's defaults (default: off)",
    )


def _add_tls_overrides(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group("FTPS (tls.client and tls.upstream settings)")
    tls.add_argument(
        "--tls-client", metavar="{refuse,allow,require}", help="TLS toward clients (default: refuse: AUTH TLS gets 502)"
    )
    tls.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain for clients, leaf first (default: none)")
    tls.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert (default: none)")
    tls.add_argument(
        "--tls-client-data",
        metavar="{follow,require}",
        help="follow: the client's PROT; require: PROT C refused (default: follow)",
    )
    tls.add_argument(
        "--tls-implicit-listen",
        action="append",
        metavar="ADDR:PORT",
        help="implicit FTPS listener; repeat for more (default: none)",
    )
    tls.add_argument(
        "--tls-require-session-reuse",
        action="store_const",
        const=True,
        help="refuse client data connections that do not resume the control connection's TLS session (default: off)",
    )
    tls.add_argument(
        "--tls-upstream", metavar="{off,auto,require,implicit}", help="TLS toward the FTP server (default: off)"
    )
    tls.add_argument("--tls-upstream-ca-file", metavar="FILE", help="CAs to verify the server (default: the system's)")
    tls.add_argument(
        "--tls-upstream-server-name",
        metavar="NAME",
        help="name to check in the server certificate (default: the upstream's address)",
    )
    tls.add_argument(
        "--tls-upstream-no-verify",
        dest="tls_upstream_verify",
        action="store_const",
        const=False,
        help="do not verify the FTP server's certificate, for tests only (default: verify)",
    )
    tls.add_argument(
        "--tls-upstream-data", metavar="{follow,private,clear}", help="PROT on the server's leg (default: private)"
    )


# argparse dests that are settings; each is a keyword of load_config and apply_overrides.
_OVERRIDE_DESTS = (
    "mode",
    "listen",
    "upstream",
    "public_address",
    "public_address6",
    "dual_stack",
    "passive_ports",
    "active_ports",
    "upstream_data_mode",
    "metrics_listen",
    "admin_listen",
    "workers",
    "log_level",
    "log_format",
    "user",
    "tls_client",
    "tls_cert",
    "tls_key",
    "tls_client_data",
    "tls_implicit_listen",
    "tls_require_session_reuse",
    "tls_upstream",
    "tls_upstream_ca_file",
    "tls_upstream_server_name",
    "tls_upstream_verify",
    "tls_upstream_data",
    "data_path",
    "defender",
    "forward_allow",
    "forward_users_file",
)


# Per-instance settings from the environment (a Kubernetes pod gets its own passive range and node address):
# a flag wins over the environment, the environment over the file.
ENVIRONMENT = {
    "passive_ports": "FTP_ALG_PASSIVE_PORTS",
    "public_address": "FTP_ALG_PUBLIC_ADDRESS",
}


# The epilog of `run --help` and `check --help`.
ENVIRONMENT_HELP = """\
config file:
  --config FILE is YAML. Every setting with its default: rules/gateway.example.yaml in the source,
  /etc/ftp-alg/gateway.example.yaml after ./dev install.
  A flag wins over the environment, which wins over the file. Check a file: ftp-alg check --config FILE

environment:
  FTP_ALG_PUBLIC_ADDRESS=IP         public_address (the container image requires it)
  FTP_ALG_PASSIVE_PORTS=FIRST-LAST  passive_ports
  FTP_ALG_INSTANCE=N                this instance's index among FTP_ALG_INSTANCES (a name ending in -N works:
  FTP_ALG_INSTANCES=COUNT           a StatefulSet pod's); it takes slice N of passive_ports
  FTP_ALG_ADMIN_TOKEN=TOKEN         the bearer token /sessions asks for, when admin.token_file is not set
  FTP_ALG_RELAY=asyncio             the copying data relay instead of splice (default: splice where available)
"""


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    import os

    values = {dest: getattr(args, dest) for dest in _OVERRIDE_DESTS}
    for dest, variable in ENVIRONMENT.items():
        if values.get(dest) is None and os.environ.get(variable, "").strip():
            values[dest] = os.environ[variable]
            args.from_environment = [*getattr(args, "from_environment", []), dest]
    return values


def _load(args: argparse.Namespace) -> Settings:
    """load_config with flags and environment; an error in an environment value names the variable."""
    try:
        return load_config(args.config, **_overrides(args))
    except ConfigError as exc:
        found = [_from_environment(args, problem) for problem in each_problem(exc)]
        raise found[0] if len(found) == 1 else ConfigProblems(found) from exc


def _from_environment(args: argparse.Namespace, problem: ConfigError) -> ConfigError:
    for dest in getattr(args, "from_environment", []):
        flag = "--" + dest.replace("_", "-") + ":"
        if str(problem).startswith(flag):
            return ConfigError(f"{ENVIRONMENT[dest]} (environment):{str(problem)[len(flag) :]}")
    return problem


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="FTP application-layer gateway")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the gateway", description="Run the gateway.")
    run.add_argument(
        "--config",
        metavar="FILE",
        help="YAML settings, every one listed in rules/gateway.example.yaml; flags override it (default: none)",
    )
    _add_overrides(run)
    run.set_defaults(handler=_cmd_run)
    run.epilog, run.formatter_class = ENVIRONMENT_HELP, argparse.RawDescriptionHelpFormatter

    check = commands.add_parser("check", help="validate settings and exit", description="Validate settings.")
    check.add_argument(
        "--config", metavar="FILE", help="YAML settings; flags override it (default: none, the flags alone are checked)"
    )
    _add_overrides(check)
    check.set_defaults(handler=_cmd_check)
    check.epilog, check.formatter_class = ENVIRONMENT_HELP, argparse.RawDescriptionHelpFormatter

    demo = commands.add_parser(
        "demo",
        help="run the gateway in front of a throw-away local FTP server",
        description="Run the gateway in front of a throw-away pyftpdlib server (needs 'ftp-alg[demo]').",
    )
    demo.add_argument(
        "--listen", default="127.0.0.1:2121", metavar="ADDR:PORT", help="the gateway (default: %(default)s)"
    )
    demo.add_argument(
        "--passive-ports", default="50000-50099", metavar="FIRST-LAST", help="passive data ports (default: %(default)s)"
    )
    demo.set_defaults(handler=_cmd_demo)
    _add_diagnose(commands)
    _add_sessions(commands)
    _add_bans(commands)
    _add_forward_passwd(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # --help has printed and asks to exit
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        return _fail(*map(str, each_problem(exc)))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


def _fail(*messages: str, code: int = EXIT_USAGE) -> int:
    for message in messages:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _settings(args: argparse.Namespace) -> Settings:
    """The config file, the environment and flags on top, then this instance's share of the passive ports
    (FTP_ALG_INSTANCE of FTP_ALG_INSTANCES: alg.gateway.instance)."""
    from alg.gateway import instance

    return instance.for_instance(_load(args), os.environ)


def _cmd_check(args: argparse.Namespace) -> int:
    """`run` minus the sockets: every problem `run` would refuse to start on (all of them, in its words), and
    the TLS files' findings."""
    from alg.ops.config_check import problems, warnings_for_user

    settings = _settings(args)
    found = problems(settings)
    lines = _check_tls(settings, found)
    lines += [f"warning: {text}" for text in warnings_for_user(settings)]
    for line in lines:
        print(line)
    if found:
        return _fail(*map(str, found))
    print(f"ok: {summary(settings)}")
    return EXIT_OK


def _check_tls(settings: Settings, found: list[ConfigError]) -> list[str]:
    """What `check` adds about the TLS files: subject, chain, days left and warnings. Problems the gateway
    would not name as precisely (a key of another certificate, chain order, expiry) join `found`; a file it
    cannot read is there already, in `run`'s words."""
    from alg.ops.tlsfiles import check_ca_file, check_certificate

    lines: list[str] = []
    client, upstream = settings.tls.client, settings.tls.upstream
    try:
        if client.cert is not None and client.key is not None:
            report = check_certificate(client.cert, client.key)
            days = f"days_left={report.days_left:.0f}"
            lines.append(f"tls.client.cert: {_quoted(report.subject)} chain={report.chain_length} {days}")
            lines.extend(f"warning: tls.client.cert: {text}" for text in report.warnings)
        if upstream.mode != "off" and upstream.ca_file is not None:
            lines.append(f"tls.upstream.ca_file: {check_ca_file(upstream.ca_file)} certificate(s)")
    except ConfigError as error:
        if not any(problem.key.startswith("tls.") for problem in found) or "cannot read" not in str(error):
            found.append(error)
    if upstream.mode != "off" and not upstream.verify:
        lines.append("warning: tls.upstream.verify is false: the FTP server's certificate is not checked")
    return lines


def _cmd_run(args: argparse.Namespace) -> int:
    from alg.ops.config_check import problems

    settings = _settings(args)
    found = problems(settings)  # what `check` reports, refused before anything is bound
    if found:
        return _fail(*map(str, found))
    setup_logging(settings.log)
    return _serve(settings, lambda: _settings(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from alg import demo

    if not demo.available():
        return _fail("the demo needs pyftpdlib: pip install 'ftp-alg[demo]'")
    # Validated before the demo server starts; the real upstream port is known only once it listens.
    settings = load_config(None, listen=[args.listen], upstream="127.0.0.1:21", passive_ports=args.passive_ports)
    setup_logging(settings.log)
    with demo.demo_upstream(demo.dial_address(settings)) as upstream:
        settings = apply_overrides(settings, upstream=upstream.address)
        print(demo.invitation(settings, upstream), flush=True)
        return _serve(settings)


# --------------------------------------------------------------------------- diagnose (alg/diagnose/)


def _add_diagnose(commands: Any) -> None:
    from alg.diagnose.command import byte_size, seconds

    diagnose = commands.add_parser(
        "diagnose",
        help="check an FTP server from this host: which modes work through NAT and firewalls, and the fix",
        description="Run the FTP-through-NAT checks against a server and print the diagnosis and the fixes. "
        "Exit status: 0 every mode works, 1 some modes fail, 2 cannot connect or log in.",
    )
    diagnose.add_argument("url", metavar="URL", help="ftp://[user[:password]@]host[:port]/ (ftps:// for TLS)")
    diagnose.add_argument("--tls", action="store_true", help="explicit TLS (AUTH TLS), as ftps:// does (default: off)")
    diagnose.add_argument(
        "--insecure", action="store_true", help="do not verify the server's TLS certificate (default: verify)"
    )
    diagnose.add_argument(
        "--password-file",
        metavar="FILE",
        help="the password is the file's first line (default: the URL, ~/.netrc, or a prompt)",
    )
    diagnose.add_argument("--json", action="store_true", help="print the report as JSON (default: a table)")
    diagnose.add_argument(
        "--wait", type=seconds, default=5.0, metavar="SECONDS", help="bound on each wait (default: 5)"
    )
    diagnose.add_argument(
        "--time-limit", type=seconds, default=120.0, metavar="SECONDS", help="bound on the whole run (default: 120)"
    )
    diagnose.add_argument(
        "--size",
        type=byte_size,
        default=0,
        metavar="BYTES",
        help="also upload and read back this many bytes, in the URL's folder (default: 0, none)",
    )
    diagnose.add_argument(
        "--active-address",
        metavar="IP",
        help="address to offer in PORT/EPRT (default: this host's address on the control connection)",
    )
    diagnose.add_argument(
        "--internal-address",
        metavar="IP",
        help="the server's address behind its NAT box, for the ftp-alg line "
        "(default: the 227's address if private, else the placeholder INTERNAL_ADDRESS)",
    )
    diagnose.set_defaults(handler=_cmd_diagnose)


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from alg.diagnose.command import UsageError, run

    try:
        return run(args)
    except UsageError as exc:
        return _fail(str(exc))


# --------------------------------------------------------------------------- sessions (alg/ops/admin_client.py)


def _add_sessions(commands: Any) -> None:
    from alg.ops.admin_client import add_parser

    add_parser(commands)
    commands.choices["sessions"].set_defaults(handler=_cmd_sessions)


def _add_bans(commands: Any) -> None:
    from alg.ops.admin_client import add_bans_parser

    add_bans_parser(commands)
    commands.choices["bans"].set_defaults(handler=_cmd_bans)


def _cmd_bans(args: argparse.Namespace) -> int:
    from alg.ops.admin_client import UsageError, run_bans

    try:
        return run_bans(args)
    except UsageError as exc:
        return _fail(str(exc))


def _cmd_sessions(args: argparse.Namespace) -> int:
    from alg.ops.admin_client import UsageError, run

    try:
        return run(args)
    except UsageError as exc:
        return _fail(str(exc))


# --------------------------------------------------------------------------- forward-passwd (alg/ops/proxy_users.py)


def _add_forward_passwd(commands: Any) -> None:
    passwd = commands.add_parser(
        "forward-passwd",
        help="print a forward.users_file line (NAME:HASH) for a proxy user",
        description="Print the forward.users_file line for NAME: the password is read from the terminal (twice), or "
        "as the first line of standard input when that is not a terminal. Append the line to the users file.",
    )
    passwd.add_argument("name", metavar="NAME", help="the proxy user name clients send first, USER NAME")
    passwd.set_defaults(handler=_cmd_forward_passwd)


def _cmd_forward_passwd(args: argparse.Namespace) -> int:
    import getpass

    from alg.ops.proxy_users import user_line

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            return _fail("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        print(user_line(args.name, password))
    except ValueError as error:
        return _fail(str(error))
    return 0


def summary(settings: Settings) -> str:
    servers = settings.upstream_servers
    upstream = ",".join(str(server.address) for server in servers) if servers else "original destination"
    if settings.mode == "forward":
        upstream = "USER user@host, allowed: " + (",".join(map(str, settings.forward.allow)) or "none")
    fields = {
        "mode": settings.mode,
        "listen": ",".join(map(str, settings.listen)),
        "upstream": upstream,
        "public_address": settings.public_address or "dialled address",
        "passive_ports": settings.passive_ports,
        "active_ports": settings.active_ports or "ephemeral",
        "workers": settings.workers,
    }
    return " ".join(f"{key}={_quoted(str(value))}" for key, value in fields.items())


def _serve(settings: Settings, load: Callable[[], Settings] | None = None) -> int:
    """One process, or (workers, or `user:`) a parent that keeps its privileges to read the files again at
    SIGHUP and workers that serve; `load` reads the settings again (None: the same ones, files read again)."""
    if settings.workers == 1 and settings.user is None:
        return _serve_worker(settings, 0, load=load)
    from alg.gateway.reload import Reloader, encode
    from alg.gateway.workers import supervise, worker_settings

    reloader = Reloader(settings, load or (lambda: reloader.current))

    def run_worker(index: int, inbox: int | None) -> int:
        # reloader.current: a worker started again after a reload gets the settings in force.
        return _serve_worker(worker_settings(reloader.current, index), index, inbox=inbox)

    return supervise(
        settings.workers,
        run_worker,
        grace_s=settings.timeouts.shutdown_grace_s,
        reload=lambda: encode(reloader.read()),
    )


def _serve_worker(
    settings: Settings, worker: int, *, load: Callable[[], Settings] | None = None, inbox: int | None = None
) -> int:
    from alg.gateway.server import serve  # imported late: `check` needs none of the runtime

    try:
        _run_loop(serve(settings, worker, load=load, inbox=inbox))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ConfigError as exc:  # found only at run time, e.g. the user to drop privileges to
        return _fail(str(exc), code=EXIT_USAGE)
    except OSError as exc:  # typically binding: address in use, or a privileged port without rights
        logging.getLogger("alg.cli").debug("stopped by an OS error", exc_info=True)
        return _fail(str(exc), code=EXIT_FAILED)
    return EXIT_OK


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


if __name__ == "__main__":
    sys.exit(main())
