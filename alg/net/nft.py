"""libnftables through ctypes: nftables commands run inside this process, over its own netlink socket.

Why ctypes and libnftables rather than spawning `nft` or speaking netlink by hand: a transfer costs one or two
commands, and a process per command would cost more than the transfer itself for small files; libnftables is
the library `nft` itself is built on (Debian: libnftables1), so the command text is exactly what an admin types
and reads in `nft list ruleset`, and batches are atomic. Its Python binding (python3-nftables) is the same
ctypes calls, but is packaged only for the system Python, not for a virtualenv.

Rules: one context per process, used only from the event loop's thread; a failed command raises NftError
with libnftables' own message, and nothing of the batch was applied.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from typing import Any

from alg.errors import FtpAlgError

LIBRARY = "libnftables.so.1"
_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON in nftables/libnftables.h


class NftError(FtpAlgError):
    """libnftables refused a command (its message says why: permissions, a missing kernel feature, syntax)."""


class Nft:
    def __init__(self, library: str | None = None) -> None:
        """Raises OSError when the library cannot be loaded (libnftables1 not installed)."""
        lib = ctypes.CDLL(library or ctypes.util.find_library("nftables") or LIBRARY, use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._ctx: int | None = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self.commands_run = 0

    def run(self, commands: str, *, as_json: bool = False) -> str:
        """Run nft command text (one atomic batch); the output, JSON when asked."""
        if self._ctx is None:
            raise NftError("the nftables context is closed")
        lib = self._lib
        lib.nft_ctx_output_set_flags(self._ctx, _OUTPUT_JSON if as_json else 0)
        status = lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
        # Reading a buffer also empties it for the next command.
        output = (lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        error = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        self.commands_run += 1
        if status != 0:
            raise NftError(error.strip() or f"nft failed with status {status}")
        return output

    def run_json(self, commands: str) -> list[dict[str, Any]]:
        """The objects of a listing command's JSON output (metainfo left out)."""
        objects: list[dict[str, Any]] = []
        for line in self.run(commands, as_json=True).splitlines():
            if line.strip():
                objects.extend(item for item in json.loads(line).get("nftables", []) if "metainfo" not in item)
        return objects

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None
