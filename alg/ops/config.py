"""Settings: a YAML file and command-line flags in, one immutable, validated `Settings` value out.

Rules: reads only the file it is given; binds, opens and exits nothing. Every failure is a ConfigError
whose str() is one line naming where the value came from (file and YAML line, or flag), the key and the fix.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from alg.errors import ConfigError
from alg.ftp.addresses import HostPort
from alg.ops.config_sections import (
    AdminSettings,
    AdvertiseRule,
    HealthCheck,
    Limits,
    LogSettings,
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
    if settings.mode == "transparent" and settings.upstreams:
        raise invalid_at("upstreams", "not allowed in transparent mode, where each original destination is used")
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
        raise _error(f"expected a mapping of settings, got {show_value(data)}", source=source)
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
        message = f"expected a mapping of {what} at the top level, got {show_value(data)}"
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
        return f": YAML 1.1 reads {node.value} as {show_value(value)}; quote it"
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
    got = f"got {show_value(value)}"
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
