"""What `run` needs beyond a valid Settings value, checked without opening a socket: the rule files, the user to
become, the TLS files and the admin token. `run` refuses to start on any of these problems and `check` lists
every one of them, in the same words, because both call `problems()`.

Rules: reads files and the user database, binds and changes nothing; every problem is a ConfigError naming the
key, the file and why.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from alg.errors import ConfigError
from alg.net.tls import ServerCertificate, reason_of, upstream_context
from alg.ops.config import Settings
from alg.ops.config_sections import TlsClient, TlsUpstream
from alg.ops.config_values import HostName
from alg.ops.config_yaml import each_problem
from alg.ops.proxy_users import ProxyUsers


def _why(error: Exception) -> str:
    if isinstance(error, ssl.SSLError):
        return reason_of(error)
    return getattr(error, "strerror", None) or str(error)


def client_tls_on(client: TlsClient) -> bool:
    """Whether the gateway serves TLS to clients, so the certificate must load."""
    return (
        client.cert is not None and client.key is not None and (client.mode != "refuse" or bool(client.implicit_listen))
    )


def load_certificate(client: TlsClient) -> ServerCertificate:
    """The client-facing certificate, or a ConfigError naming both files and why."""
    assert client.cert is not None and client.key is not None
    try:
        return ServerCertificate(Path(client.cert), Path(client.key), client.min_version)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        message = f"cannot load {client.cert} with {client.key}: {_why(error)}"
        raise ConfigError(message, key="tls.client.cert") from error


def load_upstream_context(upstream: TlsUpstream) -> ssl.SSLContext:
    """The context toward FTP servers, or a ConfigError naming the CA file and why."""
    try:
        return upstream_context(upstream.ca_file, verify=upstream.verify, min_version=upstream.min_version)
    except (OSError, ValueError) as error:
        message = f"cannot load CA file {upstream.ca_file}: {_why(error)}"
        raise ConfigError(message, key="tls.upstream.ca_file") from error


def lookup_user(name: str) -> pwd.struct_passwd:
    """The account `user:` names, if this process can become it; ConfigError otherwise."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"no such user {name!r}", key="user") from None
    if os.geteuid() not in (0, entry.pw_uid):
        raise ConfigError(f"cannot switch to {name!r}: not started as root", key="user")
    return entry


def problems(settings: Settings) -> list[ConfigError]:
    """Every reason `run` would refuse these settings before binding anything; empty when it would start."""
    from alg.ops.admin import read_token
    from alg.ops.rules import load_rules

    found: list[ConfigError] = []

    def attempt(step: Callable[..., object], *args: object) -> None:
        try:
            step(*args)
        except ConfigError as error:
            found.extend(each_problem(error))

    for path in settings.rules:  # one at a time, so a problem in each file is listed
        attempt(load_rules, [path])
    if settings.user is not None:
        attempt(lookup_user, settings.user)
    if client_tls_on(settings.tls.client):
        attempt(load_certificate, settings.tls.client)
    if settings.tls.upstream.mode != "off":
        attempt(load_upstream_context, settings.tls.upstream)
    if settings.admin.listen is not None:
        attempt(read_token, settings.admin.token_file)
    for server in settings.upstream_servers:
        if isinstance(server.address, HostName):
            attempt(resolve_upstream, server.address)
    users_file = settings.forward.users_file
    if settings.mode == "forward" and users_file is not None:
        attempt(ProxyUsers.read, users_file)
    return found


def resolve_upstream(name: HostName) -> None:
    """ConfigError, in the words the upstream pool uses at start, when the name has no address now."""
    try:
        infos = socket.getaddrinfo(name.name, name.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        why = f"{name.name} does not resolve ({error.strerror or error})"
    else:
        if any(family in (socket.AF_INET, socket.AF_INET6) for family, *_ in infos):
            return
        why = f"{name.name} does not resolve (no IPv4 or IPv6 address)"
    hint = "give a name this host resolves (/etc/hosts, DNS) or an IP address"
    raise ConfigError(f"{why}; {hint}", key="upstream")


# ---- what the unprivileged user could not read (warnings: the parent process reads those files as root) ----


def _files(settings: Settings) -> list[tuple[str, Path, int]]:
    """(key, path, os.R_OK or os.W_OK) of every file the gateway reads or writes."""
    client, upstream = settings.tls.client, settings.tls.upstream
    found = [("rules", path, os.R_OK) for path in settings.rules]
    if client_tls_on(client) and client.cert is not None and client.key is not None:
        found += [("tls.client.cert", client.cert, os.R_OK), ("tls.client.key", client.key, os.R_OK)]
    if upstream.mode != "off" and upstream.ca_file is not None:
        found.append(("tls.upstream.ca_file", upstream.ca_file, os.R_OK))
    if settings.admin.listen is not None and settings.admin.token_file is not None:
        found.append(("admin.token_file", settings.admin.token_file, os.R_OK))
    if settings.mode == "forward" and settings.forward.users_file is not None:
        found.append(("forward.users_file", settings.forward.users_file, os.R_OK))  # read again at each reload
    if settings.log.transfer_log is not None:
        log_file = settings.log.transfer_log
        found.append(("log.transfer_log", log_file if log_file.exists() else log_file.parent, os.W_OK))
    return found


def _denied_as(entry: pwd.struct_passwd, files: list[tuple[str, Path, int]]) -> list[str]:
    """Which of `files` the account cannot open as asked, tried by a child process that becomes it, as
    drop_privileges does (primary group only): "key\\tpath\\treason" lines."""
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 1
        try:
            os.close(readable)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            lines = []
            for key, path, mode in files:
                try:
                    if mode == os.R_OK:
                        os.close(os.open(path, os.O_RDONLY))
                    elif not os.access(path, os.W_OK):
                        raise PermissionError(errno.EACCES, "Permission denied")
                except OSError as error:
                    lines.append(f"{key}\t{path}\t{error.strerror}")
            os.write(writable, "\n".join(lines).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writable)
    with os.fdopen(readable, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    return [line for line in text.split("\n") if line]


def warnings_for_user(settings: Settings) -> list[str]:
    """Run as root with `user:` set: the files that user could not read (the gateway's root parent reads them
    at start and at SIGHUP, so this works, as long as the gateway is started as root) or write (the transfer
    log, which the worker opens itself: its lines would be lost)."""
    if settings.user is None or os.geteuid() != 0:
        return []
    try:
        entry = pwd.getpwnam(settings.user)
    except KeyError:
        return []  # a problem of its own (lookup_user)
    warnings = []
    for line in _denied_as(entry, _files(settings)):
        key, path, reason = line.split("\t")
        if key == "log.transfer_log":
            warnings.append(f"{key}: user {settings.user} cannot write {path} ({reason}): transfer lines would be lost")
        else:
            warnings.append(
                f"{key}: user {settings.user} cannot read {path} ({reason}); fine while the gateway is started as "
                "root: its parent process keeps root to read it at start and at reload (docs/operations.md)"
            )
    return warnings
