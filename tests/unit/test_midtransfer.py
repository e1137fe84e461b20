"""Replies to commands sent during a transfer reach the client as the server sends them, byte by byte.

The server replies are the real servers' own, recorded directly (tests/integration/test_conformance.py runs
the same exchanges against them): while a RETR/STOR runs, proftpd and pyftpdlib answer STAT (a multi-line 211),
NOOP, QUIT and REIN at once and send the transfer's 226 when the data is done; pure-ftpd answers them with
"500 Unknown command" at once; vsftpd reads no command until the transfer ends, then answers in order.
"""

from __future__ import annotations

import pytest
from corerig import CLIENT, SERVER, passive_connected, to_client
from corerig import server_bytewise as feed

from alg.ftp.control import CloseSession, ControlChannel, SendToServer
from alg.ftp.reasons import SessionOutcome

PROFTPD_STAT = (
    b"211-Status of 'ftp-alg test proftpd'\r\n"
    b" Connected from 198.51.100.10 (198.51.100.10)\r\n"
    b" Logged in as test\r\n"
    b" TYPE: BINARY, STRUcture: File, Mode: Stream\r\n"
    b" Total bytes transferred for session: 360448\r\n"
    b" Passive data transfer from from 198.51.100.10 port 38462\r\n"
    b" RETR /big.bin (33554432/360448)\r\n"
    b"211 End of status\r\n"
)
PYFTPDLIB_STAT = (
    b"211-FTP server status:\r\n"
    b" Connected to: 198.51.100.10:2123\r\n"
    b" Logged in as: test\r\n"
    b" TYPE: Binary; STRUcture: File; MODE: Stream\r\n"
    b" Data connection open:\r\n"
    b" Total bytes sent: 0\r\n"
    b" Total bytes received: 0\r\n"
    b" Transfer elapsed time: 6.070100005217682e-05 secs\r\n"
    b"211 End of status.\r\n"
)
VSFTPD_STAT = (
    b"211-FTP server status:\r\n"
    b"     Connected to 198.51.100.10\r\n"
    b"     Logged in as ftp\r\n"
    b"     TYPE: BINARY\r\n"
    b"     vsFTPd 3.0.3 - secure, fast, stable\r\n"
    b"211 End of status\r\n"
)
PURE_226 = b"226-File successfully transferred\r\n226 1.544 seconds (measured here), 20.72 Mbytes per second\r\n"
PURE_500 = b"500 Unknown command\r\n"


def under_way(verb: bytes, preliminary: bytes) -> tuple[ControlChannel, int]:
    """A session with a RETR or STOR running: data connected, the server's 1xx relayed."""
    ch = ControlChannel(CLIENT, SERVER)
    ch.server_data(b"220 hi\r\n")
    for line, answer in ((b"USER u\r\n", b"331 p\r\n"), (b"PASS p\r\n", b"230 ok\r\n"), (b"TYPE I\r\n", b"200 I\r\n")):
        ch.client_data(line)
        ch.server_data(answer)
    ticket = passive_connected(ch)
    assert SendToServer(verb) in ch.client_data(verb)
    assert to_client(feed(ch, preliminary)) == preliminary
    return ch, ticket


RETR = (b"RETR big.bin\r\n", b"150 Opening BINARY mode data connection for big.bin (33554432 bytes)\r\n")
STOR = (b"STOR up.bin\r\n", b"125 Data connection already open. Transfer starting.\r\n")

# (server, transfer, the command sent during it, the server's reply to it at once, the transfer's final reply)
AT_ONCE = [
    ("proftpd", RETR, b"STAT\r\n", PROFTPD_STAT, b"226 Transfer complete\r\n"),
    ("proftpd", STOR, b"STAT\r\n", PROFTPD_STAT, b"226 Transfer complete\r\n"),
    ("proftpd", RETR, b"NOOP\r\n", b"200 NOOP: data transfer in progress\r\n", b"226 Transfer complete\r\n"),
    ("proftpd", STOR, b"REIN\r\n", b"502 REIN command not implemented\r\n", b"226 Transfer complete\r\n"),
    ("pyftpdlib", STOR, b"STAT\r\n", PYFTPDLIB_STAT, b"226 Transfer complete.\r\n"),
    ("pyftpdlib", RETR, b"NOOP\r\n", b"200 I successfully did nothing'.\r\n", b"226 Transfer complete.\r\n"),
    ("pyftpdlib", RETR, b"REIN\r\n", b"230 Ready for new user.\r\n", b"226 Transfer complete.\r\n"),
    ("pure-ftpd", RETR, b"STAT\r\n", PURE_500, PURE_226),
    ("pure-ftpd", STOR, b"NOOP\r\n", PURE_500, PURE_226),
    ("pure-ftpd", RETR, b"REIN\r\n", PURE_500, PURE_226),
]


@pytest.mark.parametrize(
    ("server", "transfer", "command", "answer", "final"),
    AT_ONCE,
    ids=[f"{s}-{t[0][:4].decode()}-{c[:4].decode()}" for s, t, c, _, _ in AT_ONCE],
)
def test_a_reply_during_the_transfer_passes_at_once_and_the_transfer_reply_waits_for_its_data(
    server: str, transfer: tuple[bytes, bytes], command: bytes, answer: bytes, final: bytes
) -> None:
    ch, ticket = under_way(*transfer)
    assert SendToServer(command) in ch.client_data(command)
    assert to_client(feed(ch, answer)) == answer  # before the data ends
    assert to_client(feed(ch, final)) == b""  # the data has not drained yet: the 226 waits for it
    assert to_client(ch.data_finished(ticket)) == final
    ch.client_data(b"NOOP\r\n")
    assert to_client(feed(ch, b"200 ok\r\n")) == b"200 ok\r\n"  # the pairing did not shift
    assert ch.at_rest


