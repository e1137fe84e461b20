"""Settings from YAML and flags: the example loads, and every bad value names its key and line."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from alg.errors import ConfigError
from alg.ftp.addresses import HostPort
from alg.ops.config import PortRange, Settings, apply_overrides, load_config, settings_from_mapping

EXAMPLE = Path(__file__).resolve().parents[2] / "rules" / "gateway.example.yaml"
UPSTREAM = "upstream: 198.51.100.10:21\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, **flags: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), **flags)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_example_file_loads() -> None:
    settings = load_config(EXAMPLE)
    assert settings.mode == "reverse"
    assert settings.listen == (
        HostPort(IPv4Address("203.0.113.1"), 21),
        HostPort(IPv6Address("2001:db8::1"), 21),
    )
    assert settings.upstream == HostPort(IPv4Address("198.51.100.10"), 21)
    assert settings.public_address == IPv4Address("203.0.113.1")
    assert settings.passive_ports == PortRange(50000, 50999)
    assert settings.metrics_listen == HostPort(IPv4Address("127.0.0.1"), 9121)


def test_defaults() -> None:
    settings = settings_from_mapping({"upstream": "198.51.100.10"})
    assert settings.mode == "reverse"
    assert settings.listen == (HostPort(IPv4Address("0.0.0.0"), 21),)
    assert settings.upstream == HostPort(IPv4Address("198.51.100.10"), 21)
    assert settings.public_address is None
    assert settings.passive_ports == PortRange(50000, 50999)
    assert settings.active_ports is None
    assert settings.passive_target == "upstream"
    t = settings.timeouts
    assert (t.upstream_connect_s, t.login_s, t.idle_s) == (10, 60, 900)
    assert (t.data_connect_s, t.data_idle_s, t.shutdown_grace_s) == (30, 300, 30)
    lim = settings.limits
    assert (lim.max_sessions, lim.max_sessions_per_client, lim.max_line_bytes) == (5000, 50, 4096)
    assert (lim.max_pipelined_commands, lim.max_data_channels_per_session) == (32, 4)
    assert settings.metrics_listen is None
    assert (settings.log.level, settings.log.format, settings.log.transfer_log) == ("info", "kv", None)
    assert settings.workers == 1
    assert settings.rules == ()
    assert settings.user is None


def test_settings_are_immutable() -> None:
    settings = settings_from_mapping({"upstream": "198.51.100.10"})
    with pytest.raises(ValidationError):
        settings.workers = 2
    with pytest.raises(ValidationError):
        settings.timeouts.idle_s = 1


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("mode: revers\n", "mode (line 1)", "did you mean 'reverse'"),
        (
            UPSTREAM + "listen:\n  - 203.0.113.1\n",
            "listen[0] (line 3)",
            "expected ADDRESS:PORT, got '203.0.113.1'",
        ),
        (UPSTREAM + "listen: 203.0.113.1:99999\n", "listen[0] (line 2)", "port 99999 is out of range"),
        (UPSTREAM + "listen: 2001:db8::1:21\n", "listen[0] (line 2)", "[2001:db8::1]:21"),
        (UPSTREAM + "listen: []\n", "listen (line 2)", "must not be empty"),
        ("upstream: ftp_server!:21\n", "upstream (line 1)", "not an IP address or a host name"),
        (UPSTREAM + "public_address: ftp.example.com\n", "public_address (line 2)", "a hostname; give an IP address"),
        ("upstream: 198.51.100.10:0\n", "upstream (line 1)", "port 0 is out of range 1-65535"),
        ("upstream: 0.0.0.0\n", "upstream (line 1)", "cannot connect to 0.0.0.0"),
        (UPSTREAM + "public_address: 203.0.113\n", "public_address (line 2)", "not an IP address"),
        (UPSTREAM + "public_address: 0.0.0.0\n", "public_address (line 2)", "cannot be advertised"),
        (UPSTREAM + "passive_ports: 80-90\n", "passive_ports (line 2)", "within 1024-65535, got 80-90"),
        (UPSTREAM + "passive_ports: 51000-50000\n", "passive_ports (line 2)", "FIRST must not exceed LAST"),
        (UPSTREAM + "passive_ports: {first: 50000}\n", "passive_ports (line 2)", "keys first and last"),
        (UPSTREAM + "passive_ports: lots\n", "passive_ports (line 2)", "expected FIRST-LAST, got 'lots'"),
        (UPSTREAM + "active_ports: 60000-70000\n", "active_ports (line 2)", "within 1024-65535"),
        (UPSTREAM + "passive_target: server\n", "passive_target (line 2)", "'upstream' or 'advertised'"),
        (UPSTREAM + "timeouts:\n  idle_s: 0\n", "timeouts.idle_s (line 3)", "greater than 0"),
        (UPSTREAM + "timeouts:\n  login_s: soon\n", "timeouts.login_s (line 3)", "expected a number"),
        (UPSTREAM + "timeouts: 5\n", "timeouts (line 2)", "expected a mapping, got 5"),
        (UPSTREAM + "limits:\n  max_line_bytes: 100\n", "limits.max_line_bytes (line 3)", "at least 512"),
        (UPSTREAM + "limits:\n  max_sessions: 0\n", "limits.max_sessions (line 3)", "at least 1"),
        (UPSTREAM + "limits:\n  max_sessions_per_client: 1.5\n", "(line 3)", "expected a whole number"),
        (UPSTREAM + "limits:\n  max_pipelined_commands: -1\n", "limits.max_pipelined_commands (line 3)", ""),
        (UPSTREAM + "limits:\n  max_data_channels_per_session: x\n", "limits.max_data_ch", "whole number"),
        (UPSTREAM + "metrics_listen: 9121\n", "metrics_listen (line 2)", "expected ADDRESS:PORT, got 9121"),
        (UPSTREAM + "log:\n  level: loud\n", "log.level (line 3)", "'debug', 'info', 'warning' or 'error'"),
        (UPSTREAM + "log:\n  format: xml\n", "log.format (line 3)", "'kv' or 'json'"),
        (UPSTREAM + "log:\n  transfer_log: 5\n", "log.transfer_log (line 3)", "expected a file path"),
        (UPSTREAM + "workers: 0\n", "workers (line 2)", "at least 1"),
        (UPSTREAM + "workers: true\n", "workers (line 2)", "expected a whole number, got true"),
        (UPSTREAM + "rules: default.yaml\n", "rules (line 2)", "expected a list"),
        (UPSTREAM + "rules: [1]\n", "rules[0] (line 2)", "expected a file path"),
        (UPSTREAM + "user: ''\n", "user (line 2)", "must not be empty"),
        (UPSTREAM + "user: no\n", "user (line 2)", "YAML 1.1 reads no as false; quote it"),
    ],
)
def test_bad_value_names_key_and_line(tmp_path: Path, text: str, where: str, fragment: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'gateway.yaml'}: ")
    assert where in message
    assert fragment in message


def test_base60_trap(tmp_path: Path) -> None:
    message = error_of(tmp_path, UPSTREAM + "\n\npassive_ports: 20:21\n")
    assert message.endswith(
        "passive_ports (line 4): expected FIRST-LAST, got 1221: YAML 1.1 reads 20:21 as a base-60 number; quote it"
    )


def test_quoted_range_is_fine(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, UPSTREAM + 'passive_ports: "50000-50010"\n'))
    assert list(settings.passive_ports) == list(range(50000, 50011))


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    assert error_of(tmp_path, "upstrem: 198.51.100.10\n").endswith(
        "upstrem (line 1): unknown key 'upstrem'; did you mean 'upstream'?"
    )
    nested = error_of(tmp_path, UPSTREAM + "timeouts:\n  idel_s: 5\n")
    assert "timeouts.idel_s (line 3): unknown key 'idel_s'; did you mean 'idle_s'?" in nested
    unlike = error_of(tmp_path, UPSTREAM + "zzz: 1\n")
    assert "unknown key 'zzz'; known keys: mode, listen" in unlike


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- upstream\n", "line 1: expected a mapping of settings at the top level, got a list"),
        ("just text\n", "expected a mapping of settings at the top level, got 'just text'"),
        ("upstream: [\n", "invalid YAML"),
        (
            UPSTREAM + "upstream: 198.51.100.11\n",
            "upstream (line 2): duplicate key 'upstream', first given on line 1",
        ),
        ("a: 1\n---\nb: 2\n", "invalid YAML"),
        ("x: !!python/object:os.system {}\n", "invalid YAML"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error_of(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: cannot read the file: No such file"):
        load_config(tmp_path / "nowhere.yaml")


def test_several_problems_report_the_first_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, UPSTREAM + "workers: 0\nmode: x\n")
    assert "mode (line 3)" not in message
    assert message.endswith("workers (line 2): must be at least 1, got 0 (and 1 more problem)")


# --- mode and upstream ---


def test_reverse_mode_needs_upstream(tmp_path: Path) -> None:
    assert "upstream: required in reverse mode" in error_of(tmp_path, "mode: reverse\n")


def test_transparent_mode_forbids_upstream(tmp_path: Path) -> None:
    message = error_of(tmp_path, "mode: transparent\nupstream: 198.51.100.10\n")
    assert "upstream (line 2): not allowed in transparent mode" in message


def test_transparent_mode_alone() -> None:
    settings = settings_from_mapping({"mode": "transparent"})
    assert settings.upstream is None


def test_workers_need_a_port_each(tmp_path: Path) -> None:
    message = error_of(tmp_path, UPSTREAM + "passive_ports: 50000-50002\nworkers: 4\n")
    assert "passive_ports (line 2): 3 ports cannot be shared among 4 workers" in message


# --- value forms ---


def test_listen_forms() -> None:
    one = settings_from_mapping({"upstream": "198.51.100.10", "listen": "[2001:db8::1]:2121"})
    assert one.listen == (HostPort(IPv6Address("2001:db8::1"), 2121),)
    many = settings_from_mapping({"upstream": "198.51.100.10", "listen": ["203.0.113.1:21", "[::]:21"]})
    assert [str(a) for a in many.listen] == ["203.0.113.1:21", "[::]:21"]


def test_upstream_port_defaults_to_21() -> None:
    settings = settings_from_mapping({"upstream": "[2001:db8::10]"})
    assert settings.upstream == HostPort(IPv6Address("2001:db8::10"), 21)


def test_port_range_mapping_form() -> None:
    settings = settings_from_mapping({"upstream": "198.51.100.10", "active_ports": {"first": 40000, "last": 40009}})
    assert settings.active_ports == PortRange(40000, 40009)


def test_port_range_behaves_like_a_collection() -> None:
    ports = PortRange(50000, 50003)
    assert len(ports) == 4
    assert 50003 in ports and 50004 not in ports and "50000" not in ports
    assert list(ports) == [50000, 50001, 50002, 50003]
    assert str(ports) == "50000-50003"
    with pytest.raises(ValueError):
        PortRange(5, 4)


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, UPSTREAM + "rules: [default.yaml, /etc/ftp-alg/extra.yaml]\nlog: {transfer_log: t.log}\n")
    settings = load_config(path)
    assert settings.rules == (tmp_path / "default.yaml", Path("/etc/ftp-alg/extra.yaml"))
    assert settings.log.transfer_log == tmp_path / "t.log"


# --- flags ---


def test_flags_alone_are_enough() -> None:
    settings = load_config(
        None,
        listen=["203.0.113.1:21"],
        upstream="198.51.100.10:21",
        public_address="203.0.113.1",
        passive_ports="50000-50999",
    )
    assert settings.listen == (HostPort(IPv4Address("203.0.113.1"), 21),)
    assert settings.public_address == IPv4Address("203.0.113.1")


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, UPSTREAM + "workers: 2\nlog:\n  level: info\n  format: json\n")
    settings = load_config(
        path, upstream="198.51.100.20", workers=4, log_level="debug", passive_ports=None, listen=None
    )
    assert settings.upstream == HostPort(IPv4Address("198.51.100.20"), 21)
    assert settings.workers == 4
    assert (settings.log.level, settings.log.format) == ("debug", "json")
    assert settings.passive_ports == PortRange(50000, 50999)  # None means the flag was not given


def test_bad_flag_is_named_as_a_flag(tmp_path: Path) -> None:
    message = error_of(tmp_path, UPSTREAM, passive_ports="70000-80000")
    assert message == "--passive-ports: ports must be within 1024-65535, got 70000-80000"
    assert error_of(tmp_path, UPSTREAM, log_level="loud").startswith("--log-level: expected 'debug'")


def test_flag_mode_against_file_upstream(tmp_path: Path) -> None:
    message = error_of(tmp_path, UPSTREAM, mode="transparent")
    assert "gateway.yaml: upstream (line 1): not allowed in transparent mode" in message


def test_apply_overrides() -> None:
    settings = settings_from_mapping({"upstream": "198.51.100.10", "log": {"format": "json"}})
    changed = apply_overrides(settings, upstream="198.51.100.11:2121", log_level="warning")
    assert changed.upstream == HostPort(IPv4Address("198.51.100.11"), 2121)
    assert (changed.log.level, changed.log.format) == ("warning", "json")
    assert changed.timeouts == settings.timeouts
    assert settings.upstream == HostPort(IPv4Address("198.51.100.10"), 21)
    with pytest.raises(ConfigError, match=r"^--workers: must be at least 1"):
        apply_overrides(settings, workers=0)


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        load_config(None, upstrem="198.51.100.10")


# --- properties ---

addresses = st.one_of(
    st.ip_addresses(v=4).map(str).map(ip_address),
    st.ip_addresses(v=6).map(str).map(ip_address),
)


@given(addresses, st.integers(0, 65535))
def test_listen_round_trip(ip: IPv4Address | IPv6Address, port: int) -> None:
    address = HostPort(ip, port)
    settings = settings_from_mapping({"upstream": "198.51.100.10", "listen": [str(address)]})
    assert settings.listen == (address,)


@given(st.integers(1024, 65535), st.integers(0, 2000))
def test_port_range_round_trip(first: int, extra: int) -> None:
    ports = PortRange(first, min(first + extra, 65535))
    assert settings_from_mapping({"upstream": "198.51.100.10", "passive_ports": str(ports)}).passive_ports == ports


@given(st.text(max_size=30))
def test_any_listen_text_gives_settings_or_config_error(text: str) -> None:
    try:
        settings = settings_from_mapping({"upstream": "198.51.100.10", "listen": text})
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(settings, Settings)


def test_data_path_is_relay_unless_the_file_or_the_flag_says_kernel(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, UPSTREAM)).data_path == "relay"
    assert load_config(write(tmp_path, UPSTREAM + "data_path: kernel\n")).data_path == "kernel"
    assert load_config(write(tmp_path, UPSTREAM), data_path="kernel").data_path == "kernel"
    with pytest.raises(ConfigError, match=r"data_path \(line 2\).*'relay' or 'kernel'"):
        load_config(write(tmp_path, UPSTREAM + "data_path: nft\n"))
