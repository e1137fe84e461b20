"""A reload without sockets: the merge of running and new settings (what applies, what waits for a restart),
and a gateway applying it to new sessions while the port pools and restart-only keys stay as they run."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
import yaml

from alg.errors import ConfigError
from alg.gateway.reload import Failed, Inbox, Reloader, encode, read_bundle, send
from alg.gateway.server import Gateway
from alg.ops.config import Settings, load_config, settings_from_mapping
from alg.ops.config_reload import RESTART_KEYS, merge

UPSTREAM = "198.51.100.10:21"


def settings(**flags: object) -> Settings:
    return load_config(None, upstream=UPSTREAM, **flags)


def test_restart_keys_keep_their_running_value_and_are_named() -> None:
    running = settings(passive_ports="50000-50999", workers=2, log_level="info")
    new = settings(passive_ports="51000-51999", workers=3, log_level="debug", tls_implicit_listen=None)
    merged, waiting = merge(running, new)
    assert [str(item) for item in waiting] == ["passive_ports: 50000-50999 -> 51000-51999", "workers: 2 -> 3"]
    assert (merged.passive_ports, merged.workers) == (running.passive_ports, 2)
    assert merged.log.level == "debug"  # applies live
    assert merge(running, running) == (running, [])


def test_a_nested_restart_key_is_kept_inside_its_section() -> None:
    running, new = settings(log_format="kv"), settings(log_format="json", log_level="warning")
    merged, waiting = merge(running, new)
    assert [item.key for item in waiting] == ["log.format"]
    assert (merged.log.format, merged.log.level) == ("kv", "warning")
    assert "log.format" in RESTART_KEYS and "log.level" not in RESTART_KEYS


def test_new_values_that_do_not_fit_the_running_ones_refuse_the_reload() -> None:
    running = settings(passive_ports="50000-50001")
    # Valid on its own (60000-60999 announced as 5000-5999), not with the running ports kept (below port 1).
    new = Settings.model_validate(
        {"upstream": UPSTREAM, "passive_ports": "60000-60999", "announced_port_offset": -55000}
    )
    with pytest.raises(ConfigError, match=r"-55000 moves passive_ports outside .* \(with the running passive_ports"):
        merge(running, new)


def test_a_gateway_applies_a_reload_to_new_sessions(caplog: pytest.LogCaptureFixture) -> None:
    gateway = Gateway(settings(passive_ports="50000-50099", workers=1))
    pool, before = gateway.context.public_pool, gateway.context
    new = load_config(
        None, upstream=UPSTREAM, passive_ports="52000-52099", public_address="203.0.113.7", log_level="warning"
    ).model_copy(update={"limits": gateway.settings.limits.model_copy(update={"max_line_bytes": 1024})})
    root = logging.getLogger()
    with caplog.at_level(logging.INFO):  # sets the root logger's level, and restores it after
        assert root.level == logging.INFO
        gateway.reload(lambda: new)
        assert root.level == logging.WARNING
    assert gateway.context is not before, "running sessions keep the context they started with"
    assert gateway.context.public_pool is pool  # the ports in use stay counted
    assert gateway.context.channel_settings.max_line_bytes == 1024
    assert str(gateway.context.public_address) == "203.0.113.7"
    assert str(gateway.settings.passive_ports) == "50000-50099"
    assert "reload: passive_ports: 50000-50099 -> 52000-52099 waits for a restart" in caplog.text
    assert gateway.metrics.registry.get_sample_value("ftp_alg_reloads_total", {"result": "ok"}) == 1


def test_a_bad_rule_file_refuses_the_whole_reload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("commands:\n  rules: [{deny: DELE}]\n")
    gateway = Gateway(settings(**{}).model_copy(update={"rules": (rules,)}))
    before = gateway.context
    rules.write_text("commands:\n  rules: [{deny: DELE, code: 200}]\n")
    new = settings(public_address="203.0.113.7").model_copy(update={"rules": (rules,)})
    with caplog.at_level(logging.INFO):
        gateway.reload(lambda: new)
    assert "reload failed, keeping the running settings" in caplog.text and "code must be a 4xx" in caplog.text
    assert gateway.context is before and gateway.context.public_address is None
    assert gateway.metrics.registry.get_sample_value("ftp_alg_reloads_total", {"result": "failed"}) == 1


def test_what_the_parent_sends_is_what_the_worker_reads() -> None:
    reloader = Reloader(settings(), lambda: settings(public_address="203.0.113.7"))
    bundle = reloader.read()
    assert not isinstance(bundle, Failed)
    assert str(reloader.current.public_address) == "203.0.113.7"  # what a worker started now gets
    data = encode(bundle) + encode(Failed("why"))
    inbox = Inbox()
    received = [*inbox.feed(data[:7]), *inbox.feed(data[7:])]  # any split of the stream
    assert received == [bundle, Failed("why")]
    assert read_bundle(settings()).rules == bundle.rules


def test_an_upstream_kept_by_a_reload_keeps_its_health() -> None:
    pool = "{address: '198.51.100.10:21', name: a}, {address: '198.51.100.11:21', name: b}"
    running = settings_from_mapping(yaml.safe_load(f"upstreams: [{pool}]"))
    gateway = Gateway(running)
    assert gateway.upstreams is not None
    gateway.upstreams.upstreams[1].health.healthy = False  # b failed its checks
    new = settings_from_mapping(yaml.safe_load(f"upstreams: [{pool}, {{address: '198.51.100.12:21', name: c}}]"))

    async def reload() -> None:  # the old health checker is stopped by a task of the loop
        gateway.reload(lambda: new)
        await asyncio.sleep(0)

    asyncio.run(reload())
    assert gateway.upstreams is not None
    health = {upstream.label: upstream.health.healthy for upstream in gateway.upstreams.upstreams}
    assert health == {"a": True, "b": False, "c": True}


def test_sending_to_a_worker_that_is_gone_or_stuck_fails_without_raising() -> None:
    readable, writable = os.pipe()
    os.set_blocking(writable, False)
    try:
        assert not send(writable, b"x" * (1 << 20), timeout_s=0.01)  # nobody reads: the pipe fills up
        os.close(readable)
        readable = -1
        assert not send(writable, b"x")  # nobody ever will: EPIPE
    finally:
        os.close(writable)
        if readable >= 0:
            os.close(readable)
