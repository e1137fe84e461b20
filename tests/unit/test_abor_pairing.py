"""Which reply is ABOR's: servers answer an aborted transfer with two replies or one (RFC 959 4.1.3), byte by byte."""

from __future__ import annotations

from corerig import CLIENT, PUBLIC, SERVER, passive_connected, to_client

from alg.ftp.control import (
    Action,
    CloseDataEndpoint,
    ControlChannel,
    ListenForClient,
    Refused,
    SendToServer,
)

# pure-ftpd over TLS, as recorded through the gateway: RETR, the client drops the data connection, ABOR. The
# transfer fails on the closed connection and gets no final reply (only its statistics, as 150 lines); the ABOR
# then finds the server idle and gets one 226. Directly the client sees only that; through the gateway it also gets
# the ABOR's own reply (RFC 959 4.1.3: the transfer's, then the ABOR's): a NOOP of the gateway's follows the
# transfer's reply, and its 200 coming first shows that the server will not answer the ABOR.
PURE_150 = b"150-Accepted data connection\r\n150 24576.0 kbytes to download\r\n"
OURS = b"226 ABOR done: the transfer had already ended.\r\n"
NOOP = SendToServer(b"NOOP\r\n")
PURE_ONE_226 = (
    b"150-Warning: client is in ASCII mode - Assuming data is plain text\r\n"
    b"150 0.003 seconds (measured here), 37.40 Mbytes per second\r\n"
    b"226 Since you see this ABOR must've succeeded\r\n"
)


def feed(ch: ControlChannel, data: bytes, *, server: bool) -> list[Action]:
    """One byte at a time, as the worst network would deliver it."""
    send = ch.server_data if server else ch.client_data
    return [action for byte in data for action in send(bytes([byte]))]


def retr_under_way() -> ControlChannel:
    ch = ControlChannel(CLIENT, SERVER)
    ch.urgent_abort = False  # over TLS: a plain ABOR line
    ch.server_data(b"220 hi\r\n")
    for line, answer in ((b"USER u\r\n", b"331 p\r\n"), (b"PASS p\r\n", b"230 ok\r\n")):
        ch.client_data(line)
        ch.server_data(answer)
    passive_connected(ch)
    ch.client_data(b"RETR abor.bin\r\n")
    assert to_client(feed(ch, PURE_150, server=True)) == PURE_150
    return ch


def pasv_works(ch: ControlChannel) -> None:
    ch.client_data(b"PASV\r\n")
    actions = feed(ch, b"227 Entering Passive Mode (198,51,100,10,199,57)\r\n", server=True)
    assert any(isinstance(a, ListenForClient) for a in actions), actions
    assert not any(isinstance(a, Refused) for a in actions)


def test_one_226_for_retr_and_abor_gets_our_226_for_the_abor_then_noop_and_pasv_pair_as_sent() -> None:
    ch = retr_under_way()
    ch.client_data(b"ABOR\r\n")
    actions = feed(ch, PURE_ONE_226, server=True)
    assert to_client(actions) == PURE_ONE_226 and NOOP in actions  # ours, right behind the transfer's reply
    assert to_client(feed(ch, b"200 Zzz...\r\n", server=True)) == OURS  # our NOOP's 200: the ABOR went unanswered
    ch.client_data(b"NOOP\r\n")
    assert to_client(feed(ch, b"200 Zzz...\r\n", server=True)) == b"200 Zzz...\r\n"
    pasv_works(ch)


def test_one_226_with_the_next_commands_pipelined_behind_abor() -> None:
    # The client sent more behind ABOR before any reply: no NOOP of ours; the replies pass as the server sent them.
    ch = retr_under_way()
    ch.client_data(b"ABOR\r\nNOOP\r\nTYPE I\r\n")
    replies = PURE_ONE_226 + b"200 Zzz...\r\n200 TYPE is now 8-bit binary\r\n"
    actions = feed(ch, replies, server=True)
    assert to_client(actions) == replies and NOOP not in actions
    pasv_works(ch)


def test_the_usual_two_replies_still_pair_426_with_retr_and_226_with_abor() -> None:
    ch = retr_under_way()
    ch.client_data(b"ABOR\r\nNOOP\r\n")
    replies = b"426-Warning\r\n426 ABORT\r\n226-Transfer aborted\r\n226 0.002 seconds\r\n200 Zzz...\r\n"
    assert to_client(feed(ch, replies, server=True)) == replies
    pasv_works(ch)


def test_an_error_or_225_after_the_transfer_reply_stays_abors() -> None:
    for answer in (b"225 ABOR ok\r\n", b"500 what\r\n", b"451 aborted upload\r\n"):
        ch = retr_under_way()
        ch.client_data(b"ABOR\r\nNOOP\r\n")
        replies = b"226 done\r\n" + answer + b"200 Zzz...\r\n"
        assert to_client(feed(ch, replies, server=True)) == replies
        pasv_works(ch)


