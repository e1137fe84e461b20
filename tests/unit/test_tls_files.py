"""TLS settings and files: the tls keys and --tls-* flags, and what `ftp-alg check` says about certificates."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trustme

from alg.cli import main
from alg.errors import ConfigError
from alg.ops.config import load_config
from alg.ops.tlsfiles import check_certificate, days_left

UPSTREAM = "198.51.100.10"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    # An intermediate CA, so a certificate file holds a chain of two: leaf, then its issuer.
    return trustme.CA().create_child_ca()


def write(directory: Path, cert: trustme.LeafCert, *, reverse: bool = False) -> tuple[Path, Path]:
    chain = [blob.bytes() for blob in cert.cert_chain_pems]
    if reverse:
        chain.reverse()
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(b"".join(chain))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


def test_a_good_certificate_reports_subject_chain_and_days_left(ca: trustme.CA, tmp_path: Path) -> None:
    cert, key = write(tmp_path, ca.issue_cert("ftp.example.test"))
    report = check_certificate(cert, key)
    assert report.chain_length == 2
    assert report.days_left > 300 and report.subject
    assert report.warnings == ()
    assert abs(days_left(cert) - report.days_left) < 1


def test_a_key_of_another_certificate_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    cert, _ = write(tmp_path, ca.issue_cert("a.test"))
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = write(other, ca.issue_cert("b.test"))
    with pytest.raises(ConfigError, match="does not belong"):
        check_certificate(cert, wrong_key)


def test_a_chain_in_the_wrong_order_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    leaf = ca.issue_cert("a.test")
    cert, key = write(tmp_path, leaf)
    # After the leaf, a certificate that did not issue it (another CA's): the order is wrong.
    cert.write_bytes(leaf.cert_chain_pems[0].bytes() + trustme.CA().cert_pem.bytes())
    with pytest.raises(ConfigError, match="chain order: certificate 1"):
        check_certificate(cert, key)
    cert, key = write(tmp_path, leaf, reverse=True)  # issuer first: its key is not the one given
    with pytest.raises(ConfigError, match="does not belong"):
        check_certificate(cert, key)


def test_an_expired_certificate_is_refused_and_one_expiring_soon_warned(ca: trustme.CA, tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    soon = ca.issue_cert("a.test", not_after=now + datetime.timedelta(days=5))
    cert, key = write(tmp_path, soon)
    assert check_certificate(cert, key).warnings == ("the certificate expires in 5 days",)
    with pytest.raises(ConfigError, match="expired"):
        check_certificate(cert, key, now=now + datetime.timedelta(days=6))


def test_an_unreadable_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls.client.cert: cannot read .*missing.pem"):
        check_certificate(tmp_path / "missing.pem", tmp_path / "key.pem")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        check_certificate(tmp_path / "junk.pem", tmp_path / "key.pem")


def test_flags_set_the_tls_keys() -> None:
    settings = load_config(
        None,
        upstream=UPSTREAM,
        tls_client="require",
        tls_cert="/etc/ftp-alg/cert.pem",
        tls_key="/etc/ftp-alg/key.pem",
        tls_client_data="require",
        tls_implicit_listen=["203.0.113.1:990"],
        tls_require_session_reuse=True,
        tls_upstream="auto",
        tls_upstream_ca_file="/etc/ftp-alg/ca.pem",
        tls_upstream_server_name="ftp.internal.test",
        tls_upstream_verify=False,
        tls_upstream_data="private",
    )
    client, upstream = settings.tls.client, settings.tls.upstream
    assert (client.mode, client.data, client.require_session_reuse) == ("require", "require", True)
    assert str(client.implicit_listen[0]) == "203.0.113.1:990"
    assert client.min_version == "TLSv1.2" and client.handshake_timeout_s == 10.0
    assert (upstream.mode, upstream.verify, upstream.data, upstream.server_name) == (
        "auto",
        False,
        "private",
        "ftp.internal.test",
    )


def test_defaults_are_tls_off_and_verification_on() -> None:
    tls = load_config(None, upstream=UPSTREAM).tls
    assert tls.client.mode == "refuse" and tls.upstream.mode == "off" and tls.upstream.verify is True


def test_client_tls_without_files_names_the_missing_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tls\.client\.cert: required when client TLS is on"):
        load_config(None, upstream=UPSTREAM, tls_client="allow")
    path = tmp_path / "ftp-alg.yaml"
    path.write_text(f"upstream: {UPSTREAM}\ntls:\n  client:\n    mode: allow\n    cert: c.pem\n")
    with pytest.raises(ConfigError, match=r"ftp-alg.yaml: tls\.client\.key: required"):
        load_config(path)
    path.write_text(f"upstream: {UPSTREAM}\ntls:\n  upstream:\n    mode: implict\n")
    with pytest.raises(ConfigError, match="did you mean 'implicit'"):
        load_config(path)


def test_check_prints_the_certificate_and_fails_on_a_bad_one(
    ca: trustme.CA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = write(tmp_path, ca.issue_cert("ftp.example.test"))
    config = tmp_path / "ftp-alg.yaml"
    config.write_text(f"upstream: {UPSTREAM}\ntls:\n  client: {{mode: allow, cert: {cert}, key: {key}}}\n")
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "tls.client.cert:" in out and "chain=2" in out and "days_left=" in out
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = write(other, ca.issue_cert("b.test"))
    assert main(["check", "--config", str(config), "--tls-key", str(wrong_key)]) == 2
    assert "does not belong" in capsys.readouterr().err


def test_check_warns_when_upstream_verification_is_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ftp-alg.yaml"
    config.write_text(f"upstream: {UPSTREAM}\n")
    assert main(["check", "--config", str(config), "--tls-upstream", "require", "--tls-upstream-no-verify"]) == 0
    assert "warning: tls.upstream.verify is false" in capsys.readouterr().out


def test_sighup_reload_takes_a_renewed_certificate_and_keeps_the_old_one_for_a_bad_file(
    ca: trustme.CA, tmp_path: Path
) -> None:
    from alg.gateway.server import Gateway

    now = datetime.datetime.now(datetime.UTC)
    cert, key = write(tmp_path, ca.issue_cert("ftp.example.test", not_after=now + datetime.timedelta(days=20)))
    settings = load_config(None, upstream=UPSTREAM, tls_client="allow", tls_cert=str(cert), tls_key=str(key))
    gateway = Gateway(settings)
    certificate = gateway.tls.certificate
    assert certificate is not None
    first = certificate.context

    def expiry() -> float:
        value = gateway.metrics.registry.get_sample_value("ftp_alg_tls_certificate_expiry_timestamp_seconds")
        assert value is not None
        return value

    assert abs(expiry() - (now + datetime.timedelta(days=20)).timestamp()) < 5

    cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n")  # a renewal gone wrong
    gateway.reload()
    assert gateway.tls.certificate is certificate, "a file that does not load keeps the certificate in use"
    assert gateway.metrics.registry.get_sample_value("ftp_alg_reloads_total", {"result": "failed"}) == 1

    write(tmp_path, ca.issue_cert("ftp.example.test", not_after=now + datetime.timedelta(days=90)))
    gateway.reload()
    assert gateway.tls.certificate is not None and gateway.tls.certificate.context is not first
    assert abs(expiry() - (now + datetime.timedelta(days=90)).timestamp()) < 5


def test_a_certificate_that_cannot_load_stops_the_start_with_the_key_named(tmp_path: Path) -> None:
    from alg.gateway.server import Gateway

    (tmp_path / "cert.pem").write_text("junk\n")
    (tmp_path / "key.pem").write_text("junk\n")
    settings = load_config(
        None,
        upstream=UPSTREAM,
        tls_client="allow",
        tls_cert=str(tmp_path / "cert.pem"),
        tls_key=str(tmp_path / "key.pem"),
    )
    with pytest.raises(ConfigError, match=r"^tls\.client\.cert: cannot load"):
        Gateway(settings)
