"""The TLS files of the settings, checked before use: readable, key matches certificate, chain order, days left.

Rules: reads only the files named; returns findings or raises ConfigError naming the key and the fix.
"""

from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from alg.errors import ConfigError

# Below this many days left, `check` warns: a renewal (certbot's default is 30 days ahead) has failed.
WARN_DAYS = 14


@dataclass(frozen=True, slots=True)
class CertificateReport:
    subject: str
    days_left: float
    chain_length: int
    warnings: tuple[str, ...]


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}", key=key) from error


def _chain(path: Path, key: str) -> list[x509.Certificate]:
    data = _read(path, key)
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise ConfigError(f"{path} holds no PEM certificate ({error})", key=key) from error
    return chain


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_after_utc


def expiry_of(pem: bytes) -> float:
    """Unix time at which the leaf (first) certificate of a PEM chain expires."""
    return _not_after(x509.load_pem_x509_certificates(pem)[0]).timestamp()


def expiry_timestamp(cert_path: Path) -> float:
    """Unix time at which the leaf (first) certificate of `cert_path` expires."""
    return _not_after(_chain(cert_path, "tls.client.cert")[0]).timestamp()


def days_left(cert_path: Path, now: datetime.datetime | None = None) -> float:
    """Days until the leaf (first) certificate of `cert_path` expires; negative once it has."""
    leaf = _chain(cert_path, "tls.client.cert")[0]
    now = now or datetime.datetime.now(datetime.UTC)
    after = _not_after(leaf)
    if after.tzinfo is None:
        after = after.replace(tzinfo=datetime.UTC)
    return (after - now).total_seconds() / 86400


def check_certificate(cert_path: Path, key_path: Path, now: datetime.datetime | None = None) -> CertificateReport:
    """Raise ConfigError for files that cannot serve; warnings for those that can, but not for long."""
    chain = _chain(cert_path, "tls.client.cert")
    key_data = _read(key_path, "tls.client.key")
    try:
        private = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"{key_path} is not an unencrypted PEM private key ({error})", key="tls.client.key"
        ) from error
    leaf = chain[0]
    public = leaf.public_key()
    ours = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if ours != theirs:
        raise ConfigError(
            f"the key in {key_path} does not belong to the first certificate in {cert_path}", key="tls.client.key"
        )
    for index, (child, parent) in enumerate(itertools.pairwise(chain)):
        if child.issuer != parent.subject:
            raise ConfigError(
                f"chain order: certificate {index + 1} in {cert_path} is not issued by certificate {index + 2} "
                "(put the server certificate first, then each issuer in turn)",
                key="tls.client.cert",
            )
    left = days_left(cert_path, now)
    if left < 0:
        raise ConfigError(f"the certificate in {cert_path} expired {-left:.0f} days ago", key="tls.client.cert")
    warnings = []
    if left < WARN_DAYS:
        warnings.append(f"the certificate expires in {left:.0f} days")
    return CertificateReport(leaf.subject.rfc4514_string(), left, len(chain), tuple(warnings))


def check_ca_file(path: Path) -> int:
    """How many CA certificates `path` holds; ConfigError if none."""
    return len(_chain(path, "tls.upstream.ca_file"))
