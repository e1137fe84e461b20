"""`workers: N`: N gateway processes behind one control port, each owning a slice of every data port range.

Rules: every worker binds the control listeners itself with SO_REUSEPORT, so the kernel spreads new sessions
over the workers; a data port belongs to exactly one worker, so a data connection always reaches the process
that announced it. The parent only forks, forwards signals, reaps and, on SIGHUP, reads the settings again and
sends them to every worker over its pipe (alg.gateway.reload): it keeps its privileges for that. A worker that
dies after it started well is started again, with the current settings; one that fails at once (a port in use)
stops them all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from alg.gateway.reload import SEND_TIMEOUT_S, send

if TYPE_CHECKING:
    from alg.ops.config import Settings

from alg.ops.logs import fields

log = logging.getLogger("ftp_alg.workers")

# A worker that ends sooner than this after its start failed to start (bind error, bad rule file):
# restarting it would only fail again, so the whole gateway stops with its exit code.
MIN_UPTIME_S = 5.0
# After the stop signal the workers get their own shutdown grace, plus this, before SIGKILL.
KILL_AFTER_GRACE_S = 10.0

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def port_slice(first: int, last: int, index: int, count: int) -> range:
    """Worker `index`'s share of the ports first..last: consecutive, disjoint, together the whole range."""
    if not 0 <= index < count:
        raise ValueError(f"worker {index} of {count}")
    size, extra = divmod(last - first + 1, count)
    if size == 0:
        raise ValueError(f"{last - first + 1} ports cannot be shared among {count} workers")
    start = first + index * size + min(index, extra)
    return range(start, start + size + (1 if index < extra else 0))


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings worker `index` runs with: its own metrics and admin ports (port + index), when set."""
    if index == 0:
        return settings
    update: dict[str, object] = {}
    metrics = settings.metrics_listen
    if metrics is not None and metrics.port != 0:
        update["metrics_listen"] = metrics._replace(port=metrics.port + index)
    admin = settings.admin
    if admin.listen is not None and admin.listen.port != 0:
        update["admin"] = admin.model_copy(update={"listen": admin.listen._replace(port=admin.listen.port + index)})
    return settings.model_copy(update=update) if update else settings


# run_worker(index, inbox): the worker's exit code; inbox is the pipe its reloads arrive on (None: none sent).
RunWorker = Callable[[int, int | None], int]


class _Supervisor:
    def __init__(self, count: int, run_worker: RunWorker, grace_s: float, reload: Callable[[], bytes] | None) -> None:
        self.count = count
        self.run_worker = run_worker
        self.grace_s = grace_s
        self.reload = reload
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self.pipes: dict[int, int] = {}  # pid -> the write end of its reload pipe
        self.stopping = False
        self.failure: int | None = None

    def start(self, index: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        inbox, outbox = os.pipe() if self.reload is not None else (-1, -1)
        # Signals wait until the worker has its own handlers, so it never runs the parent's.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            code = 1
            try:
                for signum in (*_FORWARDED, signal.SIGALRM):
                    signal.signal(signum, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                for fd in (outbox, *self.pipes.values()):  # the other ends are the parent's
                    if fd >= 0:
                        os.close(fd)
                code = self.run_worker(index, inbox if inbox >= 0 else None)
            except BaseException:  # the worker's last word; the parent sees the exit code
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.workers[pid] = (index, time.monotonic())
        if inbox >= 0:
            os.close(inbox)
            os.set_blocking(outbox, False)
            self.pipes[pid] = outbox
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        log.info("worker started", extra=fields(index=index, pid=pid))

    def signal_all(self, signum: int) -> None:
        for pid in list(self.workers):  # a handler may run while the dict changes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.send_reload()
            return
        if not self.stopping:
            self.stopping = True
            signal.signal(signal.SIGALRM, self.on_alarm)
            signal.alarm(int(self.grace_s + KILL_AFTER_GRACE_S))
        self.signal_all(signal.SIGTERM if signum == signal.SIGINT else signum)

    def send_reload(self) -> None:
        """Read the settings again (here, with the parent's privileges) and send the same reload to every
        worker; without a reader of files, every worker gets the SIGHUP and reads its own."""
        if self.reload is None:
            self.signal_all(signal.SIGHUP)
            return
        try:
            message = self.reload()
        except Exception:  # raised in a signal handler, it would end the parent and every worker with it
            log.exception("reload failed, keeping the running settings")
            return
        for pid, outbox in list(self.pipes.items()):
            if not send(outbox, message):
                log.warning("a worker did not take the reload in time", extra=fields(pid=pid, seconds=SEND_TIMEOUT_S))

    def on_alarm(self, signum: int, frame: FrameType | None) -> None:
        log.warning("workers still running after the grace period: killing %s", sorted(self.workers))
        self.signal_all(signal.SIGKILL)

    def reap(self, pid: int, status: int) -> None:
        index, started = self.workers.pop(pid)
        outbox = self.pipes.pop(pid, None)
        if outbox is not None:
            os.close(outbox)
        code = os.waitstatus_to_exitcode(status)
        if self.stopping:
            log.info("worker stopped", extra=fields(index=index, pid=pid, code=code))
            if code not in (0, 130, -signal.SIGTERM, -signal.SIGINT):
                self.failure = self.failure or 1
            return
        lived = time.monotonic() - started
        if lived < MIN_UPTIME_S:
            log.error("worker failed at start, stopping the gateway", extra=fields(index=index, pid=pid, code=code))
            self.failure = code if code > 0 else 1
            self.stopping = True
            signal.signal(signal.SIGALRM, self.on_alarm)
            signal.alarm(int(self.grace_s + KILL_AFTER_GRACE_S))
            self.signal_all(signal.SIGTERM)
            return
        log.error("worker died, starting it again", extra=fields(index=index, pid=pid, code=code, seconds=round(lived)))
        self.start(index)

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self.on_signal) for signum in _FORWARDED}
        try:
            for index in range(self.count):
                if self.stopping:
                    break
                self.start(index)
            while self.workers:
                try:
                    pid, status = os.wait()  # signal handlers run while it waits (PEP 475)
                except ChildProcessError:
                    break
                if pid in self.workers:
                    self.reap(pid, status)
        finally:
            signal.alarm(0)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.failure or 0


def supervise(
    count: int, run_worker: RunWorker, *, grace_s: float = 30.0, reload: Callable[[], bytes] | None = None
) -> int:
    """Fork `count` workers, each running `run_worker(index, inbox)` (its exit code); return the gateway's exit
    code. SIGTERM and SIGINT stop every worker (each shuts down gracefully). SIGHUP: `reload()` gives the
    message every worker reads on its inbox; without it, every worker gets the SIGHUP."""
    log.info("starting %d workers", count)
    return _Supervisor(count, run_worker, grace_s, reload).run()
