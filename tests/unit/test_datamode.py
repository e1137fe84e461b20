"""upstream_data_mode: the client's data mode served by the other one toward the server, byte by byte (the lines
each side gets, in order, and what the session is told to open)."""

from __future__ import annotations

from ipaddress import ip_address

from corerig import CLIENT, PUBLIC, SERVER, to_client, to_server

from alg.ftp.addresses import HostPort
from alg.ftp.control import (
    ChannelSettings,
    CloseDataEndpoint,
    ConnectBoth,
    ControlChannel,
    ListenForBoth,
    ListenForClient,
    ListenForServer,
)

SERVER6 = HostPort(ip_address("2001:db8:51::10"), 21)
INTERNAL = HostPort(ip_address("198.51.100.1"), 40123)
INTERNAL6 = HostPort(ip_address("2001:db8:51::1"), 40123)


def logged_in(mode: str, server: HostPort = SERVER) -> ControlChannel:
    ch = ControlChannel(CLIENT, server, ChannelSettings(upstream_data_mode=mode))
    ch.server_data(b"220 ready\r\n")
    ch.client_data(b"USER ftp\r\n")
    ch.server_data(b"230 ok\r\n")
    return ch


def test_follow_sends_the_clients_own_verb() -> None:
    ch = logged_in("follow")
    assert to_server(ch.client_data(b"PASV\r\n")) == b"PASV\r\n"
    port = logged_in("follow").client_data(b"PORT 203,0,113,10,200,10\r\n")
    assert any(isinstance(a, ListenForServer) for a in port)


def test_active_serves_a_clients_pasv_with_port_toward_the_server() -> None:
    ch = logged_in("active")
    opened = ch.client_data(b"PASV\r\nRETR f\r\n")
    listen = [a for a in opened if isinstance(a, ListenForBoth)]
    assert len(listen) == 1 and to_server(opened) == b"" and to_client(opened) == b""  # RETR waits behind it
    ready = ch.data_endpoint_ready(listen[0].ticket, PUBLIC, INTERNAL)
    assert to_server(ready) == b"PORT 198,51,100,1,156,187\r\nRETR f\r\n" and to_client(ready) == b""
    answered = ch.server_data(b"200 PORT command successful\r\n150 here\r\n")
    assert to_client(answered) == b"227 Entering Passive Mode (203,0,113,1,195,80).\r\n150 here\r\n"
    done = ch.server_data(b"226 done\r\n")
    assert to_client(done) == b""  # held until the data has drained, as in follow
    assert to_client(ch.data_finished(listen[0].ticket)) == b"226 done\r\n"


def test_active_answers_an_epsv_with_a_229_and_tells_an_ipv6_server_eprt() -> None:
    ch = logged_in("active", SERVER6)
    listen = next(a for a in ch.client_data(b"EPSV\r\n") if isinstance(a, ListenForBoth))
    ready = ch.data_endpoint_ready(listen.ticket, PUBLIC, INTERNAL6)
    assert to_server(ready) == b"EPRT |2|2001:db8:51::1|40123|\r\n"
    assert to_client(ch.server_data(b"200 EPRT ok\r\n")) == b"229 Entering Extended Passive Mode (|||50000|)\r\n"


def test_active_a_server_refusing_port_gets_the_client_a_425_and_closes_the_endpoints() -> None:
    ch = logged_in("active")
    listen = next(a for a in ch.client_data(b"PASV\r\n") if isinstance(a, ListenForBoth))
    ch.data_endpoint_ready(listen.ticket, PUBLIC, INTERNAL)
    refused = ch.server_data(b"500 PORT not allowed\r\n")
    assert to_client(refused) == b"425 Can't open data connection: the FTP server refused PORT (500).\r\n"
    assert CloseDataEndpoint(listen.ticket) in refused


def test_active_epsv_all_is_answered_by_the_gateway_not_the_server() -> None:
    ch = logged_in("active")
    out = ch.client_data(b"EPSV ALL\r\n")
    assert to_server(out) == b"" and to_client(out) == b"200 EPSV ALL command successful.\r\n"


