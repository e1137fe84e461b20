"""Rules: matching, merging, validation errors with file and line, and reload that keeps old rules on error."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

import pytest

from alg.errors import ConfigError, PolicyDenied
from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.control import ChannelSettings, ControlChannel, Refused, SendToClient, SendToServer
from alg.ftp.wire import Command, parse_command
from alg.ops.rules import Policy, RuleSet, load_rules

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def command(line: bytes) -> Command:
    parsed = parse_command(line + b"\r\n")
    assert parsed is not None
    return parsed


def verdict(rules: RuleSet, line: bytes) -> tuple[int, str] | None:
    """None if the command passes, else (reply code, reply text)."""
    try:
        rules.check_command(command(line))
    except PolicyDenied as denied:
        return denied.reply_code, str(denied)
    return None


def ip(text: str) -> IPAddress:
    return ip_address(text)


# ---- command rules -----------------------------------------------------------------------------------------


def test_builtin_policy_is_rules_default_yaml() -> None:
    assert load_rules([RULES_DIR / "default.yaml"]).commands == load_rules([]).commands


RULE_FILES = [path for path in sorted(RULES_DIR.glob("*.yaml")) if path.name != "gateway.example.yaml"]


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_shipped_rule_files_load(path: Path) -> None:
    assert load_rules([RULES_DIR / "default.yaml", path]).sources[-1] == str(path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"SITE EXEC /bin/sh", 502),
        (b"site  exec ls", 502),
        (b"SITE CPFR /etc/passwd", 502),
        (b"SITE cpto /tmp/x", 502),
        (b"SITE EXEC\rls", 502),  # DOTALL: a stray CR does not end the match
        (b"SITE CHMOD 644 f", None),
        (b"SITE EXECUTABLE", None),
        (b"RETR file", None),
        (b"DELE file", None),
    ],
)
def test_default_rules(line: bytes, expected: int | None) -> None:
    result = verdict(load_rules([]), line)
    assert (result and result[0]) == expected


def test_default_codes_texts_and_first_match_wins(tmp_path: Path) -> None:
    rules = load_rules(
        [
            write(
                tmp_path,
                """
commands:
  rules:
    - deny: [dele, RMD]
    - allow: RETR
      argument: '/pub/.+'
    - deny: RETR
      argument: '.*'
    - deny: STOR
      code: 553
      text: No uploads here.
