"""The settings' sections: timeouts, limits, logs, TLS (both legs), admin endpoints, scale-out.

Rules: declarations and their own consistency checks only; the whole (Settings) and loading are alg.ops.config.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Literal

from pydantic import Field, PlainValidator, field_validator, model_validator

from alg.ftp.addresses import HostPort, IPAddress
from alg.ops.config_values import (
    ConfigPath,
    Count,
    Frozen,
    ListenAddress,
    Seconds,
    UpstreamAddress,
    invalid,
    invalid_at,
    parse_public_address,
    show_value,
)
from alg.ops.forward_allow import AllowEntry, parse_allow_entry


class Timeouts(Frozen):
    # A LAN server answers in milliseconds; 10 s still covers two lost SYNs.
    upstream_connect_s: Seconds = 10.0
    # Time for a person to type a password; bounds connections that never log in.
    login_s: Seconds = 60.0
    # Longer than common servers' own idle limits (300-600 s), so the server decides.
    idle_s: Seconds = 900.0
    # Clients open the data connection at once after 227/PORT; 30 s forgives slow firewalls.
    data_connect_s: Seconds = 30.0
    # A transfer that moves no byte for 5 minutes is stuck, not slow.
    data_idle_s: Seconds = 300.0
    # Lets transfers in flight finish, well inside systemd's 90 s stop timeout.
    shutdown_grace_s: Seconds = 30.0


class Limits(Frozen):
    # About 4 descriptors each (control pair plus a data pair): fits a 65536 LimitNOFILE.
    max_sessions: Count = 5000
    # Room for a NAT full of users or parallel transfers; no single host can take the pool.
    max_sessions_per_client: Count = 50
    # A command with a PATH_MAX (4096) argument still fits; below 512 ordinary long paths break.
    max_line_bytes: Annotated[int, Field(strict=True, ge=512)] = 4096
    # Clients pipeline a few commands (TYPE, PASV, RETR); 32 bounds the queue per session.
    max_pipelined_commands: Count = 32
    # FTP uses one at a time; a few more cover ABOR overlapping the next transfer.
    max_data_channels_per_session: Count = 4


class LogSettings(Frozen):
    # info: one line per session and transfer; debug adds every command.
    level: Literal["debug", "info", "warning", "error"] = "info"
    # kv reads well for people and grep; json is for log shippers.
    format: Literal["kv", "json"] = "kv"
    # null: transfers are logged only in the main log.
    transfer_log: ConfigPath | None = None


TlsVersion = Literal["TLSv1.2", "TLSv1.3"]


class TlsClient(Frozen):
    """TLS toward the clients (the gateway is the FTPS server)."""

    # refuse: AUTH TLS gets 502 (nothing to offer without a certificate); allow: FTPS and plain FTP;
    # require: no login before AUTH TLS.
    mode: Literal["refuse", "allow", "require"] = "refuse"
    # PEM: the certificate chain (leaf first) and its private key; reloaded on SIGHUP.
    cert: ConfigPath | None = None
    key: ConfigPath | None = None
    # TLS 1.0 and 1.1 are deprecated (RFC 8996).
    min_version: TlsVersion = "TLSv1.2"
    # follow: the client's PROT decides; require: PROT C is refused and transfers need PROT P.
    data: Literal["follow", "require"] = "follow"
    # true: a client data connection must resume its control connection's TLS session (vsftpd's
    # require_ssl_reuse), which binds the data connection to the logged-in client.
    require_session_reuse: bool = False
    # Implicit FTPS (TLS from the first byte, port 990 by convention); empty: none.
    implicit_listen: tuple[ListenAddress, ...] = ()
    # A handshake that has not finished in 10 s is a stuck or hostile client.
    handshake_timeout_s: Seconds = 10.0

    @field_validator("implicit_listen", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str | HostPort) else value

    @model_validator(mode="after")
    def _has_files(self) -> TlsClient:
        if (self.mode != "refuse" or self.implicit_listen) and (self.cert is None or self.key is None):
            missing = "cert" if self.cert is None else "key"
            raise invalid_at(missing, "required when client TLS is on: give a PEM file")
        if self.mode == "refuse" and self.implicit_listen:
            raise invalid_at("mode", "implicit_listen needs mode allow or require")
        return self


class TlsUpstream(Frozen):
    """TLS toward the FTP server (the gateway is the FTPS client)."""

    # off: plain FTP; auto: AUTH TLS when the server's FEAT lists it; require: AUTH TLS or 421;
    # implicit: TLS from the first byte.
    mode: Literal["off", "auto", "require", "implicit"] = "off"
    # null: the system's trusted CAs.
    ca_file: ConfigPath | None = None
    # null: the upstream's address is the name checked in its certificate.
    server_name: Annotated[str, Field(strict=True, min_length=1)] | None = None
    # false only for testing: anyone in the path could read and change the session.
    verify: bool = True
    # private: always PROT P (servers that speak TLS mostly require it for data: vsftpd's force_*_data_ssl,
    # proftpd's TLSRequired, and a plain client can then reach them); follow: the client's PROT; clear: PROT C.
    data: Literal["follow", "private", "clear"] = "private"
    min_version: TlsVersion = "TLSv1.2"


class TlsSettings(Frozen):
    client: TlsClient = TlsClient()
    upstream: TlsUpstream = TlsUpstream()


class AdminSettings(Frozen):
    # null: GET /sessions and DELETE /sessions/ID are served nowhere. Give a loopback or management address;
    # it may equal metrics_listen, and then one listener serves both.
    listen: ListenAddress | None = None
    # null: the token comes from $FTP_ALG_ADMIN_TOKEN when that is set, else no token is asked for.
    token_file: ConfigPath | None = None


# --- scale-out: PROXY protocol from balancers, advertised addresses, several upstreams ---

IPNetwork = IPv4Network | IPv6Network
ANY_CLIENT: tuple[IPNetwork, ...] = (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))


def _networks(value: object) -> tuple[IPNetwork, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise invalid(f"expected ADDRESS/PREFIX or a list of them, got {show_value(value)}")
    networks = []
    for item in items:
        if not isinstance(item, str):
            raise invalid(f"expected ADDRESS/PREFIX, got {show_value(item)}")
        try:
            networks.append(ip_network(item.strip(), strict=True))
        except ValueError:
            raise invalid(f"{item!r} is not an address or ADDRESS/PREFIX (CIDR), e.g. 198.51.100.0/24") from None
    return tuple(networks)


def _advertised(value: object) -> IPAddress | Literal["local"]:
    return "local" if value == "local" else parse_public_address(value)


Networks = Annotated[tuple[IPNetwork, ...], PlainValidator(_networks)]


def _networks_or_none(value: object) -> tuple[IPNetwork, ...]:
    """As _networks, and an empty list (or null) is no network at all."""
    return () if value in ((), [], None) else _networks(value)


# A list that may be empty (the default: none).
OptionalNetworks = Annotated[tuple[IPNetwork, ...], PlainValidator(_networks_or_none)]


class ProxyProtocolIn(Frozen):
    # Only the balancers named here may speak for clients: anyone else sending a header is refused, and so is
    # one of these not sending it.
    trusted: Networks
    # client: data connections come straight from the client (each gateway has its own public address);
    # balancer: they come through the balancer, from the address its control connection came from.
    data_from: Literal["client", "balancer"] = "client"
    # A balancer sends the header with its first bytes; 5 s forgives a slow one.
    header_timeout_s: Seconds = 5.0
    # Only connections to these listen addresses; empty: every listener.
    listeners: tuple[ListenAddress, ...] = ()


class AdvertiseRule(Frozen):
    # Clients this rule is for (their address after PROXY protocol); first matching rule wins.
    clients: Networks = ANY_CLIENT
    # Only connections to this listen address; null: any listener.
    listener: ListenAddress | None = None
    # The address written into 227 replies; local: the address the client connected to.
    address: Annotated[IPAddress | Literal["local"], PlainValidator(_advertised)]


class UpstreamServer(Frozen):
    address: UpstreamAddress
    # Names the upstream in metrics, logs and upstream_users; null: its address.
    name: Annotated[str, Field(strict=True, min_length=1, max_length=64)] | None = None
    # Share of new sessions under round_robin (of least_sessions ties).
    weight: Annotated[int, Field(strict=True, ge=1, le=1000)] = 1
    # null: plain FTP. v1/v2: send a PROXY header first, for servers that read it (proftpd mod_proxy_protocol)
    # and then log the real client.
    proxy_protocol: Literal["v1", "v2"] | None = None
    # An address given by host name is looked up again this often (each address is then tried in order).
    resolve_interval_s: Seconds = 30.0
    # null: the top-level upstream_data_mode; else follow, passive or active toward this server.
    upstream_data_mode: Literal["follow", "passive", "active"] | None = None

    @property
    def label(self) -> str:
        return self.name or str(self.address)


class HealthCheck(Frozen):
    # How often each upstream is dialled and must greet with 220.
    interval_s: Seconds = 5.0
    # A LAN server greets in milliseconds.
    timeout_s: Seconds = 2.0
    # Good checks in a row before a dead upstream gets sessions again (as HAProxy's rise 2).
    rise: Count = 2
    # Failed checks in a row before an upstream is skipped (as HAProxy's fall 3).
    fall: Count = 3


# --- the defender: scores and bans per client address (alg.ops.defender) ---


class DefenderScores(Frozen):
    """Points each hostile act adds to its address's score."""

    # Five wrong passwords in the window reach the threshold: fail2ban's maxretry 5.
    login_failed: Count = 2
    # A refused command is often a confused client: it takes ten to ban on its own.
    refused_command: Count = 1
    # No real client sends a third party's address in PORT or steals a data port: two and banned.
    bounce: Count = 5
    port_theft: Count = 5
    # A ClientHello that is not one, or plaintext after AUTH TLS: scanners, not clients.
    tls_garbage: Count = 3
    overlong_line: Count = 3
    # A connection over limits.max_sessions_per_client: a NAT may do it, so it weighs little.
    over_limit: Count = 1


