"""A transfer whose data connection broke before any byte moved is never reported to the client as complete,
whatever the server says (found by the leak test: the server had written a whole file into the gateway's
buffers and answered 226 while the gateway could not reach the client's PORT address)."""

from __future__ import annotations

from ipaddress import ip_address

from corerig import CLIENT, PUBLIC, SERVER, to_client

from alg.ftp.addresses import HostPort
from alg.ftp.control import ControlChannel, ListenForClient, ListenForServer

INTERNAL = HostPort(ip_address("198.51.100.1"), 41000)


def active_transfer() -> tuple[ControlChannel, int]:
    ch = ControlChannel(CLIENT, SERVER)
    ch.server_data(b"220 ready\r\n")
    listen = [a for a in ch.client_data(b"PORT 203,0,113,10,195,80\r\n") if isinstance(a, ListenForServer)]
    ticket = listen[0].ticket
    ch.data_endpoint_ready(ticket, INTERNAL)
    assert to_client(ch.server_data(b"200 PORT ok\r\n")) == b"200 PORT ok\r\n"
    ch.client_data(b"RETR f\r\n")
    assert to_client(ch.server_data(b"150 here\r\n")) == b"150 here\r\n"
    ch.data_connected(ticket)
    return ch, ticket


def test_a_226_after_the_data_connection_failed_becomes_426() -> None:
    ch, ticket = active_transfer()
    assert ch.data_endpoint_failed(ticket, "the client's port refused") == []
    answer = to_client(ch.server_data(b"226 Transfer complete.\r\n"))
    assert answer == b"426 Connection closed; transfer aborted: the client's port refused.\r\n"
    assert to_client(ch.client_data(b"NOOP\r\n") + ch.server_data(b"200 ok\r\n")) == b"200 ok\r\n"


def test_a_held_226_becomes_426_when_the_data_connection_fails() -> None:
    ch, ticket = active_transfer()
    assert to_client(ch.server_data(b"226 Transfer complete.\r\n")) == b""  # held for the data
    answer = to_client(ch.data_endpoint_failed(ticket, "the client's port refused"))
    assert answer.startswith(b"426 Connection closed; transfer aborted")


def test_the_servers_own_failure_reply_passes_unchanged() -> None:
    ch, ticket = active_transfer()
    ch.data_endpoint_failed(ticket, "broken")
    assert to_client(ch.server_data(b"425 Failed to establish connection.\r\n")) == (
        b"425 Failed to establish connection.\r\n"
    )
    assert ch._failed == {}


def test_a_failed_endpoint_nobody_used_leaves_nothing_behind() -> None:
    ch = ControlChannel(CLIENT, SERVER)
    ch.server_data(b"220 ready\r\n")
    ch.client_data(b"PASV\r\n")
    listen = [a for a in ch.server_data(b"227 (198,51,100,10,1,2)\r\n") if isinstance(a, ListenForClient)]
    ch.data_endpoint_ready(listen[0].ticket, PUBLIC)
    assert ch.data_endpoint_failed(listen[0].ticket, "nobody connected") == []
    assert ch._failed == {} and ch.open_tickets == frozenset()
    ch.client_data(b"RETR f\r\n")
    assert to_client(ch.server_data(b"425 Use PORT or PASV first.\r\n")) == b"425 Use PORT or PASV first.\r\n"
