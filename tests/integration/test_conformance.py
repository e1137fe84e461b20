"""The conformance matrix (issue 25): the same raw client, directly and through the gateway, gets the same replies
in the same order, and the same bytes.

Commands sent during a transfer (STAT, NOOP, QUIT, REIN) on downloads and uploads, passive and active, in plain
FTP and under PROT P, against vsftpd, proftpd, pure-ftpd and pyftpdlib; REIN and a second login in plain and TLS
sessions. ABOR during a transfer has its own matrix (test_abort_e2e.py, test_ftps_gateway.py). Deliberate
differences from a direct connection are listed in docs/on-the-wire.md; none shows in these exchanges.
Servers that answer during a download (proftpd, pyftpdlib) must be answered before the data ends through the
gateway too: that is the point of it (a client waiting for a STAT's reply before it reads on would deadlock).
One topology for the module; the servers' cases run side by side (one thread per server, each in order).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import skip_or_fail
from ftps import FtpsWorld, build_world
from midtransfer import CLIENT, SESSION_CLIENT
from pki import Pki

pytestmark = pytest.mark.netns

BIG_NAME, BIG_SIZE = "mid.bin", 32 << 20  # far more than the path's buffers: the transfer runs when the command comes
MID_COMMANDS = ("STAT", "NOOP", "QUIT", "REIN")
TRANSFER_DONE = r"(226|250|421|425|426|450|451|452|551|552) "  # a transfer's own final reply (alg.ftp.channelstate)
# name in the world -> (kind, TLS, answers commands during a transfer at once)
SERVERS = {
    "plain": ("vsftpd", False, False),
    "pyftpdlib": ("pyftpdlib", False, True),
    "proftpd-plain": ("proftpd", False, True),
    "pure-ftpd-plain": ("pure-ftpd", False, False),
    "vsftpd": ("vsftpd", True, False),
    "proftpd": ("proftpd", True, True),
    "pure-ftpd": ("pure-ftpd", True, False),
    "pyftpdlib-tls": ("pyftpdlib", True, True),
}
# Started here (the others come with tests/integration/ftps.py): name -> (port, passive ports)
EXTRA = {
    "pyftpdlib": (2124, (30400, 30419)),
    "proftpd-plain": (2125, (30420, 30439)),
    "pure-ftpd-plain": (2126, (30440, 30459)),
    "pyftpdlib-tls": (2127, (30460, 30479)),
}
FOLLOW = "pyftpdlib-tls follow"  # a second gateway before pyftpdlib-tls, with tls.upstream.data: follow


@dataclass
class Conformance:
    world: FtpsWorld
    gateway_ports: dict[str, int]
    big_sha256: str


@pytest.fixture(scope="module")
def conformance(pki: Pki, request: pytest.FixtureRequest) -> Iterator[Conformance]:
    if importlib.util.find_spec("OpenSSL") is None:
        skip_or_fail("pyftpdlib's FTPS needs pyOpenSSL (the test extra)")
    for world in build_world(pki, request, abor_file=False):
        for name, (port, passive) in EXTRA.items():
            kind, tls, _ = SERVERS[name]
            world.add_server(name, kind, port, passive, pki.upstream if tls else None)
        payload = random.Random(BIG_SIZE).randbytes(BIG_SIZE)
        for server in world.servers.values():
            server.put_file(BIG_NAME, payload)
        ports = {name: world.gateway(name, tls_both=tls)[1] for name, (_, tls, _) in SERVERS.items()}
        ports[FOLLOW] = world.gateway("pyftpdlib-tls", "--tls-upstream-data", "follow")[1]
        yield Conformance(world, ports, hashlib.sha256(payload).hexdigest())


def run(conformance: Conformance, name: str, script: str, spec: dict, *, direct: bool, via: str = "") -> object:
    """Run a client script directly against `name` or through its gateway (`via`: another gateway's key)."""
    world = conformance.world
    server = world.servers[name]
    spec = {
        **spec,
        "host": str(server.addr if direct else world.topo.public_addr),
        "port": server.port if direct else conformance.gateway_ports[via or name],
        "user": server.user,
        "password": server.password,
        "tls": SERVERS[name][1],
    }
    host = world.topo.server if direct else world.topo.client
    done = host.run([sys.executable, "-c", script], input=json.dumps(spec), timeout=60)
    assert done.returncode == 0, f"{name} direct={direct}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- commands during a transfer ------------------------------------------------------------------------------


def mid_cases(name: str) -> list[tuple[str, str, bool]]:
    """Each command on a download and an upload, one passive and one active (pyftpdlib: passive only, as it
    does not answer a new session's USER while an active-mode one is still closing)."""
    cases = []
    for index, command in enumerate(MID_COMMANDS):
        for turn, direction in enumerate(("download", "upload")):
            passive = SERVERS[name][0] == "pyftpdlib" or (index + turn) % 2 == 0
            cases.append((command, direction, passive))
    return cases


def shape(events: list[list[str]]) -> list[str]:
    """What must match: each reply's code (its last line: whether a server adds a statistics line, making it
    multi-line, is its own timing; texts are its own words), where each command went, and where the control
    connection closed."""
    out = []
    for kind, text in events:
        if kind == "reply":
            if re.match(r"\d{3} ", text):
                out.append(text[:3])
        elif text.startswith("sent ") or text == "control_closed":
            out.append(f"<{text}>")
    return out


def same_bytes(got: dict, uploaded: Path | None, download_sha256: str) -> bool:
    """After a 226 and the client's whole data: the download's bytes are the file's, the upload's file is what
    the client sent. (A transfer the server cut short, after QUIT say, has no bytes to compare.)"""
    events = got["events"]
    finals = [text for kind, text in events[1:] if kind == "reply" and re.match(TRANSFER_DONE, text)]
    complete = ["mark", "data_end"] in events and bool(finals) and finals[0][:3] in ("226", "250")
    if not complete:
        return True
    if uploaded is None:
        return bool(got["sha256"] == download_sha256)
    return hashlib.sha256(uploaded.read_bytes()).hexdigest() == got["sha256"]


def early(result: dict) -> int:
    """How many reply lines the client had before its data ended."""
    events = result["events"]
    end = events.index(["mark", "data_end"]) if ["mark", "data_end"] in events else len(events)
    return sum(1 for kind, _ in events[:end] if kind == "reply")


def finished_first(gateway: dict, direct_shape: list[str], gateway_shape: list[str]) -> bool:
    """The upload reached the server whole before it acted on the command (the gateway's buffers carried the
    last blocks a moment sooner than the direct run's socket did): the server's 226 is then its true answer.
    A race of the two connections, not a difference of the gateway's: the data ended cleanly, the 226 is the
    only extra reply, and the bytes arrived (same_bytes checked them)."""
    if ["mark", "data_end"] not in gateway["events"] or "226" in direct_shape:
        return False
    extra = list(gateway_shape)
    if "226" not in extra:
        return False
    extra.remove("226")
    return extra == direct_shape


def mid_transfer(conformance: Conformance, name: str) -> list[str]:
    """Every case of one server, directly then through the gateway; the differences found, in words."""
    server = conformance.world.servers[name]
    answers_at_once = SERVERS[name][2]
    problems = []
    for command, direction, passive in mid_cases(name):
        where = f"{name} {command} during a {'passive' if passive else 'active'} {direction}"
        results = {}
        for direct in (True, False):
            upload = f"upload/{command}-{direction}-{passive}-{'direct' if direct else 'gateway'}.bin"
            spec = {
                "direction": direction,
                "passive": passive,
                "file": BIG_NAME if direction == "download" else upload,
                "before": 256 << 10,
                "commands": [command],
                "wait": 1.0,
                "early_close": False,
                "after_blocks": 16,
                "settle": 2.0,  # bounds how long the replies after the data may take, on a loaded machine
                "then": "NOOP",
            }
            got = run(conformance, name, CLIENT, spec, direct=direct)
            assert isinstance(got, dict)
            results[direct] = got
            arrived = server.path(upload) if direction == "upload" else None
            if not same_bytes(got, arrived, conformance.big_sha256):
                problems.append(f"{where} direct={direct}: the {direction}'s bytes differ")
        direct_shape = shape(results[True]["events"])
        gateway_shape = shape(results[False]["events"])
        if direct_shape != gateway_shape and finished_first(results[False], direct_shape, gateway_shape):
            continue
        if direct_shape != gateway_shape:
            problems.append(f"{where}:\n   direct  {direct_shape}\n   gateway {gateway_shape}")
            problems.append(f"   direct {results[True]['events']}\n   gateway {results[False]['events']}")
        elif answers_at_once and direction == "download" and early(results[False]) < early(results[True]):
            # Whatever the server answered during a download directly, before the client read its data to the
            # end, the gateway passed on before that too. (Not the reverse: proftpd answers only between its
            # data writes, so a client that stops reading may get the reply later directly than through the
            # gateway, which keeps reading. During an upload proftpd answers only as data arrives, when that is
            # depends on how the data is chunked on the way: the order of the replies is compared, not when.)
            problems.append(f"{where}: held until the data ended: {gateway_shape}, directly {direct_shape}")
    return problems


def test_commands_during_a_transfer_get_the_same_replies_in_the_same_order(conformance: Conformance) -> None:
    with ThreadPoolExecutor(len(SERVERS)) as pool:
        found = dict(zip(SERVERS, pool.map(lambda name: mid_transfer(conformance, name), SERVERS), strict=True))
    problems = [problem for name in SERVERS for problem in found[name]]
    assert not problems, "\n".join(problems) + conformance.world.topo.logs()[-3000:]


# ---- the client ending its data connection early --------------------------------------------------------------


def early_close(conformance: Conformance, name: str) -> list[str]:
    """The client reads 256 KiB of the 32 MiB download and drops its data connection (passive and active), or
    sends 256 KiB and ends its upload there (cleanly: close_notify under TLS): the same replies as directly, and
    the upload's file is what was sent. Directly vsftpd, proftpd and pyftpdlib answer the dropped download with
    426; pure-ftpd over TLS sends only its statistics (as 150 lines) and no final reply."""
    server = conformance.world.servers[name]
    cases = [("download", True), ("upload", True)]
    if SERVERS[name][0] != "pyftpdlib":
        cases.insert(1, ("download", False))
    problems = []
    for direction, passive in cases:
        where = f"{name}: the client closes a {'passive' if passive else 'active'} {direction} early"
        shapes = {}
        for direct in (True, False):
            upload = f"upload/early-{passive}-{'direct' if direct else 'gateway'}.bin"
            spec = {
                "direction": direction,
                "passive": passive,
                "file": BIG_NAME if direction == "download" else upload,
                "before": 256 << 10,
                "commands": [],
                "wait": 0,
                "early_close": True,
                "after_blocks": 0,
                "settle": 1.0,
                "then": "NOOP",
            }
            got = run(conformance, name, CLIENT, spec, direct=direct)
            assert isinstance(got, dict)
            shapes[direct] = shape(got["events"])
            if direction == "upload" and hashlib.sha256(server.path(upload).read_bytes()).hexdigest() != got["sha256"]:
                problems.append(f"{where} direct={direct}: the upload's bytes differ")
        if shapes[False] not in allowed(shapes[True]):
            problems.append(f"{where}:\n   direct  {shapes[True]}\n   gateway {shapes[False]}")
    return problems


def allowed(direct: list[str]) -> list[list[str]]:
    """The direct replies, or (the safer difference, docs/on-the-wire.md) those with a 426 of the gateway's where
    the server sent no final reply for the transfer it saw fail (pure-ftpd over TLS)."""
    cut = direct.index("<sent NOOP>") if "<sent NOOP>" in direct else len(direct)
    if any(re.match(TRANSFER_DONE, code + " ") for code in direct[1:cut]):
        return [direct]
    # pure-ftpd over TLS answers a dropped download with a second 150 line and no final reply; through the gateway
    # the client gets the first 150, then the gateway's 426 in the second's place: an end it can act on.
    return [direct, [*direct[:cut], "426", *direct[cut:]], [*direct[:1], "426", *direct[cut:]]]


def test_a_client_ending_its_data_connection_early_gets_what_the_server_says(conformance: Conformance) -> None:
    with ThreadPoolExecutor(len(SERVERS)) as pool:
        found = dict(zip(SERVERS, pool.map(lambda name: early_close(conformance, name), SERVERS), strict=True))
    problems = [problem for name in SERVERS for problem in found[name]]
    assert not problems, "\n".join(problems) + conformance.world.topo.logs()[-3000:]


# ---- REIN and a second login ---------------------------------------------------------------------------------

PROTECT = ("PBSZ 0", "PROT P")  # TLS sessions: again after each login, as pyftpdlib forgets them
SESSION = [
    "USER $USER",
    "PASS $PASS",
    "TYPE I",
    "RETR small.bin",
    "REIN",  # pyftpdlib: 230, and the session is as at connect (TYPE A, PROT C again); the others refuse it
    *PROTECT,
    "USER $USER",
    "PASS $PASS",
    "TYPE I",
    "RETR small.bin",
    "USER $USER",  # pyftpdlib: 331, a new login; proftpd: 230 as it was; vsftpd, pure-ftpd: 530
    "PASS $PASS",
    *PROTECT,
    "TYPE I",
    "RETR small.bin",
    "NOOP",
    "QUIT",
]


def session_shape(steps: list[list[str]]) -> list[str]:
    """Each step and its reply codes; 125 and 150 are one (pyftpdlib says 125 when it took the data connection
    before the RETR, as it does through the gateway, which connects at once, and 150 when after)."""
    return [f"{step[0]} {' '.join(part[:3] for part in step[1:3])}".replace(" 125", " 150") for step in steps]


def relogin(conformance: Conformance, route: str) -> list[str]:
    name = route.split()[0]
    tls = SERVERS[name][1]
    steps = [*PROTECT, *SESSION] if tls else [step for step in SESSION if step not in PROTECT]
    spec = {"steps": steps, "protected": tls}
    problems = []
    results = {
        direct: run(conformance, name, SESSION_CLIENT, spec, direct=direct, via=route) for direct in (True, False)
    }
    expected = hashlib.sha256(conformance.world.servers[name].path("small.bin").read_bytes()).hexdigest()
    for direct, got in results.items():
        assert isinstance(got, list)
        for step in got:
            if step[0] == "RETR" and len(step) == 4 and step[2].startswith("226") and step[3] != expected:
                problems.append(f"{name} direct={direct}: a RETR after {step} brought other bytes")
    direct_shape, gateway_shape = session_shape(results[True]), session_shape(results[False])  # type: ignore[arg-type]
    if direct_shape != gateway_shape:
        problems.append(f"{route} REIN and second login:\n   direct  {direct_shape}\n   gateway {gateway_shape}")
    return problems


def test_rein_and_a_second_login_leave_the_session_as_the_server_has_it(conformance: Conformance) -> None:
    """pyftpdlib over TLS forgets PBSZ and PROT on REIN and on a new USER: before the gateway sent them again,
    its next PASV got "550 SSL/TLS required on the data channel." (upstream data private) and the client's PROT P
    "503 PROT not allowed before PBSZ." (upstream data follow)."""
    routes = [*SERVERS, FOLLOW]
    with ThreadPoolExecutor(len(routes)) as pool:
        found = dict(zip(routes, pool.map(lambda route: relogin(conformance, route), routes), strict=True))
    problems = [problem for route in routes for problem in found[route]]
    assert not problems, "\n".join(problems) + conformance.world.topo.logs()[-3000:]