class DefenderSettings(Frozen):
    # Off unless asked for (`--defender` or defender.enabled: true): a ban is an action an operator chooses.
    enabled: bool = False
    # Scores count the acts of the last 10 minutes (fail2ban's findtime 10m).
    window_s: Seconds = 600.0
    # A score of 10 or more bans the address.
    threshold: Count = 10
    scores: DefenderScores = DefenderScores()
    # First ban 15 minutes; each repeat doubles it, up to a day (a guesser's night stays short).
    ban_s: Seconds = 900.0
    ban_growth: Annotated[float, Field(strict=True, ge=1.0, le=100.0)] = 2.0
    max_ban_s: Seconds = 86400.0
    # Repeats are remembered this long after a ban ends, then the next ban starts short again.
    repeat_memory_s: Seconds = 86400.0
    # One IPv4 address is one client; an IPv6 host can pick any address of its /64, so the /64 is one client.
    ipv4_prefix: Annotated[int, Field(strict=True, ge=8, le=32)] = 32
    ipv6_prefix: Annotated[int, Field(strict=True, ge=32, le=128)] = 64
    # Never banned (monitoring, the office, the balancer's health checks).
    allowlist: Annotated[tuple[IPNetwork, ...], PlainValidator(_networks_or_none)] = ()
    # Per user name: this many failed logins in the window, from any addresses, slow that user's logins...
    user_failures: Count = 10
    # ...by this delay after each failed login (never a lockout: the right password still logs in).
    user_delay_s: Seconds = 2.0
    # Where the state lives: local (this process and, with workers, the parent's table) or redis://HOST:PORT/DB.
    store: Annotated[str, Field(strict=True, pattern=r"^(local|rediss?://.+)$")] = "local"

    @model_validator(mode="after")
    def _bans_grow_to_max(self) -> DefenderSettings:
        if self.max_ban_s < self.ban_s:
            raise invalid_at("max_ban_s", f"{self.max_ban_s:g} s is shorter than ban_s ({self.ban_s:g} s)")
        return self


