"""Every metric ftp-alg exports, declared once over one registry.

Rules: names carry the ftp_alg_ prefix and base units; labels take values from fixed sets only (never an
address, a user or a path); every labelled series exists at zero from start-up.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from alg import __version__

SESSION_OUTCOMES = (
    "client_closed",
    "server_closed",
    "upstream_unreachable",
    "refused_limit",
    "refused_acl",
    "timeout",
    "protocol_error",
    "shutdown",
    "error",
)
# Verbs counted by name; anything else is "other", so a client cannot grow the label set.
KNOWN_VERBS = ["ABOR", "ACCT", "ALLO", "APPE", "CDUP", "CWD", "DELE", "EPRT", "EPSV", "FEAT", "HELP", "LIST", "MDTM", "MKD", "MLSD", "MLST", "MODE", "NLST", "NOOP", "OPTS", "PASS", "PASV", "PORT", "PWD", "QUIT", "REIN", "REST", "RETR", "RMD", "RNFR", "RNTO", "SITE", "SIZE", "SMNT", "STAT", "STOR", "STOU", "STRU", "SYST", "TYPE", "USER", "AUTH", "PBSZ", "PROT", "LPRT", "LPSV"]
REWRITE_KINDS = ("port", "eprt", "pasv", "epsv")
DATA_MODES = ("passive", "active")
DATA_DIRECTIONS = ("download", "upload", "listing", "unknown")
DATA_FAILURES = (
    "port_pool_exhausted",
    "listen_failed",
    "accept_timeout",
    "connect_failed",
    "connect_timeout",
    "idle_timeout",
    "reset",
    "aborted",
)
REFUSAL_REASONS = (
    "bounce",
    "port_theft",
    "acl",
    "command_rule",
    "limit",
    "timeout",
    "syntax",
    "line_length",
    "unsupported",
    "server_reply",
    "data_endpoint",
)
BYTE_DIRECTIONS = ("download", "upload")
POOLS = ("public", "internal")

_SETUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TRANSFER_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("ftp_alg_sessions_active", "Control sessions open now.", registry=r)
        self.sessions = Counter(
            "ftp_alg_sessions", "Control sessions ended, by outcome.", ["outcome"], registry=r
        )
        self.commands = Counter("ftp_alg_commands", "Client commands seen, by verb.", ["verb"], registry=r)
        self.rewrites = Counter("ftp_alg_rewrites", "Address rewrites, by kind.", ["kind"], registry=r)
        self.data_opened = Counter(
            "ftp_alg_data_channels_opened",
            "Data connections relayed, by mode and direction.",
            ["mode", "direction"],
            registry=r,
        )
        self.data_failed = Counter(
            "ftp_alg_data_channels_failed", "Data connections that failed, by reason.", ["reason"], registry=r
        )
        self.data_active = Gauge("ftp_alg_data_channels_active", "Data connections open now.", registry=r)
        self.data_bytes = Counter(
            "ftp_alg_data_bytes", "Bytes relayed on data connections, by direction.", ["direction"], registry=r
        )
        self.data_setup_seconds = Histogram(
            "ftp_alg_data_channel_setup_seconds",
            "From the expected peer's connection to the other leg being connected.",
            buckets=_SETUP_BUCKETS,
            registry=r,
        )
        self.upstream_connect_seconds = Histogram(
            "ftp_alg_upstream_connect_seconds",
            "Time to connect the control connection to the upstream server.",
            buckets=_SETUP_BUCKETS,
            registry=r,
        )
        self.transfer_seconds = Histogram(
            "ftp_alg_transfer_duration_seconds",
            "Duration of data connections, first to last byte.",
            buckets=_TRANSFER_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            "ftp_alg_refusals", "Requests refused by the gateway, by reason.", ["reason"], registry=r
        )
        self.pool_size = Gauge("ftp_alg_port_pool_size", "Ports in the data port pool.", ["pool"], registry=r)
        self.pool_in_use = Gauge(
            "ftp_alg_port_pool_in_use", "Ports of the data port pool in use.", ["pool"], registry=r
        )
        self.build_info = Info("ftp_alg_build", "Version of ftp-alg.", registry=r)
        self.build_info.info({"version": __version__})
        for outcome in SESSION_OUTCOMES:
            self.sessions.labels(outcome)
        for verb in (*KNOWN_VERBS, "other"):
            self.commands.labels(verb)
        for kind in REWRITE_KINDS:
            self.rewrites.labels(kind)
        for mode in DATA_MODES:
            for direction in DATA_DIRECTIONS:
                self.data_opened.labels(mode, direction)
        for reason in DATA_FAILURES:
            self.data_failed.labels(reason)
        for direction in BYTE_DIRECTIONS:
            self.data_bytes.labels(direction)
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)
        for pool in POOLS:
            self.pool_size.labels(pool)
            self.pool_in_use.labels(pool)
        self._known_verbs = frozenset(KNOWN_VERBS)

    def command(self, verb: str) -> None:
        self.commands.labels(verb if verb in self._known_verbs else "other").inc()

    def refused(self, reason: str) -> None:
        reason = reason.replace("-", "_")
        self.refusals.labels(reason if reason in REFUSAL_REASONS else "command_rule").inc()

    def data_failure(self, reason: str) -> None:
        reason = reason.replace("-", "_")
        self.data_failed.labels(reason if reason in DATA_FAILURES else "reset").inc()

    def session_ended(self, outcome: str) -> None:
        self.sessions.labels(outcome if outcome in SESSION_OUTCOMES else "error").inc()


def direction_of(verb: str | None) -> str:
    if verb in ("RETR",):
        return "download"
    if verb in ("STOR", "STOU", "APPE"):
        return "upload"
    if verb in ("LIST", "NLST", "MLSD"):
        return "listing"
    return "unknown"
