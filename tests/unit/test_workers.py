"""Workers: the port slices, the per-worker settings, and the supervisor's start, stop and failure rules."""

from __future__ import annotations

import os
import select
import signal
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.gateway.reload import Failed, Inbox, encode
from alg.gateway.workers import port_slice, supervise, worker_settings
from alg.ops.config import load_config


@given(first=st.integers(1024, 65535), size=st.integers(1, 3000), count=st.integers(1, 64))
def test_slices_are_disjoint_consecutive_and_cover_the_range(first: int, size: int, count: int) -> None:
    last = min(65535, first + size - 1)
    if last - first + 1 < count:
        with pytest.raises(ValueError):
            port_slice(first, last, 0, count)
        return
    slices = [port_slice(first, last, index, count) for index in range(count)]
    assert [port for part in slices for port in part] == list(range(first, last + 1))
    assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_the_documented_example() -> None:
    assert (port_slice(50000, 50999, 0, 2), port_slice(50000, 50999, 1, 2)) == (
        range(50000, 50500),
        range(50500, 51000),
    )
    with pytest.raises(ValueError):
        port_slice(50000, 50999, 2, 2)


def test_each_worker_gets_its_own_metrics_port() -> None:
    settings = load_config(None, upstream="198.51.100.10", workers=3, metrics_listen="127.0.0.1:9100")
    ports = [worker_settings(settings, index).metrics_listen.port for index in range(3)]
    assert ports == [9100, 9101, 9102]
    plain = load_config(None, upstream="198.51.100.10", workers=3)
    assert worker_settings(plain, 2) is plain


def to_main_thread(signum: int) -> None:
    """A signal for the supervisor, which waits in os.wait() on the main thread: sent to the process from this
    thread, the kernel may deliver it to this thread (the main thread blocks it around each fork), and the main
    thread would go on waiting without running its handler."""
    main = threading.main_thread().ident
    assert main is not None
    signal.pthread_kill(main, signum)


def test_a_worker_that_fails_at_start_stops_the_gateway_with_its_code() -> None:
    assert supervise(2, lambda index, inbox: 3, grace_s=1) == 3


def test_a_signal_stops_every_worker_and_the_gateway_exits_cleanly() -> None:
    ready_r, ready_w = os.pipe()

    def worker(index: int, inbox: int | None) -> int:
        # No lock in the handler: Event.set() there can deadlock on the lock Event.wait() holds when the signal
        # lands (the worker is then killed after the grace period and the test fails for the test's own sake).
        stopped: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
        os.write(ready_w, b"x")
        deadline = time.monotonic() + 30
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.01)
        return 0 if stopped else 9

    def stop_when_both_run() -> None:
        got = b""
        while len(got) < 2:
            got += os.read(ready_r, 2)
        to_main_thread(signal.SIGTERM)

    killer = threading.Thread(target=stop_when_both_run)
    killer.start()
    try:
        assert supervise(2, worker, grace_s=5) == 0
    finally:
        killer.join(10)
        os.close(ready_r)
        os.close(ready_w)


def test_a_reload_that_raises_in_the_parent_keeps_the_gateway_and_the_next_one_reaches_the_worker() -> None:
    got_r, got_w = os.pipe()
    calls: list[int] = []

    def reload() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug while reading the settings")
        return encode(Failed("the second reload"))

    def worker(index: int, inbox: int | None) -> int:
        assert inbox is not None
        stopped: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
        os.write(got_w, b"r")  # ready
        messages: list[object] = []
        deadline = time.monotonic() + 30
        received = Inbox()
        while not messages and time.monotonic() < deadline:
            if select.select([inbox], [], [], 0.05)[0]:
                messages = list(received.feed(os.read(inbox, 65536)))
        os.write(got_w, b"m" if messages == [Failed("the second reload")] else b"x")
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.01)
        return 0 if stopped else 9

    def drive() -> None:
        assert os.read(got_r, 1) == b"r"
        to_main_thread(signal.SIGHUP)  # reload() raises: logged, nothing sent
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:  # two pending SIGHUPs would be delivered as one
            time.sleep(0.01)
        to_main_thread(signal.SIGHUP)  # reload() works: the worker gets it
        results.append(os.read(got_r, 1))
        to_main_thread(signal.SIGTERM)

    results: list[bytes] = []
    driver = threading.Thread(target=drive)
    driver.start()
    try:
        assert supervise(1, worker, grace_s=5, reload=reload) == 0
    finally:
        driver.join(10)
        os.close(got_r)
        os.close(got_w)
    assert results == [b"m"] and len(calls) == 2
