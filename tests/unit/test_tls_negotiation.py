"""FTPS decisions of the pure core: AUTH, PBSZ, PROT, CCC, FEAT, login before TLS, plaintext after 234, and the
gateway's own AUTH TLS toward the server. Bytes in, actions out; fed whole and one byte at a time."""

from __future__ import annotations

import pytest
from corerig import CLIENT, SERVER, to_client, to_server
from hypothesis import given
from hypothesis import strategies as st

from alg.ftp.control import (
    Action,
    ChannelSettings,
    ControlChannel,
    ListenForClient,
    ListenForServer,
    Refused,
    SendToClient,
)
from alg.ftp.tls import (
    ReplyReader,
    SendLine,
    StartClientTls,
    StartServerTls,
    TlsPolicy,
    UpstreamFailed,
    UpstreamReady,
    UpstreamTls,
    rewrite_feat,
)


def channel(mode: str = "allow", data: str = "follow", upstream_data: str = "follow", **kw: bool) -> ControlChannel:
    settings = ChannelSettings(tls=TlsPolicy(mode, data, upstream_data))
    ch = ControlChannel(CLIENT, SERVER, settings, **kw)
    ch.server_data(b"220 ready\r\n")
    return ch


def secured(**kw: str) -> ControlChannel:
    ch = channel(**kw)
    out = ch.client_data(b"AUTH TLS\r\n")
    assert to_client(out).startswith(b"234 ")
    assert any(isinstance(a, StartClientTls) for a in out)
    ch.client_tls_started()
    return ch


def feed_bytewise(ch: ControlChannel, data: bytes) -> list[Action]:
    out: list[Action] = []
    for i in range(len(data)):
        out.extend(ch.client_data(data[i : i + 1]))
    return out


# ---- client side ------------------------------------------------------------------------------------------------


def test_refuse_mode_answers_auth_with_502_and_plain_ftp_goes_on() -> None:
    ch = channel("refuse")
    out = ch.client_data(b"AUTH TLS\r\n")
    assert to_client(out).startswith(b"502 ")
    assert not any(isinstance(a, StartClientTls) for a in out)
    assert to_server(out) == b""  # never reaches the server: the gateway answers for the client side
    assert to_server(ch.client_data(b"USER ftp\r\n")) == b"USER ftp\r\n"
    # A client's routine probe (lftp, FileZilla): its own reason, counted apart from hostile refusals.
    assert [a.reason for a in out if isinstance(a, Refused)] == ["tls_off"]


@pytest.mark.parametrize("argument", [b"TLS", b"tls", b"TLS-C", b"SSL"])
def test_auth_tls_is_answered_234_then_tls_starts_and_nothing_reaches_the_server(argument: bytes) -> None:
    ch = channel()
    out = feed_bytewise(ch, b"AUTH " + argument + b"\r\n")
    assert to_client(out) == b"234 Proceed with TLS negotiation\r\n"
    assert [type(a) for a in out if isinstance(a, SendToClient | StartClientTls)] == [SendToClient, StartClientTls]
    assert to_server(out) == b""
    assert not ch.wants_client_data  # the shell stops reading until the handshake is done
    ch.client_tls_started()
    assert ch.wants_client_data and ch.tls.secured


def test_unknown_mechanism_gets_504_and_a_second_auth_gets_503() -> None:
    ch = channel()
    assert to_client(ch.client_data(b"AUTH GSSAPI\r\n")).startswith(b"504 ")
    ch = secured()
    assert to_client(ch.client_data(b"AUTH TLS\r\n")).startswith(b"503 ")


def test_plaintext_pipelined_after_auth_is_dropped_never_executed() -> None:
    ch = channel()
    out = ch.client_data(b"AUTH TLS\r\nUSER evil\r\nDELE x\r\nPART")
    assert to_server(out) == b""
    refused = [a for a in out if isinstance(a, Refused)]
    assert refused and refused[0].reason == "tls_plaintext"
    # Bytes that still arrive before the handshake reports done are dropped too.
    later = ch.client_data(b"IAL\r\nRMD /\r\n")
    assert to_server(later) == b"" and any(isinstance(a, Refused) for a in later)
    ch.client_tls_started()
    assert to_server(ch.client_data(b"USER real\r\n")) == b"USER real\r\n"


