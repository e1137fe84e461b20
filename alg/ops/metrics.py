"""Every metric ftp-alg exports, declared once over one registry.

Rules: names carry the ftp_alg_ prefix and base units; labels take values from fixed sets only (never a
client's address, a user or a path; an `upstream` label is a name from the settings); every labelled series
exists at zero from start-up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from alg import __version__
from alg.ftp.reasons import DataFailure, Refusal, SessionOutcome

SESSION_OUTCOMES = tuple(SessionOutcome)  # meanings: docs/reasons.md
# Verbs counted by name; anything else is "other", so a client cannot grow the label set.
# fmt: off
KNOWN_VERBS = (
    "ABOR", "ACCT", "ALLO", "APPE", "CDUP", "CWD", "DELE", "EPRT", "EPSV", "FEAT", "HELP", "LIST", "MDTM",
    "MKD", "MLSD", "MLST", "MODE", "NLST", "NOOP", "OPTS", "PASS", "PASV", "PORT", "PWD", "QUIT", "REIN",
    "REST", "RETR", "RMD", "RNFR", "RNTO", "SITE", "SIZE", "SMNT", "STAT", "STOR", "STOU", "STRU", "SYST",
    "TYPE", "USER", "AUTH", "PBSZ", "PROT", "LPRT", "LPSV", "SPSV", "ADAT", "CCC", "HOST", "LANG", "CLNT",
    "MFMT", "XPWD", "XCWD", "XCUP", "XMKD", "XRMD",
)
# fmt: on
REWRITE_KINDS = ("port", "eprt", "pasv", "epsv")
DATA_MODES = ("passive", "active")
DATA_DIRECTIONS = ("download", "upload", "listing", "unknown")
DATA_FAILURES = tuple(DataFailure)
REFUSAL_REASONS = tuple(r for r in Refusal if r is not Refusal.TLS_OFF)  # tls_off: ftp_alg_tls_probes_total
TLS_SIDES = ("client", "server")
TLS_CHANNELS = ("control", "data")
TLS_OUTCOMES = ("ok", "failed", "timeout")
PROTECTIONS = ("clear", "tls")
BYTE_DIRECTIONS = ("download", "upload")
PROXY_REFUSAL_REASONS = ("untrusted", "missing", "malformed", "oversized", "timeout")
POOLS = ("public", "internal")
# Where an unexpected exception was caught at a task's error boundary: a data connection (its transfer ends with
# 426) or a session (it ends with 421).
INTERNAL_ERROR_PLACES = ("data", "session")
DEFENDER_STORES = ("workers", "redis")  # where shared defender state lives (alg.gateway.guard)

_SETUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TRANSFER_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


ByteCounts = Callable[[], tuple[int, int]]  # (download, upload) bytes relayed so far


class _DataBytes(Collector):
    """ftp_alg_data_bytes_total: finished relays plus the running ones' bytes so far.

    A running transfer's bytes show at every scrape, so rate() is smooth through long transfers instead of
    jumping when they end; a finished relay's bytes move from `live` to `done` in one step, so the total
    never goes down.
    """

    name = "ftp_alg_data_bytes"
    documentation = "Bytes relayed on data connections, by direction (download: server to client)."

    def __init__(self) -> None:
        self._lock = threading.Lock()  # scrapes may come from another thread than the event loop
        self._done = dict.fromkeys(BYTE_DIRECTIONS, 0)
        self._live: dict[int, ByteCounts] = {}
        self._next = 0

    def add(self, download: int, upload: int) -> None:
        with self._lock:
            self._done["download"] += download
            self._done["upload"] += upload

    def start(self, counts: ByteCounts) -> int:
        with self._lock:
            self._next += 1
            self._live[self._next] = counts
            return self._next

    def finish(self, token: int) -> tuple[int, int]:
        with self._lock:
            counts = self._live.pop(token, None)
            if counts is None:
                return 0, 0
            download, upload = counts()
            self._done["download"] += download
            self._done["upload"] += upload
            return download, upload

    def value(self, direction: str) -> int:
        with self._lock:
            index = BYTE_DIRECTIONS.index(direction)
            return self._done[direction] + sum(counts()[index] for counts in self._live.values())

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=["direction"])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for direction in BYTE_DIRECTIONS:
            family.add_metric([direction], self.value(direction))
        yield family


# Every translation the control channel can make (alg/ftp/families.py): all series exist from the start.
VERB_TRANSLATIONS = (("PASV", "EPSV"), ("EPSV", "PASV"), ("PORT", "EPRT"), ("EPRT", "PORT"))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # *_created series would double the exposition (one per labelled series) and tell nothing that
        # process_start_time_seconds does not; this switch is process-wide, and this process is ours.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._declare_sessions(r)
        self._declare_data(r)
        self._declare_operations(r)
        self._declare_series(r)
        self._declare_scaleout(r)
        self._declare_defender(r)

    def _declare_sessions(self, r: CollectorRegistry) -> None:
        """Sessions, commands and what the control channel rewrote."""
        self.sessions_active = Gauge("ftp_alg_sessions_active", "Control sessions open now.", registry=r)
        self.sessions = Counter("ftp_alg_sessions", "Control sessions ended, by outcome.", ["outcome"], registry=r)
        self.commands = Counter("ftp_alg_commands", "Client commands seen, by verb.", ["verb"], registry=r)
        self.rewrites = Counter("ftp_alg_rewrites", "Address rewrites, by kind.", ["kind"], registry=r)
        self.verb_translations = Counter(
            "ftp_alg_verb_translations",
            "Data commands sent upstream in another form than the client's (RFC 6384), by verb.",
            ["from", "to"],
            registry=r,
        )

    def _declare_data(self, r: CollectorRegistry) -> None:
        """Data connections: opened, failed, their bytes and timings."""
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
        self.data_bytes = _DataBytes()
        r.register(self.data_bytes)
        self.data_setup_seconds = Histogram(
            "ftp_alg_data_channel_setup_seconds",
            "Time to connect the gateway's own leg of a data connection (server's passive port or client's PORT).",
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

    def _declare_operations(self, r: CollectorRegistry) -> None:
        """Refusals, port pools, readiness, TLS, admin, reloads and internal errors."""
        self.refusals = Counter(
            "ftp_alg_refusals", "Requests refused by the gateway, by reason.", ["reason"], registry=r
        )
        self.pool_size = Gauge("ftp_alg_port_pool_size", "Ports in the data port pool.", ["pool"], registry=r)
        self.pool_in_use = Gauge(
            "ftp_alg_port_pool_in_use", "Ports of the data port pool in use.", ["pool"], registry=r
        )
        self.upstream_ready = Gauge(
            "ftp_alg_upstream_ready",
            "1 when the last readiness check saw the upstream's 220 banner in time, else 0 (checked at each "
            "scrape and each GET /readyz; 1 in transparent mode, which has no single upstream).",
            registry=r,
        )
        self.tasks = Gauge(
            "ftp_alg_tasks",
            "asyncio tasks alive in the gateway's event loop, counted at each scrape (a leak shows as growth).",
            registry=r,
        )
        self.tls_handshakes = Counter(
            "ftp_alg_tls_handshakes",
            "TLS handshakes, by side (client: the gateway as TLS server), channel and outcome.",
            ["side", "channel", "outcome"],
            registry=r,
        )
        self.data_protection = Counter(
            "ftp_alg_data_channels_protection",
            "Data connections relayed, by protection of the client's leg and of the server's leg.",
            ["client_leg", "server_leg"],
            registry=r,
        )
        # A timestamp, as blackbox_exporter's probe_ssl_earliest_cert_expiry: days left = (this - time()) / 86400.
        self.certificate_expiry = Gauge(
            "ftp_alg_tls_certificate_expiry_timestamp_seconds",
            "When the client-facing TLS certificate in use expires (Unix time; 0: no certificate).",
            registry=r,
        )
        self.admin_unauthorized = Counter(
            "ftp_alg_admin_unauthorized",
            "Requests to the admin endpoints (/sessions) refused with 401: no or a wrong bearer token.",
            registry=r,
        )
        self.reloads = Counter(
            "ftp_alg_reloads", "Settings reloads (SIGHUP) by result: ok, or failed (all kept).", ["result"], registry=r
        )
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        self.internal_errors = Counter(
            "ftp_alg_internal_errors",
            "Unexpected exceptions (bugs) caught at a task's error boundary, by where: data (the transfer ended"
            " with 426) or session (the session ended with 421). Each is logged once with its traceback.",
            ["where"],
            registry=r,
        )

    def _declare_series(self, r: CollectorRegistry) -> None:
        """The version, the process collector, and every labelled series that exists from the start."""
        self.build_info = Info("ftp_alg_build", "Version of ftp-alg.", registry=r)
        self.build_info.info({"version": __version__})
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ... (Linux /proc only)
        ProcessCollector(registry=r)
        for ended in SESSION_OUTCOMES:
            self.sessions.labels(ended)
        # The series counted per command or per transfer, looked up once: labels() validates and locks.
        self._command_series = {verb: self.commands.labels(verb) for verb in (*KNOWN_VERBS, "other")}
        self._rewrite_series = {kind: self.rewrites.labels(kind) for kind in REWRITE_KINDS}
        for client_verb, server_verb in VERB_TRANSLATIONS:
            self.verb_translations.labels(client_verb, server_verb)
        self._opened_series = {
            (mode, direction): self.data_opened.labels(mode, direction)
            for mode in DATA_MODES
            for direction in DATA_DIRECTIONS
        }
        for failure in DATA_FAILURES:
            self.data_failed.labels(failure)
        for refusal in REFUSAL_REASONS:
            self.refusals.labels(refusal)
        self.tls_probes = Counter(
            "ftp_alg_tls_probes",
            "AUTH TLS asked of a gateway whose TLS toward clients is off (answered 502; lftp and FileZilla ask by "
            "default): not counted in ftp_alg_refusals_total, so it raises no probing alert.",
            registry=r,
        )
        for side in TLS_SIDES:
            for channel in TLS_CHANNELS:
                for outcome in TLS_OUTCOMES:
                    self.tls_handshakes.labels(side, channel, outcome)
        self._protection_series = {
            (client_leg == "tls", server_leg == "tls"): self.data_protection.labels(client_leg, server_leg)
            for client_leg in PROTECTIONS
            for server_leg in PROTECTIONS
        }
        for pool in POOLS:
            self.pool_size.labels(pool)
        for where in INTERNAL_ERROR_PLACES:
            self.internal_errors.labels(where)
        self._pool_in_use_series = {pool: self.pool_in_use.labels(pool) for pool in POOLS}

    def _declare_scaleout(self, r: CollectorRegistry) -> None:
        """PROXY protocol and upstream pool metrics; the per-upstream series appear in declare_upstreams()."""
        self.proxy_protocol_headers = Counter(
            "ftp_alg_proxy_protocol_headers", "PROXY protocol headers accepted, by version.", ["version"], registry=r
        )
        self.proxy_protocol_refusals = Counter(
            "ftp_alg_proxy_protocol_refusals",
            "Connections refused over PROXY protocol, by reason (untrusted: a header from an address not trusted; "
            "missing: a trusted balancer sent none; malformed, oversized, timeout).",
            ["reason"],
            registry=r,
        )
        for version in ("1", "2"):
            self.proxy_protocol_headers.labels(version)
        for reason in PROXY_REFUSAL_REASONS:
            self.proxy_protocol_refusals.labels(reason)
        labels = ["upstream"]  # the upstream's configured name: a fixed set from the settings
        self.upstream_sessions = Counter(
            "ftp_alg_upstream_sessions", "Sessions connected to each upstream.", labels, registry=r
        )
        self.upstream_sessions_active = Gauge(
            "ftp_alg_upstream_sessions_active", "Sessions connected to each upstream now.", labels, registry=r
        )
        self.upstream_healthy = Gauge(
            "ftp_alg_upstream_healthy", "1 while the upstream passes its health checks, else 0.", labels, registry=r
        )
        self.upstream_connect_failures = Counter(
            "ftp_alg_upstream_connect_failures",
            "Connects to an upstream that failed before its 220 banner (the session then tries the next).",
            labels,
            registry=r,
        )
        self.upstream_resolve_failures = Counter(
            "ftp_alg_upstream_resolve_failures",
            "Lookups of an upstream's host name that found no address (the upstream is unhealthy until one does).",
            labels,
            registry=r,
        )

    def _declare_defender(self, r: CollectorRegistry) -> None:
        """The defender's metrics (alg.ops.defender); every event's series exist from the start."""
        from alg.ops.defender import Offence

        self.defender_bans_active = Gauge(
            "ftp_alg_defender_bans_active", "Client addresses (or IPv6 /64s) banned now.", registry=r
        )
        self.defender_bans = Counter(
            "ftp_alg_defender_bans", "Bans, by the event that crossed the threshold.", ["event"], registry=r
        )
        self.defender_points = Counter(
            "ftp_alg_defender_score_points", "Score points added to client addresses, by event.", ["event"], registry=r
        )
        self.defender_refused = Counter(
            "ftp_alg_defender_refused_connections", "Connections refused with 421 while banned.", registry=r
        )
        self.defender_store_faults = Counter(
            "ftp_alg_defender_store_faults",
            "Failures to reach the shared defender state (Redis, other workers): the local state carries on.",
            ["store"],
            registry=r,
        )
        for offence in Offence:
            self.defender_bans.labels(offence.value)
            self.defender_points.labels(offence.value)
        for store in DEFENDER_STORES:
            self.defender_store_faults.labels(store)

    def declare_upstreams(self, names: list[str]) -> None:
        for name in names:
            for metric in (
                self.upstream_sessions,
                self.upstream_sessions_active,
                self.upstream_healthy,
                self.upstream_connect_failures,
                self.upstream_resolve_failures,
            ):
                metric.labels(name)

    def proxy_refused(self, reason: str) -> None:
        self.proxy_protocol_refusals.labels(reason if reason in PROXY_REFUSAL_REASONS else "malformed").inc()

    def add_bytes(self, download: int, upload: int) -> None:
        self.data_bytes.add(download, upload)

    def relay_started(self, counts: ByteCounts) -> int:
        """Count a running relay's bytes at every scrape; `counts` returns (download, upload) so far."""
        return self.data_bytes.start(counts)

    def relay_finished(self, token: int) -> tuple[int, int]:
        """The relay's final (download, upload), now added to the totals for good."""
        return self.data_bytes.finish(token)

    def data_channel_opened(self, mode: str, verb: str | None) -> None:
        self._opened_series[(mode if mode in DATA_MODES else "passive", direction_of(verb))].inc()

    def tls_handshake(self, side: str, channel: str, outcome: str) -> None:
        side = side if side in TLS_SIDES else "client"
        channel = channel if channel in TLS_CHANNELS else "control"
        self.tls_handshakes.labels(side, channel, outcome if outcome in TLS_OUTCOMES else "failed").inc()

    def data_protected(self, client_tls: bool, server_tls: bool) -> None:
        self._protection_series[(bool(client_tls), bool(server_tls))].inc()

    def command(self, verb: str) -> None:
        (self._command_series.get(verb) or self._command_series["other"]).inc()

    def rewrote(self, kind: str) -> None:
        series = self._rewrite_series.get(kind)
        (series if series is not None else self.rewrites.labels(kind)).inc()

    def pool_used(self, pool: str, in_use: int) -> None:
        self._pool_in_use_series[pool].set(in_use)

    # Reasons are enums: a value outside them is a bug (ValueError), never counted under another label.
    def refused(self, reason: Refusal) -> None:
        if reason == Refusal.TLS_OFF:  # a client's routine AUTH TLS probe, not a hostile request: counted apart
            self.tls_probes.inc()
            return
        self.refusals.labels(Refusal(reason).value).inc()

    def data_failure(self, reason: DataFailure) -> None:
        self.data_failed.labels(DataFailure(reason).value).inc()

    def internal_error(self, where: str) -> None:
        self.internal_errors.labels(where).inc()

    def session_ended(self, outcome: SessionOutcome) -> None:
        self.sessions.labels(SessionOutcome(outcome).value).inc()


def direction_of(verb: str | None) -> str:
    if verb in ("RETR",):
        return "download"
    if verb in ("STOR", "STOU", "APPE"):
        return "upload"
    if verb in ("LIST", "NLST", "MLSD"):
        return "listing"
    return "unknown"
