"""`ftp-alg diagnose`, the pure part: observations in, diagnosis, fixes and report out.

The reports of the CASES below are kept as golden files in tests/unit/golden/ (regenerate with
FTP_ALG_UPDATE_GOLDEN=1 after a deliberate wording change, and read the diff); the JSON report is checked
against tests/unit/golden/diagnose.schema.json.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alg.cli import main
from alg.diagnose.command import UsageError, byte_size, hide_password, target_from
from alg.diagnose.findings import announced_words, mode_status
from alg.diagnose.observations import (
    Control,
    DataPath,
    HostPort,
    ModeCheck,
    Observations,
    Transfer,
    address_kind,
)
from alg.diagnose.probe import Target, parse_default_gateway
from alg.diagnose.reasoning import diagnose
from alg.diagnose.report import render_text, to_json

GOLDEN = Path(__file__).resolve().parent / "golden"
SCHEMA = json.loads((GOLDEN / "diagnose.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)  # built once: the property test validates many reports

SERVER = IPv4Address("203.0.113.1")
CLIENT = IPv4Address("203.0.113.10")
INTERNAL = IPv4Address("198.51.100.10")


def control(**changes: object) -> Control:
    base: dict[str, object] = {
        "host": "203.0.113.1",
        "port": 21,
        "user": "anonymous",
        "server": SERVER,
        "client": CLIENT,
        "banner": "220 (vsFTPd 3.0.3)",
        "login_reply": "230 Login successful.",
        "features": ("EPRT", "EPSV", "MDTM", "PASV", "REST STREAM", "SIZE", "TVFS"),
        "system": "215 UNIX Type: L8",
    }
    base.update(changes)
    return Control(**base)  # type: ignore[arg-type]


def stopped(stage: str, failure: str, detail: str, **changes: object) -> Control:
    return control(stopped_at=stage, failure=failure, detail=detail, **changes)


def pasv(
    announced: IPv4Address = SERVER, *results: str, port: int = 30000, tls: bool = False, lines: int = 6
) -> ModeCheck:
    results = results or ("listed",)
    address = HostPort(announced, port)
    paths = [DataPath(address, "announced", results[0], _final(results[0]), lines=_lines(results[0], lines))]  # type: ignore[arg-type]
    if len(results) > 1:
        fallback = HostPort(SERVER, port)
        paths.append(
            DataPath(fallback, "control address", results[1], _final(results[1]), lines=_lines(results[1], lines))
        )  # type: ignore[arg-type]
    reply = f"227 Entering Passive Mode ({','.join(str(announced).split('.'))},{port >> 8},{port & 255})."
    return ModeCheck("PASV", tls, reply, address, tuple(paths))


def epsv(result: str = "listed", *, port: int = 30001, tls: bool = False, reply: str = "") -> ModeCheck:
    if reply:
        return ModeCheck("EPSV", tls, reply, None)
    address = HostPort(SERVER, port)
    path = DataPath(address, "announced", result, _final(result), lines=_lines(result, 6))  # type: ignore[arg-type]
    return ModeCheck("EPSV", tls, f"229 Entering Extended Passive Mode (|||{port}|)", address, (path,))


def active(
    mode: str = "PORT",
    result: str = "listed",
    *,
    offered: IPv4Address = CLIENT,
    reply: str = "",
    peer: IPv4Address | None = SERVER,
    final: str = "",
    tls: bool = False,
) -> ModeCheck:
    address = HostPort(offered, 40000 if mode == "PORT" else 40001)
    if result == "server_refused":
        reply = reply or f"500 Illegal {mode} command."
        return ModeCheck(mode, tls, reply, address, (DataPath(address, "listener", "server_refused", reply),))  # type: ignore[arg-type]
    reply = reply or f"200 {mode} command successful. Consider using {'PASV' if mode == 'PORT' else 'EPSV'}."
    path_peer = peer if result == "listed" else None
    path = DataPath(address, "listener", result, final or _final(result), path_peer, _lines(result, 6))  # type: ignore[arg-type]
    return ModeCheck(mode, tls, reply, address, (path,))  # type: ignore[arg-type]


def _final(result: str) -> str:
    return "226 Directory send OK." if result == "listed" else ""


def _lines(result: str, lines: int) -> int:
    return lines if result == "listed" else 0


def observations(ctl: Control | None = None, modes: tuple[ModeCheck, ...] = (), **changes: object) -> Observations:
    return Observations(control=ctl or control(), modes=modes, wait_s=5.0, **changes)  # type: ignore[arg-type]


ALL_OK = (pasv(), epsv(), active("PORT"), active("EPRT"))

CASES: dict[str, Observations] = {
    "refused": observations(stopped("connect", "refused", "connection refused", client=None)),
    "no-banner": observations(stopped("banner", "no_reply", "no reply")),
    "login-refused": observations(stopped("login", "rejected", "530 Login incorrect.")),
    "all-ok": observations(modes=ALL_OK),
    "nat-private": observations(
        modes=(pasv(IPv4Address("10.0.0.5"), "unreachable", "listed"), epsv(), active("PORT"), active("EPRT")),
    ),
    "nat-other-address": observations(
        modes=(pasv(INTERNAL, "unreachable", "listed"), epsv(), active("PORT"), active("EPRT")),
    ),
    "firewall": observations(
        modes=(pasv(SERVER, "timeout"), epsv("timeout"), active("PORT"), active("EPRT")),
    ),
    "client-nat-refused": observations(
        control(client=IPv4Address("192.168.1.20")),
        (
            pasv(),
            epsv(),
            active("PORT", "server_refused", offered=IPv4Address("192.168.1.20")),
            active("EPRT", "server_refused", offered=IPv4Address("192.168.1.20")),
        ),
        default_gateway=IPv4Address("192.168.1.1"),
    ),
    "client-firewall": observations(
        modes=(
            pasv(),
            epsv(),
            active("PORT", "no_connection", final="425 Failed to establish connection."),
            active("EPRT", "no_connection", final="425 Failed to establish connection."),
        ),
        default_gateway=IPv4Address("198.18.0.1"),
    ),
    "ftps-helper": observations(
        control(tls=True, features=("AUTH TLS", "EPSV", "PASV", "PBSZ", "PROT")),
        (
            pasv(INTERNAL, "unreachable", "refused", tls=True),
            epsv("refused", tls=True),
            active("PORT", tls=True),
            active("EPRT", tls=True),
        ),
    ),
}


# --------------------------------------------------------------------------- words


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("10.0.0.5", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("172.32.0.1", "public"),
        ("192.168.1.20", "private"),
        ("192.169.0.1", "public"),
        ("127.0.0.1", "unroutable"),
        ("0.0.0.0", "unroutable"),
        ("169.254.10.1", "unroutable"),
        ("100.64.0.1", "unroutable"),
        ("203.0.113.1", "public"),  # documentation ranges are not LAN addresses, whatever is_private says
        ("198.51.100.10", "public"),
        ("fd00::5", "private"),
        ("fe80::1", "unroutable"),
        ("2001:db8::1", "public"),
    ],
)
def test_address_kind(text: str, kind: str) -> None:
    assert address_kind(ip_address(text)) == kind


def test_a_real_rfc1918_address_is_called_private() -> None:
    assert announced_words(IPv4Address("10.0.0.5"), SERVER) == "a private address (10.0.0.5)"
    assert announced_words(IPv4Address("192.168.0.7"), SERVER) == "a private address (192.168.0.7)"
    assert announced_words(IPv4Address("127.0.0.1"), SERVER) == "an unroutable address (127.0.0.1)"


def test_another_documentation_address_is_called_different() -> None:
    assert announced_words(INTERNAL, SERVER) == (
        "198.51.100.10, different from the address you connected to (203.0.113.1)"
    )


# --------------------------------------------------------------------------- observations -> diagnosis


def test_every_mode_works() -> None:
    diagnosis = diagnose(CASES["all-ok"])
    assert diagnosis.exit_status == 0
    assert diagnosis.verdict == "every mode works"
    assert diagnosis.findings == () and diagnosis.fixes == () and diagnosis.failing == ()
    assert [row.result for row in diagnosis.rows[-4:]] == ["ok"] * 4


@pytest.mark.parametrize(
    ("stage", "failure", "detail", "words"),
    [
        ("connect", "refused", "connection refused", "Connection refused at 203.0.113.1:21: nothing listens"),
        ("connect", "timeout", "no answer", "No answer from 203.0.113.1:21 within 5 s: a firewall drops"),
        ("connect", "unreachable", "no route to host", "No route to 203.0.113.1:21"),
        ("banner", "no_reply", "no reply", "Connected to 203.0.113.1:21, but no reply before its 220 banner"),
        ("banner", "reset", "connection reset", "was reset before its 220 banner"),
        ("banner", "closed", "closed", "The server closed the connection before its 220 banner"),
        ("banner", "rejected", "421 Too many users", "The server answered before its 220 banner: 421 Too many"),
        ("tls", "tls", "the certificate is not trusted (self-signed)", "TLS did not start: the certificate"),
        ("login", "rejected", "530 Login incorrect.", "The server answered at login: 530 Login incorrect."),
    ],
)
def test_control_failures_are_said_plainly_with_where_they_stopped(
    stage: str, failure: str, detail: str, words: str
) -> None:
    diagnosis = diagnose(observations(stopped(stage, failure, detail)))
    assert diagnosis.exit_status == 2
    assert diagnosis.verdict == "cannot connect or log in"
    assert words in diagnosis.findings[0].text
    assert diagnosis.rows[-1].result == "FAIL" and diagnosis.rows[-1].check == ("tls" if stage == "tls" else stage)
    assert diagnosis.fixes == ()


def test_unresolvable_name() -> None:
    obs = observations(
        control(
            host="ftp.invalid",
            server=None,
            client=None,
            stopped_at="resolve",
            failure="unresolved",
            detail="Name or service not known",
        )
    )
    diagnosis = diagnose(obs)
    assert diagnosis.exit_status == 2
    assert diagnosis.findings[0].text == "The name ftp.invalid does not resolve: Name or service not known."


def test_server_behind_nat_announcing_a_private_address() -> None:
    diagnosis = diagnose(CASES["nat-private"])
    assert diagnosis.exit_status == 1
    assert diagnosis.failing == ("PASV",)
    [finding] = diagnosis.findings
    assert (finding.scenario, finding.title, finding.modes) == (1, "Server behind NAT, passive", ("PASV",))
    assert "the 227 names a private address (10.0.0.5): no route to host" in finding.text
    assert "Server sent passive reply with unroutable address" in finding.text
    assert [fix.kind for fix in diagnosis.fixes] == ["server", "ftp-alg", "kernel helper"]
    server = diagnosis.fixes[0]
    assert server.lines[:3] == (
        "vsftpd.conf:  pasv_address=203.0.113.1  pasv_min_port=50000  pasv_max_port=50999",
        "proftpd.conf: MasqueradeAddress 203.0.113.1  PassivePorts 50000 50999",
        "pure-ftpd:    -P 203.0.113.1 -p 50000:50999",
    )
    assert "dnat ip to 10.0.0.5" in server.lines[3]
    assert diagnosis.fixes[1].command == (
        "ftp-alg run --listen 203.0.113.1:21 --upstream 10.0.0.5:21 --public-address 203.0.113.1"
        " --passive-ports 50000-50999"
    )
    helper = "\n".join(diagnosis.fixes[2].lines)
    assert 'tcp dport 21 ct helper set "ftp"' in helper
    assert "port it is attached to" in diagnosis.fixes[2].note and "blind under TLS" in diagnosis.fixes[2].note
    assert "since Linux 4.7" in diagnosis.fixes[2].note


def test_private_address_and_the_passive_ports_dropped_too() -> None:
    obs = observations(modes=(pasv(IPv4Address("10.0.0.5"), "unreachable", "timeout"), epsv("timeout")))
    diagnosis = diagnose(obs)
    assert {f.scenario for f in diagnosis.findings} == {1, 2}
    assert mode_status(obs.modes[0]) == "failed"
    [blocked] = [f for f in diagnosis.findings if f.scenario == 2]
    assert blocked.modes == ("PASV", "EPSV")  # the same problem, said once


def test_firewall_dropping_the_passive_range() -> None:
    diagnosis = diagnose(CASES["firewall"])
    assert diagnosis.exit_status == 1
    assert diagnosis.failing == ("PASV", "EPSV")
    [finding] = diagnosis.findings
    assert finding.scenario == 2 and finding.modes == ("PASV", "EPSV")
    assert "gets no answer within 5 s: a firewall in front of the server drops the passive port range" in finding.text
    gateway = next(fix for fix in diagnosis.fixes if fix.kind == "ftp-alg")
    assert "--upstream INTERNAL_ADDRESS:21" in gateway.command
    assert "--internal-address fills it in" in gateway.note
    told = diagnose(Observations(**{**CASES["firewall"].__dict__, "internal_address": INTERNAL}))
    assert "--upstream 198.51.100.10:21" in next(f.command for f in told.fixes if f.kind == "ftp-alg")


def test_refused_passive_port_is_nothing_listening() -> None:
    diagnosis = diagnose(observations(modes=(pasv(SERVER, "refused"), epsv())))
    assert "is refused: nothing listens there" in diagnosis.findings[0].text


def test_client_behind_nat_server_refuses_port() -> None:
    diagnosis = diagnose(CASES["client-nat-refused"])
    assert diagnosis.exit_status == 1
    assert diagnosis.failing == ("PORT", "EPRT")
    [finding] = diagnosis.findings
    assert finding.scenario == 3 and finding.modes == ("PORT", "EPRT")
    assert "this client announced a LAN address (192.168.1.20)" in finding.text
    assert "(500 Illegal PORT command.)" in finding.text
    assert [fix.kind for fix in diagnosis.fixes] == ["client", "ftp-alg", "kernel helper"]
    assert diagnosis.fixes[1].command == (
        "ftp-alg run --mode transparent --listen 192.168.1.1:2121 --passive-ports 50000-50999"
    )


def test_client_firewall_drops_the_servers_connection() -> None:
    diagnosis = diagnose(CASES["client-firewall"])
    [finding] = diagnosis.findings
    assert finding.scenario == 4
    assert "did not arrive within 5 s (the server then answered 425 Failed to establish connection.)" in finding.text


def test_no_default_gateway_leaves_a_placeholder() -> None:
    obs = Observations(**{**CASES["client-firewall"].__dict__, "default_gateway": None})
    command = next(fix.command for fix in diagnose(obs).fixes if fix.kind == "ftp-alg")
    assert "--listen LAN_ADDRESS:2121" in command


def test_firewalls_on_both_sides() -> None:
    obs = observations(
        modes=(
            pasv(SERVER, "timeout"),
            epsv("timeout"),
            active("PORT", "no_connection"),
            active("EPRT", "no_connection"),
        )
    )
    diagnosis = diagnose(obs)
    assert {f.scenario for f in diagnosis.findings} == {2, 4, 5}
    kinds = [fix.kind for fix in diagnosis.fixes]
    assert "client" not in kinds  # passive does not work either: no use telling the client to switch
    assert kinds.count("ftp-alg") == 2


def test_non_standard_control_port() -> None:
    obs = observations(
        control(port=2100), (pasv(), epsv(), active("PORT", "server_refused"), active("EPRT", "server_refused"))
    )
    diagnosis = diagnose(obs)
    assert 6 in {f.scenario for f in diagnosis.findings}
    helper = next(fix for fix in diagnosis.fixes if fix.kind == "kernel helper")
    assert '        tcp dport 2100 ct helper set "ftp"' in helper.lines
    transparent = next(fix for fix in diagnosis.fixes if fix.kind == "ftp-alg")
    assert "tcp dport 2100" in transparent.note


def test_ftps_behind_a_nat_helper() -> None:
    diagnosis = diagnose(CASES["ftps-helper"])
    assert diagnosis.exit_status == 1
    assert diagnosis.failing == ("PASV (TLS)", "EPSV (TLS)")
    assert {f.scenario for f in diagnosis.findings} == {1, 2}
    assert any("no NAT helper can read or rewrite it" in f.text for f in diagnosis.findings)
    # The kernel helper is blind under TLS; ftp-alg terminates TLS, so it can rewrite the 227 inside it.
    assert [fix.kind for fix in diagnosis.fixes] == ["server", "ftp-alg"]
    assert any("no fix under TLS" in note for note in diagnosis.notes)
    assert not any("ftp-alg" in note for note in diagnosis.notes)
    gateway = diagnosis.fixes[1]
    assert gateway.command == (
        "ftp-alg run --listen 203.0.113.1:21 --upstream 198.51.100.10:21 --public-address 203.0.113.1"
        " --passive-ports 50000-50999 --tls-client allow --tls-cert CERT.pem --tls-key KEY.pem"
        " --tls-upstream auto --tls-upstream-ca-file SERVER_CA.pem --tls-upstream-server-name SERVER_NAME"
    )
    assert gateway.lines == (gateway.command,)
    for placeholder in ("CERT.pem", "KEY.pem", "SERVER_CA.pem", "SERVER_NAME"):
        assert placeholder in gateway.note
    assert "rewrite the 227 inside it" in gateway.note and "clients trust" in gateway.note


def test_ftps_fix_names_the_host_the_user_dialled_in_the_certificate_check() -> None:
    ftps = CASES["ftps-helper"]
    obs = observations(replace(ftps.control, host="ftp.example.test"), ftps.modes)
    gateway = next(fix for fix in diagnose(obs).fixes if fix.kind == "ftp-alg")
    assert gateway.command.endswith(" --tls-upstream-server-name ftp.example.test"), gateway.command
    assert "SERVER_NAME" not in gateway.note and "a certificate for ftp.example.test" in gateway.note


def test_ftps_client_behind_nat_gets_transparent_mode_with_tls() -> None:
    obs = observations(
        control(tls=True, host="ftp.example.test"),
        (
            pasv(tls=True),
            epsv(tls=True),
            active("PORT", "no_connection", tls=True, final="425 Failed to establish connection."),
            active("EPRT", "no_connection", tls=True, final="425 Failed to establish connection."),
        ),
        default_gateway=IPv4Address("198.18.0.1"),
    )
    diagnosis = diagnose(obs)
    assert [fix.kind for fix in diagnosis.fixes] == ["client", "ftp-alg"]
    gateway = diagnosis.fixes[1]
    assert gateway.command == (
        "ftp-alg run --mode transparent --listen 198.18.0.1:2121 --passive-ports 50000-50999 --tls-client allow"
        " --tls-cert CERT.pem --tls-key KEY.pem --tls-upstream auto --tls-upstream-server-name ftp.example.test"
    )
    assert gateway.lines[0] == gateway.command
    assert "a certificate for ftp.example.test" in gateway.note and "LAN's clients trust" in gateway.note
    assert "applies to every server this box relays" in gateway.note


def test_plain_works_tls_does_not_names_the_blind_helper() -> None:
    obs = observations(
        modes=ALL_OK, tls_modes=(pasv(INTERNAL, "unreachable", "refused", tls=True), epsv("refused", tls=True))
    )
    diagnosis = diagnose(obs)
    assert diagnosis.exit_status == 1
    assert any(f.title == "FTPS behind NAT: the helper cannot read TLS" for f in diagnosis.findings)


def test_tls_check_skipped_is_shown_not_failed() -> None:
    obs = observations(modes=ALL_OK, tls_skipped="AUTH TLS offered, not checked: the certificate is not trusted")
    diagnosis = diagnose(obs)
    assert diagnosis.exit_status == 0
    assert diagnosis.rows[-1].check == "TLS" and diagnosis.rows[-1].result == "n/a"


def test_unsupported_extended_modes_are_not_failures() -> None:
    obs = observations(
        modes=(
            pasv(),
            epsv(reply="500 Unknown command."),
            active("PORT"),
            ModeCheck("EPRT", False, "502 Command not implemented.", None),
        )
    )
    diagnosis = diagnose(obs)
    assert diagnosis.exit_status == 0
    assert [row.result for row in diagnosis.rows if row.check in ("EPSV", "EPRT")] == ["n/a", "n/a"]
    assert any("does not do EPSV" in note for note in diagnosis.notes)


def test_vsftpd_refusing_eprt_is_a_refusal_not_unsupported() -> None:
    check = active("EPRT", "server_refused", reply="500 Illegal EPRT command.")
    assert mode_status(check) == "failed"


def test_data_from_an_unexpected_address_is_noted() -> None:
    obs = observations(modes=(pasv(), epsv(), active("PORT", peer=IPv4Address("203.0.113.77")), active("EPRT")))
    diagnosis = diagnose(obs)
    assert diagnosis.exit_status == 0
    assert any("came from 203.0.113.77, not from 203.0.113.1" in note for note in diagnosis.notes)
    assert "connection from 203.0.113.77, not 203.0.113.1" in diagnosis.rows[-2].detail


def test_larger_transfer_that_stalls() -> None:
    transfer = Transfer("PASV", 10 << 20, "stalled", 3 << 20, "the download stopped")
    diagnosis = diagnose(observations(modes=ALL_OK, transfer=transfer))
    assert diagnosis.exit_status == 1
    assert diagnosis.failing == ("transfer",)
    assert diagnosis.rows[-1].detail == "stalled after 3145728 of 10485760 bytes through PASV: the download stopped"


def test_out_of_time_is_a_failure() -> None:
    diagnosis = diagnose(observations(modes=ALL_OK[:2], out_of_time=True))
    assert diagnosis.exit_status == 1 and "time" in diagnosis.failing


def test_mode_session_that_could_not_open() -> None:
    obs = observations(modes=(ModeCheck("PASV", False, "", None, error="no session: 421 Too many users"),))
    diagnosis = diagnose(obs)
    assert diagnosis.exit_status == 1
    assert diagnosis.rows[-1].detail == "no session: 421 Too many users"


_PATH_RESULTS = st.sampled_from(["listed", "refused", "timeout", "unreachable", "reset", "tls", "transfer_failed"])
_ADDRESSES = st.sampled_from([SERVER, INTERNAL, IPv4Address("10.0.0.5"), IPv4Address("127.0.0.1")])


@st.composite
def _random_observations(draw: st.DrawFn) -> Observations:
    modes = []
    for mode in ("PASV", "EPSV"):
        results = draw(st.lists(_PATH_RESULTS, min_size=0, max_size=2))
        address = draw(_ADDRESSES)
        paths = tuple(DataPath(HostPort(address, 30000), "announced", r) for r in results)  # type: ignore[arg-type]
        reply = draw(st.sampled_from(["227 x", "229 x", "500 no", "502 no", ""]))
        modes.append(ModeCheck(mode, draw(st.booleans()), reply, HostPort(address, 30000) if paths else None, paths))  # type: ignore[arg-type]
    for mode in ("PORT", "EPRT"):
        result = draw(st.sampled_from(["listed", "server_refused", "no_connection", "transfer_failed"]))
        modes.append(active(mode, result, tls=draw(st.booleans()), peer=draw(_ADDRESSES)))
    port = draw(st.sampled_from([21, 2121]))
    return observations(control(port=port), tuple(modes), default_gateway=draw(st.none() | _ADDRESSES))


@settings(max_examples=60)
@given(_random_observations())
def test_any_observations_give_a_consistent_report(obs: Observations) -> None:
    diagnosis = diagnose(obs)
    assert diagnosis.exit_status in (0, 1)
    assert (diagnosis.exit_status == 0) == (not diagnosis.failing)
    assert bool(diagnosis.fixes) <= bool(diagnosis.failing)
    text = render_text(obs, diagnosis)
    for fix in diagnosis.fixes:
        if fix.command:
            assert f"       {fix.command}\n" in text  # printed whole, on a line of its own, to copy
    VALIDATOR.validate(to_json(obs, diagnosis))


# --------------------------------------------------------------------------- report


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_report(name: str) -> None:
    obs = CASES[name]
    text = render_text(obs, diagnose(obs))
    golden = GOLDEN / f"diagnose-{name}.txt"
    if os.environ.get("FTP_ALG_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_json_report_matches_the_schema(name: str) -> None:
    obs = CASES[name]
    report = to_json(obs, diagnose(obs))
    jsonschema.validate(report, SCHEMA)
    assert json.loads(json.dumps(report)) == report
    assert report["exit_status"] == diagnose(obs).exit_status


def test_schema_rejects_what_scripts_must_not_see() -> None:
    report = to_json(CASES["all-ok"], diagnose(CASES["all-ok"]))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**report, "exit_status": 3}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**report, "password": "x"}, SCHEMA)


# --------------------------------------------------------------------------- command line


def _args(url: str, **changes: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "url": url,
        "tls": False,
        "insecure": False,
        "password_file": None,
        "json": False,
        "wait": 5.0,
        "time_limit": 120.0,
        "size": 0,
        "active_address": None,
        "internal_address": None,
    }
    values.update(changes)
    return argparse.Namespace(**values)


@pytest.fixture(autouse=True)
def _no_netrc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))


def test_url_with_user_and_password() -> None:
    target = target_from(_args("ftp://al%40ice:p%3Ass@203.0.113.1:2121/upload/"))
    assert (target.host, target.port, target.user, target.password) == ("203.0.113.1", 2121, "al@ice", "p:ss")
    assert target.folder == "/upload/" and not target.tls
    assert "p:ss" not in repr(target)


def test_ftps_url_means_explicit_tls() -> None:
    assert target_from(_args("ftps://203.0.113.1/")).tls
    assert target_from(_args("ftp://203.0.113.1/", tls=True)).tls


def test_anonymous_by_default() -> None:
    target = target_from(_args("ftp://203.0.113.1/"))
    assert (target.user, target.port) == ("anonymous", 21)


def test_password_file_and_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\nignored\n")
    assert target_from(_args("ftp://bob@203.0.113.1/", password_file=str(secret))).password == "from-file"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 203.0.113.1 login bob password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    target = target_from(_args("ftp://203.0.113.1/"))
    assert (target.user, target.password) == ("bob", "from-netrc")


def test_no_password_and_no_terminal_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(UsageError, match=r"no password for bob@203\.0\.113\.1"):
        target_from(_args("ftp://bob@203.0.113.1/"))


@pytest.mark.parametrize(
    ("url", "words"),
    [("http://203.0.113.1/", "scheme 'http'"), ("ftp:///", "no host"), ("ftp://203.0.113.1:99999/", "port")],
)
def test_bad_urls(url: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        target_from(_args(url))


def test_bad_addresses() -> None:
    with pytest.raises(UsageError, match="--internal-address: expected an IP address"):
        target_from(_args("ftp://203.0.113.1/", internal_address="server.lan"))


@pytest.mark.parametrize(("text", "size"), [("4096", 4096), ("64K", 65536), ("10m", 10 << 20), ("1G", 1 << 30)])
def test_sizes(text: str, size: int) -> None:
    assert byte_size(text) == size


@pytest.mark.parametrize("text", ["", "1e3", "-1", "4 K", "K", "١٢"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        byte_size(text)


def test_cli_bad_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", "gopher://203.0.113.1/"]) == 2
    assert "ftp-alg: error: expected ftp://" in capsys.readouterr().err


def test_cli_refused_on_loopback_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens, the kernel answers RST.
    assert main(["diagnose", "ftp://user:hunter2@127.0.0.1:1/", "--wait", "2", "--json"]) == 2
    out = capsys.readouterr().out
    report = json.loads(out)
    jsonschema.validate(report, SCHEMA)
    assert report["control"]["failure"] == "refused"
    assert "hunter2" not in out


def test_target_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(Target("203.0.113.1", 21, "bob", "s3cret"))


def test_default_gateway_from_the_route_table() -> None:
    table = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "eth0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    assert parse_default_gateway(table) == IPv4Address("198.18.0.1")
    assert parse_default_gateway(table.splitlines()[0] + "\n") is None


def test_ipv6_target_url_is_bracketed() -> None:
    obs = observations(control(host="2001:db8::1", server=IPv6Address("2001:db8::1")), ALL_OK)
    assert render_text(obs, diagnose(obs)).startswith("ftp-alg diagnose ftp://anonymous@[2001:db8::1]:21/\n")


def test_a_banner_that_never_comes_is_bounded_by_the_time_limit(capsys: pytest.CaptureFixture[str]) -> None:
    # A loopback listener that never answers: the kernel completes the handshake, no 220 ever arrives.
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        status = main(["diagnose", f"ftp://127.0.0.1:{port}/", "--wait", "30", "--time-limit", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 2
    assert (report["control"]["stopped_at"], report["control"]["failure"]) == ("banner", "no_reply")
    assert "but no reply before its 220 banner within the time limit" in report["findings"][0]["text"]


def test_a_password_quoted_back_by_the_server_is_masked() -> None:
    assert hide_password("530 Login incorrect for hunter22.", "hunter22") == "530 Login incorrect for ***."
    assert hide_password("230 a b c", "a") == "230 a b c"


def test_every_mode_against_a_local_server_and_no_socket_left_open(capsys: pytest.CaptureFixture[str]) -> None:
    # The probe end to end on loopback, against the demo's pyftpdlib server: every mode, the --size transfer.
    import gc
    import warnings

    from alg.demo import demo_upstream

    before = len(os.listdir("/proc/self/fd"))
    with demo_upstream(HostPort(IPv4Address("127.0.0.1"), 2121)) as upstream:
        url = f"ftp://127.0.0.1:{upstream.address.port}/"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            status = main(["diagnose", url, "--json", "--size", "256K", "--wait", "5"])
            gc.collect()  # a socket dropped without close() warns when it is collected
        uploaded = upstream.root / "ftp-alg-diagnose.bin"
        assert not uploaded.exists(), "the --size file is deleted after the check"
    after = len(os.listdir("/proc/self/fd"))  # the server has closed all of its own by now
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    assert [(mode["mode"], mode["status"]) for mode in report["modes"]] == [
        ("PASV", "ok"),
        ("EPSV", "ok"),
        ("PORT", "ok"),
        ("EPRT", "ok"),
    ]
    assert any(row["check"] == "transfer" and row["result"] == "ok" for row in report["checks"])
    assert after == before, "a socket of the probe was left open"
