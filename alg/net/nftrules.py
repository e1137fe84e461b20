"""The nftables text of the kernel data path: ftp-alg's own table, and one mapping per data connection. Pure.

One table (`inet ftp_alg_data`) holds everything: the chains are fixed, and a data connection is a handful of
map elements, never a rule. A mapping says: a TCP connection from `peer` to `dialled` is sent to `target`, and
leaves toward it from `source`; nobody else's connection matches, whatever port it dials.

  prerouting  (nat, before the usual dstnat)  peer . dialled address . dialled port  -> target (DNAT)
  postrouting (nat, before the usual srcnat)  peer . target address . target port    -> source (SNAT)
  forward     (filter)                        the same key -> two named counters, one per conntrack direction

The DNAT and SNAT elements carry a timeout, so a mapping nobody used disappears from the kernel by itself even
if ftp-alg is killed; conntrack carries a connection once its first packet has been translated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address

from alg.ftp.addresses import HostPort, IPAddress

TABLE = "ftp_alg_data"
# Our chains run just before the usual NAT priorities: the first NAT chain that binds a connection wins, so
# a site's own DNAT of the data port range (the transparent recipe) cannot take a connection we map.
_DSTNAT_PRIORITY = "dstnat - 10"
_SRCNAT_PRIORITY = "srcnat - 10"
_FILTER_PRIORITY = "filter - 10"

# Counter bytes are whole IP packets; payload = bytes - packets x headers. Linux peers send TCP timestamps
# on every segment (20 + 12 bytes of TCP header) and 8 more option bytes on the SYN of each direction; a
# segmentation-offloaded packet carries one header for many segments and counts as one packet.
_TCP_HEADER = 32
_SYN_EXTRA = 8
_IP_HEADER = {4: 20, 6: 40}


def version(ip: IPAddress) -> int:
    return 4 if isinstance(ip, IPv4Address) else 6


@dataclass(frozen=True, slots=True)
class Mapping:
    number: int  # unique in the table: names the counters
    peer: IPAddress  # the only address whose connection is mapped
    dialled: HostPort  # what the peer connects to, as its packets arrive here
    target: HostPort  # where the connection is sent
    source: IPAddress  # our address the connection leaves from toward the target
    timeout_s: float  # how long the mapping waits for its connection

    def __post_init__(self) -> None:
        families = {version(self.peer), version(self.dialled.ip), version(self.target.ip), version(self.source)}
        if len(families) != 1:
            raise ValueError("a kernel mapping cannot translate between IPv4 and IPv6")

    @property
    def family(self) -> int:
        return version(self.peer)

    @property
    def counters(self) -> tuple[str, str]:
        """Names of the counters of the original (peer -> target) and reply directions."""
        return f"m{self.number}o", f"m{self.number}r"


def table_name(worker: int = 0, workers: int = 1) -> str:
    """Each worker process owns a table of its own, so none ever empties another's mappings."""
    return TABLE if workers <= 1 else f"{TABLE}_w{worker}"


def create_table(table: str = TABLE) -> str:
    """The whole table, replacing whatever an earlier run left (one atomic batch)."""
    maps = []
    chains_pre, chains_post, chains_fwd = [], [], []
    for v, addr, ip in ((4, "ipv4_addr", "ip"), (6, "ipv6_addr", "ip6")):
        maps += [
            f"    map dnat{v} {{ type {addr} . {addr} . inet_service : {addr} . inet_service; flags timeout; }}",
            f"    map snat{v} {{ type {addr} . {addr} . inet_service : {addr}; flags timeout; }}",
            f"    map orig{v} {{ type {addr} . {addr} . inet_service : counter; }}",
            f"    map reply{v} {{ type {addr} . {addr} . inet_service : counter; }}",
        ]
        chains_pre.append(f"        meta l4proto tcp dnat {ip} to {ip} saddr . {ip} daddr . tcp dport map @dnat{v}")
        chains_post.append(
            f"        ct status dnat meta l4proto tcp snat {ip} to {ip} saddr . {ip} daddr . tcp dport map @snat{v}"
        )
        chains_fwd += [
            f"        meta l4proto tcp ct direction original counter name {ip} saddr . {ip} daddr . tcp dport"
            f" map @orig{v}",
            f"        meta l4proto tcp ct direction reply counter name {ip} daddr . {ip} saddr . tcp sport"
            f" map @reply{v}",
        ]
    body = "\n".join(
        [
            *maps,
            "    chain prerouting {",
            f"        type nat hook prerouting priority {_DSTNAT_PRIORITY}; policy accept;",
            *chains_pre,
            "    }",
            "    chain postrouting {",
            f"        type nat hook postrouting priority {_SRCNAT_PRIORITY}; policy accept;",
            *chains_post,
            "    }",
            "    chain forward {",
            f"        type filter hook forward priority {_FILTER_PRIORITY}; policy accept;",
            *chains_fwd,
            "    }",
        ]
    )
    return f"add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n{body}\n}}\n"


