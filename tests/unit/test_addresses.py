"""PORT, EPRT, 227 and 229: RFC and real-server examples, rejections, and Hypothesis properties."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from alg.errors import ClientProtocolError, FtpProtocolError, ServerProtocolError
from alg.ftp.addresses import (
    HostPort,
    find_227,
    find_229,
    format_227,
    format_229,
    format_eprt,
    format_port,
    parse_eprt,
    parse_port,
    rewrite_227,
    rewrite_229,
)

V4 = IPv4Address
V6 = IPv6Address
ARABIC_ONE = "\u0661".encode()  # ARABIC-INDIC DIGIT ONE: int() takes it, the grammar must not
FULLWIDTH_ONE = "\uff11".encode()
PUBLIC = HostPort(V4("203.0.113.1"), 50000)

ports = st.integers(min_value=1, max_value=65535)
ipv4_host_ports = st.builds(HostPort, st.ip_addresses(v=4), ports)
ipv6_host_ports = st.builds(HostPort, st.ip_addresses(v=6), ports)
printable = [bytes([c]) for c in range(0x21, 0x7F)]
# Bytes that reach deep into the grammars, for fuzzing beyond what random bytes find.
grammar_bytes = st.lists(
    st.sampled_from([*b"0123456789", *b",.:|!()=% abcdefABCDEF_+-\r\n\xd9\xa1"]).map(lambda c: bytes([c])),
    max_size=60,
).map(b"".join)
no_digits = st.binary(max_size=40).filter(lambda b: not any(0x30 <= c <= 0x39 for c in b))
# The 227 numbers are whole words: what touches them is punctuation, whatever text lies beyond.
text_before_227 = st.tuples(no_digits, st.sampled_from([b" ", b" (", b"(", b" =", b"=", b". "])).map(b"".join)
text_after_227 = st.one_of(
    st.just(b""), st.tuples(st.sampled_from([b")", b").", b".", b" ", b"\r\n"]), no_digits).map(b"".join)
)


def _expected(addr: HostPort) -> HostPort:
    """What parsing gives back: IPv4-mapped IPv6 addresses come back as IPv4 (documented in parse_eprt)."""
    if isinstance(addr.ip, IPv6Address) and addr.ip.ipv4_mapped is not None:
        return HostPort(addr.ip.ipv4_mapped, addr.port)
    return addr


# --- PORT (RFC 959 4.1.2) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        (b"203,0,113,1,195,80", HostPort(V4("203.0.113.1"), 50000)),
        (b"198,51,100,10,0,21", HostPort(V4("198.51.100.10"), 21)),
        (b"198,18,0,1,0,1", HostPort(V4("198.18.0.1"), 1)),
        (b"198,18,0,1,255,255", HostPort(V4("198.18.0.1"), 65535)),
        (b"0,0,0,0,4,0", HostPort(V4("0.0.0.0"), 1024)),  # a policy question, not a grammar one
        (b"203,000,113,001,195,080", HostPort(V4("203.0.113.1"), 50000)),  # leading zeros, as RFC 959 servers
        (b"  203,0,113,1,195,80 ", HostPort(V4("203.0.113.1"), 50000)),  # surrounding spaces
    ],
)
def test_parse_port(argument: bytes, expected: HostPort) -> None:
    assert parse_port(argument) == expected


@pytest.mark.parametrize(
    "argument",
    [
        b"",
        b" ",
        b"256,0,113,1,195,80",  # out of range
        b"203,0,113,1,256,80",
        b"203,0,113,1,0,0",  # port 0
        b"203,0,113,1,195",  # five numbers
        b"203,0,113,1,195,80,1",  # seven numbers
        b"203,0,113,1,195,80,",
        b",203,0,113,1,195,80",
        b"203,,113,1,195,80",
        b"1_0,0,113,1,195,80",  # int() would take these
        b" +1,0,113,1,195,80",
        b"+1,0,113,1,195,80",
        b"-1,0,113,1,195,80",
        b"203,0,113,1,195,80\r\n",  # the line ending is the framer's, never part of the argument
        b"203,0,113,1,195,\t80",
        b"203, 0,113,1,195,80",
        b"203,0,113," + ARABIC_ONE + b",195,80",
        b"203,0,113," + FULLWIDTH_ONE + b",195,80",
        b"0203,0,113,1,195,80",  # overlong: four digits
        b"203,0,113,1,195," + b"0" * 100 + b"80",
        b"203.0.113.1.195.80",
        b"0xcb,0,113,1,195,80",
        b"(203,0,113,1,195,80)",
    ],
)
def test_parse_port_rejects(argument: bytes) -> None:
    with pytest.raises(ClientProtocolError) as raised:
        parse_port(argument)
    assert raised.value.reply_code == 501


def test_format_port() -> None:
    assert format_port(PUBLIC) == b"203,0,113,1,195,80"
    assert format_port(HostPort(V4("198.51.100.10"), 1)) == b"198,51,100,10,0,1"


@pytest.mark.parametrize(
    "addr",
    [HostPort(V6("2001:db8::1"), 50000), HostPort(V4("203.0.113.1"), 0), HostPort(V4("203.0.113.1"), 65536)],
)
def test_format_port_refuses_what_we_must_not_send(addr: HostPort) -> None:
    with pytest.raises(ValueError):
        format_port(addr)
    with pytest.raises(ValueError):
        format_227(addr)


@given(ipv4_host_ports)
def test_port_round_trip(addr: HostPort) -> None:
    assert parse_port(format_port(addr)) == addr


@given(ipv4_host_ports, st.lists(st.integers(min_value=1, max_value=3), min_size=6, max_size=6))
def test_port_leading_zeros(addr: HostPort, widths: list[int]) -> None:
    numbers = format_port(addr).split(b",")
    padded = b",".join(n.rjust(max(w, len(n)), b"0") for n, w in zip(numbers, widths, strict=True))
    assert parse_port(padded) == addr


# --- EPRT (RFC 2428 section 2) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        # The examples of RFC 2428 section 2.
        (b"|1|132.235.1.2|6275|", HostPort(V4("132.235.1.2"), 6275)),
        (b"|2|1080::8:800:200C:417A|5282|", HostPort(V6("1080::8:800:200c:417a"), 5282)),
        (b"|1|203.0.113.1|50000|", HostPort(V4("203.0.113.1"), 50000)),
        (b"|2|2001:db8::1|50000|", HostPort(V6("2001:db8::1"), 50000)),
        (b"|2|2001:DB8::A|1|", HostPort(V6("2001:db8::a"), 1)),
        (b"|2|::1|65535|", HostPort(V6("::1"), 65535)),
        # IPv4-mapped IPv6 comes back as IPv4, in either spelling.
        (b"|2|::ffff:198.51.100.1|5282|", HostPort(V4("198.51.100.1"), 5282)),
        (b"|2|::FFFF:c633:6401|5282|", HostPort(V4("198.51.100.1"), 5282)),
        # Any printable delimiter (RFC 2428: "|" is only recommended).
        (b"!1!203.0.113.1!50000!", HostPort(V4("203.0.113.1"), 50000)),
        (b"~2~2001:db8::1~50000~", HostPort(V6("2001:db8::1"), 50000)),
        (b":1:203.0.113.1:50000:", HostPort(V4("203.0.113.1"), 50000)),
        (b"(1(203.0.113.1(50000(", HostPort(V4("203.0.113.1"), 50000)),
        # Leading zeros are decimal, never octal; surrounding spaces are ignored.
        (b"|1|203.000.113.001|05000|", HostPort(V4("203.0.113.1"), 5000)),
        (b"|1|203.000.113.001|21|", HostPort(V4("203.0.113.1"), 21)),
        (b"  |1|203.0.113.1|50000| ", HostPort(V4("203.0.113.1"), 50000)),
    ],
)
def test_parse_eprt(argument: bytes, expected: HostPort) -> None:
    assert parse_eprt(argument) == expected


@pytest.mark.parametrize(
    "argument",
    [
        b"",
        b"|",
        b"||",
        b"||||",
        b"|||||",
        b"|1|203.0.113.1|50000",  # no closing delimiter
        b"1|203.0.113.1|50000|",
        b"|1|203.0.113.1!50000|",  # mixed delimiters
        b"|1!203.0.113.1!50000!",
        b"|1|203.0.113.1|50000|1|",  # a fourth field
        b" 1 203.0.113.1 50000 ",  # space is not a delimiter
        b"\x7f1\x7f203.0.113.1\x7f50000\x7f",
        b"\xa61\xa6203.0.113.1\xa650000\xa6",
        b"|x|203.0.113.1|50000|",  # net-prt not a number
        b"|+1|203.0.113.1|50000|",
        b"|" + ARABIC_ONE + b"|203.0.113.1|50000|",
        b"|1|256.0.113.1|50000|",
        b"|1|203.0.113|50000|",
        b"|1|203.0.113.1.1|50000|",
        b"|1|0203.0.113.1|50000|",  # four digits
        b"|1|0xcb.0.113.1|50000|",
        b"|1|203.0.113." + ARABIC_ONE + b"|50000|",
        b"|1|2001:db8::1|50000|",  # IPv6 under net-prt 1
        b"|1||50000|",
        b"|2|203.0.113.1|50000|",  # IPv4 under net-prt 2
        b"|2|fe80::1%eth0|50000|",  # zone ids are refused
        b"|2|fe80::1%1|50000|",
        b"|2|2001:db8:::1|50000|",
        b"|2|2001:db8::g|50000|",
        b"|2|" + b"0:" * 30 + b"1|50000|",  # overlong
        b"|2|::ffff:203.0.113.01|50000|",  # ipaddress refuses leading zeros in the IPv4 tail
        b"|2||50000|",
        b"|1|203.0.113.1|0|",  # port 0
        b"|1|203.0.113.1|65536|",
        b"|1|203.0.113.1|000001|",  # six digits
        b"|1|203.0.113.1|1_0|",
        b"|1|203.0.113.1| +1|",
        b"|1|203.0.113.1|" + ARABIC_ONE + b"|",
        b"|1|203.0.113.1||",
    ],
)
def test_parse_eprt_rejects(argument: bytes) -> None:
    with pytest.raises(ClientProtocolError) as raised:
        parse_eprt(argument)
    assert raised.value.reply_code == 501


@pytest.mark.parametrize("argument", [b"|3|203.0.113.1|50000|", b"|0|x|y|", b"|99999|203.0.113.1|50000|"])
def test_parse_eprt_unknown_protocol_is_522(argument: bytes) -> None:
    """RFC 2428 section 2: a network protocol the server does not support gets 522."""
    with pytest.raises(ClientProtocolError) as raised:
        parse_eprt(argument)
    assert raised.value.reply_code == 522


def test_format_eprt() -> None:
    assert format_eprt(PUBLIC) == b"|1|203.0.113.1|50000|"
    assert format_eprt(HostPort(V6("2001:db8::1"), 50000)) == b"|2|2001:db8::1|50000|"
    with pytest.raises(ValueError):
        format_eprt(HostPort(V4("203.0.113.1"), 0))


@given(st.one_of(ipv4_host_ports, ipv6_host_ports))
def test_eprt_round_trip(addr: HostPort) -> None:
    assert parse_eprt(format_eprt(addr)) == _expected(addr)


@given(st.one_of(ipv4_host_ports, ipv6_host_ports), st.sampled_from(printable))
def test_eprt_any_delimiter(addr: HostPort, delimiter: bytes) -> None:
    argument = format_eprt(addr)
    assume(delimiter not in argument)
    assert parse_eprt(argument.replace(b"|", delimiter)) == _expected(addr)


# --- 227 (RFC 959 PASV, RFC 1123 4.1.2.6) ---------------------------------------------------------------

SERVER = HostPort(V4("198.51.100.10"), 50000)


@pytest.mark.parametrize(
    "line",
    [
        b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n",  # vsftpd, proftpd, IIS
        b"227 Entering Passive Mode (198,51,100,10,195,80)\r\n",  # pure-ftpd
        b"227 Entering Passive Mode (198,51,100,10,195,80)\n",
        b"227 Entering Passive Mode (198,51,100,10,195,80)",
        b"227 =198,51,100,10,195,80\r\n",  # Serv-U style
        b"227 Entering passive mode 198,51,100,10,195,80\r\n",
        b"227 Entering Passive Mode. 198,51,100,10,195,80\r\n",
        b"227 Data transfer will passively listen to 198,51,100,10,195,80\r\n",
        b"227 Entering Passive Mode (198,051,100,010,195,080).\r\n",  # leading zeros
        b"227 Entering Passive Mode (198,51,100,10,195,80) then some words.\r\n",
        b"227 Entering Passive Mode 2,3 (198,51,100,10,195,80).\r\n",  # a shorter run is not the address
        b"227 Entering Passive Mode (198,51,100,10,195,80) (203,0,113,1,1,1).\r\n",  # the first run wins
    ],
)
def test_find_227(line: bytes) -> None:
    public, start, end = find_227(line)
    assert public == SERVER
    assert parse_port(line[start:end]) == SERVER


def test_find_227_offsets() -> None:
    line = b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n"
    assert find_227(line) == (SERVER, 27, 47)
    assert line[27:47] == b"198,51,100,10,195,80"


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"227",
        b"227 Entering Passive Mode\r\n",
        b"227 Entering Passive Mode ()\r\n",
        b"226 Entering Passive Mode (198,51,100,10,195,80).\r\n",  # not a 227 reply
        b"227 Entering Passive Mode (256,51,100,10,195,80).\r\n",
        b"227 Entering Passive Mode (198,51,100,10,195,256).\r\n",
        b"227 Entering Passive Mode (198,51,100,10,0,0).\r\n",  # port 0
        b"227 Entering Passive Mode (198,51,100,10,195).\r\n",  # five numbers
        b"227 Entering Passive Mode (198,51,100,10,195,80,1).\r\n",  # seven numbers
        b"227 Entering Passive Mode (1198,51,100,10,195,80).\r\n",  # overlong digits
        b"227 Entering Passive Mode (198,51,100,10,195,0080).\r\n",
        b"227 Entering Passive Mode (198,51,100,10,195,1_0).\r\n",  # not whole words
        b"227 Entering Passive Mode (0x198,51,100,10,195,80).\r\n",
        b"227 Entering Passive Mode A198,51,100,10,195,80\r\n",
        b"227 Entering Passive Mode 198,51,100,10,195,80b\r\n",
        b"227 Entering Passive Mode (198,51,100,10,195, +80).\r\n",
        b"227 Entering Passive Mode (198, 51, 100, 10, 195, 80).\r\n",
        b"227 Entering Passive Mode (198,51,100,10,195," + ARABIC_ONE + b").\r\n",
        b"227 Entering Passive Mode (198,51,100,10,195," + b"9" * 1000 + b").\r\n",
        # The first run decides: a bad one is not skipped for a later good one.
        b"227 Entering Passive Mode (256,1,1,1,1,1) (198,51,100,10,195,80).\r\n",
    ],
)
def test_find_227_rejects(line: bytes) -> None:
    with pytest.raises(ServerProtocolError) as raised:
        find_227(line)
    assert raised.value.reply_code == 425


def test_rewrite_227_keeps_the_server_text() -> None:
    line = b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n"
    assert rewrite_227(line, PUBLIC) == b"227 Entering Passive Mode (203,0,113,1,195,80).\r\n"
    assert rewrite_227(b"227 =198,51,100,10,195,80\r\n", PUBLIC) == b"227 =203,0,113,1,195,80\r\n"


def test_format_227() -> None:
    assert format_227(PUBLIC) == b"227 Entering Passive Mode (203,0,113,1,195,80).\r\n"


@given(ipv4_host_ports)
def test_227_round_trip(addr: HostPort) -> None:
    assert find_227(format_227(addr))[0] == addr


@given(text_before_227, ipv4_host_ports, text_after_227, ipv4_host_ports)
def test_rewrite_227_keeps_text_before_and_after(
    before: bytes, server: HostPort, after: bytes, public: HostPort
) -> None:
    line = b"227" + before + format_port(server) + after
    assert find_227(line) == (server, 3 + len(before), 3 + len(before) + len(format_port(server)))
    assert rewrite_227(line, public) == b"227" + before + format_port(public) + after


# --- 229 (RFC 2428 section 3) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "port"),
    [
        (b"229 Entering Extended Passive Mode (|||6446|)\r\n", 6446),  # RFC 2428 example, vsftpd, proftpd
        (b"229 Extended Passive mode OK (|||6446|)\r\n", 6446),  # pure-ftpd
        (b"229 Entering Extended Passive Mode (|||6446|).\r\n", 6446),
        (b"229 Entering Extended Passive Mode (!!!6446!)\r\n", 6446),
        (b"229 Entering Extended Passive Mode (|||1|)\n", 1),
        (b"229 Entering Extended Passive Mode (|||65535|)", 65535),
        (b"229 Entering Extended Passive Mode (|||06446|)\r\n", 6446),
        (b"229 Entering Extended Passive Mode (11164461)\r\n", 6446),  # a digit delimiter still reads one way
        (b"229 Entering Extended Passive Mode (noise) (|||6446|)\r\n", 6446),
    ],
)
def test_find_229(line: bytes, port: int) -> None:
    found, start, end = find_229(line)
    assert found == port
    assert int(line[start:end]) == port
    assert line[end + 1 : end + 2] == b")"


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"229",
        b"229 Entering Extended Passive Mode\r\n",
        b"228 Entering Extended Passive Mode (|||6446|)\r\n",  # not a 229 reply
        b"229 Entering Extended Passive Mode |||6446|\r\n",  # no parentheses
        b"229 Entering Extended Passive Mode (|||6446|\r\n",
        b"229 Entering Extended Passive Mode (|||6446!)\r\n",  # mixed delimiters
        b"229 Entering Extended Passive Mode (|!|6446|)\r\n",
        b"229 Entering Extended Passive Mode (||6446|)\r\n",
        b"229 Entering Extended Passive Mode (||||6446|)\r\n",
        b"229 Entering Extended Passive Mode (|1|198.51.100.10|6446|)\r\n",  # RFC 2428: fields left empty
        b"229 Entering Extended Passive Mode (   6446 )\r\n",  # space is not a delimiter
        b"229 Entering Extended Passive Mode (|||0|)\r\n",
        b"229 Entering Extended Passive Mode (|||65536|)\r\n",
        b"229 Entering Extended Passive Mode (|||000001|)\r\n",  # six digits
        b"229 Entering Extended Passive Mode (|||1_0|)\r\n",
        b"229 Entering Extended Passive Mode (||| +1|)\r\n",
        b"229 Entering Extended Passive Mode (|||" + ARABIC_ONE + b"|)\r\n",
        b"229 Entering Extended Passive Mode (|||" + b"9" * 1000 + b"|)\r\n",
        b"229 Entering Extended Passive Mode (|||)\r\n",
    ],
)
def test_find_229_rejects(line: bytes) -> None:
    with pytest.raises(ServerProtocolError) as raised:
        find_229(line)
    assert raised.value.reply_code == 425


def test_rewrite_229_keeps_the_server_text() -> None:
    line = b"229 Extended Passive mode OK (!!!6446!).\r\n"
    assert rewrite_229(line, 50000) == b"229 Extended Passive mode OK (!!!50000!).\r\n"
    with pytest.raises(ValueError):
        rewrite_229(line, 0)


def test_format_229() -> None:
    assert format_229(50000) == b"229 Entering Extended Passive Mode (|||50000|)\r\n"
    for port in (0, 65536):
        with pytest.raises(ValueError):
            format_229(port)


@given(ports)
def test_229_round_trip(port: int) -> None:
    assert find_229(format_229(port))[0] == port


@given(no_digits, st.sampled_from(printable), ports, no_digits, ports)
@example(b" ", b"1", 1, b"", 11)
def test_rewrite_229_keeps_text_before_and_after(
    before: bytes, delimiter: bytes, server_port: int, after: bytes, port: int
) -> None:
    opening = b"(" + delimiter * 3
    closing = delimiter + b")"
    line = b"229" + before + opening + b"%d" % server_port + closing + after
    start = 3 + len(before) + len(opening)
    assert find_229(line) == (server_port, start, start + len(b"%d" % server_port))
    assert rewrite_229(line, port) == b"229" + before + opening + b"%d" % port + closing + after


# --- Only our exceptions --------------------------------------------------------------------------------

CLIENT_PARSERS: list[Callable[[bytes], object]] = [parse_port, parse_eprt]
SERVER_PARSERS: list[Callable[[bytes], object]] = [find_227, find_229]


def _returns_or_raises_ours(parse: Callable[[bytes], object], data: bytes, error: type[FtpProtocolError]) -> None:
    try:
        parse(data)
    except error as raised:
        assert raised.reply_code in ({501, 522} if error is ClientProtocolError else {425})


@pytest.mark.parametrize("parse", CLIENT_PARSERS)
@given(data=st.one_of(st.binary(max_size=80), grammar_bytes))
def test_client_parsers_raise_only_client_errors(parse: Callable[[bytes], object], data: bytes) -> None:
    _returns_or_raises_ours(parse, data, ClientProtocolError)


@pytest.mark.parametrize("parse", SERVER_PARSERS)
@given(
    data=st.one_of(
        st.binary(max_size=80),
        grammar_bytes,
        st.tuples(st.sampled_from([b"227 ", b"229 ", b"227 (", b"229 (|||"]), grammar_bytes).map(b"".join),
    )
)
def test_server_parsers_raise_only_server_errors(parse: Callable[[bytes], object], data: bytes) -> None:
    _returns_or_raises_ours(parse, data, ServerProtocolError)


@given(st.tuples(st.just(b"227 "), grammar_bytes).map(b"".join))
def test_find_227_span_is_a_port_argument(line: bytes) -> None:
    try:
        public, start, end = find_227(line)
    except ServerProtocolError:
        return
    assert parse_port(line[start:end]) == public
    assert 1 <= public.port <= 65535
