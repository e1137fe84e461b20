"""The protocol core's test bench, shared by the tests that feed a ControlChannel bytes and read its actions:
the addresses of the test plan (docs/architecture.md) and what each side is sent."""

from __future__ import annotations

from ipaddress import ip_address

from alg.ftp.addresses import HostPort
from alg.ftp.control import Action, ControlChannel, ListenForClient, SendToClient, SendToServer

CLIENT = HostPort(ip_address("203.0.113.10"), 40000)  # the control client, as the gateway sees it
SERVER = HostPort(ip_address("198.51.100.10"), 21)  # the upstream FTP server
PUBLIC = HostPort(ip_address("203.0.113.1"), 50000)  # a passive endpoint the gateway announces to the client


def to_client(actions: list[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendToClient))


def to_server(actions: list[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendToServer))


def server_bytewise(ch: ControlChannel, data: bytes) -> list[Action]:
    """The server's bytes one at a time, as the worst network would deliver them."""
    return [action for byte in data for action in ch.server_data(bytes([byte]))]


def passive_connected(ch: ControlChannel, public: HostPort = PUBLIC) -> int:
    """PASV, the server's 227, the endpoint announced as `public` and the client's data connection accepted: the
    ticket, for the transfer command a test sends next."""
    ch.client_data(b"PASV\r\n")
    listen = next(a for a in ch.server_data(b"227 ok (198,51,100,10,195,80)\r\n") if isinstance(a, ListenForClient))
    ch.data_endpoint_ready(listen.ticket, public)
    ch.data_connected(listen.ticket)
    return listen.ticket
