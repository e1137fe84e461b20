"""Observability end to end: the gateway runs in the gw namespace of the reverse topology with
`--metrics-listen`, clients work through it, and the numbers are read back as an operator would, by
scraping /metrics from the client namespace, asking /readyz, reading the logs, and querying a real
Prometheus server that scrapes the gateway.

client 203.0.113.10 ─ gw 203.0.113.1 (ftp :21, http :9121) | 198.51.100.1 ─ vsftpd 198.51.100.10:21
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hostile
import pytest
import yaml
from clients import curl_download, ftplib_run
from conftest import skip_or_fail
from hostile import Samples, metric, parse_samples
from netns import Host, ManagedProcess, Topology
from servers import FtpServer, FtpTarget, sha256_file

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
METRICS_PORT = 9121
PASSIVE_PORTS = "40000-40099"
PROMETHEUS = "/usr/bin/prometheus"
PROMETHEUS_ADDR = "127.0.0.1:9090"  # inside the gw namespace
DEADLINE_S = 20.0
POLL_S = 0.1
MIB = 1024 * 1024


# --------------------------------------------------------------------------- helpers


def http_get(host: Host, url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """GET from inside `host`'s namespace; never through a proxy from the environment."""

    def get() -> tuple[int, str]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=timeout_s) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    return host.call(get, timeout_s=timeout_s + 5)


def gateway_url(topo: Topology, path: str) -> str:
    return f"http://{topo.public_addr}:{METRICS_PORT}{path}"


def scrape(topo: Topology) -> Samples:
    status, text = http_get(topo.client, gateway_url(topo, "/metrics"))
    assert status == 200, text
    return parse_samples(text)


wait_until = functools.partial(hostile.wait_until, timeout_s=DEADLINE_S, poll_s=POLL_S)


def start_gateway(topo: Topology, server: FtpServer, *extra: str) -> ManagedProcess:
    gateway = topo.start_gateway(
        [
            "run",
            "--listen",
            f"{topo.public_addr}:21",
            "--upstream",
            f"{server.addr}:{server.port}",
            "--passive-ports",
            PASSIVE_PORTS,
            "--metrics-listen",
            f"{topo.public_addr}:{METRICS_PORT}",
            *extra,
        ]
    )
    # The metrics listener opens after the FTP listeners: once it answers, the gateway serves.
    topo.client.wait_port(topo.public_addr, METRICS_PORT, process=gateway, timeout_s=10)
    return gateway


@pytest.fixture
def vsftpd(reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer]) -> FtpServer:
    return ftp_server_factory("vsftpd", reverse_topo.server)


def log_lines(text: str) -> list[dict[str, str]]:
    pairs = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')
    return [
        {key: json.loads(raw) if raw.startswith('"') else raw for key, raw in pairs.findall(line)}
        for line in text.splitlines()
        if line.startswith("ts=")
    ]


# --------------------------------------------------------------------------- metrics after real transfers