def delete_table(table: str = TABLE) -> str:
    # `add` first: deleting a table that is already gone would fail the batch.
    return f"add table inet {table}\ndelete table inet {table}\n"


def _dnat_element(m: Mapping, *, timeout: bool = True) -> str:
    ttl = f" timeout {_ms(m.timeout_s)}" if timeout else ""
    return f"{{ {m.peer} . {m.dialled.ip} . {m.dialled.port}{ttl} : {m.target.ip} . {m.target.port} }}"


def _snat_element(m: Mapping, *, timeout: bool = True) -> str:
    ttl = f" timeout {_ms(m.timeout_s)}" if timeout else ""
    return f"{{ {m.peer} . {m.target.ip} . {m.target.port}{ttl} : {m.source} }}"


def _flow_key(m: Mapping) -> str:
    return f"{m.peer} . {m.target.ip} . {m.target.port}"


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def add_mapping(m: Mapping, table: str = TABLE) -> str:
    """The mapping and its counters, in one batch: installed before the address is announced."""
    v, (orig, rep) = m.family, m.counters
    return (
        f"add counter inet {table} {orig}\n"
        f"add counter inet {table} {rep}\n"
        f'add element inet {table} orig{v} {{ {_flow_key(m)} : "{orig}" }}\n'
        f'add element inet {table} reply{v} {{ {_flow_key(m)} : "{rep}" }}\n'
        f"add element inet {table} snat{v} {_snat_element(m)}\n"
        f"add element inet {table} dnat{v} {_dnat_element(m)}\n"
    )


def remove_mapping(m: Mapping, table: str = TABLE) -> str:
    """The DNAT and SNAT elements go (new connections no longer match); established ones are conntrack's.

    Each is added again first: its timeout may have removed it already, and a delete of a missing element would
    fail the whole batch. The re-added element is deleted in the same transaction, so it never matches."""
    v = m.family
    return (
        f"add element inet {table} dnat{v} {_dnat_element(m, timeout=False)}\n"
        f"delete element inet {table} dnat{v} {{ {m.peer} . {m.dialled.ip} . {m.dialled.port} }}\n"
        f"add element inet {table} snat{v} {_snat_element(m, timeout=False)}\n"
        f"delete element inet {table} snat{v} {{ {_flow_key(m)} }}\n"
    )


def read_counters(m: Mapping, table: str = TABLE) -> str:
    """Each counter's packets and bytes since the last reading, which it then zeroes: `reset` needs no ruleset
    cache (a tenth of the cost of `list counter`), and the caller adds the readings up."""
    orig, rep = m.counters
    return f"reset counter inet {table} {orig}\nreset counter inet {table} {rep}\n"


def release_counters(m: Mapping, table: str = TABLE) -> str:
    """The counters and the elements naming them (elements first: a counter in use cannot be deleted)."""
    v, (orig, rep) = m.family, m.counters
    return (
        f"delete element inet {table} orig{v} {{ {_flow_key(m)} }}\n"
        f"delete element inet {table} reply{v} {{ {_flow_key(m)} }}\n"
        f"delete counter inet {table} {orig}\n"
        f"delete counter inet {table} {rep}\n"
    )


@dataclass(frozen=True, slots=True)
class Counts:
    """What the counters of one mapping saw, as TCP payload bytes in each direction."""

    original: int = 0  # peer -> target
    reply: int = 0  # target -> peer
    packets: int = 0

    @property
    def seen(self) -> bool:
        return self.packets > 0


def payload(family: int, packets: int, byte_count: int) -> int:
    """TCP payload bytes from a counter's packets and IP bytes (see _TCP_HEADER)."""
    if packets == 0:
        return 0
    return max(0, byte_count - packets * (_IP_HEADER[family] + _TCP_HEADER) - _SYN_EXTRA)


_COUNTER = re.compile(r"counter (\w+) \{\s*packets (\d+) bytes (\d+)")


def parse_counters(listing: str) -> dict[str, tuple[int, int]]:
    """Counter name -> (packets, bytes), from nft's text output (its JSON cannot list several objects in a batch)."""
    return {name: (int(packets), int(byte_count)) for name, packets, byte_count in _COUNTER.findall(listing)}


def counts_of(m: Mapping, totals: dict[str, tuple[int, int]]) -> Counts:
    """The mapping's payload counts from its counters' totals (missing counters count zero)."""
    orig_name, reply_name = m.counters
    orig = totals.get(orig_name, (0, 0))
    rep = totals.get(reply_name, (0, 0))
    return Counts(
        original=payload(m.family, *orig),
        reply=payload(m.family, *rep),
        packets=orig[0] + rep[0],
    )
