"""Helpers for the scale-out tests: the gateway from a YAML file, HAProxy as the balancer, /metrics and /readyz."""

from __future__ import annotations

import ipaddress
import itertools
import shutil
import time
import urllib.error
import urllib.request
from typing import Any

import yaml
from gateway import wait_listening
from hostile import Samples, parse_samples
from netns import Host, ManagedProcess

HAPROXY = "/usr/sbin/haproxy"
METRICS = "127.0.0.1:9100"  # inside the gateway's namespace
_configs = itertools.count()


def haproxy_missing() -> str | None:
    return None if shutil.which(HAPROXY) else f"{HAPROXY} not found (apt-get install haproxy)"


def start_gateway(host: Host, settings: dict[str, Any], *, env: dict[str, str] | None = None) -> ManagedProcess:
    """`ftp-alg run --config` in `host` with `settings` (metrics on METRICS, debug logs); waits until it listens."""
    settings = {"metrics_listen": METRICS, "log": {"level": "debug"}, **settings}
    path = host.topology.workdir / f"gateway-{host.role}-{next(_configs)}.yaml"
    path.write_text(yaml.safe_dump(settings))
    process = host.exec_python(["-m", "alg.cli", "run", "--config", str(path)], env=env, name="gateway")
    wait_listening(host, process, ipaddress.IPv4Address("0.0.0.0"), 0)  # waits for its "listening on" line
    metrics_ip, metrics_port = METRICS.rsplit(":", 1)
    host.wait_port(metrics_ip, int(metrics_port), process=process, timeout_s=10)
    return process


def start_haproxy(host: Host, config: str) -> ManagedProcess:
    path = host.topology.workdir / f"haproxy-{next(_configs)}.cfg"
    path.write_text(config)
    check = host.run([HAPROXY, "-c", "-f", path], timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    return host.popen([HAPROXY, "-db", "-f", path], name="haproxy")


def http_get(host: Host, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{METRICS}{path}", timeout=timeout_s) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    return host.call(get, timeout_s=timeout_s + 5)


def scrape(host: Host) -> Samples:
    status, text = http_get(host, "/metrics")
    assert status == 200, text
    return parse_samples(text)


def value(host: Host, name: str, **labels: str) -> float:
    return scrape(host).get((name, frozenset(labels.items())), 0.0)


def wait_for(what: str, check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")
