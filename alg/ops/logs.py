"""What may reach a log line from the network (escaped, bounded, secrets removed), and how lines are written.

Rules: one record is one line, `key=value` (logfmt) by default or one JSON object; every value is quoted or
escaped so no byte from a peer can start a new line or forge a field; a session's lines carry `session=<id>`;
finished transfers go to the `ftp_alg.transfer` logger, optionally into a file of their own. An event's fields
are passed as `extra=fields(client=..., upstream=...)` with a short sentence as the message: JSON makes each a
key, the text format writes them after the sentence inside `msg`, as `session start client=... upstream=...`.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


# ---- an event's fields -----------------------------------------------------------------------------------------

FIELDS = "fields"  # the LogRecord attribute that carries them (one name: logging refuses extras like `name`)


def fields(**values: object) -> dict[str, object]:
    """`extra=` for a log call: `log.info("session start", extra=fields(client=peer, upstream=address))`. Values
    that come from the network must be printable() first, as in a message."""
    return {FIELDS: values}


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """A logger for one session (or worker): its own keys (`session`) on every line, merged with the fields of
    each call (the stock adapter drops a call's `extra=`)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def _plain(value: object) -> object:
    """A field value as JSON keeps it: numbers, booleans and null as they are, anything else as its text."""
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def _event_fields(record: logging.LogRecord) -> Mapping[str, object]:
    values = getattr(record, FIELDS, None)
    return values if isinstance(values, Mapping) else {}


# ---- formatting ----------------------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra=` (session, transfer fields).
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_BARE = re.compile(r"[^\s\"=\\]+")


def quoted(value: str) -> str:
    """A logfmt value: bare when it has no space, quote, `=` or backslash, else a JSON string."""
    return value if _BARE.fullmatch(value) else json.dumps(value)


def record_fields(
    record: logging.LogRecord, formatter: logging.Formatter, *, fields_in_msg: bool = False
) -> dict[str, object]:
    """ts, level, logger, msg, then the record's extra fields (session first), then exc when there is one.
    fields_in_msg: an event's fields() go after the sentence in msg (the text format) instead of being keys."""
    event = _event_fields(record)
    message = record.getMessage()
    if fields_in_msg and event:
        message = " ".join([message, *(f"{key}={value}" for key, value in event.items())])
    out: dict[str, object] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": message,
    }
    extra = {key: value for key, value in vars(record).items() if key not in _RECORD_FIELDS and key != FIELDS}
    if "session" in extra:
        out["session"] = extra.pop("session")
    if not fields_in_msg:
        for key, value in event.items():
            out[key if key not in out else f"{key}_"] = _plain(value)  # a field never hides ts, level or msg
    out.update(extra)
    if record.exc_info:
        out["exc"] = formatter.formatException(record.exc_info)
    elif record.exc_text:
        out["exc"] = record.exc_text
    return out


class KeyValueFormatter(logging.Formatter):
    """`ts=2025-01-01T00:00:00.000+00:00 level=info logger=ftp_alg.session msg="session start ..." session=3`."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = record_fields(record, self, fields_in_msg=True).items()
        return " ".join(f"{key}={quoted(str(value))}" for key, value in pairs)


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