def test_passive_serves_a_clients_port_with_pasv_toward_the_server() -> None:
    ch = logged_in("passive")
    sent = ch.client_data(b"PORT 203,0,113,10,200,10\r\nRETR f\r\n")
    assert to_server(sent) == b"PASV\r\n" and to_client(sent) == b""
    opened = ch.server_data(b"227 Entering Passive Mode (10,0,0,7,117,48).\r\n")
    connect = [a for a in opened if isinstance(a, ConnectBoth)]
    # The server's own idea of its address is not followed (passive_target upstream); the client's PORT is.
    assert connect == [ConnectBoth(connect[0].ticket, HostPort(SERVER.ip, 30000), HostPort(CLIENT.ip, 51210))]
    assert to_client(opened) == b"" and to_server(opened) == b""
    ready = ch.data_endpoint_ready(connect[0].ticket, HostPort(SERVER.ip, 30000))
    assert to_client(ready) == b"200 PORT command successful.\r\n" and to_server(ready) == b"RETR f\r\n"
    assert to_client(ch.server_data(b"150 here\r\n")) == b"150 here\r\n"


def test_passive_uses_epsv_toward_an_ipv6_server_and_answers_eprt_with_200() -> None:
    ch = logged_in("passive", SERVER6)
    assert to_server(ch.client_data(b"EPRT |1|203.0.113.10|51210|\r\n")) == b"EPSV\r\n"
    connect = next(a for a in ch.server_data(b"229 ok (|||30000|)\r\n") if isinstance(a, ConnectBoth))
    assert connect.server == HostPort(SERVER6.ip, 30000) and connect.client == HostPort(CLIENT.ip, 51210)
    assert to_client(ch.data_endpoint_ready(connect.ticket, connect.server)) == b"200 EPRT command successful.\r\n"


def test_passive_a_server_refusing_pasv_gets_the_client_a_425_and_lets_its_next_command_go() -> None:
    ch = logged_in("passive")
    ch.client_data(b"PORT 203,0,113,10,200,10\r\nNOOP\r\n")
    out = ch.server_data(b"500 PASV not allowed\r\n")
    assert to_client(out).startswith(b"425 Can't open data connection: the FTP server's passive reply")
    assert to_server(out) == b"NOOP\r\n"
    assert not any(isinstance(a, ConnectBoth) for a in out)


def test_passive_a_server_leg_that_fails_gets_the_client_a_425_in_the_ports_place() -> None:
    ch = logged_in("passive")
    ch.client_data(b"PORT 203,0,113,10,200,10\r\nNOOP\r\n")
    connect = next(a for a in ch.server_data(b"227 (198,51,100,10,117,48)\r\n") if isinstance(a, ConnectBoth))
    out = ch.data_endpoint_failed(connect.ticket, "the FTP server's data port did not answer")
    assert to_client(out) == b"425 Can't open data connection: the FTP server's data port did not answer.\r\n"
    assert to_server(out) == b"NOOP\r\n"


def test_passive_still_refuses_a_port_naming_a_third_party() -> None:
    ch = logged_in("passive")
    out = ch.client_data(b"PORT 198,51,100,99,200,10\r\n")
    assert to_client(out).startswith(b"504 ") and to_server(out) == b""


def test_follow_passive_client_is_unchanged_with_passive_mode() -> None:
    ch = logged_in("passive")
    assert to_server(ch.client_data(b"PASV\r\n")) == b"PASV\r\n"
    assert any(isinstance(a, ListenForClient) for a in ch.server_data(b"227 (198,51,100,10,117,48)\r\n"))


def test_active_endpoints_that_cannot_open_get_the_clients_pasv_a_425_and_let_its_next_command_go() -> None:
    ch = logged_in("active")
    listen = next(a for a in ch.client_data(b"PASV\r\nNOOP\r\n") if isinstance(a, ListenForBoth))
    out = ch.data_endpoint_failed(listen.ticket, "no free data port in the range")
    assert to_client(out) == b"425 Can't open data connection: no free data port in the range.\r\n"
    assert to_server(out) == b"NOOP\r\n"


def test_active_an_endpoint_that_breaks_before_the_servers_200_gets_the_client_a_425() -> None:
    ch = logged_in("active")
    listen = next(a for a in ch.client_data(b"PASV\r\n") if isinstance(a, ListenForBoth))
    ch.data_endpoint_ready(listen.ticket, PUBLIC, INTERNAL)
    assert to_client(ch.data_endpoint_failed(listen.ticket, "reset")) == b""  # the PASV's reply is still owed
    out = ch.server_data(b"200 PORT command successful\r\n")
    expected = b"425 Can't open data connection: the data endpoint closed before the FTP server answered.\r\n"
    assert to_client(out) == expected
