"""The kernel data path's nftables text, byte for byte: the table, one mapping's elements, their removal, and
the byte counts read back. Pure: nothing is sent to the kernel here (tests/integration/test_kernel_path.py does)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.ftp.addresses import HostPort
from alg.net import nftrules
from alg.net.nftrules import Counts, Mapping

PASSIVE = Mapping(
    7,
    peer=IPv4Address("203.0.113.10"),
    dialled=HostPort(IPv4Address("203.0.113.1"), 50000),
    target=HostPort(IPv4Address("198.51.100.10"), 30000),
    source=IPv4Address("198.51.100.1"),
    timeout_s=30.0,
)
V6 = Mapping(
    8,
    peer=IPv6Address("2001:db8:1::10"),
    dialled=HostPort(IPv6Address("2001:db8:1::1"), 50001),
    target=HostPort(IPv6Address("2001:db8:2::10"), 30001),
    source=IPv6Address("2001:db8:2::1"),
    timeout_s=0.25,
)


def test_a_mapping_is_its_counters_then_snat_then_dnat_the_dnat_last_so_nothing_matches_half_made() -> None:
    assert nftrules.add_mapping(PASSIVE) == (
        "add counter inet ftp_alg_data m7o\n"
        "add counter inet ftp_alg_data m7r\n"
        'add element inet ftp_alg_data orig4 { 203.0.113.10 . 198.51.100.10 . 30000 : "m7o" }\n'
        'add element inet ftp_alg_data reply4 { 203.0.113.10 . 198.51.100.10 . 30000 : "m7r" }\n'
        "add element inet ftp_alg_data snat4 { 203.0.113.10 . 198.51.100.10 . 30000 timeout 30000ms : 198.51.100.1 }\n"
        "add element inet ftp_alg_data dnat4 { 203.0.113.10 . 203.0.113.1 . 50000 timeout 30000ms"
        " : 198.51.100.10 . 30000 }\n"
    )


def test_ipv6_mappings_use_the_ip6_maps_and_a_short_timeout_is_rounded_to_milliseconds() -> None:
    text = nftrules.add_mapping(V6, table="ftp_alg_data_w1")
    assert "add element inet ftp_alg_data_w1 dnat6 { 2001:db8:1::10 . 2001:db8:1::1 . 50001 timeout 250ms" in text
    assert "snat6 { 2001:db8:1::10 . 2001:db8:2::10 . 30001 timeout 250ms : 2001:db8:2::1 }" in text
    assert "4 {" not in text


def test_removal_re_adds_each_element_first_so_an_expired_one_cannot_fail_the_batch() -> None:
    assert nftrules.remove_mapping(PASSIVE) == (
        "add element inet ftp_alg_data dnat4 { 203.0.113.10 . 203.0.113.1 . 50000 : 198.51.100.10 . 30000 }\n"
        "delete element inet ftp_alg_data dnat4 { 203.0.113.10 . 203.0.113.1 . 50000 }\n"
        "add element inet ftp_alg_data snat4 { 203.0.113.10 . 198.51.100.10 . 30000 : 198.51.100.1 }\n"
        "delete element inet ftp_alg_data snat4 { 203.0.113.10 . 198.51.100.10 . 30000 }\n"
    )


def test_counters_are_released_after_the_elements_that_name_them() -> None:
    lines = nftrules.release_counters(PASSIVE).splitlines()
    assert lines == [
        "delete element inet ftp_alg_data orig4 { 203.0.113.10 . 198.51.100.10 . 30000 }",
        "delete element inet ftp_alg_data reply4 { 203.0.113.10 . 198.51.100.10 . 30000 }",
        "delete counter inet ftp_alg_data m7o",
        "delete counter inet ftp_alg_data m7r",
    ]


def test_the_table_replaces_any_leftover_and_its_chains_run_before_the_usual_nat() -> None:
    text = nftrules.create_table()
    assert text.startswith("add table inet ftp_alg_data\ndelete table inet ftp_alg_data\ntable inet ftp_alg_data {")
    assert "type nat hook prerouting priority dstnat - 10; policy accept;" in text
    assert "type nat hook postrouting priority srcnat - 10; policy accept;" in text
    assert "meta l4proto tcp dnat ip to ip saddr . ip daddr . tcp dport map @dnat4" in text
    assert "ct status dnat meta l4proto tcp snat ip6 to ip6 saddr . ip6 daddr . tcp dport map @snat6" in text
    # Policy accept everywhere and no drop or reject: the table can never refuse traffic that is not ours.
    assert "drop" not in text and "reject" not in text
    assert nftrules.delete_table("t") == "add table inet t\ndelete table inet t\n"


def test_each_worker_owns_a_table() -> None:
    assert nftrules.table_name(0, 1) == "ftp_alg_data"
    assert [nftrules.table_name(i, 3) for i in range(3)] == [f"ftp_alg_data_w{i}" for i in range(3)]


def test_a_mapping_never_translates_between_families() -> None:
    with pytest.raises(ValueError, match="IPv4 and IPv6"):
        Mapping(1, V6.peer, PASSIVE.dialled, PASSIVE.target, PASSIVE.source, 1.0)


LISTING = """table inet ftp_alg_data {
\tcounter m7o {
\t\tpackets 10 bytes 100528
\t}
}
table inet ftp_alg_data {
\tcounter m7r {
\t\tpackets 8 bytes 5424
\t}
}
"""


def test_counts_are_tcp_payload_bytes() -> None:
    # Measured in a namespace: 100000 bytes one way and 5000 back, timestamps on, one SYN each way.
    totals = nftrules.parse_counters(LISTING)
    assert totals == {"m7o": (10, 100528), "m7r": (8, 5424)}
    assert nftrules.counts_of(PASSIVE, totals) == Counts(original=100000, reply=5000, packets=18)


def test_counters_are_read_by_resetting_them_which_needs_no_ruleset_cache() -> None:
    assert nftrules.read_counters(PASSIVE) == (
        "reset counter inet ftp_alg_data m7o\nreset counter inet ftp_alg_data m7r\n"
    )


def test_counters_of_another_mapping_or_nothing_count_zero() -> None:
    assert nftrules.counts_of(V6, nftrules.parse_counters(LISTING)) == Counts()
    assert not nftrules.counts_of(PASSIVE, nftrules.parse_counters("")).seen


@given(st.integers(1, 10_000), st.integers(0, 1 << 40), st.sampled_from([4, 6]))
def test_payload_is_never_negative_and_exact_for_full_headers(packets: int, data: int, family: int) -> None:
    header = {4: 52, 6: 72}[family]
    assert nftrules.payload(family, packets, packets * header + 8 + data) == data
    assert nftrules.payload(family, packets, 0) == 0


@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(1, 65535), st.integers(1, 65535))
def test_every_address_and_port_appears_where_the_kernel_reads_it(
    peer: object, target: object, p1: int, p2: int
) -> None:
    m = Mapping(
        1,
        ip_address(str(peer)),
        HostPort(IPv4Address("203.0.113.1"), p1),
        HostPort(ip_address(str(target)), p2),
        IPv4Address("198.51.100.1"),
        5.0,
    )
    text = nftrules.add_mapping(m)
    assert f"dnat4 {{ {peer} . 203.0.113.1 . {p1} timeout 5000ms : {target} . {p2} }}" in text
