"""Client scenarios shared by the reverse and transparent suites: one session, every byte checked."""

from __future__ import annotations

from pathlib import Path

from clients import ClientResult, Mode, ftplib_run
from gateway import sha256_file
from netns import Host
from servers import FtpServer, FtpTarget


def ftplib_round_trip(
    client: Host, target: FtpTarget, server: FtpServer, files: Path, mode: Mode, tmp_path: Path
) -> ClientResult:
    """LIST, NLST, RETR, REST+RETR (resume), STOR then APPE, RETR of an empty file: in one ftplib session.

    `files` holds one.bin, small.bin and empty.bin, also served by `server`. Asserts every byte both ways."""
    local, resumed = tmp_path / "small.bin", tmp_path / "resumed.bin"
    source = (files / "small.bin").read_bytes()
    half = len(source) // 2
    resumed.write_bytes(source[:half])
    remote = f"upload/up-ftplib-{mode}.bin"
    result = ftplib_run(
        client,
        target,
        [
            ("list",),
            ("nlst",),
            ("retr", "small.bin", local),
            ("rest_retr", "small.bin", resumed, half),
            ("stor", files / "one.bin", remote),
            ("appe", files / "small.bin", remote),
            ("retr", "empty.bin", tmp_path / "empty.bin"),
        ],
        mode=mode,
    )
    assert result.ok, result
    assert result.data is not None
    assert any("small.bin" in line for line in result.data["results"][0]["lines"]), "LIST"
    assert "small.bin" in result.data["results"][1]["names"], "NLST"
    assert sha256_file(local) == sha256_file(files / "small.bin"), "RETR"
    assert sha256_file(resumed) == sha256_file(files / "small.bin"), "REST resume"
    assert server.path(remote).read_bytes() == (files / "one.bin").read_bytes() + source, "STOR then APPE"
    assert (tmp_path / "empty.bin").read_bytes() == b"", "empty file"
    return result
