"""`ftp-alg diagnose` against the FTP-through-NAT scenarios, each built in namespaces with a real vsftpd.

For each failing scenario the test then starts the `ftp-alg run` line that diagnose printed, as printed, in
that topology, and runs diagnose again: every mode that failed now passes. The kernel FTP helper here is
built into the kernel (CONFIG_NF_CONNTRACK_FTP=y, CONFIG_NF_NAT_FTP=y); nft attaches it per flow.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import require_netns
from gateway import start_reverse_gateway, wait_listening
from netns import REPO_ROOT, Host, Topology
from pki import UPSTREAM_NAME, Pki
from servers import FtpServer

from alg.diagnose.fixes import PASSIVE_RANGE, TRANSPARENT_PORT, helper_table

pytestmark = pytest.mark.netns

WAIT = "2"  # --wait: each network wait, in seconds (the firewall scenario waits it out twice)
SERVER_PASV = (30000, 30019)
RULESET = REPO_ROOT / "deploy" / "nftables" / "ftp-alg-transparent.nft"


# --------------------------------------------------------------------------- topologies


def nat_box(topo: Topology) -> None:
    """client 203.0.113.10 ─ [pub 203.0.113.1  NAT box  int 198.51.100.1] ─ server 198.51.100.10.

    The client has no route to 198.51.100.0/24: it reaches the server only through the NAT box's port
    forwards. The server's default route is the NAT box, which forwards and masquerades what it sends out."""
    client = topo.add_host("client", {"eth0": "203.0.113.10/24"})
    gw = topo.add_host("gw", {"pub": "203.0.113.1/24", "int": "198.51.100.1/24"})
    server = topo.add_host("server", {"eth0": "198.51.100.10/24"})
    topo.link(gw, "pub", client, "eth0")
    topo.link(gw, "int", server, "eth0")
    server.ip("route", "add", "default", "via", "198.51.100.1")
    gw.sysctl("net.ipv4.ip_forward", 1)
    gw.nft("""
table ip nat_out {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "pub" ip saddr 198.51.100.0/24 masquerade
    }
}
""")


def forward_ports(gw: Host, ports: str) -> None:
    gw.nft(f"""
table ip nat_box {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "pub" tcp dport {{ {ports} }} dnat to 198.51.100.10
    }}
}}
""")


@pytest.fixture
def topo_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Topology]]:
    require_netns()
    built: list[Topology] = []

    def make(name: str, builder: Callable[[Topology], None] | None = None) -> Topology:
        topo = Topology(name, builder=builder).build()
        built.append(topo)
        return topo

    yield make
    for topo in reversed(built):
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(topo.logs())
        topo.close()


# --------------------------------------------------------------------------- running diagnose


