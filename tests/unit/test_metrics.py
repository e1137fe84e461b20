"""The metrics object and deploy/prometheus: names by convention, every series at zero, bounded labels.

No sockets: the exposition is read from the registry; promtool (Debian's prometheus package) lints it and
checks the alerting rules, their unit tests, the scrape config and the dashboard's queries.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tools import external_tool

from alg import __version__
from alg.ftp.reasons import DataFailure, Refusal, SessionOutcome
from alg.ops.defender import Offence
from alg.ops.metrics import (
    BYTE_DIRECTIONS,
    DATA_DIRECTIONS,
    DATA_FAILURES,
    DATA_MODES,
    DEFENDER_STORES,
    INTERNAL_ERROR_PLACES,
    KNOWN_VERBS,
    POOLS,
    PROTECTIONS,
    PROXY_REFUSAL_REASONS,
    REFUSAL_REASONS,
    REWRITE_KINDS,
    SESSION_OUTCOMES,
    TLS_CHANNELS,
    TLS_OUTCOMES,
    TLS_SIDES,
    Metrics,
    direction_of,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

Labels = frozenset[tuple[str, str]]


def samples(metrics: Metrics) -> dict[tuple[str, Labels], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def label_values(metrics: Metrics, name: str, label: str) -> set[str]:
    return {dict(key)[label] for (sample, key) in samples(metrics) if sample == name}


# ---- the series ------------------------------------------------------------------------------------------------


def test_every_labelled_series_exists_at_zero_from_start() -> None:
    metrics = Metrics()
    found = samples(metrics)
    expected: list[tuple[str, dict[str, str]]] = [
        *(("ftp_alg_sessions_total", {"outcome": o}) for o in SESSION_OUTCOMES),
        *(("ftp_alg_commands_total", {"verb": v}) for v in (*KNOWN_VERBS, "other")),
        *(("ftp_alg_rewrites_total", {"kind": k}) for k in REWRITE_KINDS),
        *(
            ("ftp_alg_data_channels_opened_total", {"mode": m, "direction": d})
            for m in DATA_MODES
            for d in DATA_DIRECTIONS
        ),
        *(("ftp_alg_data_channels_failed_total", {"reason": r}) for r in DATA_FAILURES),
        *(("ftp_alg_data_bytes_total", {"direction": d}) for d in BYTE_DIRECTIONS),
        *(("ftp_alg_refusals_total", {"reason": r}) for r in REFUSAL_REASONS),
        *(("ftp_alg_port_pool_size", {"pool": p}) for p in POOLS),
        *(("ftp_alg_port_pool_in_use", {"pool": p}) for p in POOLS),
        *(("ftp_alg_internal_errors_total", {"where": w}) for w in INTERNAL_ERROR_PLACES),
        ("ftp_alg_sessions_active", {}),
        ("ftp_alg_data_channels_active", {}),
        ("ftp_alg_upstream_ready", {}),
        ("ftp_alg_data_channel_setup_seconds_count", {}),
        ("ftp_alg_upstream_connect_seconds_count", {}),
        ("ftp_alg_transfer_duration_seconds_count", {}),
    ]
    for name, labels in expected:
        assert found[(name, frozenset(labels.items()))] == 0, (name, labels)
    # The list, by family: nothing asked for is missing.
    assert {"bounce", "port_theft", "acl", "command_rule", "limit", "timeout"} <= set(REFUSAL_REASONS)
    assert set(REWRITE_KINDS) >= {"port", "eprt", "pasv", "epsv"}


def test_build_info_carries_the_version() -> None:
    assert value(Metrics(), "ftp_alg_build_info", version=__version__) == 1


def test_names_follow_prometheus_conventions() -> None:
    text = generate_latest(Metrics().registry).decode()
    families = list(text_string_to_metric_families(text))
    ours = [f for f in families if not f.name.startswith("process_")]
    assert len(ours) >= 15
    for family in ours:
        assert family.name.startswith("ftp_alg_"), family.name
        assert not re.search(r"_(ms|milliseconds|kb|mb|kib|mib|minutes)$", family.name), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if family.type == "gauge":
            assert not family.name.endswith("_total"), family.name
    assert not any(s.name.endswith("_created") for f in families for s in f.samples)


def promtool() -> str:
    return external_tool("promtool", "Debian package prometheus: run scripts/install-test-deps.sh")


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=DEPLOY)


def test_exposition_passes_promtool_lint() -> None:
    metrics = Metrics()
    metrics.command("RETR")
    metrics.data_setup_seconds.observe(0.01)
    done = run_promtool("check", "metrics", stdin=generate_latest(metrics.registry).decode())
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == ""


# ---- bounded labels -----------------------------------------------------------------------------------------------

HOSTILE = [
    "203.0.113.10",
    "198.51.100.10:21",
    "anonymous",
    "/etc/passwd",
    "../../secret.txt",
    "X" * 300,
    "retr",
    'a"b\nc',
    "",
]


def test_unknown_verbs_count_as_other() -> None:
    metrics = Metrics()
    for verb in ("RETR", "RETR", "XYZZY", "SITE"):
        metrics.command(verb)
    for text in HOSTILE:
        metrics.command(text)
    assert value(metrics, "ftp_alg_commands_total", verb="RETR") == 2
    assert value(metrics, "ftp_alg_commands_total", verb="SITE") == 1
    assert value(metrics, "ftp_alg_commands_total", verb="other") == 1 + len(HOSTILE)
    assert label_values(metrics, "ftp_alg_commands_total", "verb") == {*KNOWN_VERBS, "other"}


def test_reasons_are_counted_under_their_own_label_and_nothing_else_is_counted() -> None:
    metrics = Metrics()
    metrics.refused(Refusal.PORT_THEFT)
    metrics.refused(Refusal.LINE_LENGTH)
    metrics.data_failure(DataFailure.PORT_POOL_EXHAUSTED)
    metrics.session_ended(SessionOutcome.CLIENT_CLOSED)
    # A reason outside the enums is a bug: it fails loudly instead of being counted under a default label.
    for call in (metrics.refused, metrics.data_failure, metrics.session_ended):
        with pytest.raises(ValueError):
            call("a-rule-nobody-declared")  # type: ignore[arg-type]
    assert value(metrics, "ftp_alg_refusals_total", reason="port_theft") == 1
    assert value(metrics, "ftp_alg_refusals_total", reason="line_length") == 1
    assert value(metrics, "ftp_alg_refusals_total", reason="command_rule") == 0
    assert value(metrics, "ftp_alg_data_channels_failed_total", reason="port_pool_exhausted") == 1
    assert value(metrics, "ftp_alg_data_channels_failed_total", reason="reset") == 0
    assert value(metrics, "ftp_alg_sessions_total", outcome="client_closed") == 1
    assert value(metrics, "ftp_alg_sessions_total", outcome="error") == 0


def test_no_label_ever_carries_an_address_a_user_or_a_path() -> None:
    metrics = Metrics()
    for text in HOSTILE:
        metrics.command(text)
        for counted in (metrics.refused, metrics.data_failure, metrics.session_ended):
            with pytest.raises(ValueError):
                counted(text)  # type: ignore[arg-type]
        metrics.data_channel_opened(text, text)
        metrics.tls_handshake(text, text, text)
    allowed = {
        *TLS_SIDES,
        *TLS_CHANNELS,
        *TLS_OUTCOMES,
        *PROTECTIONS,
        *SESSION_OUTCOMES,
        *KNOWN_VERBS,
        "other",
        *REWRITE_KINDS,
        *DATA_MODES,
        *DATA_DIRECTIONS,
        *DATA_FAILURES,
        *BYTE_DIRECTIONS,
        *REFUSAL_REASONS,
        *POOLS,
        *PROXY_REFUSAL_REASONS,
        *INTERNAL_ERROR_PLACES,
        "1",  # PROXY protocol versions
        "2",
        __version__,
        *DEFENDER_STORES,
        *(offence.value for offence in Offence),
    }
    seen = {
        label_value
        for (name, labels) in samples(metrics)
        for key, label_value in labels
        if name.startswith("ftp_alg_") and key != "le"
    }
    assert seen <= allowed, seen - allowed


@pytest.mark.parametrize(
    ("verb", "direction"),
    [
        ("RETR", "download"),
        ("STOR", "upload"),
        ("STOU", "upload"),
        ("APPE", "upload"),
        ("LIST", "listing"),
        ("NLST", "listing"),
        ("MLSD", "listing"),
        (None, "unknown"),
        ("NOOP", "unknown"),
    ],
)
def test_data_channels_are_counted_by_mode_and_direction(verb: str | None, direction: str) -> None:
    assert direction_of(verb) == direction
    metrics = Metrics()
    metrics.data_channel_opened("active", verb)
    assert value(metrics, "ftp_alg_data_channels_opened_total", mode="active", direction=direction) == 1
    assert sum(v for (n, _), v in samples(metrics).items() if n == "ftp_alg_data_channels_opened_total") == 1


# ---- bytes ---------------------------------------------------------------------------------------------------------


def test_running_relays_show_at_every_scrape_and_totals_never_go_down() -> None:
    metrics = Metrics()
    moved = [0, 0]
    token = metrics.relay_started(lambda: (moved[0], moved[1]))
    seen = []
    for step in range(1, 5):
        moved[0] += 1000 * step
        moved[1] += 7
        seen.append(value(metrics, "ftp_alg_data_bytes_total", direction="download"))
    assert seen == [1000, 3000, 6000, 10000]
    assert value(metrics, "ftp_alg_data_bytes_total", direction="upload") == 28
    assert metrics.relay_finished(token) == (10000, 28)
    assert metrics.relay_finished(token) == (0, 0)  # finishing twice counts nothing twice
    moved[0] = 0  # the relay's object is no longer read
    assert value(metrics, "ftp_alg_data_bytes_total", direction="download") == 10000
    metrics.add_bytes(5, 1)
    assert value(metrics, "ftp_alg_data_bytes_total", direction="download") == 10005
    assert value(metrics, "ftp_alg_data_bytes_total", direction="upload") == 29


def test_two_gateways_in_one_process_keep_separate_counts() -> None:
    first, second = Metrics(), Metrics()
    first.add_bytes(10, 0)
    first.refused("bounce")
    assert value(second, "ftp_alg_data_bytes_total", direction="download") == 0
    assert value(second, "ftp_alg_refusals_total", reason="bounce") == 0


# ---- deploy/prometheus ----------------------------------------------------------------------------------------


def test_alerting_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = run_promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_scrape_config_is_valid() -> None:
    checked = run_promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] if panel["type"] != "row" for target in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_rules_and_dashboard_name_only_metrics_that_exist() -> None:
    names = {name for name, _ in samples(Metrics())}
    used = {m for expr in (*alert_expressions(), *dashboard_expressions()) for m in re.findall(r"ftp_alg_\w+", expr)}
    assert len(used) >= 12
    assert used <= names, used - names
    # Every family an operator needs shows on the dashboard.
    on_dashboard = {m for expr in dashboard_expressions() for m in re.findall(r"ftp_alg_\w+", expr)}
    for family in (
        "ftp_alg_sessions_active",
        "ftp_alg_sessions_total",
        "ftp_alg_commands_total",
        "ftp_alg_rewrites_total",
        "ftp_alg_data_channels_opened_total",
        "ftp_alg_data_channels_failed_total",
        "ftp_alg_data_channels_active",
        "ftp_alg_data_bytes_total",
        "ftp_alg_data_channel_setup_seconds_bucket",
        "ftp_alg_upstream_connect_seconds_bucket",
        "ftp_alg_transfer_duration_seconds_bucket",
        "ftp_alg_refusals_total",
        "ftp_alg_port_pool_size",
        "ftp_alg_port_pool_in_use",
        "ftp_alg_upstream_ready",
        "ftp_alg_build_info",
    ):
        assert family in on_dashboard, family


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, its Grafana variables replaced, loads as a recording rule (promtool parses the PromQL)."""
    substitutions = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*"}
    rules = []
    for number, expr in enumerate(dashboard_expressions()):
        if expr.startswith("label_values("):
            continue
        for variable, text in substitutions.items():
            expr = expr.replace(variable, text)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run_promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_an_auth_tls_probe_to_a_gateway_without_tls_is_not_a_refusal() -> None:
    """lftp and FileZilla ask AUTH TLS by default: counted in ftp_alg_tls_probes_total, so the refusal rate the
    probing alert watches (ftp_alg_refusals_total) stays what hostile requests make it."""
    metrics = Metrics()
    metrics.refused("tls_off")
    metrics.refused("tls_off")
    metrics.refused("bounce")
    get = metrics.registry.get_sample_value
    assert get("ftp_alg_tls_probes_total") == 2
    assert sum(get("ftp_alg_refusals_total", {"reason": reason}) or 0 for reason in REFUSAL_REASONS) == 1
