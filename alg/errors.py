"""The exception tree. Every exception carries what the session needs to answer it.

FtpAlgError
├── FtpProtocolError          bytes that break the FTP grammar (reply_code to answer with)
│   ├── ClientProtocolError   the client's fault: answer the client with reply_code
│   └── ServerProtocolError   the upstream server's fault: the client gets reply_code
├── PolicyDenied              allowed by FTP, refused by policy (rule names which)
├── DataChannelError          a data connection could not be opened or broke (425/426)
└── ConfigError               settings or rules that do not validate (key path and line)
"""

from __future__ import annotations

from alg.ftp.reasons import DataFailure, Refusal


class FtpAlgError(Exception):
    """Base of everything ftp-alg raises on purpose."""


class FtpProtocolError(FtpAlgError):
    def __init__(self, message: str, *, reply_code: int = 500) -> None:
        super().__init__(message)
        self.reply_code = reply_code


class ClientProtocolError(FtpProtocolError):
    """The client sent bytes we cannot accept."""


class ServerProtocolError(FtpProtocolError):
    """The upstream server sent bytes we cannot use."""

    def __init__(self, message: str, *, reply_code: int = 425) -> None:
        super().__init__(message, reply_code=reply_code)


class PolicyDenied(FtpAlgError):
    """`reason` is counted; `rule` names the configured rule for the log (the reason itself when there is none)."""

    def __init__(self, message: str, *, reason: Refusal, rule: str = "", reply_code: int = 504) -> None:
        super().__init__(message)
        self.reason = reason
        self.rule = rule or reason.value
        self.reply_code = reply_code


class DataChannelError(FtpAlgError):
    def __init__(self, message: str, *, reason: DataFailure, reply_code: int = 425) -> None:
        super().__init__(message)
        self.reason = reason
        self.reply_code = reply_code


class ConfigError(FtpAlgError):
    """Settings that do not validate. str() is the one line shown to the admin."""

    def __init__(self, message: str, *, key: str = "", line: int | None = None) -> None:
        where = key
        if line is not None:
            where = f"{key} (line {line})" if key else f"line {line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.key = key
        self.line = line