def diagnose(host: Host, url: str, *args: str, text: bool = False) -> tuple[int, Any]:
    """Run `ftp-alg diagnose` in `host`; (exit status, the JSON report, or the text report when `text`)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), NETRC="/nonexistent")
    argv = [sys.executable, "-m", "alg.cli", "diagnose", url, "--wait", WAIT, *args]
    if not text:
        argv.append("--json")
    done = host.run(argv, env=env, timeout=90)
    assert done.returncode in (0, 1, 2), f"{done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.returncode, done.stdout if text else json.loads(done.stdout)


def scenarios(report: dict[str, Any]) -> set[int]:
    return {finding["scenario"] for finding in report["findings"] if finding["scenario"] is not None}


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {("TLS " if mode["tls"] else "") + mode["mode"]: mode["status"] for mode in report["modes"]}


def printed_gateway_command(report: dict[str, Any]) -> str:
    commands = [fix["command"] for fix in report["fixes"] if fix["kind"] == "ftp-alg"]
    assert len(commands) == 1, report["fixes"]
    return str(commands[0])


def start_printed(topo: Topology, command: str) -> None:
    """Start the printed `ftp-alg run ...` line, as printed, in the NAT box."""
    argv = shlex.split(command)
    assert argv[:2] == ["ftp-alg", "run"], command
    listen = argv[argv.index("--listen") + 1]
    ip, port = listen.rsplit(":", 1)
    process = topo.start_gateway(argv[1:])
    import ipaddress

    wait_listening(topo.gw, process, ipaddress.IPv4Address(ip), int(port))


def assert_all_pass_now(host: Host, url: str, before: dict[str, Any], *args: str) -> dict[str, Any]:
    status, after = diagnose(host, url, *args)
    assert status == 0, after
    failed_before = [mode for mode, state in statuses(before).items() if state in ("failed", "fallback")]
    assert failed_before
    assert all(statuses(after)[mode] == "ok" for mode in failed_before), statuses(after)
    return after


def vsftpd(factory: Callable[..., FtpServer], host: Host, **options: str) -> FtpServer:
    return factory("vsftpd", host, pasv_ports=SERVER_PASV, options=options or None)


# --------------------------------------------------------------------------- scenarios


def test_nat_box_without_helper_server_announces_its_private_address(
    topo_factory: Callable[..., Topology], ftp_server_factory: Callable[..., FtpServer]
) -> None:
    # Scenario 1: the NAT box forwards 21 and the passive range; vsftpd writes 198.51.100.10 into its 227.
    topo = topo_factory("nat-no-helper", nat_box)
    forward_ports(topo.gw, f"21, {SERVER_PASV[0]}-{SERVER_PASV[1]}")
    vsftpd(ftp_server_factory, topo.server)
    url = "ftp://203.0.113.1/"
    status, report = diagnose(topo.client, url)
    assert status == 1, report
    assert statuses(report) == {"PASV": "fallback", "EPSV": "ok", "PORT": "ok", "EPRT": "ok"}
    assert scenarios(report) == {1}
    finding = report["findings"][0]
    assert "198.51.100.10, different from the address you connected to (203.0.113.1)" in finding["text"]
    pasv = report["modes"][0]
    assert [path["result"] for path in pasv["paths"]] == ["unreachable", "listed"]
    assert [fix["kind"] for fix in report["fixes"]] == ["server", "ftp-alg", "kernel helper"]
    assert "pasv_address=203.0.113.1" in report["fixes"][0]["lines"][0]
    command = printed_gateway_command(report)
    assert command == (
        "ftp-alg run --listen 203.0.113.1:21 --upstream 198.51.100.10:21 --public-address 203.0.113.1"
        " --passive-ports 50000-50999"
    )
    # The text report prints that very line.
    status, text = diagnose(topo.client, url, text=True)
    assert status == 1 and f"       {command}\n" in text, text
    # ftp-alg in place of the port-21 forward, as its note says.
    topo.gw.run(["nft", "delete", "table", "ip", "nat_box"], check=True)
    start_printed(topo, command)
    assert_all_pass_now(topo.client, url, report)


def test_firewall_drops_the_passive_range(
    topo_factory: Callable[..., Topology], ftp_server_factory: Callable[..., FtpServer]
) -> None:
    # Scenario 2: vsftpd announces the right address (pasv_address), the NAT box forwards the passive range
    # too, but its firewall lets only port 21 through to the server.
    topo = topo_factory("firewall", nat_box)
    forward_ports(topo.gw, f"21, {SERVER_PASV[0]}-{SERVER_PASV[1]}")
    topo.gw.nft("""
