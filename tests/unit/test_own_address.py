"""The gateway's own address toward the server never reaches the client: vsftpd's STAT names its peer, which
through the gateway is the gateway's internal address; the client reads its own address there, as directly."""

from __future__ import annotations

from ipaddress import ip_address

from corerig import CLIENT, SERVER, passive_connected, to_client

from alg.ftp.addresses import HostPort
from alg.ftp.control import ControlChannel
from alg.ftp.ownaddress import address_pattern, hide_own_address

SERVER_SIDE = HostPort(ip_address("198.51.100.1"), 41000)  # the gateway's end of the control connection upstream

# vsftpd 3.0's STAT, as it answers through the gateway (tests/integration/test_reply_scan.py).
VSFTPD_STAT = (
    b"211-FTP server status:\r\n"
    b"     Connected to %s\r\n"
    b"     Logged in as ftp\r\n"
    b"     TYPE: ASCII\r\n"
    b"     No session bandwidth limit\r\n"
    b"     Session timeout in seconds is 300\r\n"
    b"     Control connection is plain text\r\n"
    b"     Data connections will be plain text\r\n"
    b"     At session startup, client count was 1\r\n"
    b"     vsFTPd 3.0.3 - secure, fast, stable\r\n"
    b"211 End of status\r\n"
)


def feed(ch: ControlChannel, data: bytes) -> bytes:
    """The server's bytes one at a time, as the worst network would deliver them; what the client gets."""
    return b"".join(to_client(ch.server_data(bytes([byte]))) for byte in data)


def logged_in(server_side: HostPort | None = SERVER_SIDE) -> ControlChannel:
    ch = ControlChannel(CLIENT, SERVER, server_side=server_side)
    ch.server_data(b"220 (vsFTPd 3.0.3)\r\n")
    for line, answer in ((b"USER ftp\r\n", b"331 p\r\n"), (b"PASS x\r\n", b"230 ok\r\n")):
        ch.client_data(line)
        ch.server_data(answer)
    return ch


def test_stat_names_the_client_where_the_server_named_the_gateway() -> None:
    ch = logged_in()
    ch.client_data(b"STAT\r\n")
    assert feed(ch, VSFTPD_STAT % b"198.51.100.1") == VSFTPD_STAT % b"203.0.113.10"
    ch.client_data(b"NOOP\r\n")
    assert feed(ch, b"200 NOOP ok.\r\n") == b"200 NOOP ok.\r\n"


def test_stat_during_a_download_is_rewritten_too() -> None:
    ch = logged_in()
    passive_connected(ch)
    ch.client_data(b"RETR big.bin\r\n")
    assert feed(ch, b"150 Here it comes.\r\n") == b"150 Here it comes.\r\n"
    ch.client_data(b"STAT\r\n")
    assert feed(ch, VSFTPD_STAT % b"198.51.100.1") == VSFTPD_STAT % b"203.0.113.10"


def test_other_replies_and_stat_with_an_argument_pass_as_they_are() -> None:
    ch = logged_in()
    listing = b"213-Status follows:\r\n-rw-r--r--  1 ftp ftp 5 Jan 01 00:00 198.51.100.1\r\n213 End of status\r\n"
    ch.client_data(b"STAT .\r\n")
    assert feed(ch, listing) == listing  # a file's name, not the connection's status
    ch.client_data(b"SYST\r\n")
    assert feed(ch, b"215 UNIX 198.51.100.1\r\n") == b"215 UNIX 198.51.100.1\r\n"


def test_without_the_gateways_address_nothing_is_rewritten() -> None:
    ch = logged_in(server_side=None)
    ch.client_data(b"STAT\r\n")
    assert feed(ch, VSFTPD_STAT % b"198.51.100.1") == VSFTPD_STAT % b"198.51.100.1"


def test_only_a_whole_address_is_replaced() -> None:
    ours = address_pattern(ip_address("198.51.100.1"))
    client = ip_address("203.0.113.10")
    for line, expected in (
        (b"Connected to 198.51.100.1\r\n", b"Connected to 203.0.113.10\r\n"),
        (b"Connected to ::ffff:198.51.100.1\r\n", b"Connected to 203.0.113.10\r\n"),
        (b"from 198.51.100.1:41000 and (198.51.100.1)\r\n", b"from 203.0.113.10:41000 and (203.0.113.10)\r\n"),
        (b"server 198.51.100.10, 198.51.100.11, 1198.51.100.1, 198.51.100.1.5\r\n", None),
    ):
        assert hide_own_address(line, ours, client) == (expected or line)
    six = address_pattern(ip_address("2001:db8::1"))
    assert hide_own_address(b"Connected to 2001:DB8::1\r\n", six, client) == b"Connected to 203.0.113.10\r\n"
    assert hide_own_address(b"Connected to 2001:db8::10\r\n", six, client) == b"Connected to 2001:db8::10\r\n"