""",
            )
        ]
    )
    assert verdict(rules, b"DELE x") == (502, "DELE is not allowed through this gateway.")
    assert verdict(rules, b"RMD d") == (502, "RMD is not allowed through this gateway.")
    assert verdict(rules, b"RETR /pub/a.iso") is None
    assert verdict(rules, b"RETR /etc/passwd") == (550, "Permission denied by the gateway's policy.")
    assert verdict(rules, b"RETR /pub/") == (550, "Permission denied by the gateway's policy.")  # fullmatch
    assert verdict(rules, b"STOR f") == (553, "No uploads here.")
    assert verdict(rules, b"LIST") is None  # no rule: commands.default (allow)


def test_allow_list_with_default_deny(tmp_path: Path) -> None:
    rules = load_rules(
        [write(tmp_path, "commands:\n  default: deny\n  rules:\n    - allow: [USER, PASS, QUIT, RETR]\n")]
    )
    assert verdict(rules, b"USER ftp") is None
    assert verdict(rules, b"RETR f") is None
    assert verdict(rules, b"DELE f") == (502, "DELE is not allowed by the gateway's policy.")


def test_argument_is_any_bytes_and_long_arguments_fail_closed(tmp_path: Path) -> None:
    rules = load_rules(
        [
            write(
                tmp_path,
                "commands:\n  max_argument_bytes: 64\n  rules:\n"
                "    - allow: RETR\n      argument: '/pub/[^/]+'\n"
                "    - deny: RETR\n",
            )
        ]
    )
    assert verdict(rules, b"RETR /pub/caf\xc3\xa9") is None  # UTF-8
    assert verdict(rules, b"RETR /pub/\xc3\x28\x80") is None  # not UTF-8: surrogates, no error
    assert verdict(rules, b"RETR /etc/\x80") == (502, "RETR is not allowed through this gateway.")
    too_long = verdict(rules, b"RETR /pub/" + b"a" * 60)
    assert too_long is not None and too_long[0] == 501
    assert verdict(rules, b"DELE " + b"a" * 100) is None  # no pattern for DELE: no limit


def test_channel_answers_a_refused_command_and_never_forwards_it(tmp_path: Path) -> None:
    policy = Policy(
        [write(tmp_path, "commands:\n  rules:\n    - deny: DELE\n      code: 550\n      text: Read-only.\n")]
    )
    channel = ControlChannel(
        HostPort(ip("203.0.113.10"), 40000),
        HostPort(ip("198.51.100.10"), 21),
        ChannelSettings(check_command=policy.check_command),
    )
    channel.server_data(b"220 ready\r\n")
    actions = channel.client_data(b"DELE f\r\nNOOP\r\n")
    assert [a.data for a in actions if isinstance(a, SendToClient)] == [b"550 Read-only.\r\n"]
    assert [a.data for a in actions if isinstance(a, SendToServer)] == [b"NOOP\r\n"]
    refused = [a for a in actions if isinstance(a, Refused)]
    assert [(r.rule, r.verb, r.reply_code) for r in refused] == [
        ("command_rule:rules.yaml:commands.rules[0]", "DELE", 550)
    ]


# ---- address lists -----------------------------------------------------------------------------------------


def test_acls_deny_overrides_and_files_add_up(tmp_path: Path) -> None:
    first = write(tmp_path, "clients:\n  allow: [198.18.0.0/24]\n  deny: [198.18.0.66]\n", "a.yaml")
    second = write(tmp_path, "clients:\n  allow: ['2001:db8::/32']\n  text: LAN only.\n", "b.yaml")
    rules = load_rules([first, second])
    assert rules.allows_client(ip("198.18.0.10"))
    assert rules.allows_client(ip("::ffff:198.18.0.10"))  # a dual-stack socket's view of an IPv4 client
    assert rules.allows_client(ip("2001:db8::5"))
    assert not rules.allows_client(ip("198.18.0.66"))
    assert not rules.allows_client(ip("203.0.113.10"))
    assert rules.client_refusal_text == "LAN only."
    assert load_rules([]).allows_client(ip("203.0.113.10"))  # default: every address


def test_data_peers_default_to_the_expected_peer_only(tmp_path: Path) -> None:
    upstream = ip("198.51.100.10")
    assert load_rules([]).allows_data_peer(upstream, upstream)
    assert not load_rules([]).allows_data_peer(ip("198.51.100.20"), upstream)
    rules = load_rules([write(tmp_path, "data:\n  allow: [198.51.100.0/24]\n  deny: [198.51.100.99]\n")])
    assert rules.allows_data_peer(ip("198.51.100.20"), upstream)
    assert not rules.allows_data_peer(ip("198.51.100.99"), upstream)
    assert not rules.allows_data_peer(ip("203.0.113.7"), upstream)


def test_destinations_and_loops(tmp_path: Path) -> None:
    never_own: Callable[[IPAddress], bool] = lambda _ip: False  # noqa: E731
    path = write(tmp_path, "destinations:\n  deny: [198.51.100.128/25]\n")
    policy = Policy([path], own_addresses=[ip("203.0.113.1"), ip("0.0.0.0")], is_own=never_own)
    assert policy.allowed_destination(ip("203.0.113.20"))
    assert not policy.allowed_destination(ip("198.51.100.200"))
    with pytest.raises(PolicyDenied, match="loop") as loop:
        policy.check_destination(ip("203.0.113.1"))
    assert loop.value.reply_code == 421
    own = Policy([path], is_own=lambda candidate: candidate == ip("198.18.0.1"))
    assert not own.allowed_destination(ip("198.18.0.1"))
    assert not Policy([]).allowed_destination(ip("127.0.0.1"))  # loopback never needs the probe


# ---- validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        ("clients:\n  allow: [198.18.0.1/24]\n", "clients.allow (line 2)", "did you mean 198.18.0.0/24?"),
        ("clients:\n  allow: []\n", "clients.allow (line 2)", "omit `allow`"),
        ("clients:\n  alow: [198.18.0.0/24]\n", "clients.alow (line 2)", "did you mean 'allow'?"),
        ("destinations:\n  deny: [example.com]\n", "destinations.deny (line 2)", "not an address"),
        (
            "commands:\n  rules:\n    - deny: DELE\n    - deny: RETR\n      argument: '(a'\n",
            "commands.rules[1].argument (line 5)",
            "invalid regular expression",
        ),
        (
            "commands:\n  rules:\n    - deny: DELE\n      alow: RETR\n",
            "commands.rules[0].alow (line 4)",
            "did you mean",
        ),
        ("commands:\n  rules:\n    - {deny: DELE, allow: RETR}\n", "commands.rules[0] (line 3)", "exactly one of"),
        ("commands:\n  rules:\n    - {deny: DELE, code: 200}\n", "commands.rules[0] (line 3)", "4xx or 5xx"),
        ("commands:\n  rules:\n    - {deny: DELE, code: '550'}\n", "commands.rules[0].code (line 3)", "whole number"),
        ("commands:\n  rules:\n    - {allow: DELE, text: hi}\n", "commands.rules[0] (line 3)", "belong to deny"),
        ("commands:\n  rules:\n    - deny: 'DE LE'\n", "commands.rules[0].deny (line 3)", "not an FTP verb"),
        ("commands:\n  default: maybe\n", "commands.default (line 2)", "'allow' or 'deny'"),
        ("commands: [1]\n", "commands (line 1)", "expected a mapping"),
        ("- deny: DELE\n", "line 1", "mapping of rules at the top level"),
    ],
)
def test_errors_name_file_key_and_line(tmp_path: Path, text: str, where: str, why: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_rules([path])
    message = str(caught.value)
    assert message.startswith(f"{path}: {where}: "), message
    assert why in message
    assert "\n" not in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_rules([tmp_path / "nope.yaml"])


# ---- reload --------------------------------------------------------------------------------------------------


def test_adopted_rules_apply_to_holders_of_the_hook(tmp_path: Path) -> None:
    path = write(tmp_path, "commands:\n  rules:\n    - deny: MKD\n")
    policy = Policy([path])
    check = policy.check_command  # what ChannelSettings keeps for the gateway's lifetime
    check(command(b"DELE f"))
    path.write_text("commands:\n  rules:\n    - deny: DELE\n")
    policy.adopt(Policy([path]))
    with pytest.raises(PolicyDenied):
        check(command(b"DELE f"))
    check(command(b"MKD d"))