table inet firewall {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "int" accept
        iifname "pub" tcp dport 21 accept
    }
}
""")
    vsftpd(ftp_server_factory, topo.server, pasv_address="203.0.113.1")
    url = "ftp://203.0.113.1/"
    status, report = diagnose(topo.client, url, "--internal-address", "198.51.100.10")
    assert status == 1, report
    assert statuses(report) == {"PASV": "failed", "EPSV": "failed", "PORT": "ok", "EPRT": "ok"}
    assert scenarios(report) == {2}
    assert "drops the passive port range" in report["findings"][0]["text"]
    assert all(mode["paths"][0]["result"] == "timeout" for mode in report["modes"][:2])
    command = printed_gateway_command(report)
    assert "--upstream 198.51.100.10:21" in command
    topo.gw.run(["nft", "delete", "table", "ip", "nat_box"], check=True)
    start_printed(topo, command)
    assert_all_pass_now(topo.client, url, report)


def test_client_behind_masquerade_in_active_mode(
    topo_factory: Callable[..., Topology], ftp_server_factory: Callable[..., FtpServer]
) -> None:
    # Scenarios 3 and 4: lan 198.18.0.10 behind a masquerading NAT box, server 203.0.113.20.
    topo = topo_factory("transparent")
    url = "ftp://203.0.113.20/"
    refusing = vsftpd(ftp_server_factory, topo.server)  # port_promiscuous=NO: PORT must name the control peer
    status, refused = diagnose(topo.client, url)
    assert status == 1, refused
    assert statuses(refused) == {"PASV": "ok", "EPSV": "ok", "PORT": "failed", "EPRT": "failed"}
    assert scenarios(refused) == {3}
    assert refused["modes"][2]["reply"].startswith("500"), refused["modes"][2]
    assert "this client announced 198.18.0.10" in refused["findings"][0]["text"]
    assert [fix["kind"] for fix in refused["fixes"]] == ["client", "ftp-alg", "kernel helper"]
    refusing.stop()

    vsftpd(ftp_server_factory, topo.server, port_promiscuous="YES")  # accepts PORT, cannot reach the LAN
    status, report = diagnose(topo.client, url)
    assert status == 1, report
    assert statuses(report) == {"PASV": "ok", "EPSV": "ok", "PORT": "failed", "EPRT": "failed"}
    assert scenarios(report) == {4}
    assert report["modes"][2]["reply"].startswith("200"), report["modes"][2]
    assert report["modes"][2]["paths"][0]["result"] == "no_connection"
    command = printed_gateway_command(report)
    assert command == printed_gateway_command(refused)
    assert (
        command == f"ftp-alg run --mode transparent --listen 198.18.0.1:{TRANSPARENT_PORT} --passive-ports 50000-50999"
    )
    load_shipped_ruleset(topo)
    start_printed(topo, command)
    assert_all_pass_now(topo.client, url, report)


def load_shipped_ruleset(topo: Topology) -> None:
    """deploy/nftables/ftp-alg-transparent.nft with LAN_IF and WAN_IF set, as the printed fix says."""
    values = {
        "LAN_IF": '"lan"',
        "WAN_IF": '"pub"',
        "ALG_PORT": str(TRANSPARENT_PORT),
        "DATA_PORTS": f"{PASSIVE_RANGE[0]}-{PASSIVE_RANGE[1]}",
    }
    text = RULESET.read_text()
    for name, value in values.items():
        text, count = re.subn(rf"^define {name} = \S+", f"define {name} = {value}", text, flags=re.M)
        assert count == 1, name
    topo.gw.nft(text)


def test_kernel_helper_works_for_plain_ftp_and_not_under_tls_and_ftp_alg_does(
    topo_factory: Callable[..., Topology], ftp_server_factory: Callable[..., FtpServer], pki: Pki
) -> None:
    # The NAT box forwards only 21 and attaches the kernel helper (nf_conntrack_ftp + nf_nat_ftp) with the
    # very lines diagnose prints: it rewrites the plain 227 and opens each data port. Under TLS it is blind;
    # ftp-alg, which terminates TLS, started as diagnose prints it, is not.
    topo = topo_factory("kernel-helper", nat_box)
    forward_ports(topo.gw, "21")
    topo.gw.nft("\n".join(helper_table(21)) + "\n")
    vsftpd(
        ftp_server_factory,
        topo.server,
        ssl_enable="YES",
        allow_anon_ssl="YES",
        ssl_ciphers="HIGH",
        rsa_cert_file=str(pki.upstream.cert),
        rsa_private_key_file=str(pki.upstream.key),
    )
    url = "ftp://203.0.113.1/"
    status, plain = diagnose(topo.client, url)
    assert status == 0, plain
    assert set(statuses(plain).values()) == {"ok"}
    # The helper did it: vsftpd wrote 198.51.100.10 into its 227, the client read the NAT box's address.
    assert plain["modes"][0]["address"].startswith("203.0.113.1:"), plain["modes"][0]
    assert plain["findings"] == [] and plain["fixes"] == []
    # FEAT lists AUTH TLS; the test CA is not in the system's store, so the TLS check is skipped, and says why.
    assert any("not trusted" in row["detail"] for row in plain["checks"] if row["check"] == "TLS"), plain

    status, tls = diagnose(topo.client, url, "--tls", "--insecure")
    assert status == 1, tls
    assert tls["control"]["tls"] is True and tls["control"]["ok"] is True
    assert statuses(tls) == {"TLS PASV": "failed", "TLS EPSV": "failed", "TLS PORT": "ok", "TLS EPRT": "ok"}
    assert scenarios(tls) == {1, 2}
    assert "198.51.100.10" in tls["modes"][0]["address"]
    assert [fix["kind"] for fix in tls["fixes"]] == ["server", "ftp-alg"]  # the helper is blind under TLS
    assert any("no fix under TLS" in note for note in tls["notes"]), tls["notes"]
    command = printed_gateway_command(tls)
    assert command == (
        "ftp-alg run --listen 203.0.113.1:21 --upstream 198.51.100.10:21 --public-address 203.0.113.1"
        " --passive-ports 50000-50999 --tls-client allow --tls-cert CERT.pem --tls-key KEY.pem"
        " --tls-upstream auto --tls-upstream-ca-file SERVER_CA.pem --tls-upstream-server-name SERVER_NAME"
    )

    status, both = diagnose(topo.client, url, "--insecure")
    assert status == 1, both
    assert statuses(both) == {
        "PASV": "ok",
        "EPSV": "ok",
        "PORT": "ok",
        "EPRT": "ok",
        "TLS PASV": "failed",
        "TLS EPSV": "failed",
    }
    assert any(f["title"] == "FTPS behind NAT: the helper cannot read TLS" for f in both["findings"]), both

    # The printed line with the files the note asks for, in place of the port-21 forward.
    files = {
        "CERT.pem": str(pki.gateway.cert),
        "KEY.pem": str(pki.gateway.key),
        "SERVER_CA.pem": str(pki.ca_file),
        "SERVER_NAME": UPSTREAM_NAME,
    }
    for placeholder, value in files.items():
        command = command.replace(f" {placeholder}", f" {value}")
    topo.gw.run(["nft", "delete", "table", "ip", "nat_box"], check=True)
    start_printed(topo, command)
    after = assert_all_pass_now(topo.client, url, tls, "--tls", "--insecure")
    assert set(statuses(after).values()) == {"ok"}, statuses(after)
    # The 227 the client read under TLS names the gateway's address: ftp-alg rewrote it inside TLS.
    assert after["modes"][0]["address"].startswith("203.0.113.1:5"), after["modes"][0]


def test_through_ftp_alg_every_mode_works(
    topo_factory: Callable[..., Topology], ftp_server_factory: Callable[..., FtpServer]
) -> None:
    topo = topo_factory("reverse")
    vsftpd(ftp_server_factory, topo.server)
    start_reverse_gateway(topo)
    status, text = diagnose(topo.client, "ftp://anonymous:Secret-Word@203.0.113.1/upload/", "--size", "4M", text=True)
    assert status == 0, text
    for mode in ("PASV", "EPSV", "PORT", "EPRT"):
        assert re.search(rf"^{mode} +ok ", text, re.M), text
    assert re.search(r"^transfer +ok +4194304 bytes up and back", text, re.M), text
    assert "Diagnosis: every mode works (exit status 0)" in text
    assert "Secret-Word" not in text
    # On the gateway host, against the server behind it: the upstream itself is healthy.
    status, upstream = diagnose(topo.gw, "ftp://198.51.100.10/")
    assert status == 0, upstream
    assert text.startswith("ftp-alg diagnose ftp://anonymous@203.0.113.1:21/upload/\n"), text