def test_64_mib_download_raises_the_download_counter_by_exactly_its_size(
    reverse_topo: Topology, vsftpd: FtpServer, tmp_path: Path
) -> None:
    topo = reverse_topo
    size = 64 * MIB
    payload = random.Random(4).randbytes(size)
    vsftpd.put_file("big64.bin", payload)
    transfer_log = topo.workdir / "xfer.log"
    config = topo.workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump({"log": {"level": "debug", "transfer_log": str(transfer_log)}}))
    gateway = start_gateway(topo, vsftpd, "--config", str(config))
    password = "pw-marker-7d1c"  # vsftpd takes any anonymous password; this one must never be logged
    target = FtpTarget(topo.public_addr, 21, "anonymous", password)
    before = scrape(topo)

    dest = tmp_path / "big64.bin"
    curl_download(topo.client, target, "big64.bin", dest, mode="pasv", timeout_s=60).check()
    assert sha256_file(dest) == hashlib.sha256(payload).hexdigest()

    after = scrape(topo)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("ftp_alg_data_bytes_total", direction="download") == size
    assert delta("ftp_alg_data_bytes_total", direction="upload") == 0
    assert delta("ftp_alg_data_channels_opened_total", mode="passive", direction="download") == 1
    assert delta("ftp_alg_rewrites_total", kind="pasv") == 1
    assert delta("ftp_alg_commands_total", verb="RETR") == 1
    assert delta("ftp_alg_commands_total", verb="PASS") == 1
    assert delta("ftp_alg_data_channel_setup_seconds_count") == 1
    assert delta("ftp_alg_upstream_connect_seconds_count") == 1
    assert sum(v for (n, _), v in after.items() if n == "ftp_alg_data_channels_failed_total") == 0
    assert metric(after, "ftp_alg_port_pool_size", pool="public") == 100

    # The session ends after curl's QUIT; then its transfer is timed and the gauges are back at zero.
    def settled() -> Samples | None:
        now = scrape(topo)
        done = metric(now, "ftp_alg_transfer_duration_seconds_count") == 1
        done = done and metric(now, "ftp_alg_sessions_total", outcome="quit") == 1
        idle = metric(now, "ftp_alg_sessions_active") == 0 and metric(now, "ftp_alg_data_channels_active") == 0
        return now if done and idle and metric(now, "ftp_alg_port_pool_in_use", pool="public") == 0 else None

    wait_until("transfer timed and session closed", settled)

    # One transfer record, in its own file, with xferlog's fields.
    records = wait_until("transfer log record", lambda: log_lines(transfer_log.read_text()))
    assert len(records) == 1
    record = records[0]
    assert (record["logger"], record["command"], record["path"], record["bytes"]) == (
        "ftp_alg.transfer",
        "RETR",
        "big64.bin",
        str(size),
    )
    assert (record["client"], record["user"], record["mode"], record["outcome"]) == (
        str(topo.client_addr),
        "anonymous",
        "passive",
        "complete",
    )
    assert float(record["seconds"]) > 0 and re.fullmatch(r"0-[0-9]+", record["session"])  # WORKER-NUMBER

    # The main log: every session line carries the session id, the rewrite is there at debug, no password.
    text = gateway.log()
    assert password not in text
    session_lines = [line for line in log_lines(text) if line["logger"] == "ftp_alg.session"]
    assert session_lines and all(line.get("session") == record["session"] for line in session_lines)
    rewrites = [line["msg"] for line in session_lines if line["msg"].startswith("rewrite pasv")]
    assert len(rewrites) == 1 and f"({str(topo.public_addr).replace('.', ',')}," in rewrites[0]
    assert not any(line["logger"] == "ftp_alg.transfer" for line in log_lines(text))
    commands = [line["msg"] for line in session_lines if line["msg"].startswith("command ")]
    assert "command PASS ***" in commands and "command RETR big64.bin" in commands


def test_refused_bounce_raises_the_bounce_counter_by_one(reverse_topo: Topology, vsftpd: FtpServer) -> None:
    topo = reverse_topo
    gateway = start_gateway(topo, vsftpd, "--log-format", "json")
    before = scrape(topo)

    # PORT naming a third host (198.18.0.77), not the client's own address.
    result = ftplib_run(topo.client, vsftpd.target(topo.public_addr), [("cmd", "PORT 198,18,0,77,195,80")])
    assert result.data is not None and not result.data["ok"]
    assert (result.data["error"] or "").startswith("error_perm: 504"), result

    after = scrape(topo)
    deltas = {
        dict(labels)["reason"]: value - before[(name, labels)]
        for (name, labels), value in after.items()
        if name == "ftp_alg_refusals_total"
    }
    assert deltas["bounce"] == 1
    assert sum(deltas.values()) == 1
    assert (
        metric(after, "ftp_alg_commands_total", verb="PORT") - metric(before, "ftp_alg_commands_total", verb="PORT")
        == 1
    )
    assert metric(after, "ftp_alg_rewrites_total", kind="port") == 0
    # The refusal is in the (JSON) log, with the session id.
    refused = [
        json.loads(line)
        for line in gateway.log().splitlines()
        if line.startswith("{") and "refused" in json.loads(line)["msg"]
    ]
    assert len(refused) == 1
    assert refused[0]["rule"] == "bounce" and re.fullmatch(r"0-[0-9]+", refused[0]["session"])