def test_auth_behind_a_pending_reply_waits_its_turn_and_drops_what_came_after() -> None:
    ch = channel()
    out = ch.client_data(b"SYST\r\nAUTH TLS\r\nUSER evil\r\n")
    assert to_server(out) == b"SYST\r\n"
    assert not any(isinstance(a, StartClientTls) for a in out)
    out = ch.server_data(b"215 UNIX\r\n")
    assert to_client(out) == b"215 UNIX\r\n234 Proceed with TLS negotiation\r\n"
    assert any(isinstance(a, StartClientTls) for a in out)
    assert to_server(out) == b""  # USER evil was plaintext after AUTH


def test_require_mode_refuses_login_before_auth_with_530_saying_tls_is_required() -> None:
    ch = channel("require")
    out = ch.client_data(b"USER ftp\r\n")
    assert to_client(out).startswith(b"530 TLS required")
    assert [a.reason for a in out if isinstance(a, Refused)] == ["tls_required"]
    assert to_server(out) == b""
    assert to_server(ch.client_data(b"FEAT\r\n")) == b"FEAT\r\n"  # what does not log in still works


def test_require_mode_lets_login_through_after_tls() -> None:
    ch = secured(mode="require")
    assert to_server(ch.client_data(b"USER ftp\r\n")) == b"USER ftp\r\n"


def test_pbsz_and_prot_need_auth_first() -> None:
    ch = channel()
    assert to_client(ch.client_data(b"PBSZ 0\r\n")).startswith(b"503 ")
    assert to_client(ch.client_data(b"PROT P\r\n")).startswith(b"503 ")


def test_prot_p_toward_a_plain_server_is_answered_here_and_protects_only_the_client_leg() -> None:
    ch = secured()
    out = ch.client_data(b"PBSZ 0\r\nPROT P\r\n")
    assert to_client(out) == b"200 PBSZ=0\r\n200 Protection level set to P\r\n"
    assert to_server(out) == b""
    ch.client_data(b"PASV\r\n")
    out = ch.server_data(b"227 Entering Passive Mode (198,51,100,10,195,80)\r\n")
    listen = next(a for a in out if isinstance(a, ListenForClient))
    assert listen.client_tls and not listen.server_tls


def test_prot_follows_to_a_tls_server_and_its_answer_sets_both_legs() -> None:
    ch = secured(mode="allow")
    ch.tls.server_secured = True
    out = ch.client_data(b"PROT P\r\n")
    assert to_server(out) == b"PROT P\r\n"
    ch.server_data(b"200 PROT now Private.\r\n")
    assert ch.tls.client_private and ch.tls.server_private
    out = ch.client_data(b"PORT 203,0,113,10,195,80\r\n")
    listen = next(a for a in out if isinstance(a, ListenForServer))
    assert listen.client_tls and listen.server_tls


def test_prot_refused_by_the_server_leaves_the_level_alone() -> None:
    ch = secured()
    ch.tls.server_secured = True
    ch.client_data(b"PROT P\r\n")
    out = ch.server_data(b"534 no\r\n")
    assert to_client(out) == b"534 no\r\n"
    assert not ch.tls.client_private


def test_upstream_private_protects_the_server_leg_of_a_plain_client() -> None:
    ch = channel(upstream_data="private", server_secured=True, server_private=True)
    ch.client_data(b"PASV\r\n")
    out = ch.server_data(b"227 Entering Passive Mode (198,51,100,10,195,80)\r\n")
    listen = next(a for a in out if isinstance(a, ListenForClient))
    assert listen.server_tls and not listen.client_tls


def test_data_require_refuses_prot_c_and_clear_transfers() -> None:
    ch = secured(data="require")
    assert to_client(ch.client_data(b"PROT C\r\n")).startswith(b"534 ")
    out = ch.client_data(b"RETR x\r\n")
    assert to_client(out).startswith(b"521 ")
    assert to_server(out) == b""
    ch.client_data(b"PROT P\r\n")
    assert to_server(ch.client_data(b"RETR x\r\n")) == b"RETR x\r\n"


@pytest.mark.parametrize("level", [b"S", b"E", b"X"])
def test_prot_levels_other_than_c_and_p_get_536(level: bytes) -> None:
    ch = secured()
    assert to_client(ch.client_data(b"PROT " + level + b"\r\n")).startswith(b"536 ")


def test_ccc_is_refused_with_a_reason() -> None:
    ch = secured()
    out = ch.client_data(b"CCC\r\n")
    assert to_client(out).startswith(b"533 CCC refused")
    assert to_server(out) == b""


def test_implicit_tls_starts_secured() -> None:
    ch = channel(client_secured=True)
    assert to_client(ch.client_data(b"PBSZ 0\r\n")) == b"200 PBSZ=0\r\n"


# ---- FEAT -------------------------------------------------------------------------------------------------------

