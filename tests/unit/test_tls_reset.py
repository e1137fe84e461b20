"""TLS state across REIN and a second USER (issue 25): the core forgets what the server forgets and gives the server
back what the gateway promised (PBSZ 0, PROT) before the next data connection. Bytes in, actions out.

Measured directly over TLS: vsftpd, proftpd and pure-ftpd do not implement REIN (502/500) and refuse a second
login (530/501, proftpd's 230 keeps the session as it was), so their PROT stays; pyftpdlib answers REIN with 230
and a second USER with 331, and forgets PBSZ and PROT on both.
"""

from __future__ import annotations

from corerig import CLIENT, PUBLIC, SERVER, to_client, to_server
from corerig import server_bytewise as feed

from alg.ftp.control import (
    ChannelSettings,
    CloseSession,
    ControlChannel,
    ListenForClient,
)
from alg.ftp.reasons import SessionOutcome
from alg.ftp.tls import TlsPolicy

PASV_227 = b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n"


def logged_in(upstream_data: str) -> ControlChannel:
    """A TLS client logged in through a TLS upstream; the gateway sent its own PBSZ 0 (and PROT P when private)
    before the session started (alg.ftp.tls.UpstreamTls)."""
    settings = ChannelSettings(tls=TlsPolicy("allow", "follow", upstream_data))
    private = upstream_data == "private"
    ch = ControlChannel(CLIENT, SERVER, settings, server_secured=True, server_private=private)
    ch.server_data(b"220 ready\r\n")
    ch.client_data(b"AUTH TLS\r\n")
    ch.client_tls_started()
    assert to_client(ch.client_data(b"PBSZ 0\r\n")) == b"200 PBSZ=0\r\n"
    ch.client_data(b"PROT P\r\n")
    if upstream_data == "follow":
        ch.server_data(b"200 Protection set to Private\r\n")
    assert ch.tls.client_private and ch.tls.server_private
    for line, answer in ((b"USER u\r\n", b"331 p\r\n"), (b"PASS p\r\n", b"230 ok\r\n")):
        ch.client_data(line)
        ch.server_data(answer)
    assert ch.logged_in
    return ch


def pasv(ch: ControlChannel, server_before: bytes, expect_sent: bytes) -> ListenForClient:
    """The client's PASV: what the server gets, and the data endpoint once the server's replies are in."""
    assert to_server(ch.client_data(b"PASV\r\n")) == expect_sent
    actions = feed(ch, server_before + PASV_227)
    assert to_client(actions) == b""  # our own commands' replies are never the client's; the 227 waits
    listen = next(a for a in actions if isinstance(a, ListenForClient))
    assert to_client(ch.data_endpoint_ready(listen.ticket, PUBLIC)).startswith(b"227 ")
    return listen


def test_rein_accepted_resets_prot_and_the_gateway_protects_the_server_leg_again_before_the_next_pasv() -> None:
    ch = logged_in("private")
    ch.client_data(b"REIN\r\n")
    assert to_client(feed(ch, b"230 Ready for new user.\r\n")) == b"230 Ready for new user.\r\n"
    assert not ch.logged_in and not ch.tls.client_private  # the client starts over, as with the server itself
    for line, answer in ((b"USER u\r\n", b"331 p\r\n"), (b"PASS p\r\n", b"230 ok\r\n")):
        ch.client_data(line)
        ch.server_data(answer)
    listen = pasv(ch, b"200 PBSZ=0 successful.\r\n200 Protection set to Private\r\n", b"PBSZ 0\r\nPROT P\r\nPASV\r\n")
    assert listen.server_tls and not listen.client_tls
    # Once is enough: the next PASV goes alone.
    ch.client_data(b"ABOR\r\n")
    feed(ch, b"225 No transfer to abort.\r\n")
    assert to_server(ch.client_data(b"PASV\r\n")) == b"PASV\r\n"


def test_a_second_user_makes_the_gateway_send_pbsz_and_prot_again_and_keeps_the_clients_level() -> None:
    ch = logged_in("private")
    ch.client_data(b"USER u\r\n")
    assert to_client(feed(ch, b"331 Previous account information was flushed, send password.\r\n")).startswith(b"331")
    ch.client_data(b"PASS p\r\n")
    ch.server_data(b"230 ok\r\n")
    assert ch.tls.client_private  # a server may keep its PROT on a new USER (proftpd): the client's stays
    listen = pasv(ch, b"200 PBSZ=0 successful.\r\n200 Protection set to Private\r\n", b"PBSZ 0\r\nPROT P\r\nPASV\r\n")
    assert listen.server_tls and listen.client_tls


def test_rein_refused_changes_nothing() -> None:
    """vsftpd and proftpd: 502; pure-ftpd: 500. Their PBSZ/PROT stay as they were."""
    ch = logged_in("private")
    ch.client_data(b"REIN\r\n")
    assert to_client(feed(ch, b"502 REIN not implemented.\r\n")) == b"502 REIN not implemented.\r\n"
    assert ch.logged_in and ch.tls.client_private
    pasv(ch, b"", b"PASV\r\n")


def test_follow_after_rein_sends_pbsz_before_the_clients_prot() -> None:
    """Before: the server got the client's PROT P without a PBSZ and answered 503."""
    ch = logged_in("follow")
    ch.client_data(b"REIN\r\n")
    feed(ch, b"230 Ready for new user.\r\n")
    assert not ch.tls.client_private and not ch.tls.server_private
    assert to_client(ch.client_data(b"PBSZ 0\r\n")) == b"200 PBSZ=0\r\n"
    assert to_server(ch.client_data(b"PROT P\r\n")) == b"PBSZ 0\r\nPROT P\r\n"
    assert to_client(feed(ch, b"200 PBSZ=0 successful.\r\n200 Protection set to Private\r\n")) == (
        b"200 Protection set to Private\r\n"
    )
    assert ch.tls.client_private and ch.tls.server_private


def test_rein_during_a_transfer_resets_at_once_and_the_226_still_follows() -> None:
    ch = logged_in("private")
    listen = pasv(ch, b"", b"PASV\r\n")
    ch.data_connected(listen.ticket)
    ch.client_data(b"RETR f\r\n")
    ch.server_data(b"150 go\r\n")
    ch.client_data(b"REIN\r\n")
    assert to_client(feed(ch, b"230 Ready for new user.\r\n")) == b"230 Ready for new user.\r\n"
    assert to_client(feed(ch, b"226 Transfer complete.\r\n")) == b""
    assert to_client(ch.data_finished(listen.ticket)) == b"226 Transfer complete.\r\n"
    assert not ch.logged_in


def test_our_prot_refused_after_rein_closes_the_session_rather_than_send_data_in_clear() -> None:
    ch = logged_in("private")
    ch.client_data(b"REIN\r\n")
    feed(ch, b"230 Ready for new user.\r\n")
    assert to_server(ch.client_data(b"PASV\r\n")) == b"PBSZ 0\r\nPROT P\r\nPASV\r\n"
    out = feed(ch, b"200 PBSZ=0 successful.\r\n534 no\r\n")
    assert to_client(out).startswith(b"421 ")
    assert any(isinstance(a, CloseSession) and a.reason is SessionOutcome.TLS_FAILED for a in out)
