"""The measurements: each runs the same client work against a target (the server directly, or the gateway).

Clients run inside the client namespace: curl for bulk and sequential transfers, bench/sessions.py (asyncio)
for many sessions. Every client has a time limit; a client that fails or times out is reported, not retried.
"""

from __future__ import annotations

import json
import select
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.world import REPO_ROOT, Gateway, Host, Target, World, machine_cpu_seconds

GIB = 1 << 30
MB = 1_000_000
# time_pretransfer: the data phase is timed alone, as curl 7.88 at times sleeps 1 s between a fast EPSV reply and
# its data connection (a client artefact that hit the direct path, whose replies come fastest).
CURL_FORMAT = "%{response_code} %{size_download} %{size_upload} %{time_total} %{time_pretransfer}\\n"
MODE_FLAGS = {"passive": ["--ftp-pasv"], "active": ["--ftp-port", "-"]}  # EPSV / EPRT, curl's defaults


class ClientFailed(RuntimeError):
    pass


def _curl(target: Target, mode: str, timeout_s: float) -> list[str]:
    return [
        "curl",
        "-q",
        "-sS",
        "--no-ftp-skip-pasv-ip",
        "--connect-timeout",
        "5",
        "--max-time",
        str(timeout_s),
        "--user",
        f"{target.user}:{target.password}",
        *MODE_FLAGS[mode],
        # FTPS: AUTH TLS, PBSZ 0, PROT P (curl resumes the control session on data connections).
        *(["--ssl-reqd", "--cacert", str(target.ca_file)] if target.ca_file is not None else []),
        "-w",
        CURL_FORMAT,
    ]


@dataclass
class Transfer:
    bytes: int
    seconds: float
    cpu_s: float | None = None  # the gateway's, when one is in the path
    machine_cpu_s: float = 0.0  # every process and the kernel's packet work, both CPUs
    slowest_s: float = 0.0  # the longest single file of a small-file run

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / MB


def bulk(
    world: World, target: Target, verb: str, mode: str, size: int, gateway: Gateway | None, timeout_s: float
) -> Transfer:
    """One RETR of big.bin to /dev/null, or one STOR of the client's big.bin to upload/."""
    if verb == "retr":
        argv = [*_curl(target, mode, timeout_s), "-o", "/dev/null", target.url("big.bin")]
    else:
        argv = [
            *_curl(target, mode, timeout_s),
            "-T",
            str(world.client_files / "big.bin"),
            target.url("upload/big.bin"),
        ]
    cpu_before = gateway.cpu_seconds() if gateway else 0.0
    machine_before = machine_cpu_seconds()
    done = world.client.run(argv, timeout=timeout_s + 10)
    machine = machine_cpu_seconds() - machine_before
    cpu = gateway.cpu_seconds() - cpu_before if gateway else None
    if verb == "stor":
        world.clear_uploads()
    code, down, up, total, pretransfer = _curl_report(done, argv)
    moved = down if verb == "retr" else up
    if code != 226 or moved != size:
        raise ClientFailed(f"curl {verb} {mode}: reply {code}, {moved} of {size} bytes\n{done.stderr[-2000:]}")
    return Transfer(moved, total - pretransfer, cpu, machine)


def parallel_retr(world: World, target: Target, count: int, size: int, timeout_s: float) -> Transfer:
    """`count` RETRs of big.bin at once, each in its own session; total bytes over the time the last took."""
    argv = [*_curl(target, "passive", timeout_s), "-o", "/dev/null", target.url("big.bin")]
    processes = []
    for _ in range(count):
        started = time.monotonic()
        process = subprocess.Popen(world.client.argv(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        processes.append((started, process))
    moved, first_byte, last_byte = 0, float("inf"), 0.0
    try:
        for started, process in processes:
            out, err = process.communicate(timeout=timeout_s + 10)
            report = _curl_report(subprocess.CompletedProcess(argv, process.returncode, out, err), argv)
            code, down, _, total, pretransfer = report
            if code != 226 or down != size:
                raise ClientFailed(f"parallel curl: reply {code}, {down} of {size} bytes\n{err[-2000:]}")
            moved += down
            # From the first data phase's start to the last one's end (see CURL_FORMAT).
            first_byte, last_byte = min(first_byte, started + pretransfer), max(last_byte, started + total)
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return Transfer(moved, last_byte - first_byte)


def small_files(world: World, target: Target, count: int, timeout_s: float) -> Transfer:
    """`count` RETRs of 4 KiB files in ONE session, PASV each, with ftplib (bench/sessions.py files)."""
    argv = [sys.executable, REPO_ROOT / "bench" / "sessions.py", "files", target.addr, target.port, count, timeout_s]
    done = world.client.run(argv, timeout=timeout_s + 10)
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ClientFailed(f"sessions.py files: exit {done.returncode}\n{done.stderr[-3000:]}") from None
    if report["files"] != count:
        raise ClientFailed(f"sessions.py files: {report['files']} of {count} in {timeout_s} s")
    return Transfer(int(report["bytes"]), float(report["seconds"]), slowest_s=float(report["slowest_s"]))


def concurrent_sessions(world: World, target: Target, count: int, timeout_s: float) -> dict[str, Any]:
    argv = [
        sys.executable,
        REPO_ROOT / "bench" / "sessions.py",
        "concurrent",
        target.addr,
        target.port,
        count,
        timeout_s,
        "small/f0000",
    ]
    done = world.client.run(argv, timeout=timeout_s + 60)
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ClientFailed(f"sessions.py concurrent: exit {done.returncode}\n{done.stderr[-3000:]}") from None
    return report


class IdleClient:
    """bench/sessions.py idle in the client namespace, told over stdin how many sessions to hold."""

    def __init__(self, client: Host, target: Target, timeout_s: float) -> None:
        argv = [sys.executable, REPO_ROOT / "bench" / "sessions.py", "idle", target.addr, target.port, timeout_s]
        self.process = subprocess.Popen(
            client.argv(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def hold(self, count: int, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"open {count}\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise ClientFailed(f"idle client: no answer for {count} sessions in {timeout_s} s")
        report: dict[str, Any] = json.loads(line)
        return report

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write("close\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def median_run(runs: list[Transfer]) -> Transfer:
    """The run of median throughput (its CPU figure goes with it)."""
    ordered = sorted(runs, key=lambda run: run.mb_s)
    return ordered[len(ordered) // 2]


def median(values: list[float]) -> float:
    return statistics.median(values)


def _curl_report(done: subprocess.CompletedProcess[str], argv: list[str]) -> tuple[int, int, int, float, float]:
    try:
        code, down, up, total, pretransfer = done.stdout.strip().splitlines()[-1].split()
        return int(code), int(down), int(up), float(total), float(pretransfer)
    except (ValueError, IndexError):
        raise ClientFailed(f"{' '.join(map(str, argv))}: exit {done.returncode}\n{done.stderr[-2000:]}") from None


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
