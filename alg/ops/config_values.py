"""Config values: text (or an already parsed value) in, a typed value out; the types the settings are made of.

Rules: pure; a bad value raises PydanticCustomError, which alg.ops.config turns into a ConfigError with its key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationInfo
from pydantic_core import PydanticCustomError

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


@dataclass(frozen=True, slots=True)
class HostName:
    """An upstream given by DNS name (a Kubernetes Service, a compose service, a failover record): the upstream
    pool resolves it at start and again while running, so sessions still connect to IP addresses."""

    name: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}:{self.port}"


# --- value parsers: text (or an already parsed value) in, typed value out, PydanticCustomError otherwise ---


def invalid(message: str) -> PydanticCustomError:
    # No context: the template is used verbatim, so braces in the user's input cannot be misread.
    return PydanticCustomError("config", message)


def show_value(value: object) -> str:
    """A value as the admin wrote it, short and on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float | HostPort | HostName | PortRange | IPv4Address | IPv6Address | Path):
        return str(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


_BRACKETED = re.compile(r"\[([^\[\]]*)\](?::([0-9]{1,5}))?")
_PLAIN = re.compile(r"([^\[\]:]*)(?::([0-9]{1,5}))?")
_HOSTNAME = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?")


def _ip(text: str, *, names: bool = False) -> IPAddress | str:
    try:
        return ip_address(text)
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(text) and len(text) <= 253:
        if names:
            return text.rstrip(".").lower()
        raise invalid(f"{text!r} is a hostname; give an IP address")
    raise invalid(f"{text!r} is not an IP address" + (" or a host name" if names else ""))


def _host_port(value: object, *, default_port: int | None, min_port: int, names: bool = False) -> HostPort | HostName:
    want = "ADDRESS:PORT" if default_port is None else "ADDRESS[:PORT]"
    host: IPAddress | str
    if isinstance(value, HostPort | HostName):
        host, port = (value.ip, value.port) if isinstance(value, HostPort) else (value.name, value.port)
    elif isinstance(value, str):
        text = value.strip()
        match = _BRACKETED.fullmatch(text) or _PLAIN.fullmatch(text)
        if match is None:
            if ":" in text and text.count(":") > 1:
                raise invalid(f"expected {want}, got {show_value(value)}: write IPv6 as [2001:db8::1]:21")
            raise invalid(f"expected {want}, got {show_value(value)}")
        text_host, port_text = match.groups()
        if not text_host:
            raise invalid(f"expected {want}, got {show_value(value)}")
        if port_text is None:
            if default_port is None:
                raise invalid(f"expected {want}, got {show_value(value)}")
            port_text = str(default_port)
        host, port = _ip(text_host, names=names), int(port_text)
    else:
        raise invalid(f"expected {want}, got {show_value(value)}")
    if not min_port <= port <= 65535:
        raise invalid(f"port {port} is out of range {min_port}-65535")
    return HostName(host, port) if isinstance(host, str) else HostPort(host, port)


def _listen_address(value: object) -> HostPort:
    # Port 0 lets the kernel pick, which tests use to run on free ports.
    address = _host_port(value, default_port=None, min_port=0)
    assert isinstance(address, HostPort)  # names=False
    return address


def _upstream_address(value: object) -> HostPort | HostName:
    # RFC 959: the FTP control connection defaults to port 21.
    address = _host_port(value, default_port=21, min_port=1, names=True)
    if isinstance(address, HostPort) and address.ip.is_unspecified:
        raise invalid(f"cannot connect to {address.ip}; give the FTP server's address")
    return address


def parse_public_address(value: object) -> IPAddress:
    if isinstance(value, IPv4Address | IPv6Address):
        ip = value
    elif isinstance(value, str):
        text = value.strip()
        parsed = _ip(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
        assert not isinstance(parsed, str)  # names=False
        ip = parsed
    else:
        raise invalid(f"expected an IP address, got {show_value(value)}")
    if ip.is_unspecified:
        raise invalid(f"{ip} cannot be advertised to clients; give the address they reach")
    return ip


_RANGE = re.compile(r"([0-9]{1,5})\s*-\s*([0-9]{1,5})")


def _port_range(value: object) -> PortRange:
    if isinstance(value, PortRange):
        first, last = value.first, value.last
    elif isinstance(value, str) and (match := _RANGE.fullmatch(value.strip())):
        first, last = int(match[1]), int(match[2])
    elif isinstance(value, Mapping):
        if set(value) != {"first", "last"}:
            raise invalid(f"expected a mapping with keys first and last, got keys {sorted(map(str, value))}")
        first, last = value["first"], value["last"]
        if not all(type(port) is int for port in (first, last)):
            raise invalid(f"expected whole numbers for first and last, got {show_value(first)}, {show_value(last)}")
    else:
        raise invalid(f"expected FIRST-LAST, got {show_value(value)}")
    if not DATA_PORT_MIN <= first <= 65535 or not DATA_PORT_MIN <= last <= 65535:
        raise invalid(f"ports must be within {DATA_PORT_MIN}-65535, got {first}-{last}")
    if first > last:
        raise invalid(f"FIRST must not exceed LAST, got {first}-{last}")
    return PortRange(first, last)


def _config_path(value: object, info: ValidationInfo) -> Path:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise invalid(f"expected a file path, got {show_value(value)}")
    path = Path(value).expanduser()
    base_dir = (info.context or {}).get("base_dir")
    # Paths in a file are relative to that file, so the config works from any working directory.
    return base_dir / path if isinstance(base_dir, Path) and not path.is_absolute() else path


ListenAddress = Annotated[HostPort, PlainValidator(_listen_address)]
UpstreamAddress = Annotated[HostPort | HostName, PlainValidator(_upstream_address)]
PublicAddress = Annotated[IPAddress, PlainValidator(parse_public_address)]
DataPorts = Annotated[PortRange, PlainValidator(_port_range)]
ConfigPath = Annotated[Path, PlainValidator(_config_path)]
# strict: YAML's `true` must not pass as 1, nor "5" as 5.
Seconds = Annotated[float, Field(strict=True, gt=0)]
Count = Annotated[int, Field(strict=True, ge=1)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def invalid_at(key: str, message: str) -> PydanticCustomError:
    # The context carries the key, as a model-level error has no location of its own.
    return PydanticCustomError("config_at", message, {"at": key})
