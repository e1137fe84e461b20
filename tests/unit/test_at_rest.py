"""ControlChannel.at_rest, which graceful shutdown waits for before its 421: never while a reply is owed (the
banner, a command's answer, a transfer's 226), a client line is held, or a data endpoint is open."""

from __future__ import annotations

from test_control import PUBLIC, channel, logged_in

from alg.ftp.control import ListenForClient


def test_not_at_rest_until_the_banner() -> None:
    ch = channel()
    assert not ch.at_rest
    ch.server_data(b"220 ready\r\n")
    assert ch.at_rest


def test_a_command_waits_for_its_reply() -> None:
    ch = logged_in()
    assert ch.at_rest
    ch.client_data(b"NOOP\r\n")
    assert not ch.at_rest
    ch.server_data(b"200 ok\r\n")
    assert ch.at_rest


def test_a_transfer_is_at_rest_only_after_its_226_and_its_data() -> None:
    ch = logged_in()
    ch.client_data(b"PASV\r\n")
    actions = ch.server_data(b"227 Entering Passive Mode (198,51,100,10,195,80)\r\n")
    ticket = next(a.ticket for a in actions if isinstance(a, ListenForClient))
    assert not ch.at_rest  # the 227 is held for the endpoint
    ch.data_endpoint_ready(ticket, PUBLIC)
    assert not ch.at_rest  # an endpoint is open
    ch.client_data(b"RETR f\r\n")
    ch.data_connected(ticket)
    ch.server_data(b"150 here it comes\r\n")
    assert not ch.at_rest
    ch.data_finished(ticket)
    assert not ch.at_rest  # the data is done, the 226 not yet relayed
    ch.server_data(b"226 done\r\n")
    assert ch.at_rest
