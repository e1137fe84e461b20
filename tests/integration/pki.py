"""A throwaway PKI for the FTPS tests, made with trustme and written out as PEM files.

One test CA signs the gateway's certificate (for its public address) and the upstreams' (for the internal
server's address and name). For the fault tests: an expired upstream certificate, one for another name, and
one signed by a CA nobody trusts. Files only: daemons, the gateway and clients read them by path.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import trustme

GATEWAY_NAMES = ("ftp-alg.test", "203.0.113.1", "2001:db8:1::1")
UPSTREAM_NAME = "ftp.internal.test"
UPSTREAM_NAMES = (UPSTREAM_NAME, "198.51.100.10", "203.0.113.20")


@dataclass(frozen=True)
class CertFiles:
    """A server's certificate chain (leaf first) and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca_file: Path  # the test CA's certificate: what clients and the gateway trust
    gateway: CertFiles  # 203.0.113.1 / ftp-alg.test
    upstream: CertFiles  # 198.51.100.10 / 203.0.113.20 / ftp.internal.test
    expired: CertFiles  # the upstream's names, validity ended yesterday
    wrong_name: CertFiles  # signed by the test CA, for other.test only
    untrusted: CertFiles  # the upstream's names, signed by a CA nobody trusts
    other_ca_file: Path  # that other CA (to show the untrusted certificate is otherwise fine)


def _write(directory: Path, name: str, cert: trustme.LeafCert) -> CertFiles:
    files = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
    cert.private_key_pem.write_to_path(str(files.key))
    files.key.chmod(0o600)
    # The chain (leaf then CA) in one file: what vsftpd, proftpd, pure-ftpd and the gateway all read.
    with open(files.cert, "wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    return files


def make_pki(directory: Path) -> Pki:
    """Write the whole PKI under `directory` and describe it."""
    directory.mkdir(parents=True, exist_ok=True)
    # RSA keys: proftpd's TLSRSACertificateFile refuses EC ones.
    rsa = trustme.KeyType.RSA
    ca = trustme.CA(organization_name="ftp-alg test CA", key_type=rsa)
    other_ca = trustme.CA(organization_name="untrusted CA", key_type=rsa)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    now = datetime.datetime.now(datetime.UTC)
    return Pki(
        ca_file=directory / "ca.pem",
        gateway=_write(directory, "gateway", ca.issue_cert(*GATEWAY_NAMES, key_type=rsa)),
        upstream=_write(directory, "upstream", ca.issue_cert(*UPSTREAM_NAMES, key_type=rsa)),
        expired=_write(
            directory,
            "expired",
            ca.issue_cert(
                *UPSTREAM_NAMES,
                not_before=now - datetime.timedelta(days=30),
                not_after=now - datetime.timedelta(days=1),
                key_type=rsa,
            ),
        ),
        wrong_name=_write(directory, "wrong-name", ca.issue_cert("other.test", key_type=rsa)),
        untrusted=_write(directory, "untrusted", other_ca.issue_cert(*UPSTREAM_NAMES, key_type=rsa)),
        other_ca_file=directory / "other-ca.pem",
    )


def issue_for(directory: Path, *names: str) -> tuple[Path, CertFiles]:
    """A throwaway CA (its certificate file) and a gateway certificate for `names`, for a test's own addresses."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="ftp-alg test CA")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return directory / "ca.pem", _write(directory, "gateway", ca.issue_cert(*names))
