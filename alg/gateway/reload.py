"""SIGHUP: the settings file read again, with everything it names (rule files, TLS certificate, key and CA
file), by a process that may read them: the gateway itself, or with `workers` or `user:` the parent process,
which keeps its privileges and hands what it read to every worker over a pipe (alg.gateway.workers). A
worker that dropped root can then load a renewed certificate whose key only root may read.

Rules: a reload is all or nothing: any problem keeps everything as it was and says why in one log line; what
needs a restart keeps its running value (alg.ops.config_reload) and is named once; messages to workers are
pickles from the parent, which is more privileged than they are, over a pipe only the two share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from alg.errors import ConfigError
from alg.gateway.secure import TlsRuntime, runtime_from_settings
from alg.ops.config import Settings
from alg.ops.config_check import client_tls_on
from alg.ops.config_reload import merge
from alg.ops.rules import RuleSet, load_rules

log = logging.getLogger("ftp_alg.reload")

# A worker busy beyond this does not hold up the others' reload (it is logged and gets none).
SEND_TIMEOUT_S = 5.0
_LENGTH = struct.Struct("!I")
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Bundle:
    """Everything a gateway needs from files to apply settings, read by a process allowed to read them."""

    settings: Settings
    rules: RuleSet
    cert: bytes | None = None  # tls.client.cert and .key, when client TLS is on
    key: bytes | None = None
    ca: bytes | None = None  # tls.upstream.ca_file, when given and upstream TLS is on


@dataclass(frozen=True, slots=True)
class Failed:
    """A reload refused as a whole; the reason was logged by whoever read the files."""

    reason: str


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}", key=key) from error


def read_bundle(settings: Settings) -> Bundle:
    """The files `settings` names, read and checked (ConfigError naming the file and why)."""
    rules = load_rules(settings.rules)
    client, upstream = settings.tls.client, settings.tls.upstream
    cert = key = ca = None
    if client_tls_on(client) and client.cert is not None and client.key is not None:
        cert, key = _read(client.cert, "tls.client.cert"), _read(client.key, "tls.client.key")
    if upstream.mode != "off" and upstream.ca_file is not None:
        ca = _read(upstream.ca_file, "tls.upstream.ca_file")
    bundle = Bundle(settings, rules, cert, key, ca)
    tls_of(bundle)  # the same files, refused here if OpenSSL refuses them
    return bundle


@contextlib.contextmanager
def _in_memory(*blobs: bytes | None) -> Iterator[list[Path | None]]:
    """Files only this process can open (memfd), holding `blobs`: OpenSSL loads keys from paths only."""
    fds = [os.memfd_create("ftp-alg-tls", os.MFD_CLOEXEC) if blob is not None else -1 for blob in blobs]
    try:
        for fd, blob in zip(fds, blobs, strict=True):
            if blob is not None:
                os.write(fd, blob)
        yield [Path(f"/proc/self/fd/{fd}") if fd >= 0 else None for fd in fds]
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def tls_of(bundle: Bundle) -> TlsRuntime:
    """The bundle's TLS contexts, built from its bytes; error messages name the configured files."""
    tls = bundle.settings.tls
    with _in_memory(bundle.cert, bundle.key, bundle.ca) as (cert, key, ca):
        client = tls.client.model_copy(update={"cert": cert, "key": key}) if cert is not None else tls.client
        upstream = tls.upstream.model_copy(update={"ca_file": ca}) if ca is not None else tls.upstream
        try:
            return runtime_from_settings(tls.model_copy(update={"client": client, "upstream": upstream}))
        except ConfigError as error:
            text = str(error)
            for memory, path in ((cert, tls.client.cert), (key, tls.client.key), (ca, tls.upstream.ca_file)):
                text = text.replace(str(memory), str(path)) if memory is not None else text
            raise ConfigError(text) from error


class Reloader:
    """What SIGHUP does where the files are read: `load` reads the settings again (file, environment, flags);
    `current` is what runs (and what a worker started now gets)."""

    def __init__(self, current: Settings, load: Callable[[], Settings]) -> None:
        self.current = current
        self._load = load

    def read(self) -> Bundle | Failed:
        try:
            settings, waiting = merge(self.current, self._load())
            bundle = read_bundle(settings)
        except ConfigError as error:
            log.error("reload failed, keeping the running settings: %s", error)
            return Failed(str(error))
        for item in waiting:
            log.warning("reload: %s waits for a restart (the running value is kept)", item)
        self.current = bundle.settings
        return bundle


# ---- parent to worker: length-prefixed pickles over a pipe ----------------------------------------------------


def encode(message: Bundle | Failed) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def send(fd: int, data: bytes, timeout_s: float = SEND_TIMEOUT_S) -> bool:
    """Write all of `data` to the non-blocking pipe `fd` within timeout_s; False when the reader is stuck or
    gone (a worker that died and is not reaped yet)."""
    deadline = time.monotonic() + timeout_s
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                return False
        except OSError:  # BrokenPipeError: nobody reads any more
            return False
    return True


class Inbox:
    """The worker's end: bytes in, whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Bundle | Failed]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if size > MAX_MESSAGE_BYTES:
                raise ValueError(f"reload message of {size} bytes")
            if len(self._buffer) < _LENGTH.size + size:
                break
            data = bytes(self._buffer[_LENGTH.size : _LENGTH.size + size])
            del self._buffer[: _LENGTH.size + size]
            message = pickle.loads(data)  # from our own parent, the more privileged process
            if isinstance(message, Bundle | Failed):
                messages.append(message)
        return messages
