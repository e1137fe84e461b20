"""Translation between PASV/PORT and EPSV/EPRT, and ABOR's Telnet synch, byte by byte through the control channel."""

from __future__ import annotations

from ipaddress import ip_address

from corerig import passive_connected, to_client, to_server
from hypothesis import given
from hypothesis import strategies as st

from alg.ftp.addresses import HostPort
from alg.ftp.control import (
    Action,
    CloseDataEndpoint,
    ControlChannel,
    ListenForClient,
    ListenForServer,
    Refused,
    SendToServer,
    Translated,
)
from alg.ftp.families import ServerFeatures
from alg.ftp.wire import ABORT_BEFORE_URGENT, ABORT_COMMAND, ABORT_URGENT, LineFramer, TelnetFilter

CLIENT4 = HostPort(ip_address("203.0.113.10"), 40000)
CLIENT6 = HostPort(ip_address("2001:db8:1::10"), 40000)
SERVER4 = HostPort(ip_address("198.51.100.10"), 21)
SERVER6 = HostPort(ip_address("2001:db8:2::10"), 21)
PUBLIC4 = HostPort(ip_address("203.0.113.1"), 50000)
PUBLIC6 = HostPort(ip_address("2001:db8:1::1"), 50000)
INTERNAL4 = HostPort(ip_address("198.51.100.1"), 40123)
INTERNAL6 = HostPort(ip_address("2001:db8:2::1"), 40123)


def translations(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.client_verb, a.server_verb) for a in actions if isinstance(a, Translated)]


def logged_in(client: HostPort, server: HostPort) -> ControlChannel:
    ch = ControlChannel(client, server)
    ch.server_data(b"220 hi\r\n")
    for line, answer in ((b"USER u\r\n", b"331 p\r\n"), (b"PASS p\r\n", b"230 ok\r\n")):
        ch.client_data(line)
        ch.server_data(answer)
    assert ch.logged_in
    return ch


# ---- the decision table ----------------------------------------------------------------------------------


def test_the_server_gets_the_clients_verb_when_it_can_take_it() -> None:
    v4 = ServerFeatures(server_ipv6=False)
    assert [v4.verb_for_server(v) for v in ("PASV", "EPSV", "PORT", "EPRT")] == ["PASV", "EPSV", "PORT", "EPRT"]
    v6 = ServerFeatures(server_ipv6=True)
    assert [v6.verb_for_server(v) for v in ("PASV", "EPSV", "PORT", "EPRT")] == ["EPSV", "EPSV", "EPRT", "EPRT"]


def test_a_refusal_is_learned_once_and_only_for_an_ipv4_server() -> None:
    v4 = ServerFeatures(server_ipv6=False)
    assert v4.may_refuse("EPSV") and not v4.may_refuse("PASV")
    assert v4.learn_refusal("EPSV", 501) is None  # the argument, not the verb
    assert v4.learn_refusal("EPSV", 500) == "PASV"
    assert v4.verb_for_server("EPSV") == "PASV" and v4.verb_for_server("EPRT") == "EPRT"
    assert v4.learn_refusal("EPSV", 500) is None  # known now: passed on
    assert v4.learn_refusal("EPRT", 502) == "PORT"
    v6 = ServerFeatures(server_ipv6=True)
    assert v6.learn_refusal("EPSV", 500) is None  # nothing else can carry an IPv6 address


def test_feat_decides_before_any_probe() -> None:
    features = ServerFeatures(server_ipv6=False)
    for line in (b"211-Features:\r\n", b" MDTM\r\n", b" EPRT\r\n", b" SIZE\r\n"):
        features.feat_line(line)
    features.feat_done(211)
    assert features.known == {"EPSV": False, "EPRT": True}
    silent = ServerFeatures(server_ipv6=False)
    silent.feat_line(b"500 FEAT not understood\r\n")
    silent.feat_done(500)
    assert silent.known == {}


# ---- passive ---------------------------------------------------------------------------------------------