SERVER_FEAT = b"211-Features:\r\n EPSV\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n CCC\r\n SIZE\r\n211 End\r\n"


def test_feat_lists_the_gateways_offer_not_the_servers() -> None:
    ch = channel("allow")
    ch.client_data(b"FEAT\r\n")
    out: list[Action] = []
    for i in range(len(SERVER_FEAT)):
        out.extend(ch.server_data(SERVER_FEAT[i : i + 1]))
    assert to_client(out) == b"211-Features:\r\n EPSV\r\n SIZE\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n211 End\r\n"


def test_feat_without_client_tls_hides_the_servers_tls() -> None:
    ch = channel("refuse")
    ch.client_data(b"FEAT\r\n")
    assert to_client(ch.server_data(SERVER_FEAT)) == b"211-Features:\r\n EPSV\r\n SIZE\r\n211 End\r\n"


def test_feat_refused_by_the_server_still_shows_our_offer() -> None:
    assert rewrite_feat([b"502 no FEAT\r\n"], offer_tls=True).startswith(b"211-Features:\r\n AUTH TLS\r\n")
    assert rewrite_feat([b"502 no FEAT\r\n"], offer_tls=False) == b"502 no FEAT\r\n"


# ---- upstream ---------------------------------------------------------------------------------------------------


def replies(data: bytes) -> list[tuple[int, bytes]]:
    reader = ReplyReader()
    out: list[tuple[int, bytes]] = []
    for i in range(len(data)):
        out.extend(reader.feed(data[i : i + 1]))
    return out


def test_reply_reader_joins_multiline_replies_byte_by_byte() -> None:
    assert replies(b"220-hello\r\n there\r\n220 ready\r\n211 x\r\n") == [
        (220, b"220-hello\r\n there\r\n220 ready\r\n"),
        (211, b"211 x\r\n"),
    ]


def test_upstream_require_runs_auth_pbsz_prot_then_hands_over_the_banner() -> None:
    steps = UpstreamTls("require", "private")
    assert steps.on_reply(220, b"220 vsFTPd\r\n") == SendLine(b"AUTH TLS\r\n")
    assert steps.on_reply(234, b"234 go\r\n") == StartServerTls()
    assert steps.tls_started() == SendLine(b"PBSZ 0\r\n")
    assert steps.on_reply(200, b"200 ok\r\n") == SendLine(b"PROT P\r\n")
    assert steps.on_reply(200, b"200 ok\r\n") == UpstreamReady(b"220 vsFTPd\r\n", secured=True, private=True)


def test_upstream_follow_sends_no_prot() -> None:
    steps = UpstreamTls("require", "follow")
    steps.on_reply(220, b"220 x\r\n")
    steps.on_reply(234, b"234 go\r\n")
    steps.tls_started()
    assert steps.on_reply(200, b"200 ok\r\n") == UpstreamReady(b"220 x\r\n", secured=True, private=False)


def test_upstream_auto_asks_feat_and_stays_plain_without_auth_tls() -> None:
    steps = UpstreamTls("auto", "follow")
    assert steps.on_reply(220, b"220 x\r\n") == SendLine(b"FEAT\r\n")
    assert steps.on_reply(211, b"211-F\r\n EPSV\r\n211 End\r\n") == UpstreamReady(b"220 x\r\n", False, False)
    steps = UpstreamTls("auto", "follow")
    steps.on_reply(220, b"220 x\r\n")
    assert steps.on_reply(211, b"211-F\r\n AUTH TLS\r\n211 End\r\n") == SendLine(b"AUTH TLS\r\n")


def test_upstream_require_fails_when_auth_is_refused_and_names_the_reply() -> None:
    steps = UpstreamTls("require", "follow")
    steps.on_reply(220, b"220 x\r\n")
    failed = steps.on_reply(502, b"502 no\r\n")
    assert isinstance(failed, UpstreamFailed) and "502 no" in failed.reason


def test_upstream_implicit_starts_with_pbsz_and_a_refusing_banner_passes_through() -> None:
    steps = UpstreamTls("implicit", "private")
    assert steps.on_reply(220, b"220 x\r\n") == SendLine(b"PBSZ 0\r\n")
    steps = UpstreamTls("auto", "follow")
    assert steps.on_reply(421, b"421 busy\r\n") == UpstreamReady(b"421 busy\r\n", False, False)


@given(st.binary(max_size=200))
def test_any_client_bytes_after_auth_never_reach_the_server(noise: bytes) -> None:
    ch = channel()
    out = ch.client_data(b"AUTH TLS\r\n" + noise)
    out += ch.client_data(noise)
    assert to_server(out) == b""
