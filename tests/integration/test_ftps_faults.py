"""FTPS bad input and faults (issue 9, item 6): each one costs the offending session at most, with a clear reply.

Raw clients write exact bytes: not a ClientHello after AUTH TLS, half a ClientHello and silence (the
handshake timeout), plaintext commands pipelined behind AUTH TLS (the STARTTLS command injection), a data
connection in clear after PROT P, PBSZ/PROT without AUTH. Upstreams with an expired, wrong-name and untrusted
certificate make the gateway answer 421 with the reason. After each, the gateway still serves a curl client,
and its log holds no traceback.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import ClientTls, curl_list, ftplib_run
from ftps import FtpsWorld, build_world
from hostile import Closed, RawFtp, Reply, read_all
from pki import Pki
from servers import FtpTarget

pytestmark = pytest.mark.netns

HANDSHAKE_TIMEOUT_S = 2.0
BAD_CERT_PORTS = {"expired": 2131, "wrong-name": 2132, "untrusted": 2133}


@pytest.fixture(scope="module")
def world(pki: Pki, request: pytest.FixtureRequest) -> Iterator[FtpsWorld]:
    for world in build_world(pki, request, abor_file=False):
        for offset, (name, port) in enumerate(BAD_CERT_PORTS.items()):
            first = 30400 + offset * 100
            certificate = {"expired": pki.expired, "wrong-name": pki.wrong_name, "untrusted": pki.untrusted}[name]
            world.add_server(name, "vsftpd", port, (first, first + 19), certificate)
        yield world


def setup(world: FtpsWorld, name: str) -> FtpTarget:
    """The gateway for `name`, made on first use: "tls" TLS both legs to vsftpd with a 2 s handshake timeout;
    "allow-plain" client TLS allowed, plain vsftpd behind; "reuse" require_session_reuse; a BAD_CERT_PORTS name:
    plain client, TLS upstream with that certificate; "untrusted-ok": the untrusted one with its own CA."""
    if name not in world.setups:
        config = {"tls": {"client": {"handshake_timeout_s": HANDSHAKE_TIMEOUT_S}}, "timeouts": {"data_connect_s": 3}}
        if name == "tls":
            _, port = world.gateway("vsftpd", config=config)
        elif name == "allow-plain":
            _, port = world.gateway("plain", *world.client_tls_flags("allow"), tls_both=False)
        elif name == "reuse":
            _, port = world.gateway("vsftpd", "--tls-require-session-reuse")
        elif name in BAD_CERT_PORTS:
            _, port = world.gateway(name, *world.upstream_tls_flags(), tls_both=False)
        elif name in ("auto-plain", "require-plain"):
            mode = name.split("-")[0]
            _, port = world.gateway("plain", *world.client_tls_flags(), *world.upstream_tls_flags(mode), tls_both=False)
        elif name == "untrusted-ok":
            flags = world.upstream_tls_flags(ca_file=world.pki.other_ca_file)
            _, port = world.gateway("untrusted", *flags, tls_both=False)
        else:
            raise ValueError(name)
        world.setups[name] = port
    behind = {
        "allow-plain": "plain",
        "auto-plain": "plain",
        "require-plain": "plain",
        "untrusted-ok": "untrusted",
        **{bad: bad for bad in BAD_CERT_PORTS},
    }
    server = behind.get(name, "vsftpd")
    return world.servers[server].target(world.topo.public_addr, world.setups[name])


def client_context(world: FtpsWorld) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(world.pki.ca_file))


def client_hello(world: FtpsWorld) -> bytes:
    """The bytes of a real ClientHello, made with a memory BIO (no socket)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(world).wrap_bio(incoming, outgoing, server_hostname="203.0.113.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def auth_tls(world: FtpsWorld, target: FtpTarget, extra: bytes = b"") -> RawFtp:
    raw = RawFtp.open(world.topo.client, target.addr, target.port)
    assert raw.reply().code == 220
    raw.send(b"AUTH TLS\r\n" + extra)
    answer = raw.reply()
    assert answer.code == 234, answer
    return raw


def start_tls(world: FtpsWorld, raw: RawFtp) -> None:
    assert raw.buffer == b"", "nothing may follow the 234 in clear"
    raw.sock = client_context(world).wrap_socket(raw.sock, server_hostname="203.0.113.1")


def closed_within(raw: RawFtp, timeout_s: float) -> tuple[bool, bytes]:
    """Whether the gateway closed the connection within timeout_s, and what it sent before."""
    try:
        data = read_all(raw.sock, timeout_s)
    except TimeoutError:
        return False, b""
    except OSError:
        return True, b""
    return True, data


def still_serves(world: FtpsWorld, target: FtpTarget) -> None:
    listing = curl_list(world.topo.client, target, tls=ClientTls(world.pki.ca_file)).check()
    assert "small.bin" in listing.stdout


def no_traceback(world: FtpsWorld) -> None:
    for gateway in world.gateways:
        assert "Traceback" not in gateway.log(), gateway.log()[-3000:]


# --------------------------------------------------------------------------- the client's handshake


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b"\x00" * 600],
    ids=["http", "bad-record", "zeros"],
)
def test_bytes_that_are_not_a_client_hello_after_auth_tls_end_that_session_only(
    world: FtpsWorld, garbage: bytes
) -> None:
    target = setup(world, "tls")
    raw = auth_tls(world, target)
    raw.send(garbage)
    closed, data = closed_within(raw, HANDSHAKE_TIMEOUT_S + 8)
    raw.sock.close()
    assert closed, "the gateway must drop a session whose TLS handshake failed"
    assert not re.search(rb"^\d{3} ", data, re.M), f"no FTP reply in clear after 234: {data!r}"
    still_serves(world, target)
    no_traceback(world)


