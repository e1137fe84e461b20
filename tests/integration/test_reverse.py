"""Reverse mode end to end: real servers behind the gateway, real clients in front, every mode, byte-exact.

Topology: client 203.0.113.10 -> gateway 203.0.113.1 | 198.51.100.1 -> server 198.51.100.10 (announcing its
internal address). The client has no route to 198.51.100.0/24, so only a rewritten 227/229 can work.
Every test runs over both data paths: the relay, and the kernel (nftables mappings; the gateway forwards).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clients import MODES, Mode, curl_download, curl_list, curl_upload, lftp
from conftest import require_netns, require_server
from gateway import Gateway, random_file, sha256_file, start_reverse_gateway
from netns import Topology
from scenarios import ftplib_round_trip
from servers import KINDS, FtpServer, FtpTarget, start_server

pytestmark = pytest.mark.netns

SMALL = 1 << 20
BIG = 64 << 20


@dataclass
class Setup:
    topo: Topology
    server: FtpServer
    gateway: Gateway
    target: FtpTarget  # the gateway, with the server's credentials
    files: Path


DATA_PATHS = ("relay", "kernel")


@pytest.fixture(
    scope="module",
    params=[(k, p) for k in KINDS for p in DATA_PATHS],
    ids=[f"{k}-{p}" for k in KINDS for p in DATA_PATHS],
)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One topology, one real server of each kind, one gateway per data path: shared by the tests of this module."""
    kind, data_path = request.param
    require_netns()
    require_server(kind)
    files = tmp_path_factory.mktemp(f"files-{kind}-{data_path}")
    with Topology("reverse") as topo:
        if data_path == "kernel":
            topo.gw.sysctl("net.ipv4.ip_forward", 1)
        server = start_server(kind, topo.server)
        for name, size in (("empty.bin", 0), ("one.bin", 1), ("small.bin", SMALL), ("big.bin", BIG)):
            random_file(files / name, size)
            server.put_file(name, (files / name).read_bytes())
        gateway = start_reverse_gateway(topo, "--data-path", data_path)
        assert f"data_path={data_path}" in gateway.log()
        try:
            yield Setup(topo, server, gateway, server.target(topo.public_addr, gateway.port), files)
        finally:
            gateway.stop()
            server.stop()


def check_upload(setup: Setup, remote: str, local: Path) -> None:
    assert setup.server.sha256(remote) == sha256_file(local), f"{remote} differs on the server"


def assert_rewritten(lines: list[str]) -> None:
    """Passive replies named only the gateway's public address, never the server's internal one.

    (Banner text may name it, proftpd's does: that is the server's prose, not a data address.)"""
    passive = [line for line in lines if line.startswith(("227", "229"))]
    assert all("198,51,100" not in line and "198.51.100" not in line for line in passive), passive
    for line in passive:
        if line.startswith("227"):
            assert "203,0,113,1," in line, line


@pytest.mark.parametrize("mode", MODES)
def test_curl_list_download_upload(setup: Setup, mode: Mode, tmp_path: Path) -> None:
    client = setup.topo.client
    listing = curl_list(client, setup.target, mode=mode).check()
    assert "small.bin" in listing.stdout
    assert_rewritten(listing.received())
    expected_verb = {"pasv": "PASV", "epsv": "EPSV", "port": "PORT", "eprt": "EPRT"}[mode]
    assert expected_verb in [line.split(" ")[0] for line in listing.sent()], listing.sent()
    for name in ("empty.bin", "one.bin", "small.bin"):
        dest = tmp_path / name
        curl_download(client, setup.target, name, dest, mode=mode).check()
        assert sha256_file(dest) == sha256_file(setup.files / name), name
    remote = f"upload/up-curl-{mode}.bin"
    curl_upload(client, setup.target, setup.files / "small.bin", remote, mode=mode).check()
    check_upload(setup, remote, setup.files / "small.bin")


@pytest.mark.parametrize("mode", MODES)
def test_curl_64_mib_both_ways(setup: Setup, mode: Mode, tmp_path: Path) -> None:
    client = setup.topo.client
    dest = tmp_path / "big.bin"
    curl_download(client, setup.target, "big.bin", dest, mode=mode, timeout_s=60).check()
    assert sha256_file(dest) == sha256_file(setup.files / "big.bin")
    remote = f"upload/big-up-{mode}.bin"
    curl_upload(client, setup.target, setup.files / "big.bin", remote, mode=mode, timeout_s=60).check()
    check_upload(setup, remote, setup.files / "big.bin")


@pytest.mark.parametrize("mode", ["pasv", "epsv", "port"])
def test_lftp_session(setup: Setup, mode: Mode, tmp_path: Path) -> None:
    dest = tmp_path / "small.bin"
    remote = f"upload/up-lftp-{mode}.bin"
    result = lftp(
        setup.topo.client,
        setup.target,
        ["ls", f"get small.bin -o {dest}", f"put {setup.files / 'small.bin'} -o {remote}", "nlist"],
        mode=mode,
    ).check()
    assert "small.bin" in result.stdout
    assert sha256_file(dest) == sha256_file(setup.files / "small.bin")
    check_upload(setup, remote, setup.files / "small.bin")
    assert_rewritten(result.received())