# --------------------------------------------------------------------------- health


def test_readyz_follows_the_upstream(reverse_topo: Topology, vsftpd: FtpServer) -> None:
    topo = reverse_topo
    start_gateway(topo, vsftpd)
    assert http_get(topo.client, gateway_url(topo, "/healthz")) == (200, "ok\n")
    assert http_get(topo.client, gateway_url(topo, "/readyz")) == (200, "ready\n")
    assert metric(scrape(topo), "ftp_alg_upstream_ready") == 1

    vsftpd.stop()

    _, body = wait_until(
        "/readyz answers 503",
        lambda: (answer := http_get(topo.client, gateway_url(topo, "/readyz")))[0] == 503 and answer,
        timeout_s=10,
    )
    assert body.startswith(f"not ready: cannot connect to {vsftpd.addr}:21")
    assert http_get(topo.client, gateway_url(topo, "/healthz")) == (200, "ok\n")  # still serving
    wait_until("upstream_ready gauge at 0", lambda: metric(scrape(topo), "ftp_alg_upstream_ready") == 0)


# --------------------------------------------------------------------------- a real Prometheus


def prometheus_query(topo: Topology, query: str) -> list[dict[str, Any]]:
    url = f"http://{PROMETHEUS_ADDR}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    status, text = http_get(topo.gw, url)
    assert status == 200, text
    answer = json.loads(text)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def test_prometheus_scrapes_the_gateway(reverse_topo: Topology, vsftpd: FtpServer, tmp_path: Path) -> None:
    if shutil.which(PROMETHEUS) is None:
        skip_or_fail(f"{PROMETHEUS} not found (Debian package prometheus: run scripts/install-test-deps.sh)")
    topo = reverse_topo
    start_gateway(topo, vsftpd)
    hello = vsftpd.path("hello.txt").read_bytes()
    curl_download(topo.client, vsftpd.target(topo.public_addr), "hello.txt", tmp_path / "hello.txt").check()
    assert (tmp_path / "hello.txt").read_bytes() == hello

    storage = topo.workdir / "prometheus-data"
    config = topo.workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {"job_name": "ftp-alg", "static_configs": [{"targets": [f"{topo.public_addr}:{METRICS_PORT}"]}]}
                ],
            }
        )
    )
    prometheus = topo.gw.popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address={PROMETHEUS_ADDR}",
            "--log.level=warn",
        ],
        name="prometheus",
    )

    def ready() -> bool:
        assert prometheus.alive(), prometheus.log()[-4000:]
        try:
            return http_get(topo.gw, f"http://{PROMETHEUS_ADDR}/-/ready", timeout_s=1)[0] == 200
        except OSError:
            return False

    wait_until("prometheus ready", ready, timeout_s=30)

    def scraped_bytes() -> float | None:
        result = prometheus_query(topo, 'ftp_alg_data_bytes_total{job="ftp-alg", direction="download"}')
        return float(result[0]["value"][1]) if result else None

    assert wait_until("download bytes in Prometheus", lambda: scraped_bytes() == len(hello) or None)
    up = prometheus_query(topo, 'up{job="ftp-alg"}')
    assert [float(series["value"][1]) for series in up] == [1.0]
    version = prometheus_query(topo, "ftp_alg_build_info")
    assert version and version[0]["metric"]["version"]

    # The shipped alerting rules load and evaluate against the real series without error; none fires.
    def rules_evaluated() -> list[dict[str, Any]] | None:
        status, text = http_get(topo.gw, f"http://{PROMETHEUS_ADDR}/api/v1/rules")
        groups = json.loads(text)["data"]["groups"] if status == 200 else []
        rules = [rule for group in groups for rule in group["rules"]]
        evaluated = rules and all(not rule["lastEvaluation"].startswith("0001") for rule in rules)
        return rules if evaluated else None

    rules = wait_until("alerting rules evaluated", rules_evaluated)
    assert len(rules) == len(yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"])
    assert [(rule["name"], rule["health"], rule.get("lastError", "")) for rule in rules if rule["health"] != "ok"] == []
    assert [rule["name"] for rule in rules if rule["state"] != "inactive"] == []