def test_vsftpd_answers_after_the_transfer_and_the_order_is_kept() -> None:
    ch, ticket = under_way(*RETR)
    ch.client_data(b"STAT\r\n")
    assert to_client(ch.data_finished(ticket)) == b""
    assert (
        to_client(feed(ch, b"226 Transfer complete.\r\n" + VSFTPD_STAT)) == b"226 Transfer complete.\r\n" + VSFTPD_STAT
    )
    assert ch.at_rest


def test_vsftpd_226_before_the_data_drained_still_waits_and_the_stat_reply_behind_it_too() -> None:
    ch, ticket = under_way(*RETR)
    ch.client_data(b"NOOP\r\n")
    assert to_client(feed(ch, b"226 Transfer complete.\r\n200 NOOP ok.\r\n")) == b""
    assert to_client(ch.data_finished(ticket)) == b"226 Transfer complete.\r\n200 NOOP ok.\r\n"


def test_quit_during_an_upload_gets_221_at_once_then_226_and_no_421_of_ours() -> None:
    """pyftpdlib: 221 at once, the 226 once the upload ends, then it closes."""
    ch, ticket = under_way(*STOR)
    ch.client_data(b"QUIT\r\n")
    assert to_client(feed(ch, b"221 Goodbye.\r\n")) == b"221 Goodbye.\r\n"
    assert to_client(feed(ch, b"226 Transfer complete.\r\n")) == b""
    assert to_client(ch.data_finished(ticket)) == b"226 Transfer complete.\r\n"
    closing = ch.server_data(b"")
    assert to_client(closing) == b""
    assert CloseSession(SessionOutcome.SERVER_CLOSED, "the server closed the control connection") in closing


def test_quit_during_a_download_gets_221_and_the_servers_close_adds_nothing() -> None:
    """proftpd: 221 at once, then it closes control and data; directly the client sees no more than that."""
    ch, _ = under_way(*RETR)
    ch.client_data(b"QUIT\r\n")
    assert to_client(feed(ch, b"221 Goodbye.\r\n")) == b"221 Goodbye.\r\n"
    assert to_client(ch.server_data(b"")) == b""


def test_pure_ftpd_takes_quit_for_an_abort_426_then_a_multiline_226() -> None:
    ch, ticket = under_way(*RETR)
    ch.client_data(b"QUIT\r\n")
    replies = b"426 ABORT\r\n226-Transfer aborted\r\n226 1.506 seconds (measured here), 2.57 Mbytes per second\r\n"
    assert to_client(feed(ch, replies)) == replies
    assert to_client(ch.data_finished(ticket)) == b""
    assert ch.at_rest


def test_two_commands_during_the_transfer_are_answered_in_their_order() -> None:
    ch, ticket = under_way(*RETR)
    ch.client_data(b"STAT\r\nNOOP\r\n")
    answers = PROFTPD_STAT + b"200 NOOP: data transfer in progress\r\n"
    assert to_client(feed(ch, answers)) == answers
    assert to_client(feed(ch, b"226 Transfer complete\r\n")) == b""
    assert to_client(ch.data_finished(ticket)) == b"226 Transfer complete\r\n"


def test_a_failure_reply_during_the_transfer_is_still_the_transfers() -> None:
    """451/426 after the 150 end the transfer (RFC 959 5.4), even with a later command owed."""
    ch, ticket = under_way(*STOR)
    ch.client_data(b"NOOP\r\n")
    assert to_client(feed(ch, b"451 Failure writing to local file.\r\n")) == b"451 Failure writing to local file.\r\n"
    assert to_client(feed(ch, b"200 NOOP ok.\r\n")) == b"200 NOOP ok.\r\n"
    assert to_client(ch.data_finished(ticket)) == b""
    assert ch.at_rest


def test_a_command_pipelined_behind_a_refused_transfer_keeps_strict_order() -> None:
    """No 1xx yet: the RETR's own 550 comes first, whatever its code."""
    ch = ControlChannel(CLIENT, SERVER)
    ch.server_data(b"220 hi\r\n")
    ch.client_data(b"RETR nothing\r\nNOOP\r\n")
    replies = b"550 No such file.\r\n200 ok\r\n"
    assert to_client(feed(ch, replies)) == replies
    assert ch.at_rest


def test_the_server_closing_right_after_its_226_waits_for_the_data_then_the_226_then_the_close() -> None:
    """pyftpdlib, QUIT during a download: 221 at once, the 226 when it has written the data, then it closes;
    the gateway may still be relaying the data: the 226 and the close wait for it, and no 421 of ours follows."""
    ch, ticket = under_way(*RETR)
    ch.client_data(b"QUIT\r\n")
    assert to_client(feed(ch, b"221 Goodbye.\r\n226 Transfer complete.\r\n")) == b"221 Goodbye.\r\n"
    assert ch.server_data(b"") == []
    finished = ch.data_finished(ticket)
    assert to_client(finished) == b"226 Transfer complete.\r\n"
    assert finished[-1] == CloseSession(SessionOutcome.SERVER_CLOSED, "the server closed the control connection")
