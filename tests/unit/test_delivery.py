"""alg/net/delivery.py: a transfer is delivered once its receiver acknowledged every byte, not when send() returned."""

from __future__ import annotations

import asyncio
import socket

from shellrig import run

from alg.net.delivery import DeliveryWatch, unacknowledged


def tcp_pair(rcvbuf: int) -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        receiver = socket.socket()
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        receiver.connect(listener.getsockname())
        sender, _ = listener.accept()
    sender.setblocking(False)
    receiver.setblocking(False)
    return sender, receiver


def test_bytes_the_receiver_has_not_taken_keep_the_watch_waiting_and_a_reset_fails_it() -> None:
    async def main() -> None:
        sender, receiver = tcp_pair(4096)
        delivered: list[bool] = []
        with sender, receiver:
            # More than the receiver's window: part of it stays in our send buffer, unacknowledged.
            with_room = sender.send(b"x" * (1 << 20))
            assert with_room > 0 and unacknowledged(sender) > 0
            watch = DeliveryWatch(lambda: delivered.append(True))
            watch.sent(sender)
            assert delivered == []
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            receiver.close()  # unread data: a reset; before or after it lands, the bytes were not delivered
            assert not watch.settle() and delivered == []

    run(main)


def test_bytes_read_by_the_receiver_are_delivered_without_waiting_for_the_relay_to_end() -> None:
    async def main() -> None:
        sender, receiver = tcp_pair(1 << 20)
        done = asyncio.Event()
        with sender, receiver:
            await asyncio.get_running_loop().sock_sendall(sender, b"y" * 100_000)
            watch = DeliveryWatch(done.set)
            watch.sent(sender)
            got = 0
            while got < 100_000:
                got += len(await asyncio.get_running_loop().sock_recv(receiver, 65536))
            async with asyncio.timeout(5):
                await done.wait()
            assert watch.settle()

    run(main)
