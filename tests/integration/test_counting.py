"""Counting what matters: an lftp client's routine AUTH TLS probe to a gateway without TLS is counted apart from
hostile refusals (so the probing alert does not fire on it); a hostile PORT still counts as a refusal.

client 203.0.113.10 ─ gw 203.0.113.1 | 198.51.100.1 ─ vsftpd 198.51.100.10:21
"""

from __future__ import annotations

from collections.abc import Callable

from hostile import RawFtp
from netns import Topology
from scaleout import scrape, start_gateway
from servers import FtpServer

GW = "203.0.113.1"


def refusals(topo: Topology) -> dict[str, float]:
    return {
        dict(labels)["reason"]: v for (name, labels), v in scrape(topo.gw).items() if name == "ftp_alg_refusals_total"
    }


def test_an_auth_tls_probe_is_not_a_refusal(
    reverse_topo: Topology, ftp_server_factory: Callable[..., FtpServer]
) -> None:
    topo = reverse_topo
    server = ftp_server_factory("vsftpd", topo.server)
    start_gateway(topo.gw, {"listen": f"{GW}:21", "upstream": "198.51.100.10"})
    # lftp as installed: ftp:ssl-allow is on by default, so it asks AUTH TLS, hears 502, and goes on in clear.
    script = "set net:max-retries 1; set net:timeout 10; cat hello.txt; quit"
    listed = topo.client.run(["lftp", "-e", script, f"ftp://anonymous:x@{GW}"], timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == (server.root / "hello.txt").read_text().replace("\r\n", "\n")  # ASCII mode
    assert scrape(topo.gw)[("ftp_alg_tls_probes_total", frozenset())] == 1
    assert sum(refusals(topo).values()) == 0

    control = RawFtp.open(topo.client, GW)
    control.login()
    assert control.cmd("AUTH TLS").code == 502
    assert control.cmd("PORT 198,51,100,10,0,21").code == 504  # a bounce: hostile, a refusal
    control.cmd("QUIT")
    assert scrape(topo.gw)[("ftp_alg_tls_probes_total", frozenset())] == 2
    assert {reason: n for reason, n in refusals(topo).items() if n} == {"bounce": 1}
