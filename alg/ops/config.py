"""Settings: a YAML file and command-line flags in, one immutable, validated `Settings` value out.

Rules: reads only the file it is given; binds, opens and exits nothing. Every failure is a ConfigError
whose str() is one line naming where the value came from (file and YAML line, or flag), the key and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from alg.ftp.addresses import HostPort
from alg.ops.config_sections import (
    AdminSettings,
    AdvertiseRule,
    DefenderSettings,
    ForwardSettings,
    HealthCheck,
    Limits,
    LogSettings,
    OptionalNetworks,
    ProxyProtocolIn,
    Timeouts,
    TlsSettings,
    UpstreamServer,
)
from alg.ops.config_values import (
    DATA_PORT_MIN,
    ConfigPath,
    Count,
    DataPorts,
    Frozen,
    ListenAddress,
    PortRange,
    PublicAddress,
    UpstreamAddress,
    invalid_at,
    show_value,
)
from alg.ops.config_yaml import error_at, explain, load_yaml_model, parse_yaml

# Names the rest of the package imports from here.
__all__ = [
    "DATA_PORT_MIN",
    "HealthCheck",
    "Limits",
    "LogSettings",
    "PortRange",
    "Settings",
    "Timeouts",
    "apply_overrides",
    "load_config",
    "load_yaml_model",
    "settings_from_mapping",
]

# --- the settings ---


class Settings(Frozen):
    # The common deployment: one public front for internal FTP servers. forward: clients name the server at
    # login (USER user@host), among those forward.allow lets through.
    mode: Literal["reverse", "transparent", "forward"] = "reverse"
    # The standard FTP control port on every IPv4 address.
    listen: Annotated[tuple[ListenAddress, ...], Field(min_length=1)] = (HostPort(IPv4Address("0.0.0.0"), 21),)
    # No default: only the admin knows the server; transparent mode uses each original destination.
    upstream: UpstreamAddress | None = None
    # null: advertise the address the client dialled, right unless a NAT sits in front of the gateway.
    public_address: PublicAddress | None = None
    # The same for IPv6 (a 229 names no address: this is the one written into EPRT toward servers in
    # transparent mode, behind NAT66). null: the gateway's own IPv6 address.
    public_address6: PublicAddress | None = None
    # false: a [::] listener takes IPv6 clients only (IPV6_V6ONLY); true: IPv4 clients too, as ::ffff:a.b.c.d.
    dual_stack: Annotated[bool, Field(strict=True)] = False
    # The range FTP firewall recipes usually open: 1,000 concurrent passive transfers.
    passive_ports: DataPorts = PortRange(50000, 50999)
    # null: the kernel's ephemeral ports, as the internal side needs no firewall opening.
    active_ports: DataPorts | None = None
    # upstream: the address a server announces is often private or wrong, and must not steer us elsewhere.
    passive_target: Literal["upstream", "advertised"] = "upstream"
    # follow: the server gets the client's data mode. passive: always PASV/EPSV toward the server (it never
    # connects out); active: always PORT/EPRT to the gateway's internal address (the server's firewall opens
    # port 21 only). The client is answered in its own mode either way (docs/data-modes.md).
    upstream_data_mode: Literal["follow", "passive", "active"] = "follow"
    # A server's active-mode data connections come from the address the gateway dialled; a multi-homed server
    # or a cluster behind a virtual address may use others: list them (CIDRs). Anyone else is refused.
    upstream_data_sources: OptionalNetworks = ()
    # refuse: a PORT/EPRT naming another host than the client is an FTP bounce (RFC 2577) and gets 504;
    # rewrite: ignore the address and use the client's own, as OpenBSD ftp-proxy does (clients behind NAT).
    port_address_mismatch: Literal["refuse", "rewrite"] = "refuse"
    # relay: every data byte passes through ftp-alg, which sees and holds all of it; kernel: plain data
    # connections are forwarded by nftables NAT mappings (falls back to relay where the kernel does not allow it).
    data_path: Literal["relay", "kernel"] = "relay"
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    # null: no extra open port unless asked for.
    metrics_listen: ListenAddress | None = None
    admin: AdminSettings = AdminSettings()
    log: LogSettings = LogSettings()
    # One process per core is a deliberate choice; one is enough for most sites.
    workers: Count = 1
    # No rule files: the built-in policy applies.
    rules: tuple[ConfigPath, ...] = ()
    # null: keep the user we started as; set it when started as root to bind port 21.
    user: Annotated[str, Field(strict=True, min_length=1)] | None = None
    # FTPS: off on both sides unless configured.
    tls: TlsSettings = TlsSettings()
    # null: no PROXY protocol; clients connect directly.
    proxy_protocol: ProxyProtocolIn | None = None
    # Split horizon: the address 227 replies name, by client network and listener (public_address otherwise).
    advertise: tuple[AdvertiseRule, ...] = ()
    # A balancer that publishes passive port P as P + offset: the 227/229 name P + offset.
    announced_port_offset: Annotated[int, Field(strict=True, ge=-64511, le=64511)] = 0
    # Several upstream servers (instead of `upstream`): sessions spread by upstream_policy.
    upstreams: tuple[UpstreamServer, ...] = ()
    # per_user: the gateway greets, reads USER and replays the login on the server upstream_users names.
    upstream_policy: Literal["round_robin", "least_sessions", "per_user"] = "round_robin"
    # USER name -> upstream name, for per_user; users not listed go round robin.
    upstream_users: Mapping[str, Annotated[str, Field(strict=True, min_length=1)]] = {}
    # null: checked with the defaults when there are two upstreams or more; none for a single upstream.
    health_check: HealthCheck | None = None
    # Scores and bans hostile clients at the door (alg.ops.defender); off unless asked for.
    defender: DefenderSettings = DefenderSettings()
    # mode forward: what may be reached (nothing unless listed) and the optional proxy login.
    forward: ForwardSettings = ForwardSettings()

    @property
    def upstream_servers(self) -> tuple[UpstreamServer, ...]:
        """Every configured upstream (`upstream: ADDR` is a list of one)."""
        if self.upstreams:
            return self.upstreams
        return () if self.upstream is None else (UpstreamServer(address=self.upstream),)

    @field_validator("listen", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str | HostPort) else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.mode == "reverse" and self.upstream is None and not self.upstreams:
            raise invalid_at("upstream", "required in reverse mode: give the FTP server's ADDRESS[:PORT]")
        _check_scaleout(self)
        if self.mode == "transparent" and self.upstream is not None:
            raise invalid_at(
                "upstream",
                "not allowed in transparent mode, where each client's original destination is used",
            )
        if self.public_address6 is not None and self.public_address6.version != 6:
            raise invalid_at("public_address6", f"expected an IPv6 address, got {self.public_address6}")
        for key, ports in (("passive_ports", self.passive_ports), ("active_ports", self.active_ports)):
            # Each worker owns a slice of every data port range.
            if ports is not None and len(ports) < self.workers:
                raise invalid_at(key, f"{len(ports)} ports cannot be shared among {self.workers} workers")
        return self


def _check_scaleout(settings: Settings) -> None:
    if settings.upstream is not None and settings.upstreams:
        raise invalid_at("upstreams", "give either upstream or upstreams, not both")
    for mode, where in (("transparent", "each original destination is used"), ("forward", "clients name it")):
        if settings.mode == mode and settings.upstreams:
            raise invalid_at("upstreams", f"not allowed in {mode} mode, where {where}")
    if settings.mode == "forward" and settings.upstream is not None:
        raise invalid_at("upstream", "not allowed in forward mode, where each client names its server at USER")
    labels = [server.label for server in settings.upstreams]
    if len(set(labels)) != len(labels):
        raise invalid_at("upstreams", f"two upstreams share a name: {sorted(labels)}; give each a unique name")
    for user, name in settings.upstream_users.items():
        if name not in labels:
            raise invalid_at("upstream_users", f"user {user!r}: no upstream named {name!r}; known: {labels}")
    if settings.upstream_policy == "per_user" and not settings.upstream_users:
        raise invalid_at("upstream_users", "required by upstream_policy per_user: map USER names to upstreams")
    offset = settings.announced_port_offset
    if not 1 <= settings.passive_ports.first + offset <= settings.passive_ports.last + offset <= 65535:
        raise invalid_at("announced_port_offset", f"{offset} moves passive_ports outside 1-65535")


# --- loading ---

# Flags are named after their key: --passive-ports sets passive_ports, --log-level sets log.level.
_OVERRIDABLE: dict[str, tuple[str, ...]] = {
    "mode": ("mode",),
    "listen": ("listen",),
    "upstream": ("upstream",),
    "public_address": ("public_address",),
    "public_address6": ("public_address6",),
    "dual_stack": ("dual_stack",),
    "passive_ports": ("passive_ports",),
    "active_ports": ("active_ports",),
    "passive_target": ("passive_target",),
    "upstream_data_mode": ("upstream_data_mode",),
    "data_path": ("data_path",),
    "metrics_listen": ("metrics_listen",),
    "admin_listen": ("admin", "listen"),
    "workers": ("workers",),
    "log_level": ("log", "level"),
    "log_format": ("log", "format"),
    "user": ("user",),
    "tls_client": ("tls", "client", "mode"),
    "tls_cert": ("tls", "client", "cert"),
    "tls_key": ("tls", "client", "key"),
    "tls_client_data": ("tls", "client", "data"),
    "tls_implicit_listen": ("tls", "client", "implicit_listen"),
    "tls_require_session_reuse": ("tls", "client", "require_session_reuse"),
    "tls_upstream": ("tls", "upstream", "mode"),
    "tls_upstream_ca_file": ("tls", "upstream", "ca_file"),
    "tls_upstream_server_name": ("tls", "upstream", "server_name"),
    "tls_upstream_verify": ("tls", "upstream", "verify"),
    "tls_upstream_data": ("tls", "upstream", "data"),
    "defender": ("defender", "enabled"),
    "forward_allow": ("forward", "allow"),
    "forward_users_file": ("forward", "users_file"),
}


def load_config(path: str | os.PathLike[str] | None, **flag_values: object) -> Settings:
    """Settings from the YAML file at `path` (None: defaults), then flag values on top; None means unset."""
    if path is None:
        return _validate({}, source=None, root=None, base_dir=None, flags=flag_values)
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise error_at(f"cannot read the file: {exc.strerror}", source=source) from exc
    root, data = parse_yaml(raw, source)
    base_dir = Path(path).absolute().parent
    return _validate(data, source=source, root=root, base_dir=base_dir, flags=flag_values)


def settings_from_mapping(data: Mapping[str, Any], *, source: str | None = None, **flag_values: object) -> Settings:
    """Settings from an already parsed mapping (no line numbers), then flag values on top."""
    if not isinstance(data, Mapping):
        raise error_at(f"expected a mapping of settings, got {show_value(data)}", source=source)
    return _validate(data, source=source, root=None, base_dir=None, flags=flag_values)


def apply_overrides(settings: Settings, **flag_values: object) -> Settings:
    """A copy of `settings` with flag values applied and everything validated again."""
    return _validate(dict(settings), source=None, root=None, base_dir=None, flags=flag_values)


def _validate(
    data: Mapping[str, Any],
    *,
    source: str | None,
    root: yaml.Node | None,
    base_dir: Path | None,
    flags: Mapping[str, object],
) -> Settings:
    given = {name: value for name, value in flags.items() if value is not None}
    for name in given:
        if name not in _OVERRIDABLE:
            raise TypeError(f"no setting can be overridden as {name!r}")
    merged = dict(data)
    for name, value in given.items():
        *sections, key = _OVERRIDABLE[name]
        target = merged
        for section in sections:
            existing = target.get(section, {})
            if isinstance(existing, BaseModel):
                existing = dict(existing)
            if not isinstance(existing, Mapping):
                break  # the file's own value is wrong; that is the error to report
            target[section] = target = dict(existing)
        else:
            target[key] = value
    flags_given = {name: _OVERRIDABLE[name] for name in given}
    try:
        return Settings.model_validate(merged, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise explain(exc, source=source, root=root, model=Settings, flags=flags_given) from exc
