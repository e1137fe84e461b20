"""`diagnose` over loopback against a small scripted server: progress on stderr as each check starts and ends
(plain lines, or one live line on a terminal), and a server that stops answering new sessions after the first
one is reported as stalled logins, not as failing modes."""

from __future__ import annotations

import io
import re
import socket
import threading
from collections.abc import Iterator

import pytest

from alg.diagnose.probe import Target, probe
from alg.diagnose.progress import CLEAR_LINE, Progress
from alg.diagnose.reasoning import diagnose
from alg.diagnose.report import render_text

WAIT_S = 0.3


class StallingServer:
    """The first session logs in (USER, PASS, FEAT, SYST, QUIT); every later one greets and never answers USER,
    as a server past its per-client session limit may."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.05)
        self.sessions = 0
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.sessions += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, self.sessions == 1), daemon=True).start()

    def _serve(self, conn: socket.socket, answers: bool) -> None:
        answers_to = {
            b"USER": b"331 Password.\r\n",
            b"PASS": b"230 Logged in.\r\n",
            b"FEAT": b"211-Features:\r\n SIZE\r\n211 End\r\n",
            b"SYST": b"215 UNIX Type: L8\r\n",
            b"QUIT": b"221 Bye.\r\n",
        }
        with conn, conn.makefile("rb") as lines:
            try:
                conn.sendall(b"220 scripted\r\n")
                for line in lines:
                    if not answers:
                        continue  # heard, never answered
                    conn.sendall(answers_to.get(line[:4].upper(), b"502 Not here.\r\n"))
                    if line.startswith(b"QUIT"):
                        return
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def server() -> Iterator[StallingServer]:
    stalling = StallingServer()
    yield stalling
    stalling.close()


def test_a_stalled_login_is_told_apart_from_a_failing_mode(server: StallingServer) -> None:
    stderr = io.StringIO()
    target = Target("127.0.0.1", server.port, "anonymous", "x@", wait_s=WAIT_S, total_s=30)
    obs = probe(target, Progress(stderr))
    assert server.sessions == 5  # the login, then one per mode
    diagnosis = diagnose(obs)
    report = render_text(obs, diagnosis)
    stalled = f"no reply to USER within {WAIT_S:g} s; the earlier sessions worked"
    for mode in ("PASV", "EPSV", "PORT", "EPRT"):
        assert re.search(rf"^{mode} +stalled +{re.escape(stalled)}$", report, re.M), report
        assert any(row.check == mode and row.result == "stalled" and row.detail == stalled for row in diagnosis.rows)
    assert "FAIL" not in report and "no session" not in report
    assert diagnosis.verdict == "some modes could not be checked" and diagnosis.exit_status == 1
    assert [finding.title for finding in diagnosis.findings] == ["New sessions stalled before login"]
    assert "not known to fail" in diagnosis.findings[0].text

    # Progress: a line as each step starts and one as it ends, in order, on stderr (not a terminal here).
    lines = stderr.getvalue().splitlines()
    assert lines[0] == f"diagnose: log in to 127.0.0.1:{server.port} ..."
    assert lines[1].startswith(f"diagnose: log in to 127.0.0.1:{server.port}: ok (")
    assert lines[2] == "diagnose: PASV ..."
    assert lines[3].startswith(f"diagnose: PASV: {stalled} (")
    assert len(lines) == 10 and lines[-2] == "diagnose: EPRT ..."


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_live_line_is_rewritten_then_cleared() -> None:
    terminal = Terminal()
    progress = Progress(terminal)
    assert progress.live
    progress.start("PASV")
    progress.done("listed")
    progress.start("EPSV")
    progress.finish()
    written = terminal.getvalue()
    assert "\n" not in written
    assert written.startswith(f"{CLEAR_LINE}PASV ...{CLEAR_LINE}PASV: listed (")
    assert written.endswith(f"{CLEAR_LINE}EPSV ...{CLEAR_LINE}")
    assert not Progress(io.StringIO()).live
