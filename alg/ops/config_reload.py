"""A reload's settings: the file read again, merged with what is running. What can change live comes from the new
file; what needs a restart keeps its running value, and each such key that changed is named.

Applied live (to new sessions; running ones keep what they started with): rules, limits, timeouts, public and
advertised addresses, upstreams (weights, policy, health checks), TLS files and policy, PROXY protocol, log level,
the defender (its bans stay).
Kept until a restart: the keys in RESTART_KEYS (sockets, port ranges, processes, privileges, log destinations).

Rules: pure; the merged value is validated again as a whole, so it is a Settings like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from alg.errors import ConfigError
from alg.ops.config import Settings, apply_overrides
from alg.ops.config_values import show_value

# Key paths (dotted) whose running value stays until the gateway restarts.
RESTART_KEYS = (
    "mode",
    "listen",
    "dual_stack",
    "passive_ports",
    "active_ports",
    "data_path",
    "workers",
    "user",
    "metrics_listen",
    "admin",
    "tls.client.implicit_listen",
    "log.format",
    "log.transfer_log",
    "defender.store",  # the shared store (Redis, the workers' mesh) is connected once, at start
)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A key whose new value waits for a restart."""

    key: str
    running: object
    new: object

    def __str__(self) -> str:
        return f"{self.key}: {_shown(self.running)} -> {_shown(self.new)}"


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, BaseModel):
        return "{" + ", ".join(f"{key}: {_shown(item)}" for key, item in value) + "}"
    return show_value(value).strip("'")


def _get(settings: BaseModel, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _with(model: BaseModel, parts: list[str], value: object) -> BaseModel:
    head, *rest = parts
    inner = value if not rest else _with(getattr(model, head), rest, value)
    return model.model_copy(update={head: inner})


def merge(running: Settings, new: Settings) -> tuple[Settings, list[Waiting]]:
    """`new` with every restart key at its running value, and the restart keys whose value changed.
    ConfigError when the running values do not fit the new file (say, announced_port_offset moved past the
    running passive_ports)."""
    waiting = []
    merged: BaseModel = new
    for key in RESTART_KEYS:
        before, after = _get(running, key), _get(new, key)
        if before != after:
            waiting.append(Waiting(key, before, after))
            merged = _with(merged, key.split("."), before)
    assert isinstance(merged, Settings)
    try:
        return apply_overrides(merged), waiting
    except ConfigError as error:
        kept = ", ".join(item.key for item in waiting)
        raise ConfigError(f"{error} (with the running {kept} kept until a restart)") from error