def test_a_lone_abor_answered_by_the_server_keeps_its_reply_and_our_noops_200_is_swallowed() -> None:
    for answer in (b"226 Abort successful\r\n", b"225 ABOR ok\r\n", b"500 what\r\n"):
        ch = retr_under_way()
        ch.client_data(b"ABOR\r\n")
        assert NOOP in ch.server_data(b"426 Transfer aborted\r\n")
        assert to_client(ch.server_data(answer + b"200 Zzz...\r\n")) == answer
        assert ch.at_rest
        pasv_works(ch)


def test_a_local_reply_queued_behind_abor_keeps_its_place() -> None:
    ch = retr_under_way()
    ch.client_data(b"ABOR\r\nLPSV\r\nNOOP\r\n")  # LPSV: answered by the gateway (502), in turn
    out = to_client(ch.server_data(PURE_ONE_226 + b"200 Zzz...\r\n"))
    assert out.startswith(PURE_ONE_226) and out.endswith(b"200 Zzz...\r\n")
    assert out[len(PURE_ONE_226) : -len(b"200 Zzz...\r\n")].startswith(b"502 ")
    pasv_works(ch)


def test_an_abor_left_unanswered_ends_the_data_connection_when_the_session_says_so() -> None:
    # proftpd, its whole file already in the buffers between it and the client, waits for its data peer to close
    # before it answers RETR and ABOR; the session's timer reports the ABOR overdue and the gateway closes it.
    ch = retr_under_way()
    assert ch.abort_overdue() == []  # no ABOR: nothing to end
    (ticket,) = ch.open_tickets
    ch.client_data(b"ABOR\r\n")
    assert ch.abort_overdue() == [CloseDataEndpoint(ticket)]
    assert ch.open_tickets == frozenset()
    replies = b"226 Transfer complete\r\n226 Abort successful\r\n"
    assert to_client(ch.server_data(replies)) == replies
    assert to_client(ch.server_data(b"200 Zzz...\r\n")) == b""  # our NOOP's
    pasv_works(ch)


def test_a_data_leg_broken_under_an_abor_keeps_the_servers_replies_for_retr_and_abor() -> None:
    # proftpd over TLS: the gateway ends the data connection under the running RETR (the ABOR's cut, or the
    # overdue timer's), the session reports the leg failed, and proftpd answers the RETR with 226 and the ABOR
    # with 426 (or 426 then 226). The client asked for the cut: no 426 of ours in place of the transfer's reply,
    # which would leave it with two 426s and no 226 for its ABOR; the replies pass as the server sent them.
    for replies in (
        b"226 Transfer complete\r\n426 Transfer aborted. Data connection closed\r\n",
        b"426 Transfer aborted. Data connection closed\r\n226 Abort successful\r\n",
    ):
        ch = retr_under_way()
        (ticket,) = ch.open_tickets
        ch.client_data(b"ABOR\r\n")
        ch.data_endpoint_failed(ticket, "the data connection broke")
        actions = feed(ch, replies, server=True)
        assert to_client(actions) == replies and NOOP in actions
        assert to_client(ch.server_data(b"200 Zzz...\r\n")) == b""  # our NOOP's
        pasv_works(ch)


def test_a_data_leg_broken_without_an_abor_still_turns_the_226_into_our_426() -> None:
    ch = retr_under_way()
    (ticket,) = ch.open_tickets
    ch.data_endpoint_failed(ticket, "the data connection broke")
    ours = b"426 Connection closed; transfer aborted: the data connection broke.\r\n"
    assert to_client(feed(ch, b"226 Transfer complete\r\n", server=True)) == ours
    pasv_works(ch)


def test_an_overdue_abor_closes_a_relay_still_delivering_and_nothing_once_answered() -> None:
    ch = retr_under_way()
    (ticket,) = ch.open_tickets
    ch.client_data(b"ABOR\r\n")
    ch.data_finished(ticket)  # the server's end of file came through; the relay may still be delivering
    assert ch.abort_overdue() == [CloseDataEndpoint(ticket)]
    ch = retr_under_way()
    ch.client_data(b"ABOR\r\n")
    ch.server_data(b"426 aborted\r\n226 abort ok\r\n")
    assert ch.abort_overdue() == []
    assert not ch.abort_unsettled


def test_an_overdue_abor_leaves_an_upload_to_the_server() -> None:
    # Closed by the gateway, an upload's data connection would read as its end: the server would keep the file.
    ch = ControlChannel(CLIENT, SERVER)
    ch.server_data(b"220 hi\r\n")
    passive_connected(ch)
    ch.client_data(b"STOR up.bin\r\n")
    ch.server_data(b"150 go\r\n")
    ch.client_data(b"ABOR\r\n")
    assert ch.abort_overdue() == []


