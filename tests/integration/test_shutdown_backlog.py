"""Graceful shutdown and the listen backlog, on loopback: connections the kernel completed but the gateway had
not accepted yet get `421 Service shutting down.` when the gateway stops, not a reset (a balancer that
already handed them on could not send them elsewhere), and each is counted."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from alg.gateway.server import Gateway
from alg.ops.metrics import Metrics


def test_backlog_connections_get_421_not_a_reset() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)
    clients = []
    try:
        for _ in range(3):  # completed by the kernel, never accepted
            clients.append(socket.create_connection(listener.getsockname(), timeout=5))
        stand_in = SimpleNamespace(metrics=Metrics())
        Gateway._refuse_backlog(stand_in, listener.fileno())  # type: ignore[arg-type]
        for client in clients:
            assert client.recv(100) == b"421 Service shutting down.\r\n"
            assert client.recv(100) == b""  # then closed
        refusals = stand_in.metrics.refusals.labels("limit")._value.get()
        assert refusals == 3
        assert listener.fileno() >= 0  # the listener itself stays open, for server.close()
    finally:
        for client in clients:
            client.close()
        listener.close()
