"""The defender: hostile acts add points to their client's score; over the threshold the client is banned.

Rules: pure bookkeeping with an injected clock (no I/O, no asyncio); a client is an address cut to its
prefix (IPv6 per /64 by default); the allowlist is never scored nor banned; a ban grows on each repeat up to
the maximum; a user name under attack slows that user's failed logins, it never locks the user out.
Sharing with other processes is the store's business (alg.ops.defender_store): it hands bans in and out.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_network

from alg.ops.config_sections import DefenderSettings

Clock = Callable[[], float]


class Offence(StrEnum):
    """The hostile acts the defender scores; metric labels and log fields take these values."""

    LOGIN_FAILED = "login_failed"  # 530 after PASS
    REFUSED_COMMAND = "refused_command"  # a command the rules refuse
    BOUNCE = "bounce"  # PORT/EPRT naming a third party (RFC 2577)
    PORT_THEFT = "port_theft"  # a stranger connecting to a data port announced to someone else
    TLS_GARBAGE = "tls_garbage"  # a failed control handshake, or plaintext after AUTH TLS
    OVERLONG_LINE = "overlong_line"
    OVER_LIMIT = "over_limit"  # a connection over limits.max_sessions_per_client


class Unbanned(StrEnum):
    EXPIRED = "expired"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Ban:
    client: str  # the banned network, e.g. "203.0.113.7/32" or "2001:db8:1:2::/64"
    since: float  # clock time
    until: float
    repeat: int  # 1 for a first ban, 2 for the next one within repeat_memory_s, ...
    reason: Offence  # the act that crossed the threshold

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)


def client_key(ip: IPv4Address | IPv6Address, settings: DefenderSettings) -> str:
    """The network that stands for one client: the address itself for IPv4, its /64 for IPv6."""
    ip = _plain(ip)
    prefix = settings.ipv4_prefix if ip.version == 4 else settings.ipv6_prefix
    return str(ip_network(f"{ip}/{prefix}", strict=False))


class Defender:
    def __init__(self, settings: DefenderSettings, clock: Clock = time.time) -> None:
        self.settings = settings
        self._clock = clock  # wall clock by default: bans are shared with other processes and hosts
        self._points: dict[str, deque[tuple[float, int]]] = {}  # client -> (when, points) inside the window
        self._bans: dict[str, Ban] = {}
        self._repeats: dict[str, tuple[int, float]] = {}  # client -> (bans so far, when the last one ended)
        self._user_failures: dict[str, deque[float]] = defaultdict(deque)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def configure(self, settings: DefenderSettings) -> None:
        """New settings (SIGHUP): scores and bans are kept."""
        self.settings = settings

    def key(self, ip: IPv4Address | IPv6Address) -> str:
        return client_key(ip, self.settings)

    def allowed(self, ip: IPv4Address | IPv6Address) -> bool:
        """On the allowlist: never scored, never banned."""
        ip = _plain(ip)
        return any(ip in network for network in self.settings.allowlist if network.version == ip.version)

    def banned(self, ip: IPv4Address | IPv6Address) -> Ban | None:
        """The ban in force on this address's client, if any (an expired one is not)."""
        if not self.enabled or self.allowed(ip):
            return None
        ban = self._bans.get(self.key(ip))
        return ban if ban is not None and ban.until > self._clock() else None

    def clock(self) -> float:
        return self._clock()

    def record(self, ip: IPv4Address | IPv6Address, offence: Offence, at: float | None = None) -> Ban | None:
        """Score one act; the new Ban when it took the client over the threshold."""
        if not self.enabled or self.allowed(ip):
            return None
        return self.record_key(self.key(ip), offence, self._clock() if at is None else at)

    def record_key(self, key: str, offence: Offence, at: float) -> Ban | None:
        """Score one act of the client `key` at clock time `at` (as told by another process, too)."""
        if not self.enabled or self._allowed_key(key):
            return None
        current = self._bans.get(key)
        if current is not None and current.until > at:
            return None  # already banned: acts still in flight do not lengthen it
        points = self._points.setdefault(key, deque())
        points.append((at, self.points(offence)))
        _forget_before(points, self._clock() - self.settings.window_s)
        if sum(p for _, p in points) < self.settings.threshold:
            return None
        del self._points[key]
        return self._ban(key, at, offence)

    def _allowed_key(self, key: str) -> bool:
        try:
            network = ip_network(key)
        except ValueError:
            return True  # not a client we could have named: ignore it
        return self.allowed(network.network_address)

    def points(self, offence: Offence) -> int:
        return int(self.settings.scores.model_dump()[offence.value])  # a field per Offence (test_defender)

    def score(self, ip: IPv4Address | IPv6Address) -> int:
        points = self._points.get(self.key(ip))
        if points is None:
            return 0
        _forget_before(points, self._clock() - self.settings.window_s)
        return sum(p for _, p in points)

    def _ban(self, key: str, now: float, reason: Offence) -> Ban:
        count, ended = self._repeats.get(key, (0, now))
        if now - ended > self.settings.repeat_memory_s:
            count = 0
        repeat = count + 1
        duration = min(self.settings.ban_s * self.settings.ban_growth ** (repeat - 1), self.settings.max_ban_s)
        ban = Ban(key, now, now + duration, repeat, reason)
        self.adopt(ban)
        return ban

    def adopt(self, ban: Ban) -> bool:
        """A ban made here or by another process; False when one ending later is already held."""
        held = self._bans.get(ban.client)
        if held is not None and held.until >= ban.until:
            return False
        self._bans[ban.client] = ban
        self._repeats[ban.client] = (max(ban.repeat, self._repeats.get(ban.client, (0, 0.0))[0]), ban.until)
        self._points.pop(ban.client, None)
        return True

    def unban(self, client: str) -> Ban | None:
        """Lift a ban by its network or by an address inside it; the ban lifted, if there was one."""
        key = self._key_of(client)
        ban = self._bans.pop(key, None) if key is not None else None
        if ban is not None:
            self._repeats[ban.client] = (ban.repeat, self._clock())
        return ban

    def _key_of(self, client: str) -> str | None:
        try:
            network = ip_network(client.strip(), strict=False)
        except ValueError:
            return None
        if network.num_addresses == 1:
            return self.key(network.network_address)
        return str(network)

    def bans(self) -> list[Ban]:
        """The bans in force, soonest to end first."""
        now = self._clock()
        return sorted((b for b in self._bans.values() if b.until > now), key=lambda b: (b.until, b.client))

    def expire(self) -> list[Ban]:
        """Forget ended bans and stale scores; the bans that ended (each gets its unban log line)."""
        now = self._clock()
        ended = [ban for ban in self._bans.values() if ban.until <= now]
        for ban in ended:
            del self._bans[ban.client]
        for key, points in list(self._points.items()):
            _forget_before(points, now - self.settings.window_s)
            if not points:
                del self._points[key]
        memory = self.settings.repeat_memory_s
        for key, (_, last) in list(self._repeats.items()):
            if key not in self._bans and now - last > memory:
                del self._repeats[key]
        for user, failures in list(self._user_failures.items()):
            _forget_times(failures, now - self.settings.window_s)
            if not failures:
                del self._user_failures[user]
        return ended

    # ---- per user: slow down, never lock out ----------------------------------------------------------------

    def login_failed(self, user: str, at: float | None = None) -> float:
        """A failed login for `user` (from any address); the delay before that client may try again."""
        if not self.enabled or not user:
            return 0.0
        failures = self._user_failures[user]
        failures.append(self._clock() if at is None else at)
        _forget_times(failures, self._clock() - self.settings.window_s)
        return self.user_delay(user)

    def user_delay(self, user: str) -> float:
        failures = self._user_failures.get(user)
        if failures is None or len(failures) < self.settings.user_failures:
            return 0.0
        return self.settings.user_delay_s


def _plain(ip: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """An IPv4 client on a dual-stack listener (::ffff:a.b.c.d) is the IPv4 client."""
    return ip.ipv4_mapped if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None else ip


def _forget_before(points: deque[tuple[float, int]], start: float) -> None:
    while points and points[0][0] <= start:
        points.popleft()


def _forget_times(times: deque[float], start: float) -> None:
    while times and times[0] <= start:
        times.popleft()
