"""Fuzzing the protocol core: Hypothesis drives one ControlChannel with an arbitrary interleaving of client
bytes, server bytes, ends of stream and data facts (endpoint ready or failed, connected, finished, broken)
for the tickets it hands out, as the session would, and checks after every step:

- no exception escapes (the session feeds the channel outside any handler: an exception kills the session);
- memory stays bounded: framer buffers within their line limits, backlogs within one read, pending replies
  within the pipelining limit, tickets within the data-channel limit;
- every line sent either way is one whole line (no CR/LF smuggled into a rewrite);
- the server never receives a PORT/EPRT the gateway did not write itself (bounce protection), and the client
  never receives a rewritten 227/229 naming anything but the gateway's public endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address

from corerig import CLIENT, PUBLIC, SERVER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from alg.ftp import addresses
from alg.ftp.addresses import HostPort
from alg.ftp.control import (
    Action,
    ChannelSettings,
    ControlChannel,
    ListenForClient,
    ListenForServer,
    Rewrote,
    SendToClient,
    SendToServer,
)
from alg.ftp.wire import ABORT_BEFORE_URGENT, ABORT_COMMAND, ABORT_URGENT, Overlong, parse_command

INTERNAL = HostPort(ip_address("198.51.100.1"), 41000)

LIMITS = ChannelSettings(max_line_bytes=512, max_server_line_bytes=1024, max_pipelined_commands=4, max_data_channels=2)
MAX_CHUNK = 700  # bytes per read in this model (the session reads at most 64 KiB; smaller is faster to fuzz)

# ---- bytes that mean something to the channel, and bytes that do not -------------------------------------------

CLIENT_LINES = [
    b"USER ftp",
    b"PASS secret",
    b"PASV",
    b"EPSV",
    b"EPSV ALL",
    b"EPSV 1",
    b"EPSV 2",
    b"PORT 203,0,113,10,195,80",  # the client itself: allowed
    b"PORT 198,18,0,77,195,80",  # a third host
    b"PORT 203,0,113,10,0,21",  # privileged
    b"PORT 1,2,3",
    b"PORT 999,0,0,1,1,1",
    b"port 203,0,113,10,4,1",
    b"  PORT 203,0,113,10,4,2",
    b"\xff\xf4\xff\xf2PORT 203,0,113,10,4,3",
    b"EPRT |1|203.0.113.10|50001|",
    b"EPRT |1|198.51.100.10|21|",
    b"EPRT |2|::1|5000|",
    b"EPRT |||",
    b"LPRT 4,4,1,2,3,4,2,1,1",
    b"RETR file",
    b"STOR up",
    b"LIST",
    b"NLST",
    b"ABOR",
    b"\xff\xf4\xff\xf2ABOR",
    b"REIN",
    b"NOOP",
    b"QUIT",
    b"AUTH TLS",
    b"SITE \x00\x1b",
    b"",
    b"\x00\x01\x02",
]
# The commands that open, use and close data channels, weighted up so that deep sequences are common.
CLIENT_LINES += [b"PASV", b"EPSV", b"PORT 203,0,113,10,195,80", b"EPRT |1|203.0.113.10|50001|", b"RETR f", b"LIST"] * 4
SERVER_LINES = [
    b"220 ready",
    b"220-welcome",
    b"230 in",
    b"331 pass",
    b"200 ok",
    b"200-multi",
    b"227 Entering Passive Mode (198,51,100,10,117,48)",
    b"227 Entering Passive Mode (198,18,0,77,117,48)",
    b"227 (1,2,3,4,5,6)",
    b"227 nonsense",
    b"227-Entering Passive Mode (198,51,100,10,117,49)",
    b"227 ",
    b"229 Entering Extended Passive Mode (|||30000|)",
    b"229 (!!!70000!)",
    b"229-(|||30001|)",
    b"150 opening",
    b"150-opening",
    b"125 go",
    b"226 done",
    b"226-Options",
    b"225 closed",
    b"250 ok",
    b"421 bye",
    b"221 bye",
    b"425 no",
    b"426 aborted",
    b"500 what",
    b"530 login",
    b"550 no such file",
    b"   continuation",
    b"\xff\xfb\x01",
]
EOLS = [b"\r\n", b"\n", b"\r\r\n"]


def lines_of(vocabulary: list[bytes], longest: int) -> st.SearchStrategy[bytes]:
    meaningful = st.tuples(st.sampled_from(vocabulary), st.sampled_from(EOLS)).map(b"".join)
    noise = st.one_of(
        st.binary(max_size=40),
        st.integers(min_value=0, max_value=longest).map(lambda n: b"x" * n),  # around the line limits
    )
    line = st.one_of(meaningful, meaningful, meaningful, meaningful, meaningful, noise)
    return st.lists(line, min_size=1, max_size=8).map(b"".join)


def chunks(vocabulary: list[bytes], longest: int = 1500) -> st.SearchStrategy[bytes]:
    return lines_of(vocabulary, longest).map(lambda data: data[:MAX_CHUNK] or b" ")


# A server that answers what is asked, in the ways servers do (and some they should not): ("answer", n) picks
# the n-th answer for the command at the front of the queue.
ANSWERS = {
    "<connect>": [b"220 ready\r\n", b"220-a\r\n220 b\r\n", b"421 busy\r\n"],
    "USER": [b"331 pass\r\n", b"230 in\r\n", b"530 no\r\n"],
    "PASS": [b"230 in\r\n", b"530 no\r\n", b"230-a\r\n230 b\r\n"],
    "PASV": [
        b"227 Entering Passive Mode (198,51,100,10,117,48).\r\n",
        b"227 =198,18,0,77,117,48\r\n",
        b"227-Entering Passive Mode (198,51,100,10,117,49)\r\n227 ok\r\n",
        b"425 no\r\n",
        b"227 garbage\r\n",
    ],
    "EPSV": [b"229 Entering Extended Passive Mode (|||30000|)\r\n", b"229 (|||99999|)\r\n", b"500 no\r\n"],
    "PORT": [b"200 ok\r\n", b"500 no\r\n", b"530 login first\r\n"],
    "EPRT": [b"200 ok\r\n", b"522 use (1)\r\n"],
    "RETR": [
        b"150 here\r\n",
        b"226 done\r\n",
        b"150 here\r\n226 done\r\n",
        b"425 no data\r\n",
        b"150-a\r\n150 b\r\n",
        b"226-Options\r\n226 done\r\n",
        b"426 broken\r\n",
        b"550 no\r\n",
    ],
    "ABOR": [b"426 aborted\r\n225 ok\r\n", b"226 ok\r\n", b"225 ok\r\n"],
    "QUIT": [b"221 bye\r\n"],
}
for _verb in ("STOR", "LIST", "NLST"):
    ANSWERS[_verb] = ANSWERS["RETR"]
OTHER_ANSWERS = [b"200 ok\r\n", b"500 what\r\n", b"250-x\r\n250 y\r\n", b"421 timeout\r\n"]

ticket_choice = st.integers(min_value=0, max_value=15)
client_bytes = st.tuples(st.just("client"), chunks(CLIENT_LINES))
server_bytes = st.tuples(st.just("server"), chunks(SERVER_LINES, longest=1100))
answer = st.tuples(st.just("answer"), st.integers(min_value=0, max_value=10**9))
fact = st.tuples(st.sampled_from(["ready", "ready", "failed", "connected", "finished", "broken"]), ticket_choice)
end = st.tuples(st.sampled_from(["client_eof", "server_eof"]), st.just(0))
operations = st.one_of(
    client_bytes, client_bytes, client_bytes, answer, answer, answer, answer, server_bytes, fact, fact, fact, fact
)


# ---- the model of the session ------------------------------------------------------------------------------------


@dataclass
class Session:
    channel: ControlChannel = field(default_factory=lambda: ControlChannel(CLIENT, SERVER, LIMITS))
    handed_out: list[int] = field(default_factory=list)  # every ticket the channel asked an endpoint for
    waiting: dict[int, bool] = field(default_factory=dict)  # ticket -> passive, endpoint not yet reported
    last_chunk: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})  # per side
    synch: int = 0  # pieces of ABOR's Telnet synch seen so far

    def step(self, kind: str, value: object) -> list[Action]:
        ch = self.channel
        if kind == "client":
            if not ch.wants_client_data:  # the session does not read while the channel holds lines
                return []
            assert isinstance(value, bytes)
            self.last_chunk["client"] = len(value)
            return ch.client_data(value)
        if kind == "server":
            if not ch.wants_server_data:
                return []
            assert isinstance(value, bytes)
            self.last_chunk["server"] = len(value)
            return ch.server_data(value)
        if kind == "answer":
            if not ch.wants_server_data:
                return []
            assert isinstance(value, int)
            # Answer every command owed a reply, each in the way `value` picks (one read's worth).
            data = b""
            for entry in ch._pending:
                if entry.local_reply is None:
                    choices = ANSWERS.get(entry.verb, OTHER_ANSWERS)
                    data += choices[value % len(choices)]
                    value //= len(choices)
            data = data or OTHER_ANSWERS[value % len(OTHER_ANSWERS)]
            self.last_chunk["server"] = len(data)
            return ch.server_data(data)
        if kind == "client_eof":
            return ch.client_data(b"")
        if kind == "server_eof":
            return ch.server_data(b"")
        assert isinstance(value, int)
        if not self.handed_out:
            return []
        if kind in ("ready", "failed") and self.waiting and value % 4:
            ticket = list(self.waiting)[value % len(self.waiting)]  # mostly an endpoint the channel waits for
        else:
            ticket = self.handed_out[value % len(self.handed_out)]  # stale and repeated facts included
        if kind == "ready":
            passive = self.waiting.pop(ticket, True)
            return ch.data_endpoint_ready(ticket, PUBLIC if passive else INTERNAL)
        if kind == "failed":
            self.waiting.pop(ticket, None)
            return ch.data_endpoint_failed(ticket, "fuzzed failure")
        if kind == "connected":
            return ch.data_connected(ticket)
        if kind == "finished":
            return ch.data_finished(ticket)
        return ch.data_endpoint_failed(ticket, "the data connection broke")  # "broken"

    def check(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ListenForClient | ListenForServer):
                self.handed_out.append(action.ticket)
                self.waiting[action.ticket] = isinstance(action, ListenForClient)
            elif isinstance(action, Rewrote):
                if action.kind in ("port", "eprt"):
                    assert str(INTERNAL.port).encode() in action.after or b"160,40" in action.after
                else:
                    assert b"198,51,100" not in action.after and b"198,18" not in action.after
            elif isinstance(action, SendToServer):
                # ABOR goes with its Telnet synch: IAC IP IAC DM as urgent data (DM marked), then the ABOR line.
                if self.synch == 0 and action.data == ABORT_BEFORE_URGENT + ABORT_URGENT:
                    assert action.urgent, action
                    self.synch = 2
                    continue
                if self.synch == 2:
                    assert action.data == ABORT_COMMAND, action
                    self.synch = 0
                # One whole line per command sent: nothing can be appended to a line, or a line split in two.
                assert action.data.endswith(b"\n") and action.data.count(b"\n") == 1, action
            elif isinstance(action, SendToClient):
                assert action.data.endswith(b"\n"), action  # whole lines (a held multi-line reply: several)
            if isinstance(action, SendToServer):
                command = parse_command(action.data)
                if command is not None and command.verb in ("PORT", "EPRT", "LPRT"):
                    # Never the client's own: the gateway's internal endpoint, in a line of its writing (a rewrite,
                    # or its retry as PORT of an EPRT the server refused, which carries no Rewrote of its own).
                    assert command.verb != "LPRT", action
                    parse = addresses.parse_port if command.verb == "PORT" else addresses.parse_eprt
                    assert parse(command.argument) == INTERNAL, action
        self.check_bounds()

    def check_bounds(self) -> None:
        ch = self.channel
        client, server = ch._client, ch._server
        assert len(client.framer._buffer) <= LIMITS.max_line_bytes
        assert len(server.framer._buffer) <= LIMITS.max_server_line_bytes
        for name, side, limit in (
            ("client", client, LIMITS.max_line_bytes),
            ("server", server, LIMITS.max_server_line_bytes),
        ):
            # At most the lines of one read wait: the session stops reading while any do.
            assert len(side.backlog) <= self.last_chunk[name] + 1
            held = sum(len(line) for line in side.backlog if not isinstance(line, Overlong))
            assert held <= self.last_chunk[name] + limit
        # Replies owed: the pipelining limit, plus the banner and one of ours queued behind them.
        assert len(ch._pending) <= LIMITS.max_pipelined_commands + 2, ch._pending
        assert len(ch._tickets) <= LIMITS.max_data_channels + LIMITS.max_pipelined_commands, ch._tickets
        assert len(ch._failed) <= len(ch._pending)
        assert ch._held_reply is None or len(ch._held_reply) <= LIMITS.max_server_line_bytes + 200


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.lists(operations, max_size=80),
    st.one_of(st.none(), end),
    st.lists(fact, max_size=5),
)
def test_any_interleaving_gives_actions_never_an_exception_and_bounded_state(
    steps: list[tuple[str, object]], ending: tuple[str, object] | None, afterwards: list[tuple[str, object]]
) -> None:
    session = Session()
    # An end of stream closes the channel for good: it comes last, then only late data facts.
    for kind, value in [*steps, *([ending] if ending else []), *afterwards]:
        session.check(session.step(kind, value))


class ChannelMachine(RuleBasedStateMachine):
    """The same model, explored step by step: each rule is enabled only when the session could do it, so
    sequences reach deep states (endpoints ready, transfers running, replies held) far more often."""

    def __init__(self) -> None:
        super().__init__()
        self.session = Session()
        self.steps = 0

    def _do(self, kind: str, value: object) -> None:
        self.steps += 1
        self.session.check(self.session.step(kind, value))

    # A closed channel still gets late bytes (and must ignore them); one that is open but wants nothing from
    # either side and waits for no data fact would hang its session: Hypothesis reports that as no progress.
    @precondition(lambda self: self.session.channel.wants_client_data or self.session.channel.closed)
    @rule(data=chunks(CLIENT_LINES))
    def client(self, data: bytes) -> None:
        self._do("client", data)

    @precondition(lambda self: self.session.channel.wants_server_data)
    @rule(data=chunks(SERVER_LINES, longest=1100))
    def server(self, data: bytes) -> None:
        self._do("server", data)

    @precondition(lambda self: self.session.channel.wants_server_data and bool(self.session.channel._pending))
    @rule(choice=st.integers(min_value=0, max_value=10**9))
    def answer(self, choice: int) -> None:
        self._do("answer", choice)

    @precondition(lambda self: bool(self.session.waiting))
    @rule(choice=ticket_choice, kind=st.sampled_from(["ready", "ready", "ready", "failed"]))
    def endpoint(self, choice: int, kind: str) -> None:
        self._do(kind, choice)

    @precondition(lambda self: bool(self.session.handed_out))
    @rule(choice=ticket_choice, kind=st.sampled_from(["connected", "finished", "broken", "ready", "failed"]))
    def data_fact(self, choice: int, kind: str) -> None:
        self._do(kind, choice)

    @precondition(lambda self: self.steps > 25 and self.session.channel.wants_client_data)
    @rule()
    def client_eof(self) -> None:
        self._do("client_eof", 0)

    @precondition(lambda self: self.steps > 25 and self.session.channel.wants_server_data)
    @rule()
    def server_eof(self) -> None:
        self._do("server_eof", 0)


ChannelMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_channel_machine = ChannelMachine.TestCase


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(["client", "server"]), st.binary(min_size=1, max_size=MAX_CHUNK)), max_size=40)
)
def test_raw_binary_both_ways_never_raises(steps: list[tuple[str, bytes]]) -> None:
    session = Session()
    for kind, data in steps:
        session.check(session.step(kind, data))


def test_an_endless_line_keeps_the_buffer_bounded() -> None:
    """A peer that never sends a newline: the framer drops the excess as it comes, then one refusal."""
    session = Session()
    session.check(session.channel.server_data(b"220 hello\r\n"))
    for _ in range(1000):
        session.check(session.step("client", b"A" * MAX_CHUNK))
    actions = session.step("client", b"\r\nNOOP\r\n")
    session.check(actions)
    sent = b"".join(a.data for a in actions if isinstance(a, SendToClient))
    assert sent.startswith(b"500 Command line too long")
    assert b"".join(a.data for a in actions if isinstance(a, SendToServer)) == b"NOOP\r\n"


def test_a_pipelining_client_is_held_at_the_limit() -> None:
    """10,000 NOOPs in one read: 4 go to the server, the rest wait, and the channel stops asking for more."""
    session = Session()
    session.check(session.channel.server_data(b"220 hello\r\n"))
    session.last_chunk["client"] = 60_000
    actions = session.channel.client_data(b"NOOP\r\n" * 10_000)
    session.check(actions)
    assert sum(isinstance(a, SendToServer) for a in actions) == LIMITS.max_pipelined_commands
    assert not session.channel.wants_client_data
