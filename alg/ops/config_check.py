"""What `run` needs beyond a valid Settings value, checked without opening a socket: the rule files, the user to
become, the TLS files and the admin token. `run` refuses to start on any of these problems and `check` lists
every one of them, in the same words, because both call `problems()`.

Rules: reads files and the user database, binds and changes nothing; every problem is a ConfigError naming the
key, the file and why.
"""

from __future__ import annotations

import os
import pwd
import ssl
from collections.abc import Callable
from pathlib import Path

from alg.errors import ConfigError
from alg.net.tls import ServerCertificate, reason_of, upstream_context
from alg.ops.config import Settings
from alg.ops.config_sections import TlsClient, TlsUpstream
from alg.ops.config_yaml import each_problem


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
    return found