def test_a_client_that_stops_mid_handshake_is_dropped_after_the_handshake_timeout(world: FtpsWorld) -> None:
    target = setup(world, "tls")
    raw = auth_tls(world, target)
    hello = client_hello(world)
    raw.send(hello[: len(hello) // 2])
    started = time.monotonic()
    closed, _ = closed_within(raw, HANDSHAKE_TIMEOUT_S + 10)
    waited = time.monotonic() - started
    raw.sock.close()
    assert closed, f"still open after {waited:.1f} s"
    assert HANDSHAKE_TIMEOUT_S - 0.5 <= waited <= HANDSHAKE_TIMEOUT_S + 8, waited
    still_serves(world, target)


def test_plaintext_commands_pipelined_after_auth_tls_are_never_executed(world: FtpsWorld) -> None:
    """The STARTTLS injection (CVE-2011-0411 class): bytes sent in clear behind AUTH TLS must not become
    commands of the encrypted session."""
    target = setup(world, "tls")
    raw = auth_tls(world, target, extra=b"USER anonymous\r\nPASS injected@x\r\n")
    raw.buffer = b""  # whatever the client sent is the client's; the test checks what the gateway answers
    try:
        start_tls(world, raw)
        first = raw.cmd("NOOP")
    except (Closed, ssl.SSLError, OSError):
        still_serves(world, target)  # refusing the whole session is also safe
        return
    # NOOP's own answer (vsftpd: 530 before login), not the injected USER's 331 or PASS's 230.
    assert first.code in (200, 530) and not first.text.startswith(("331", "230")), first
    assert raw.cmd("PWD").code in (530, 503), "not logged in: the injected USER/PASS were dropped"
    raw.expect(f"USER {target.user}", 331)  # and the session itself goes on, over TLS
    raw.expect(f"PASS {target.password}", 230)
    raw.sock.close()


# --------------------------------------------------------------------------- data connections and PROT


def tls_login(world: FtpsWorld, target: FtpTarget) -> RawFtp:
    raw = auth_tls(world, target)
    start_tls(world, raw)
    raw.expect(f"USER {target.user}", 331)
    raw.expect(f"PASS {target.password}", 230)
    raw.expect("PBSZ 0", 200)
    raw.expect("PROT P", 200)
    raw.expect("TYPE I", 200)
    return raw


def final_reply(raw: RawFtp, first: Reply) -> Reply:
    return raw.reply(timeout_s=15) if first.code in (125, 150) else first


def test_a_data_connection_in_clear_after_prot_p_carries_nothing(world: FtpsWorld) -> None:
    target = setup(world, "tls")
    server = world.servers["vsftpd"]
    raw = tls_login(world, target)
    secret = b"this upload was sent in clear after PROT P\n" * 200

    host, port = raw.pasv()
    data = world.topo.client.connect(host, port)
    raw.send(b"STOR upload/clear-after-prot-p.bin\r\n")
    data.sendall(secret)  # plaintext where a ClientHello belongs
    data.shutdown(socket.SHUT_WR)
    answer = final_reply(raw, raw.reply(timeout_s=15))
    data.close()
    assert answer.code >= 400, f"a clear upload after PROT P must fail: {answer}"
    uploaded = server.path("upload/clear-after-prot-p.bin")
    assert not uploaded.exists() or secret[:40] not in uploaded.read_bytes()

    host, port = raw.pasv()
    data = world.topo.client.connect(host, port)
    raw.send(b"RETR hello.txt\r\n")
    got = read_all(data, HANDSHAKE_TIMEOUT_S + 10)  # never starts TLS: must get nothing readable
    answer = final_reply(raw, raw.reply(timeout_s=15))
    data.close()
    assert b"hello from" not in got, got
    assert answer.code >= 400, answer
    assert raw.cmd("NOOP").code == 200, "a data-channel failure keeps the session"
    raw.sock.close()
    no_traceback(world)


def test_pbsz_and_prot_without_auth_tls_are_refused_and_plain_ftp_goes_on(world: FtpsWorld) -> None:
    target = setup(world, "allow-plain")
    raw = RawFtp.open(world.topo.client, target.addr, target.port)
    raw.login(target.user, target.password)
    assert raw.cmd("PBSZ 0").code == 503
    assert raw.cmd("PROT P").code == 503
    assert raw.cmd("CCC").code >= 500
    raw.sock.close()
    listing = curl_list(world.topo.client, target).check()  # plain FTP still served under mode allow
    assert "small.bin" in listing.stdout


def test_require_session_reuse_refuses_a_data_connection_that_does_not_resume(world: FtpsWorld, tmp_path: Path) -> None:
    target = setup(world, "reuse")
    tls = ClientTls(world.pki.ca_file, reuse=False)
    stock = ftplib_run(world.topo.client, target, [("retr", "small.bin", tmp_path / "stock.bin")], tls=tls)
    assert not stock.ok, str(stock)
    assert not (tmp_path / "stock.bin").exists() or (tmp_path / "stock.bin").read_bytes() == b""
    [gateway] = [g for g in world.gateways if g.port == target.port]
    assert re.search(r"data connection failed .*reuse", gateway.log()), gateway.log()[-3000:]
    reusing = ftplib_run(
        world.topo.client,
        target,
        [("retr", "small.bin", tmp_path / "reuse.bin")],
        tls=ClientTls(world.pki.ca_file, reuse=True),
    )
    assert reusing.ok, str(reusing)
    assert (tmp_path / "reuse.bin").read_bytes() == world.servers["vsftpd"].path("small.bin").read_bytes()


# --------------------------------------------------------------------------- the upstream's certificate


def first_replies(world: FtpsWorld, target: FtpTarget) -> list[Reply]:
    """Plain client: banner, USER, PASS, as far as they go; every reply until a 421 or the end."""
    raw = RawFtp.open(world.topo.client, target.addr, target.port)
    replies: list[Reply] = []
    try:
        for line in (None, f"USER {target.user}", f"PASS {target.password}"):
            if line is not None:
                raw.send(line + "\r\n")
            replies.append(raw.reply(timeout_s=15))
            if replies[-1].code == 421:
                break
    except (Closed, OSError):
        pass
    raw.sock.close()
    return replies


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("expired", r"expired"),
        ("wrong-name", r"name|hostname|mismatch|match"),
        ("untrusted", r"issuer|untrusted|unknown ca|self.signed|verif"),
    ],
)
def test_a_bad_upstream_certificate_gets_421_naming_the_reason(world: FtpsWorld, name: str, reason: str) -> None:
    replies = first_replies(world, setup(world, name))
    refusal = [r for r in replies if r.code == 421]
    print(f"{name}: {refusal[0] if refusal else replies}")
    assert refusal, [str(r) for r in replies]
    assert re.search(reason, refusal[0].text, re.I), refusal[0]
    assert "certificate" in refusal[0].text.lower(), refusal[0]
    assert not any(r.code == 230 for r in replies)
    no_traceback(world)


