"""One config, several gateways: what each instance takes from its environment (Kubernetes pods, systemd
instances). Read at the edge (alg.cli), so the config stays a value of its file and flags.

  FTP_ALG_PASSIVE_PORTS=FIRST-LAST   replaces passive_ports (alg.cli reads it; a --passive-ports flag wins)
  FTP_ALG_INSTANCE=I (or a pod name ending in -I, as a StatefulSet names its pods)
  FTP_ALG_INSTANCES=N                this instance owns slice I of N of passive_ports, so a balancer in front
                                     can send each slice's data connections to the instance that announced it

Rules: pure (the environment is handed in as a mapping); a bad value is a ConfigError naming the variable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from alg.errors import ConfigError
from alg.gateway.workers import port_slice
from alg.ops.config import Settings, apply_overrides

INSTANCE_ENV = "FTP_ALG_INSTANCE"
INSTANCES_ENV = "FTP_ALG_INSTANCES"

_INDEX = re.compile(r"(?:.*-)?([0-9]{1,5})")
_COUNT = re.compile(r"[0-9]{1,5}")


def instance_slice(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(index, count) from FTP_ALG_INSTANCE and FTP_ALG_INSTANCES; None when neither is set."""
    index_text = environ.get(INSTANCE_ENV, "").strip()
    count_text = environ.get(INSTANCES_ENV, "").strip()
    if not index_text and not count_text:
        return None
    if not index_text or not count_text:
        missing = INSTANCE_ENV if not index_text else INSTANCES_ENV
        raise ConfigError("set both FTP_ALG_INSTANCE and FTP_ALG_INSTANCES, or neither", key=missing)
    index_match, count_match = _INDEX.fullmatch(index_text), _COUNT.fullmatch(count_text)
    if index_match is None:
        raise ConfigError(f"expected a number or a name ending in -NUMBER, got {index_text[:60]!r}", key=INSTANCE_ENV)
    if count_match is None or int(count_text) < 1:
        raise ConfigError(f"expected a whole number of at least 1, got {count_text[:60]!r}", key=INSTANCES_ENV)
    index, count = int(index_match.group(1)), int(count_text)
    if index >= count:
        raise ConfigError(f"instance {index} of {count}: the index counts from 0 to {count - 1}", key=INSTANCE_ENV)
    return index, count


def for_instance(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """`settings` with passive_ports cut down to this instance's slice (unchanged without FTP_ALG_INSTANCE)."""
    where = instance_slice(environ)
    if where is None:
        return settings
    index, count = where
    ports = settings.passive_ports
    try:
        mine = port_slice(ports.first, ports.last, index, count)
    except ValueError:
        message = f"{len(ports)} passive ports cannot be shared among {count} instances"
        raise ConfigError(message, key=INSTANCES_ENV) from None
    return apply_overrides(settings, passive_ports=f"{mine.start}-{mine.stop - 1}")
