"""Framing, commands and reply lines: table tests and chunking properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from alg.ftp.wire import LineFramer, Overlong, parse_command, parse_reply_line, reply, strip_telnet


def feed_all(framer: LineFramer, chunks: list[bytes]) -> list[bytes | Overlong]:
    out: list[bytes | Overlong] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def test_crlf_and_bare_lf_lines_come_out_whole() -> None:
    framer = LineFramer(100)
    assert framer.feed(b"USER anonymous\r\nPASS x\nSY") == [b"USER anonymous\r\n", b"PASS x\n"]
    assert framer.feed(b"ST\r\n") == [b"SYST\r\n"]
    assert framer.pending == 0


def test_a_command_split_byte_by_byte_is_one_line() -> None:
    framer = LineFramer(100)
    line = b"RETR /pub/file.bin\r\n"
    assert feed_all(framer, [bytes([b]) for b in line]) == [line]


def test_overlong_line_is_reported_once_and_framing_resumes() -> None:
    framer = LineFramer(16)
    out = feed_all(framer, [b"A" * 10, b"B" * 10, b"C" * 10 + b"\r\nNOOP\r\n"])
    assert out == [Overlong(32), b"NOOP\r\n"]


def test_a_line_of_exactly_the_limit_passes_and_one_more_byte_does_not() -> None:
    assert LineFramer(8).feed(b"NOOP12\r\n") == [b"NOOP12\r\n"]
    assert LineFramer(8).feed(b"NOOP123\r\n") == [Overlong(9)]


@given(st.binary(max_size=400), st.lists(st.integers(min_value=1, max_value=50), max_size=30))
def test_framing_does_not_depend_on_chunking(stream: bytes, cuts: list[int]) -> None:
    whole = LineFramer(64).feed(stream)
    chunks, position = [], 0
    for cut in cuts:
        chunks.append(stream[position : position + cut])
        position += cut
    chunks.append(stream[position:])
    assert feed_all(LineFramer(64), chunks) == whole


@given(st.binary(max_size=2000))
def test_framer_memory_is_bounded(stream: bytes) -> None:
    framer = LineFramer(64)
    framer.feed(stream)
    assert len(framer._buffer) <= 64


def test_telnet_abort_sequence_is_kept_in_the_line_and_ignored_by_the_parser() -> None:
    line = b"\xff\xf4\xff\xf2ABOR\r\n"  # IAC IP IAC DM ABOR (RFC 959 4.1.3)
    assert LineFramer(100).feed(line) == [line]
    command = parse_command(line)
    assert command is not None and command.verb == "ABOR" and command.raw == line


def test_strip_telnet_keeps_escaped_ff_and_drops_option_negotiation() -> None:
    assert strip_telnet(b"RETR a\xff\xffb\r\n") == b"RETR a\xffb\r\n"
    assert strip_telnet(b"\xff\xfb\x01NOOP\r\n") == b"NOOP\r\n"


def test_commands_are_parsed_case_insensitively_with_their_argument() -> None:
    command = parse_command(b"retr my file.txt\r\n")
    assert command is not None
    assert (command.verb, command.argument) == ("RETR", b"my file.txt")
    assert parse_command(b"PASV\n") is not None
    assert parse_command(b"\r\n") is None
    assert parse_command(b"R\xc3\xa9TR x\r\n") is None


def test_reply_lines() -> None:
    assert parse_reply_line(b"220 Welcome\r\n").code == 220
    first = parse_reply_line(b"211-Features:\r\n")
    assert (first.code, first.more) == (211, True)
    assert parse_reply_line(b" MDTM\r\n").code is None
    assert parse_reply_line(b"600 nope\r\n").code is None


def test_our_replies_cannot_carry_a_line_break() -> None:
    assert reply(500, "bad\r\nRETR x") == b"500 bad  RETR x\r\n"