@pytest.mark.parametrize("mode", MODES)
def test_ftplib_session(setup: Setup, mode: Mode, tmp_path: Path) -> None:
    result = ftplib_round_trip(setup.topo.client, setup.target, setup.server, setup.files, mode, tmp_path)
    assert_rewritten(result.received())


def test_curl_resume_download_and_upload(setup: Setup, tmp_path: Path) -> None:
    client = setup.topo.client
    source = (setup.files / "small.bin").read_bytes()
    partial = tmp_path / "partial.bin"
    partial.write_bytes(source[:1000])
    curl_download(client, setup.target, "small.bin", partial, resume=True).check()
    assert sha256_file(partial) == sha256_file(setup.files / "small.bin")
    setup.server.put_file("upload/resume-up.bin", source[:5000])
    curl_upload(client, setup.target, setup.files / "small.bin", "upload/resume-up.bin", resume=True).check()
    check_upload(setup, "upload/resume-up.bin", setup.files / "small.bin")


ABORT_SCRIPT = r"""
import json, re, socket, sys
spec = json.load(sys.stdin)
control = socket.create_connection((spec["host"], 21), timeout=10)
buffer = b""

def line(timeout=10.0):
    global buffer
    control.settimeout(timeout)
    while b"\n" not in buffer:
        chunk = control.recv(4096)
        if not chunk:
            raise EOFError("control closed")
        buffer += chunk
    text, buffer = buffer.split(b"\n", 1)
    return text.decode().rstrip("\r")

def reply(timeout=10.0):
    first = line(timeout)
    while first[3:4] == "-" or not first[:3].isdigit():
        last = line(timeout)
        if last[:3] == first[:3] and last[3:4] == " ":
            return last
    return first

def command(text, flags=0):
    control.sendall(text.encode() + b"\r\n", flags)

reply()
command("USER " + spec["user"]); reply()
command("PASS " + spec["password"]); reply()
command("TYPE I"); reply()
if spec["passive"]:
    command("PASV")
    numbers = [int(n) for n in re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", reply()).groups()]
    data = socket.create_connection((".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]), timeout=10)
    command("RETR big.bin")
    reply()  # 150
else:
    listener = socket.create_server((control.getsockname()[0], 0))
    host, port = listener.getsockname()
    command("PORT " + ",".join(host.split(".") + [str(port >> 8), str(port & 255)])); reply()
    command("RETR big.bin")
    reply()  # 150
    listener.settimeout(10)
    data, _ = listener.accept()
got = len(data.recv(65536))
# Like lftp and curl: drop the data connection, then ABOR as urgent data (RFC 959 4.1.3).
data.close()
command("ABOR", socket.MSG_OOB)
codes = []
while True:  # servers differ in how many replies an ABOR gets: take all that come within the window
    try:
        codes.append(reply(spec["window_s"])[:3])
    except TimeoutError:
        break
command("NOOP")
noop = reply()[:3]
command("QUIT")
print(json.dumps({"got": got, "codes": codes, "noop": noop}))
"""


def run_abort(setup: Setup, host_addr: str, passive: bool, direct: bool) -> dict[str, object]:
    import json
    import sys

    spec = {
        "host": host_addr,
        "port": 21,
        "user": setup.target.user,
        "password": setup.target.password,
        "passive": passive,
        # Through the gateway, "a few seconds" (issue 13): when the server answers nothing, the gateway ends the
        # data connection after 1 s, asks with a NOOP after 2 s and then answers the transfer and the ABOR itself.
        "window_s": 1.0 if direct else 2.5,
    }
    host = setup.topo.server if direct else setup.topo.client
    done = host.run([sys.executable, "-c", ABORT_SCRIPT], input=json.dumps(spec), timeout=30)
    assert done.returncode == 0, done.stderr + ("" if direct else setup.gateway.log()[-3000:])
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_abort_during_a_transfer_behaves_as_without_the_gateway(setup: Setup, passive: bool) -> None:
    """ABOR mid-RETR: the same replies as talking to the server directly, and the session goes on."""
    # With the data in the kernel, the client's reset can reach pure-ftpd before it writes: it then answers neither
    # RETR nor the synch ABOR (directly as well, at times), and the gateway answers both (426, 226) itself.
    direct = run_abort(setup, str(setup.server.addr), passive, direct=True)
    through = run_abort(setup, str(setup.target.addr), passive, direct=False)
    # How many replies an ABOR gets, and which, depends on the server and on timing (pure-ftpd may have
    # sent the whole file already). This client marks its newline urgent (ftplib's style): directly,
    # pure-ftpd may answer "500" and proftpd answers the next command with "500", as they read "ABOR\r".
    # Through the gateway the ABOR reaches them as BSD ftp sends it (test_abort_e2e covers every style).
    codes = [str(code) for code in through["codes"]]  # type: ignore[attr-defined]
    assert codes and set(codes) <= {"150", "225", "226", "426", "451"}, (
        direct,
        through,
        "\n" + setup.gateway.log()[-4000:],
    )
    assert set(direct["codes"]) <= {"150", "225", "226", "426", "451", "500"}, direct  # type: ignore[arg-type]
    # A reply the gateway held and never released would sit in front of the NOOP's: NOOP would not get 200.
    assert through["noop"] == "200", (direct, through)
