"""Settings: a YAML file and command-line flags in, one immutable, validated `Settings` value out.

Rules: reads only the file it is given; binds, opens and exits nothing. Every failure is a ConfigError
whose str() is one line naming where the value came from (file and YAML line, or flag), the key and the fix.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from alg.errors import ConfigError
from alg.ftp.addresses import HostPort, IPAddress

# Ports below 1024 need privileges and belong to well-known services; data channels stay above them.
DATA_PORT_MIN = 1024


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of TCP ports, written FIRST-LAST."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.last <= 65535:
            raise ValueError(f"not a port range: {self.first}-{self.last}")

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


# --- value parsers: text (or an already parsed value) in, typed value out, PydanticCustomError otherwise ---


def _invalid(message: str) -> PydanticCustomError:
    # No context: the template is used verbatim, so braces in the user's input cannot be misread.
    return PydanticCustomError("config", message)


def _show(value: object) -> str:
    """A value as the admin wrote it, short and on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float | HostPort | PortRange | IPv4Address | IPv6Address | Path):
        return str(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


_BRACKETED = re.compile(r"\[([^\[\]]*)\](?::([0-9]{1,5}))?")
_PLAIN = re.compile(r"([^\[\]:]*)(?::([0-9]{1,5}))?")
_HOSTNAME = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?")


def _ip(text: str) -> IPAddress:
    try:
        return ip_address(text)
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(text):
        raise _invalid(f"{text!r} is a hostname; give an IP address")
    raise _invalid(f"{text!r} is not an IP address")


def _host_port(value: object, *, default_port: int | None, min_port: int) -> HostPort:
    want = "ADDRESS:PORT" if default_port is None else "ADDRESS[:PORT]"
    if isinstance(value, HostPort):
        ip, port = value.ip, value.port
    elif isinstance(value, str):
        text = value.strip()
        match = _BRACKETED.fullmatch(text) or _PLAIN.fullmatch(text)
        if match is None:
            if ":" in text and text.count(":") > 1:
                raise _invalid(f"expected {want}, got {_show(value)}: write IPv6 as [2001:db8::1]:21")
            raise _invalid(f"expected {want}, got {_show(value)}")
        host, port_text = match.groups()
        if not host:
            raise _invalid(f"expected {want}, got {_show(value)}")
        if port_text is None:
            if default_port is None:
                raise _invalid(f"expected {want}, got {_show(value)}")
            port_text = str(default_port)
        ip, port = _ip(host), int(port_text)
    else:
        raise _invalid(f"expected {want}, got {_show(value)}")
    if not min_port <= port <= 65535:
        raise _invalid(f"port {port} is out of range {min_port}-65535")
    return HostPort(ip, port)


def _listen_address(value: object) -> HostPort:
    # Port 0 lets the kernel pick, which tests use to run on free ports.
    return _host_port(value, default_port=None, min_port=0)


def _upstream_address(value: object) -> HostPort:
    # RFC 959: the FTP control connection defaults to port 21.
    address = _host_port(value, default_port=21, min_port=1)
    if address.ip.is_unspecified:
        raise _invalid(f"cannot connect to {address.ip}; give the FTP server's address")
    return address


def _public_address(value: object) -> IPAddress:
    if isinstance(value, IPv4Address | IPv6Address):
        ip = value
    elif isinstance(value, str):
        text = value.strip()
        ip = _ip(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    else:
        raise _invalid(f"expected an IP address, got {_show(value)}")
    if ip.is_unspecified:
        raise _invalid(f"{ip} cannot be advertised to clients; give the address they reach")
    return ip


_RANGE = re.compile(r"([0-9]{1,5})\s*-\s*([0-9]{1,5})")


def _port_range(value: object) -> PortRange:
    if isinstance(value, PortRange):
        first, last = value.first, value.last
    elif isinstance(value, str) and (match := _RANGE.fullmatch(value.strip())):
        first, last = int(match[1]), int(match[2])
    elif isinstance(value, Mapping):
        if set(value) != {"first", "last"}:
            raise _invalid(f"expected a mapping with keys first and last, got keys {sorted(map(str, value))}")
        first, last = value["first"], value["last"]
        if not all(type(port) is int for port in (first, last)):
            raise _invalid(f"expected whole numbers for first and last, got {_show(first)}, {_show(last)}")
    else:
        raise _invalid(f"expected FIRST-LAST, got {_show(value)}")
    if not DATA_PORT_MIN <= first <= 65535 or not DATA_PORT_MIN <= last <= 65535:
        raise _invalid(f"ports must be within {DATA_PORT_MIN}-65535, got {first}-{last}")
    if first > last:
        raise _invalid(f"FIRST must not exceed LAST, got {first}-{last}")
    return PortRange(first, last)


def _config_path(value: object, info: ValidationInfo) -> Path:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise _invalid(f"expected a file path, got {_show(value)}")
    path = Path(value).expanduser()
    base_dir = (info.context or {}).get("base_dir")
    # Paths in a file are relative to that file, so the config works from any working directory.
    return base_dir / path if isinstance(base_dir, Path) and not path.is_absolute() else path


ListenAddress = Annotated[HostPort, PlainValidator(_listen_address)]
UpstreamAddress = Annotated[HostPort, PlainValidator(_upstream_address)]
PublicAddress = Annotated[IPAddress, PlainValidator(_public_address)]
DataPorts = Annotated[PortRange, PlainValidator(_port_range)]
ConfigPath = Annotated[Path, PlainValidator(_config_path)]
# strict: YAML's `true` must not pass as 1, nor "5" as 5.
Seconds = Annotated[float, Field(strict=True, gt=0)]
Count = Annotated[int, Field(strict=True, ge=1)]


# --- the settings ---


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Timeouts(_Frozen):
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


class Limits(_Frozen):
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


class LogSettings(_Frozen):
    # info: one line per session and transfer; debug adds every command.
    level: Literal["debug", "info", "warning", "error"] = "info"
    # kv reads well for people and grep; json is for log shippers.
    format: Literal["kv", "json"] = "kv"
    # null: transfers are logged only in the main log.
    transfer_log: ConfigPath | None = None


TlsVersion = Literal["TLSv1.2", "TLSv1.3"]


class TlsClient(_Frozen):
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
            raise _invalid_at(missing, "required when client TLS is on: give a PEM file")
        if self.mode == "refuse" and self.implicit_listen:
            raise _invalid_at("mode", "implicit_listen needs mode allow or require")
        return self


class TlsUpstream(_Frozen):
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


class TlsSettings(_Frozen):
    client: TlsClient = TlsClient()
    upstream: TlsUpstream = TlsUpstream()


class AdminSettings(_Frozen):
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
        raise _invalid(f"expected ADDRESS/PREFIX or a list of them, got {_show(value)}")
    networks = []
    for item in items:
        if not isinstance(item, str):
            raise _invalid(f"expected ADDRESS/PREFIX, got {_show(item)}")
        try:
            networks.append(ip_network(item.strip(), strict=True))
        except ValueError:
            raise _invalid(f"{item!r} is not an address or ADDRESS/PREFIX (CIDR), e.g. 198.51.100.0/24") from None
    return tuple(networks)


def _advertised(value: object) -> IPAddress | Literal["local"]:
    return "local" if value == "local" else _public_address(value)


Networks = Annotated[tuple[IPNetwork, ...], PlainValidator(_networks)]


class ProxyProtocolIn(_Frozen):
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


class AdvertiseRule(_Frozen):
    # Clients this rule is for (their address after PROXY protocol); first matching rule wins.
    clients: Networks = ANY_CLIENT
    # Only connections to this listen address; null: any listener.
    listener: ListenAddress | None = None
    # The address written into 227 replies; local: the address the client connected to.
    address: Annotated[IPAddress | Literal["local"], PlainValidator(_advertised)]


class UpstreamServer(_Frozen):
    address: UpstreamAddress
    # Names the upstream in metrics, logs and upstream_users; null: its address.
    name: Annotated[str, Field(strict=True, min_length=1, max_length=64)] | None = None
    # Share of new sessions under round_robin (of least_sessions ties).
    weight: Annotated[int, Field(strict=True, ge=1, le=1000)] = 1
    # null: plain FTP. v1/v2: send a PROXY header first, for servers that read it (proftpd mod_proxy_protocol)
    # and then log the real client.
    proxy_protocol: Literal["v1", "v2"] | None = None

    @property
    def label(self) -> str:
        return self.name or str(self.address)


class HealthCheck(_Frozen):
    # How often each upstream is dialled and must greet with 220.
    interval_s: Seconds = 5.0
    # A LAN server greets in milliseconds.
    timeout_s: Seconds = 2.0
    # Good checks in a row before a dead upstream gets sessions again (as HAProxy's rise 2).
    rise: Count = 2
    # Failed checks in a row before an upstream is skipped (as HAProxy's fall 3).
    fall: Count = 3


class Settings(_Frozen):
    # The common deployment: one public front for internal FTP servers.
    mode: Literal["reverse", "transparent"] = "reverse"
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
            raise _invalid_at("upstream", "required in reverse mode: give the FTP server's ADDRESS[:PORT]")
        _check_scaleout(self)
        if self.mode == "transparent" and self.upstream is not None:
            raise _invalid_at(
                "upstream",
                "not allowed in transparent mode, where each client's original destination is used",
            )
        if self.public_address6 is not None and self.public_address6.version != 6:
            raise _invalid_at("public_address6", f"expected an IPv6 address, got {self.public_address6}")
        for key, ports in (("passive_ports", self.passive_ports), ("active_ports", self.active_ports)):
            # Each worker owns a slice of every data port range.
            if ports is not None and len(ports) < self.workers:
                raise _invalid_at(key, f"{len(ports)} ports cannot be shared among {self.workers} workers")
        return self


def _check_scaleout(settings: Settings) -> None:
    if settings.upstream is not None and settings.upstreams:
        raise _invalid_at("upstreams", "give either upstream or upstreams, not both")
    if settings.mode == "transparent" and settings.upstreams:
        raise _invalid_at("upstreams", "not allowed in transparent mode, where each original destination is used")
    labels = [server.label for server in settings.upstreams]
    if len(set(labels)) != len(labels):
        raise _invalid_at("upstreams", f"two upstreams share a name: {sorted(labels)}; give each a unique name")
    for user, name in settings.upstream_users.items():
        if name not in labels:
            raise _invalid_at("upstream_users", f"user {user!r}: no upstream named {name!r}; known: {labels}")
    if settings.upstream_policy == "per_user" and not settings.upstream_users:
        raise _invalid_at("upstream_users", "required by upstream_policy per_user: map USER names to upstreams")
    if settings.upstream_policy == "per_user" and settings.tls.client.mode != "refuse":
        # The route reads USER before the session begins; a TLS client sends it only inside TLS.
        raise _invalid_at("upstream_policy", "per_user cannot be combined with tls.client (USER is inside TLS)")
    offset = settings.announced_port_offset
    if not 1 <= settings.passive_ports.first + offset <= settings.passive_ports.last + offset <= 65535:
        raise _invalid_at("announced_port_offset", f"{offset} moves passive_ports outside 1-65535")


def _invalid_at(key: str, message: str) -> PydanticCustomError:
    # The context carries the key, as a model-level error has no location of its own.
    return PydanticCustomError("config_at", message, {"at": key})


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
}


def load_config(path: str | os.PathLike[str] | None, **flag_values: object) -> Settings:
    """Settings from the YAML file at `path` (None: defaults), then flag values on top; None means unset."""
    if path is None:
        return _validate({}, source=None, root=None, base_dir=None, flags=flag_values)
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise _error(f"cannot read the file: {exc.strerror}", source=source) from exc
    root, data = _parse_yaml(raw, source)
    base_dir = Path(path).absolute().parent
    return _validate(data, source=source, root=root, base_dir=base_dir, flags=flag_values)


def settings_from_mapping(data: Mapping[str, Any], *, source: str | None = None, **flag_values: object) -> Settings:
    """Settings from an already parsed mapping (no line numbers), then flag values on top."""
    if not isinstance(data, Mapping):
        raise _error(f"expected a mapping of settings, got {_show(data)}", source=source)
    return _validate(data, source=source, root=None, base_dir=None, flags=flag_values)


def apply_overrides(settings: Settings, **flag_values: object) -> Settings:
    """A copy of `settings` with flag values applied and everything validated again."""
    return _validate(dict(settings), source=None, root=None, base_dir=None, flags=flag_values)


_Model = TypeVar("_Model", bound=BaseModel)


def load_yaml_model(
    path: str | os.PathLike[str], model: type[_Model], *, what: str, context: Mapping[str, Any] | None = None
) -> _Model:
    """A YAML file validated as `model`, or a ConfigError naming the file, key path and line (rules use it)."""
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise _error(f"cannot read the file: {exc.strerror}", source=source) from exc
    root, data = _parse_yaml(raw, source, what=what)
    try:
        return model.model_validate(data, context=dict(context or {}))
    except ValidationError as exc:
        raise _explain(exc, source=source, root=root, flags=set(), model=model) from exc


def _parse_yaml(raw: bytes, source: str, what: str = "settings") -> tuple[yaml.Node, Mapping[str, Any]]:
    loader = yaml.SafeLoader(raw)
    try:
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "malformed").split())
        line = mark.line + 1 if mark is not None else None
        raise _error(f"invalid YAML: {problem}", source=source, line=line) from exc
    except yaml.YAMLError as exc:
        raise _error(f"invalid YAML: {' '.join(str(exc).split())}", source=source) from exc
    finally:
        loader.dispose()
    if root is None:
        raise _error(f"the file is empty; expected a mapping of {what}", source=source)
    if not isinstance(root, yaml.MappingNode) or not isinstance(data, Mapping):
        message = f"expected a mapping of {what} at the top level, got {_show(data)}"
        raise _error(message, source=source, line=root.start_mark.line + 1)
    _reject_duplicate_keys(root, (), source)
    return root, data


