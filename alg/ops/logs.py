"""What may reach a log line from the network (escaped, bounded, secrets removed), and how lines are written.

Rules: one record is one line, `key=value` (logfmt) by default or one JSON object; every value is quoted or
escaped so no byte from a peer can start a new line or forge a field; a session's lines carry `session=<id>`;
finished transfers go to the `ftp_alg.transfer` logger, optionally into a file of their own.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alg.ops.config import LogSettings

TRANSFER_LOGGER = "ftp_alg.transfer"

_PASS = re.compile(rb"^((?:\xff[\xf0-\xfe])*\s*PASS)( .*)?$", re.IGNORECASE | re.DOTALL)


_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    """What Python's unicode_escape writes for one character, without a codec lookup: that imports a module
    at first use, which fails once privileges are dropped if the interpreter's files are not readable."""
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(data: bytes | str, limit: int = 200) -> str:
    """The text with CR, LF and every other control character escaped, cut at `limit` characters."""
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    if len(text) <= limit and text.isprintable():  # the common case, once per transfer: no loop
        return text
    out = []
    for char in text[:limit]:
        if char == "\\" or char.isprintable():
            out.append(char)
        else:
            out.append(_escape(char))
    if len(text) > limit:
        out.append("...")
    return "".join(out)


def redact(line: bytes) -> bytes:
    """A client line fit to log: the argument of PASS is replaced by ***."""
    stripped = line.rstrip(b"\r\n")
    match = _PASS.match(stripped)
    if match is None:
        return stripped
    return match.group(1) + (b" ***" if match.group(2) else b"")


# ---- formatting ----------------------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra=` (session, transfer fields).
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_BARE = re.compile(r"[^\s\"=\\]+")


def quoted(value: str) -> str:
    """A logfmt value: bare when it has no space, quote, `=` or backslash, else a JSON string."""
    return value if _BARE.fullmatch(value) else json.dumps(value)


def record_fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, object]:
    """ts, level, logger, msg, then the record's extra fields (session first), then exc when there is one."""
    fields: dict[str, object] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    extra = {key: value for key, value in vars(record).items() if key not in _RECORD_FIELDS}
    if "session" in extra:
        fields["session"] = extra.pop("session")
    fields.update(extra)
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    elif record.exc_text:
        fields["exc"] = record.exc_text
    return fields


class KeyValueFormatter(logging.Formatter):
    """`ts=2025-01-01T00:00:00.000+00:00 level=info logger=ftp_alg.session msg="session start ..." session=3`."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={quoted(str(value))}" for key, value in record_fields(record, self).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the same fields as the key=value form; numbers stay numbers."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record, self), default=str, ensure_ascii=False)


def formatter_for(format: str) -> logging.Formatter:
    return JsonFormatter() if format == "json" else KeyValueFormatter()


# ---- setup -----------------------------------------------------------------------------------------------------


class _TransferFileHandler(logging.handlers.WatchedFileHandler):
    """The transfer log's own file; reopened when logrotate moves it (no signal needed)."""


def setup_logging(log: LogSettings) -> None:
    """Main log on stderr at the configured level; transfers also there, or only in log.transfer_log if set."""
    formatter = formatter_for(log.format)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    logging.basicConfig(level=log.level.upper(), handlers=[handler], force=True)
    transfers = logging.getLogger(TRANSFER_LOGGER)
    for old in [h for h in transfers.handlers if isinstance(h, _TransferFileHandler)]:
        transfers.removeHandler(old)
        old.close()
    transfer_log: Path | None = log.transfer_log
    if transfer_log is None:
        transfers.propagate = True
        transfers.setLevel(logging.NOTSET)
        return
    file_handler = _TransferFileHandler(transfer_log, encoding="utf-8", delay=True)
    file_handler.setFormatter(formatter)
    transfers.addHandler(file_handler)
    # An operator who asks for a transfer log wants every transfer in it, whatever the main log's level.
    transfers.setLevel(logging.INFO)
    transfers.propagate = False