def stor_answered_before_its_abor() -> ControlChannel:
    """pure-ftpd, plain control: the client closed its upload, then sent ABOR, which overtook the upload's end in
    the gateway; the server finished the upload first and, idle when the synch came, answers the ABOR with
    nothing (seen directly as well). The gateway's NOOP goes out with the upload's 226."""
    ch = retr_under_way()
    ch.urgent_abort = True
    (retr,) = ch.open_tickets
    ch.data_finished(retr)
    assert to_client(ch.server_data(b"226 Transfer complete\r\n")) == b"226 Transfer complete\r\n"  # RETR's
    ch.client_data(b"PASV\r\n")
    listen = next(a for a in ch.server_data(b"227 ok (198,51,100,10,195,81)\r\n") if isinstance(a, ListenForClient))
    ch.data_endpoint_ready(listen.ticket, PUBLIC)
    ch.data_connected(listen.ticket)
    ch.client_data(b"STOR up.bin\r\n")
    assert to_client(ch.server_data(b"150 Accepted data connection\r\n")) == b"150 Accepted data connection\r\n"
    sent = [a for a in ch.client_data(b"ABOR\r\n") if isinstance(a, SendToServer)]
    assert sent[0].urgent and sent[-1].data == b"ABOR\r\n"  # the upload's end still on its way to the server
    ch.data_finished(listen.ticket)
    actions = ch.server_data(b"226 0.000 seconds\r\n")
    assert to_client(actions) == b"226 0.000 seconds\r\n" and actions.count(NOOP) == 1
    assert not ch.abort_unsettled and ch.abort_overdue() == []  # one NOOP per ABOR
    return ch


def test_an_abor_the_idle_server_ignored_gets_our_226_after_our_noop() -> None:
    ch = stor_answered_before_its_abor()
    assert to_client(feed(ch, b"200 Zzz...\r\n", server=True)) == OURS  # the NOOP's 200 is ours
    assert ch.at_rest
    pasv_works(ch)


def test_an_abor_answered_late_keeps_its_reply_and_our_noop_stays_ours() -> None:
    ch = stor_answered_before_its_abor()
    replies = b"226 Since you see this ABOR must've succeeded\r\n200 Zzz...\r\n"
    assert to_client(feed(ch, replies, server=True)) == replies[: replies.index(b"200")]
    ch.client_data(b"NOOP\r\n")
    assert to_client(ch.server_data(b"200 Zzz...\r\n")) == b"200 Zzz...\r\n"
    pasv_works(ch)


def test_a_command_the_client_sends_after_our_noop_pairs_with_its_own_reply() -> None:
    ch = stor_answered_before_its_abor()
    ch.client_data(b"TYPE I\r\n")
    out = to_client(ch.server_data(b"200 Zzz...\r\n200 TYPE is now 8-bit binary\r\n"))
    assert out == OURS + b"200 TYPE is now 8-bit binary\r\n"
    pasv_works(ch)


def download_ended_by_the_first_tick() -> ControlChannel:
    """A RETR and its synch ABOR, neither answered after ABORT_GRACE_S: the gateway ended the data connection."""
    ch = retr_under_way()
    ch.urgent_abort = True
    (ticket,) = ch.open_tickets
    ch.client_data(b"ABOR\r\n")
    assert ch.abort_overdue() == [CloseDataEndpoint(ticket)]
    return ch


def test_a_download_neither_of_whose_replies_comes_gets_both_from_the_gateway() -> None:
    # pure-ftpd on the kernel data path: the client's reset reached it before it wrote; it answers neither RETR nor
    # the synch ABOR. First tick: the data connection is ended; second tick: our NOOP; its 200: 426 and 226 from us.
    ch = download_ended_by_the_first_tick()
    assert ch.abort_unsettled
    assert ch.abort_overdue() == [NOOP]
    assert not ch.abort_unsettled and ch.abort_overdue() == []
    out = to_client(ch.server_data(b"200 Zzz...\r\n"))
    assert out.startswith(b"426 ") and out.endswith(OURS) and out.count(b"\r\n") == 2
    assert ch.at_rest
    pasv_works(ch)


def test_replies_that_come_after_our_noop_keep_their_places() -> None:
    ch = download_ended_by_the_first_tick()
    assert ch.abort_overdue() == [NOOP]
    replies = b"426 Transfer aborted\r\n226 Abort successful\r\n"
    assert to_client(ch.server_data(replies + b"200 Zzz...\r\n")) == replies
    pasv_works(ch)


def test_no_noop_of_ours_when_the_client_moved_on_before_the_gateway_asked() -> None:
    ch = download_ended_by_the_first_tick()
    ch.client_data(b"NOOP\r\n")  # the client gave up waiting for the ABOR's replies
    assert ch.abort_overdue() == []
