"""Forward mode's users file: scrypt hashes from the standard library, checked in constant time."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from alg.cli import main
from alg.errors import ConfigError
from alg.ops.config import load_config
from alg.ops.config_check import problems
from alg.ops.proxy_users import ProxyUsers, user_line


def test_a_line_written_by_the_helper_verifies_its_password_only(tmp_path: Path) -> None:
    line = user_line("bob", "right horse")
    assert line.startswith("bob:scrypt$16384$8$1$") and "right horse" not in line
    path = tmp_path / "users"
    path.write_text(f"# proxy users\n\n{line}\n")
    users = ProxyUsers.read(path)
    assert users.verify("bob", "right horse")
    assert not users.verify("bob", "wrong")
    assert not users.verify("alice", "right horse")
    assert user_line("bob", "right horse") != line  # a fresh salt each time


@pytest.mark.parametrize(
    "text", ["bob\n", "bob:plain\n", "bob:scrypt$3$8$1$AA==$AA==\n", ":scrypt$16384$8$1$AA==$AA==\n"]
)
def test_a_wrong_file_names_its_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "users"
    path.write_text("# first\n" + text)
    with pytest.raises(ConfigError, match="line 2: expected NAME:HASH"):
        ProxyUsers.read(path)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ProxyUsers.read(tmp_path / "none")


@pytest.mark.parametrize("name", ["", "a:b", "a b", "#a", "a@b"])
def test_names_the_file_cannot_hold_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="proxy user name"):
        user_line(name, "x")


def test_forward_passwd_prints_a_line_the_gateway_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("right horse\n"))
    assert main(["forward-passwd", "bob"]) == 0
    path = tmp_path / "users"
    path.write_text(capsys.readouterr().out)
    assert ProxyUsers.read(path).verify("bob", "right horse")
    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    assert main(["forward-passwd", "a:b"]) != 0
    assert "proxy user name" in capsys.readouterr().err


def test_check_reads_the_users_file_as_run_would(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("bob:plain\n")
    settings = load_config(None, mode="forward", forward_users_file=str(path))
    assert [str(error) for error in problems(settings)] == [
        f"forward.users_file {path} line 1: expected NAME:HASH as ftp-alg forward-passwd NAME writes it"
    ]
    path.write_text(user_line("bob", "x") + "\n")
    assert problems(settings) == []