def test_epsv_from_an_ipv6_client_becomes_pasv_after_the_servers_500_and_the_client_gets_a_229() -> None:
    ch = logged_in(CLIENT6, SERVER4)
    assert to_server(ch.client_data(b"EPSV\r\nLIST\r\n")) == b"EPSV\r\n"  # LIST waits for the probe
    assert not ch.wants_client_data
    retried = ch.server_data(b"500 Unknown command.\r\n")
    assert to_server(retried) == b"PASV\r\n" and to_client(retried) == b""
    assert translations(retried) == [("EPSV", "PASV")]
    asked = ch.server_data(b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n")
    listen = next(a for a in asked if isinstance(a, ListenForClient))
    assert listen.then_connect == HostPort(SERVER4.ip, 50000)
    ready = ch.data_endpoint_ready(listen.ticket, PUBLIC6)
    assert to_client(ready) == b"229 Entering Extended Passive Mode (|||50000|)\r\n"
    assert to_server(asked + ready) == b"LIST\r\n"  # held until the passive reply, as without translation
    # Remembered: the next EPSV goes as PASV at once, without a probe.
    again = ch.client_data(b"EPSV\r\n")
    assert to_server(again) == b"PASV\r\n" and translations(again) == [("EPSV", "PASV")]


def test_pasv_from_an_ipv4_client_to_an_ipv6_server_is_answered_with_a_227() -> None:
    ch = logged_in(CLIENT4, SERVER6)
    sent = ch.client_data(b"PASV\r\n")
    assert to_server(sent) == b"EPSV\r\n" and translations(sent) == [("PASV", "EPSV")]
    asked = ch.server_data(b"229 Entering Extended Passive Mode (|||6446|)\r\n")
    listen = next(a for a in asked if isinstance(a, ListenForClient))
    assert listen.then_connect == HostPort(SERVER6.ip, 6446)
    ready = ch.data_endpoint_ready(listen.ticket, PUBLIC4)
    assert to_client(ready) == b"227 Entering Passive Mode (203,0,113,1,195,80).\r\n"


def test_a_227_that_cannot_name_the_public_endpoint_is_refused_never_a_wrong_address() -> None:
    ch = logged_in(CLIENT4, SERVER6)
    ch.client_data(b"PASV\r\n")
    asked = ch.server_data(b"229 Entering Extended Passive Mode (|||6446|)\r\n")
    listen = next(a for a in asked if isinstance(a, ListenForClient))
    answer = to_client(ch.data_endpoint_ready(listen.ticket, PUBLIC6))
    assert answer.startswith(b"425 ") and b"227" not in answer


def test_pasv_from_an_ipv6_client_gets_425() -> None:
    ch = logged_in(CLIENT6, SERVER4)
    actions = ch.client_data(b"PASV\r\n")
    assert to_server(actions) == b"" and to_client(actions).startswith(b"425 ")


def test_a_500_to_epsv_from_an_ipv6_server_is_passed_on() -> None:
    ch = logged_in(CLIENT6, SERVER6)
    ch.client_data(b"EPSV\r\n")
    actions = ch.server_data(b"500 no\r\n")
    assert to_client(actions) == b"500 no\r\n" and to_server(actions) == b""


# ---- active ----------------------------------------------------------------------------------------------


def test_eprt_from_an_ipv6_client_becomes_port_after_the_servers_502() -> None:
    ch = logged_in(CLIENT6, SERVER4)
    listen = next(a for a in ch.client_data(b"EPRT |2|2001:db8:1::10|50123|\r\n") if isinstance(a, ListenForServer))
    assert listen.then_connect == HostPort(CLIENT6.ip, 50123)
    first = ch.data_endpoint_ready(listen.ticket, INTERNAL4)
    assert to_server(first) == b"EPRT |1|198.51.100.1|40123|\r\n"
    retried = ch.server_data(b"502 EPRT not implemented.\r\n")
    assert to_server(retried) == b"PORT 198,51,100,1,156,187\r\n" and to_client(retried) == b""
    assert translations(retried) == [("EPRT", "PORT")]
    assert to_client(ch.server_data(b"200 PORT command successful.\r\n")) == b"200 PORT command successful.\r\n"
    assert ch.open_tickets == {listen.ticket}


def test_port_from_an_ipv4_client_to_an_ipv6_server_becomes_eprt() -> None:
    ch = logged_in(CLIENT4, SERVER6)
    listen = next(a for a in ch.client_data(b"PORT 203,0,113,10,195,80\r\n") if isinstance(a, ListenForServer))
    ready = ch.data_endpoint_ready(listen.ticket, INTERNAL6)
    assert to_server(ready) == b"EPRT |2|2001:db8:2::1|40123|\r\n"
    assert translations(ready) == [("PORT", "EPRT")]


def test_a_server_that_refuses_both_forms_gets_its_refusal_to_the_client() -> None:
    ch = logged_in(CLIENT6, SERVER4)
    ch.client_data(b"EPSV\r\n")
    ch.server_data(b"500 no\r\n")
    actions = ch.server_data(b"500 no PASV either\r\n")
    assert to_client(actions) == b"500 no PASV either\r\n"
    assert not any(isinstance(a, Refused) for a in actions)


# ---- ABOR ------------------------------------------------------------------------------------------------

SYNCH = [
    SendToServer(ABORT_BEFORE_URGENT + ABORT_URGENT, urgent=True),
    SendToServer(ABORT_COMMAND),
]


def transferring(client: HostPort = CLIENT4, server: HostPort = SERVER4) -> tuple[ControlChannel, int]:
    """A RETR under way: its data connection open, its final reply still owed."""
    ch = logged_in(client, server)
    ticket = passive_connected(ch, PUBLIC4)
    ch.client_data(b"RETR big\r\n")
    ch.server_data(b"150 go\r\n")
    return ch, ticket


def test_abor_during_a_transfer_goes_with_the_telnet_synch_whatever_the_client_sent() -> None:
    assert ABORT_BEFORE_URGENT + ABORT_URGENT + ABORT_COMMAND == b"\xff\xf4\xff\xf2ABOR\r\n"
    for sent in (b"ABOR\r\n", b"\xff\xf4\xff\xf2ABOR\r\n", b"abor\n"):
        ch, _ = transferring()
        actions = ch.client_data(sent)
        assert [a for a in actions if isinstance(a, SendToServer)] == SYNCH, sent
        assert to_client(ch.server_data(b"426 aborted\r\n226 abort ok\r\n")) == b"426 aborted\r\n226 abort ok\r\n"


def test_a_426_with_an_abor_pending_closes_the_data_connection() -> None:
    ch, ticket = transferring()
    ch.client_data(b"ABOR\r\n")
    actions = ch.server_data(b"426 aborted\r\n")
    assert CloseDataEndpoint(ticket) in actions and to_client(actions) == b"426 aborted\r\n"
    assert ticket not in ch.open_tickets
    # Without an ABOR, a 426 leaves the data connection to end by itself (a server-side failure mid-stream).
    other, kept = transferring()
    assert CloseDataEndpoint(kept) not in other.server_data(b"426 broken\r\n")


def test_abor_with_no_transfer_running_is_plain() -> None:
    idle = logged_in(CLIENT4, SERVER4)
    assert [a for a in idle.client_data(b"\xff\xf4\xff\xf2ABOR\r\n") if isinstance(a, SendToServer)] == [
        SendToServer(b"ABOR\r\n")
    ]
    # The transfer's data connection already ended (the client closed it first, as tnftp does for a put).
    ch, ticket = transferring()
    ch.data_finished(ticket)
    assert [a for a in ch.client_data(b"ABOR\r\n") if isinstance(a, SendToServer)] == [SendToServer(b"ABOR\r\n")]


def test_abor_inside_tls_is_plain() -> None:
    ch, _ = transferring()
    ch.urgent_abort = False
    assert [a for a in ch.client_data(b"ABOR\r\n") if isinstance(a, SendToServer)] == [SendToServer(b"ABOR\r\n")]


def test_a_bsd_synch_split_anywhere_leaves_one_abor_and_the_next_command_whole() -> None:
    stream = b"\xff\xf4\xff\xf2ABOR\r\nNOOP\r\n"
    for cut in range(1, len(stream)):
        ch, _ = transferring()
        actions = ch.client_data(stream[:cut]) + ch.client_data(stream[cut:])
        sent = [a for a in actions if isinstance(a, SendToServer)]
        assert sent == [*SYNCH, SendToServer(b"NOOP\r\n")], cut


# ---- Telnet in the framing -------------------------------------------------------------------------------


def test_telnet_commands_are_consumed_and_iac_iac_kept() -> None:
    telnet = TelnetFilter()
    assert telnet.feed(b"\xff\xf4\xff\xf2ABOR\r\n") == b"ABOR\r\n"
    assert (telnet.interrupts, telnet.synchs) == (1, 1)
    assert telnet.feed(b"RETR a\xff\xffb\r\n") == b"RETR a\xff\xffb\r\n"
    assert telnet.feed(b"\xff\xfb\x01NOOP\r\n") == b"NOOP\r\n"  # WILL ECHO: three bytes


@given(st.binary(max_size=60), st.lists(st.integers(min_value=1, max_value=8), max_size=12))
def test_telnet_filter_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    whole = TelnetFilter().feed(data)
    telnet, out, position = TelnetFilter(), b"", 0
    for cut in cuts:
        out += telnet.feed(data[position : position + cut])
        position += cut
    out += telnet.feed(data[position:])
    assert out == whole


def test_the_client_framer_never_sees_a_synch() -> None:
    framer = LineFramer(64, telnet=TelnetFilter())
    assert framer.feed(b"\xff\xf4\xff") == []
    assert framer.feed(b"\xf2ABOR\r\nNOOP\r\n") == [b"ABOR\r\n", b"NOOP\r\n"]


def test_every_translation_series_exists_at_zero_from_start() -> None:
    from prometheus_client import generate_latest

    from alg.ops.metrics import Metrics

    text = generate_latest(Metrics().registry).decode()
    for client_verb, server_verb in (("PASV", "EPSV"), ("EPSV", "PASV"), ("PORT", "EPRT"), ("EPRT", "PORT")):
        assert f'ftp_alg_verb_translations_total{{from="{client_verb}",to="{server_verb}"}} 0.0' in text
