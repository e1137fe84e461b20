"""Log lines: key=value and JSON formats, one line per record whatever the peer sent, session ids, the
transfer log in its own file, and no password ever written."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from alg.ftp.addresses import HostPort
from alg.ops.config import LogSettings
from alg.ops.logs import (
    TRANSFER_LOGGER,
    JsonFormatter,
    KeyValueFormatter,
    SessionLog,
    fields,
    printable,
    quoted,
    redact,
    setup_logging,
)

_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)(?: |$)')


def parse_kv(line: str) -> dict[str, str]:
    """A strict logfmt reader: the whole line must be key=value pairs."""
    assert "\n" not in line
    fields: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = _PAIR.match(line, position)
        assert match is not None, f"not key=value at {position}: {line[position:]!r}"
        key, raw = match.groups()
        assert key not in fields, f"{key} twice in {line!r}"
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
        position = match.end()
    return fields


def record(msg: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("ftp_alg.session", level, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


HOSTILE = 'bob" session=99 level=error\r\nts=forged \x00\x1b[31m'


# ---- formats -------------------------------------------------------------------------------------------------


def test_key_value_line_has_the_fixed_fields_then_the_session_then_the_rest() -> None:
    line = KeyValueFormatter().format(record("session start client=%s", "203.0.113.10", session=3, user="ann"))
    assert re.match(r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 level=info logger=ftp_alg\.session ", line)
    fields = parse_kv(line)
    assert list(fields) == ["ts", "level", "logger", "msg", "session", "user"]
    assert fields["msg"] == "session start client=203.0.113.10"
    assert fields["session"] == "3"


def test_no_peer_bytes_can_break_a_line_or_forge_a_field() -> None:
    # What session.py does with network text: printable() first; the formatter quotes whatever is left.
    rec = record("logged in user=%s", printable(HOSTILE), session=5, path=HOSTILE)
    line = KeyValueFormatter().format(rec)
    fields = parse_kv(line)
    assert fields["session"] == "5" and fields["level"] == "info"
    assert fields["path"] == HOSTILE  # intact inside its own quoted value
    assert "\r" not in line and "\x1b" not in line and "\x00" not in line
    assert fields["msg"] == "logged in user=" + printable(HOSTILE)
    assert "\\r\\n" in printable(HOSTILE)
    as_json = json.loads(JsonFormatter().format(rec))
    assert as_json["session"] == 5 and as_json["path"] == HOSTILE


def test_json_line_keeps_types_and_puts_a_traceback_on_the_same_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = logging.LogRecord("ftp_alg.session", logging.ERROR, __file__, 1, "session failed", None, None)
        rec.exc_info = sys.exc_info()
    rec.session = 12
    rec.bytes = 67108864
    rec.seconds = 0.25
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["session"] == 12 and fields["bytes"] == 67108864 and fields["seconds"] == 0.25
    assert fields["level"] == "error" and fields["msg"] == "session failed"
    assert "ValueError: boom" in fields["exc"]
    kv = parse_kv(KeyValueFormatter().format(rec))
    assert "Traceback" in kv["exc"]


def test_quoting() -> None:
    assert quoted("plain-value_1.2:21") == "plain-value_1.2:21"
    assert quoted("two words") == '"two words"'
    assert quoted("a=b") == '"a=b"'
    assert quoted("") == '""'
    assert quoted('back\\slash "q"') == '"back\\\\slash \\"q\\""'


# ---- redaction and escaping -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "logged"),
    [
        (b"PASS hunter2\r\n", b"PASS ***"),
        (b"pass hunter2\r\n", b"pass ***"),
        (b"PASS  with spaces and \xff\r\n", b"PASS ***"),
        (b"\xff\xf4\xff\xf2PASS hunter2\r\n", b"\xff\xf4\xff\xf2PASS ***"),  # Telnet IP/Sync before it
        (b"PASS\r\n", b"PASS"),
        (b"USER anonymous\r\n", b"USER anonymous"),
        (b"PASSWD x\r\n", b"PASSWD x"),  # not PASS
    ],
)
def test_redact_hides_pass_arguments(line: bytes, logged: bytes) -> None:
    assert redact(line) == logged
    assert b"hunter2" not in redact(line)


def test_printable_escapes_and_bounds() -> None:
    assert printable(b"227 Entering (1,2,3,4,5,6)\r\n") == "227 Entering (1,2,3,4,5,6)\\r\\n"
    assert printable(b"\xff\xfe\x00") == "\\xff\\xfe\\x00"
    assert printable("x" * 300, limit=10) == "x" * 10 + "..."


# ---- setup ----------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    transfers = logging.getLogger(TRANSFER_LOGGER)
    saved = root.handlers[:], root.level, transfers.handlers[:], transfers.level, transfers.propagate
    yield
    for handler in transfers.handlers:
        if handler not in saved[2]:
            handler.close()
    root.handlers[:], root.level = saved[0], saved[1]
    transfers.handlers[:], transfers.level, transfers.propagate = saved[2], saved[3], saved[4]


def test_session_lines_carry_the_session_id(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(LogSettings(level="debug", format="kv"))
    adapter = logging.LoggerAdapter(logging.getLogger("ftp_alg.session"), {"session": 41})
    adapter.info("session start client=%s", "203.0.113.10")
    adapter.debug("rewrite %s: %s -> %s", "pasv", "a", "b")
    adapter.warning("upstream unreachable")
    lines = capsys.readouterr().err.splitlines()
    assert [parse_kv(line)["session"] for line in lines] == ["41", "41", "41"]
    assert [parse_kv(line)["level"] for line in lines] == ["info", "debug", "warning"]


def test_json_option_and_levels(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(LogSettings(level="warning", format="json"))
    log = logging.getLogger("ftp_alg.server")
    log.info("not shown")
    log.warning("shown %d", 1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["msg"] == "shown 1"


def test_transfers_in_the_main_log_by_default(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(LogSettings(level="info", format="kv"))
    logging.getLogger(TRANSFER_LOGGER).info("transfer", extra={"session": 2, "command": "RETR", "bytes": 5})
    fields = parse_kv(capsys.readouterr().err.strip())
    assert (fields["logger"], fields["session"], fields["command"], fields["bytes"]) == (
        TRANSFER_LOGGER,
        "2",
        "RETR",
        "5",
    )


def test_transfer_log_in_its_own_file(
    restore_logging: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "xfer.log"
    # The main log at warning: the transfer log is still complete, as the operator asked for it.
    setup_logging(LogSettings(level="warning", format="json", transfer_log=path))
    transfers = logging.getLogger(TRANSFER_LOGGER)
    transfers.info("transfer", extra={"session": 1, "command": "RETR", "path": "a b.bin", "bytes": 67108864})
    transfers.info("transfer", extra={"session": 2, "command": "STOR", "path": "up.bin", "bytes": 3})
    logging.getLogger("ftp_alg.session").info("not in either")
    assert capsys.readouterr().err == ""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["session"], r["command"], r["path"], r["bytes"]) for r in records] == [
        (1, "RETR", "a b.bin", 67108864),
        (2, "STOR", "up.bin", 3),
    ]
    # logrotate moves the file away: the next record starts a new one (WatchedFileHandler).
    path.rename(tmp_path / "xfer.log.1")
    transfers.info("transfer", extra={"session": 3})
    assert json.loads(path.read_text())["session"] == 3
    # Set up again without a file: transfers go back to the main log, the file handler is gone.
    setup_logging(LogSettings(level="info", format="kv"))
    transfers.info("transfer", extra={"session": 4})
    assert parse_kv(capsys.readouterr().err.strip())["session"] == "4"
    assert "4" not in {str(json.loads(line)["session"]) for line in path.read_text().splitlines()}


# ---- an event's fields: JSON keys, or key=value after the sentence in the text format --------------------------


def test_fields_are_json_keys_and_follow_the_sentence_in_text() -> None:
    log = SessionLog(logging.getLogger("ftp_alg.session"), {"session": 7})
    upstream = HostPort(ip_address("198.51.100.10"), 21)
    msg, kwargs = log.process("session start", {"extra": fields(client="203.0.113.10:5000", upstream=upstream)})
    rec = record(msg, **kwargs["extra"])
    as_json = json.loads(JsonFormatter().format(rec))
    assert as_json["msg"] == "session start" and as_json["session"] == 7
    assert as_json["client"] == "203.0.113.10:5000" and as_json["upstream"] == "198.51.100.10:21"  # text, not a list
    text = parse_kv(KeyValueFormatter().format(rec))
    assert text["msg"] == "session start client=203.0.113.10:5000 upstream=198.51.100.10:21"
    assert text["session"] == "7" and "upstream" not in text


def test_field_values_keep_their_json_types_and_never_hide_the_fixed_keys() -> None:
    rec = record("transfer", **fields(bytes=65543, seconds=0.25, ok=True, level="forged", msg=HOSTILE))
    as_json = json.loads(JsonFormatter().format(rec))
    assert as_json["bytes"] == 65543 and as_json["seconds"] == 0.25 and as_json["ok"] is True
    assert as_json["level"] == "info" and as_json["level_"] == "forged" and as_json["msg"] == "transfer"
    assert as_json["msg_"] == HOSTILE
    line = KeyValueFormatter().format(rec)
    assert "\r" not in line and "\x1b" not in line and parse_kv(line)["level"] == "info"
