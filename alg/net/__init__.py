"""Transports: data-port listeners, the byte relay, where a redirected connection was going.

Knows sockets and the event loop; knows nothing of sessions, settings or metrics.
"""