def _allow_entries(value: object) -> tuple[AllowEntry, ...]:
    items = [value] if isinstance(value, str | AllowEntry) else value
    if not isinstance(items, list | tuple):
        raise invalid(f"expected a list of entries such as 198.51.100.0/24:21, got {show_value(value)}")
    entries = []
    for item in items:
        if isinstance(item, AllowEntry):
            entries.append(item)
            continue
        if not isinstance(item, str):
            raise invalid(f"expected an entry such as ftp.example.org:21, got {show_value(item)}")
        try:
            entries.append(parse_allow_entry(item))
        except ValueError as error:
            raise invalid(str(error)) from None
    return tuple(entries)


class ForwardSettings(Frozen):
    # Where mode forward may connect: CIDR:PORTS, NAME:PORTS or *.DOMAIN:PORTS (port 21 when none). Empty:
    # nothing at all, so a forward proxy is never open by default. Every address a name resolves to must pass.
    allow: Annotated[tuple[AllowEntry, ...], PlainValidator(_allow_entries)] = ()
    # null: no proxy login. A file of NAME:HASH lines (ftp-alg forward-passwd NAME writes one): clients log in
    # to the proxy first (USER NAME, PASS ...), then USER user@host.
    users_file: ConfigPath | None = None
    # A name that takes longer to resolve is refused as unknown.
    resolve_timeout_s: Seconds = 5.0