def test_the_untrusted_certificate_is_fine_with_its_own_ca(world: FtpsWorld) -> None:
    """Control for the test above: the same server passes once the gateway trusts its CA."""
    replies = first_replies(world, setup(world, "untrusted-ok"))
    assert replies and replies[-1].code == 230, [str(r) for r in replies]


def test_prot_p_toward_a_server_without_tls(world: FtpsWorld, tmp_path: Path) -> None:
    """upstream auto: the plain server's FEAT lists no AUTH TLS, so its leg stays plain while the client's data
    is private; upstream require: the client is told, with 421, that the server offers no TLS."""
    server = world.servers["plain"]
    target = setup(world, "auto-plain")
    result = ftplib_run(
        world.topo.client, target, [("retr", "big.bin", tmp_path / "big.bin")], tls=ClientTls(world.pki.ca_file)
    )
    assert result.ok, str(result)
    assert (tmp_path / "big.bin").read_bytes() == server.path("big.bin").read_bytes()
    assert "PROT P" in result.sent()

    raw = RawFtp.open(world.topo.client, target.addr, setup(world, "require-plain").port)
    try:
        answer = raw.reply(timeout_s=15)
    except Closed as closed:
        raise AssertionError(f"closed without a reply: {closed.data!r}") from None
    finally:
        raw.sock.close()
    assert answer.code == 421 and re.search(r"TLS|AUTH", answer.text), answer
    no_traceback(world)
