"""Forward mode's proxy login: a users file of `NAME:HASH` lines, hashed with the standard library's scrypt.

Rules: a hash is `scrypt$N$R$P$SALT$KEY` (salt and key in base64); a password is checked in constant time, and a
name that is not in the file costs as much as one that is (no telling which names exist). Reading a file that is
wrong is a ConfigError naming the line; blank lines and `#` comments are skipped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from alg.errors import ConfigError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # about 16 MiB and tens of milliseconds per check
KEY_BYTES = 32
_DUMMY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + base64.b64encode(bytes(KEY_BYTES)).decode()


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    encoded = [base64.b64encode(part).decode() for part in (salt, key)]
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encoded[0]}${encoded[1]}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=KEY_BYTES)


def _check(stored: str, password: str) -> bool:
    scheme, n, r, p, salt, key = stored.split("$")
    expected = base64.b64decode(key)
    computed = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return scheme == "scrypt" and hmac.compare_digest(computed, expected)


def _valid_hash(stored: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(part.isdigit() for part in parts[1:4]):
        return False
    try:
        base64.b64decode(parts[4], validate=True)
        base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    n = int(parts[1])
    return n > 1 and n & (n - 1) == 0 and 1 <= int(parts[2]) <= 64 and 1 <= int(parts[3]) <= 16


@dataclass(frozen=True, slots=True)
class ProxyUsers:
    hashes: dict[str, str]

    def verify(self, name: str, password: str) -> bool:
        """Blocking (scrypt): call it from a thread in the event loop."""
        stored = self.hashes.get(name)
        matched = _check(stored or _DUMMY, password)
        return stored is not None and matched

    @classmethod
    def read(cls, path: Path) -> ProxyUsers:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"forward.users_file: cannot read {path}: {error}") from None
        hashes = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, colon, stored = line.partition(":")
            if not colon or not name or not _valid_hash(stored):
                raise ConfigError(
                    f"forward.users_file {path} line {number}: expected NAME:HASH as ftp-alg forward-passwd NAME "
                    "writes it"
                )
            hashes[name] = stored
        return cls(hashes)


def user_line(name: str, password: str) -> str:
    """The users file's line for `name`; ValueError for a name the file cannot hold."""
    if not name or ":" in name or any(ch.isspace() for ch in name) or name.startswith("#") or "@" in name:
        raise ValueError(f"{name!r}: a proxy user name has no ':', '@', '#' first, or spaces")
    if not password:
        raise ValueError("an empty password")
    return f"{name}:{hash_password(password)}"