def _reject_duplicate_keys(
    node: yaml.Node, path: tuple[str | int, ...], source: str, visited: set[int] | None = None
) -> None:
    # PyYAML keeps the last of two equal keys silently; the first would be ignored without a word.
    visited = set() if visited is None else visited
    if id(node) in visited:
        return  # an alias: checked where it was anchored (and it may contain itself)
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if key.value in seen:
                    message = f"duplicate key {key.value!r}, first given on line {seen[key.value]}"
                    raise _error(message, source=source, key=_key_path((*path, key.value)), line=line)
                seen[key.value] = line
                _reject_duplicate_keys(value, (*path, key.value), source, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_duplicate_keys(item, (*path, index), source, visited)


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
    try:
        return Settings.model_validate(merged, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise _explain(exc, source=source, root=root, flags=set(given)) from exc


# --- errors: pydantic's loc mapped to the key path, the YAML line and the flag ---


def _error(message: str, *, source: str | None, key: str = "", line: int | None = None) -> ConfigError:
    error = ConfigError(message, key=key, line=line)
    if source:
        error.args = (f"{source}: {error}",)
    return error


def _key_path(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def _locate(root: yaml.Node | None, loc: tuple[str | int, ...]) -> tuple[yaml.Node | None, yaml.Node | None]:
    """The node whose line to name (the key, or the list item) and the value node, for a pydantic loc."""
    at: yaml.Node | None = root
    value: yaml.Node | None = root
    for part in loc:
        if isinstance(value, yaml.MappingNode):
            pair = next((p for p in value.value if getattr(p[0], "value", None) == part), None)
            if pair is None:
                return None, None  # a default, or hidden behind a YAML merge key
            at, value = pair
        elif isinstance(value, yaml.SequenceNode) and isinstance(part, int) and part < len(value.value):
            at = value = value.value[part]
        elif isinstance(value, yaml.ScalarNode):
            break  # one value standing in for a list of one, as `listen: 203.0.113.1:21`
        else:
            return None, None
    return at, value


def _yaml_hint(node: yaml.Node | None, value: object) -> str:
    """Why YAML 1.1 turned what looks like text into a number or a boolean."""
    if not isinstance(node, yaml.ScalarNode) or node.style or isinstance(value, str):
        return ""
    if node.tag.endswith((":int", ":float")) and ":" in node.value:
        return f": YAML 1.1 reads {node.value} as a base-60 number; quote it"
    if node.tag.endswith(":bool") and node.value.lower() not in ("true", "false"):
        return f": YAML 1.1 reads {node.value} as {_show(value)}; quote it"
    return ""


def _model_at(loc: tuple[str | int, ...], model: type[BaseModel] = Settings) -> type[BaseModel] | None:
    annotation: Any = model
    for part in loc:
        if isinstance(part, int):  # an item of a list of models
            annotation = next(iter(get_args(annotation)), None)
            continue
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        field = annotation.model_fields.get(str(part))
        annotation = field.annotation if field else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _describe(error: ErrorDetails, loc: tuple[str | int, ...], model: type[BaseModel] = Settings) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    got = f"got {_show(value)}"
    if kind in ("config", "config_at"):
        return error["msg"]
    if kind == "extra_forbidden":
        inner = _model_at(loc[:-1], model)
        known = list(inner.model_fields) if inner else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if close:
            return f"unknown key {loc[-1]!r}; did you mean {close[0]!r}?"
        return f"unknown key {loc[-1]!r}; known keys: {', '.join(known)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(value.lower(), choices, n=1) if isinstance(value, str) else []
        return f"expected {ctx.get('expected')}, {got}" + (f"; did you mean {close[0]!r}?" if close else "")
    messages = {
        "missing": "required",
        "invalid_key": f"keys must be text, {got}",
        "int_type": f"expected a whole number, {got}",
        "float_type": f"expected a number, {got}",
        "string_type": f"expected text, {got}",
        "greater_than": f"must be greater than {ctx.get('gt')}, {got}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}, {got}",
        "too_short": "must not be empty",
        "string_too_short": "must not be empty",
        "tuple_type": f"expected a list, {got}",
        "list_type": f"expected a list, {got}",
        "model_type": f"expected a mapping, {got}",
        "dict_type": f"expected a mapping, {got}",
    }
    return messages.get(kind, f"{error['msg']}, {got}")


def _explain(
    exc: ValidationError,
    *,
    source: str | None,
    root: yaml.Node | None,
    flags: set[str],
    model: type[BaseModel] = Settings,
) -> ConfigError:
    errors = exc.errors()
    locs = [tuple(error["loc"]) for error in errors]
    problems: list[tuple[int, ConfigError]] = []
    for error in errors:
        at = (error.get("ctx") or {}).get("at")
        # A model-level error names its key in the context: appended to the model's own place.
        loc = (*tuple(error["loc"]), at) if at else tuple(error["loc"]) or ("",)
        if error["type"] == "invalid_key":
            loc = ()
        elif any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs):
            continue  # a list that is too short because its item failed: the item's error says why
        message = _describe(error, loc, model)
        flag = next((name for name in flags if loc[: len(_OVERRIDABLE[name])] == _OVERRIDABLE[name]), None)
        if flag is not None:
            problem = _error(message, source=None, key="--" + flag.replace("_", "-"))
            problems.append((-1, problem))  # the flag is what the admin just typed
            continue
        at, value = _locate(root, loc)
        line = at.start_mark.line + 1 if at is not None else None
        message += _yaml_hint(value, error.get("input"))
        problem = _error(message, source=source, key=_key_path(loc), line=line)
        problems.append((line or 0, problem))
    problems.sort(key=lambda item: item[0])
    first = problems[0][1]
    if len(problems) > 1:
        more = len(problems) - 1
        first.args = (f"{first} (and {more} more problem{'s' if more > 1 else ''})",)
    return first
