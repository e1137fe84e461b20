"""Why things end or are refused: the vocabularies shared by the core, the shell, metrics, logs and docs.

Rules: every value is a metric label as it is (lower case, underscores) and has a line in docs/reasons.md
(tests/unit/test_reasons.py holds both); nobody parses a reason's text, code compares members.
"""

from __future__ import annotations

from enum import StrEnum, unique


@unique
class SessionOutcome(StrEnum):
    """How a client's session ended (ftp_alg_sessions_total{outcome}, the `session end` log line)."""

    QUIT = "quit"
    CLIENT_CLOSED = "client_closed"
    SERVER_CLOSED = "server_closed"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    REFUSED_LIMIT = "refused_limit"
    REFUSED_ACL = "refused_acl"
    REFUSED_BANNED = "refused_banned"
    REFUSED_FORWARD = "refused_forward"
    TIMEOUT = "timeout"
    PROTOCOL_ERROR = "protocol_error"
    TLS_FAILED = "tls_failed"
    SHUTDOWN = "shutdown"
    ENDED_BY_ADMIN = "ended_by_admin"
    ERROR = "error"


@unique
class DataFailure(StrEnum):
    """Why a data connection failed (ftp_alg_data_channels_failed_total{reason}, the transfer log's outcome)."""

    PORT_POOL_EXHAUSTED = "port_pool_exhausted"
    LISTEN_FAILED = "listen_failed"
    ACCEPT_TIMEOUT = "accept_timeout"
    UNEXPECTED_SOURCE = "unexpected_source"
    CONNECT_FAILED = "connect_failed"
    CONNECT_TIMEOUT = "connect_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    RESET = "reset"
    ABORTED = "aborted"
    TLS_HANDSHAKE_CLIENT = "tls_handshake_client"
    TLS_HANDSHAKE_SERVER = "tls_handshake_server"
    TLS_SESSION_REUSE = "tls_session_reuse"
    TLS_TRUNCATED = "tls_truncated"
    INTERNAL_ERROR = "internal_error"


@unique
class Refusal(StrEnum):
    """Why the gateway refused something itself (ftp_alg_refusals_total{reason}, `refused rule=` log lines)."""

    BOUNCE = "bounce"
    PORT_THEFT = "port_theft"
    ACL = "acl"
    COMMAND_RULE = "command_rule"
    LIMIT = "limit"
    TIMEOUT = "timeout"
    SYNTAX = "syntax"
    LINE_LENGTH = "line_length"
    UNSUPPORTED = "unsupported"
    SERVER_REPLY = "server_reply"
    DATA_ENDPOINT = "data_endpoint"
    TLS_REQUIRED = "tls_required"
    TLS_PLAINTEXT = "tls_plaintext"
    TLS_HANDSHAKE = "tls_handshake"
    TLS_SESSION_REUSE = "tls_session_reuse"
    FORWARD_NOT_ALLOWED = "forward_not_allowed"
    FORWARD_UNKNOWN_HOST = "forward_unknown_host"
    FORWARD_LOGIN = "forward_login"
    TLS_OFF = "tls_off"  # AUTH TLS to a gateway without client TLS: ftp_alg_tls_probes_total, not a refusal
