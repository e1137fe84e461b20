"""What `diagnose` is doing, on stderr while it runs: each check as it starts and ends, so a run that waits on
a silent server says what it waits for.

Rules: on a terminal, one live line rewritten in place and cleared at the end (the report follows on stdout);
anywhere else, plain lines, one when a check starts and one when it ends. Never the password: labels and results
are built from the checks, not the URL.
"""

from __future__ import annotations

import time
from typing import TextIO

CLEAR_LINE = "\r\x1b[K"


class Progress:
    def __init__(self, stream: TextIO | None, *, live: bool | None = None) -> None:
        self.stream = stream
        self.live = live if live is not None else bool(stream is not None and stream.isatty())
        self._label = ""
        self._started = 0.0

    def start(self, label: str) -> None:
        self._label, self._started = label, time.monotonic()
        self._write(f"{CLEAR_LINE}{label} ..." if self.live else f"diagnose: {label} ...\n")

    def done(self, result: str) -> None:
        took = time.monotonic() - self._started
        line = f"{self._label}: {result} ({took:.1f} s)"
        self._write(f"{CLEAR_LINE}{line}" if self.live else f"diagnose: {line}\n")

    def finish(self) -> None:
        if self.live:
            self._write(CLEAR_LINE)

    def _write(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text)
            self.stream.flush()


QUIET = Progress(None)
