"""upstream_data_sources over loopback: a server-facing data listener admits the server's other addresses when
listed, and otherwise refuses a stranger (after the transfer command: at once, naming it and the setting)."""

from __future__ import annotations

import asyncio
import logging
import socket
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest

from alg.errors import ConfigError
from alg.ftp.addresses import HostPort, IPAddress
from alg.ftp.channelstate import ChannelSettings
from alg.ftp.reasons import DataFailure
from alg.gateway import secure
from alg.gateway.context import GatewayContext, Timeouts
from alg.gateway.relaypath import DataTls, RelayPath
from alg.gateway.server import channel_settings, context_from_settings
from alg.gateway.transfer import DataJob, Ended, Transfer
from alg.net.dataplane import Listener, open_listener
from alg.ops.config import settings_from_mapping
from alg.ops.metrics import Metrics

SERVER = ip_address("127.0.0.1")
OTHER = ip_address("127.0.0.2")  # the server's other address (a node behind its virtual address)


class Events:
    def __init__(self) -> None:
        self.strangers: list[IPAddress] = []

    def stranger(self, job: DataJob, ip: IPAddress) -> None:
        self.strangers.append(ip)

    def pools_changed(self) -> None:
        pass


def _job(listener: Listener, transfer: Transfer, sources: tuple[IPv4Network | IPv6Network, ...]) -> DataJob:
    address = listener.address
    return DataJob(1, transfer, listener, SERVER, SERVER, address, SERVER, address, from_server=True, sources=sources)


def _path() -> RelayPath:
    context = GatewayContext(
        channel_settings=ChannelSettings(),
        timeouts=Timeouts(data_connect_s=3.0),
        metrics=Metrics(),
        public_pool=None,
        internal_pool=None,
    )
    tls = DataTls(client_context=None, server_session=lambda: None, upstream=HostPort(SERVER, 21))
    return RelayPath(context, tls, logging.LoggerAdapter(logging.getLogger("test")))


def _accept(sources: tuple[str, ...], *, verb: str | None) -> tuple[socket.socket | None, Ended, Events]:
    async def main() -> tuple[socket.socket | None, Ended, Events]:
        listener = open_listener(SERVER, None)
        transfer = Transfer(mode="active", verb=verb)
        networks = tuple(ip_network(s) for s in sources)
        address = listener.address
        job = DataJob(
            1, transfer, listener, SERVER, SERVER, address, SERVER, address, from_server=True, sources=networks
        )
        events, ended = Events(), Ended()
        peer = socket.socket()
        peer.bind((str(OTHER), 0))
        peer.setblocking(False)
        accepting = asyncio.ensure_future(_path()._accept(job, events, ended))  # type: ignore[arg-type]
        await asyncio.get_running_loop().sock_connect(peer, (str(SERVER), listener.address.port))
        accepted = await asyncio.wait_for(accepting, 2)
        peer.close()
        listener.close()
        return accepted, ended, events

    return asyncio.run(main())


def test_a_listed_source_is_admitted() -> None:
    accepted, ended, events = _accept(("127.0.0.0/30",), verb="RETR")
    assert accepted is not None and ended.failure is None and events.strangers == []
    accepted.close()


def test_an_unlisted_source_fails_the_transfer_at_once_naming_it_and_the_setting() -> None:
    accepted, ended, events = _accept((), verb="RETR")  # well within data_connect_s: no timeout waited for
    assert accepted is None and ended.failure is DataFailure.UNEXPECTED_SOURCE
    assert ended.text == (
        "the FTP server's data connection came from 127.0.0.2, not 127.0.0.1"
        " (the gateway's upstream_data_sources setting lists the addresses it may use)"
    )
    assert events.strangers == [OTHER]


def test_before_the_transfer_command_a_stranger_is_only_refused() -> None:
    async def main() -> None:
        listener = open_listener(SERVER, None)
        job = _job(listener, Transfer(mode="active"), ())
        events, ended = Events(), Ended()
        accepting = asyncio.ensure_future(_path()._accept(job, events, ended))  # type: ignore[arg-type]
        thief = socket.socket()
        thief.bind((str(OTHER), 0))
        thief.setblocking(False)
        await asyncio.get_running_loop().sock_connect(thief, (str(SERVER), listener.address.port))
        while not events.strangers:
            await asyncio.sleep(0.01)
        assert not accepting.done()  # still waiting for the server itself
        server = socket.socket()
        server.setblocking(False)
        await asyncio.get_running_loop().sock_connect(server, (str(SERVER), listener.address.port))
        accepted = await asyncio.wait_for(accepting, 2)
        assert accepted is not None and ended.failure is None
        for sock in (accepted, server, thief):
            sock.close()
        listener.close()

    asyncio.run(main())


def test_the_setting_takes_cidrs_and_refuses_anything_else() -> None:
    settings = settings_from_mapping({"upstream": "198.51.100.10", "upstream_data_sources": ["198.51.100.0/28"]})
    assert settings.upstream_data_sources == (ip_network("198.51.100.0/28"),)
    assert settings_from_mapping({"upstream": "198.51.100.10"}).upstream_data_sources == ()
    with pytest.raises(ConfigError, match="upstream_data_sources"):
        settings_from_mapping({"upstream": "198.51.100.10", "upstream_data_sources": ["the server"]})


def test_the_settings_reach_new_sessions_and_a_reload() -> None:
    settings = settings_from_mapping(
        {"upstream": "198.51.100.10", "upstream_data_mode": "active", "upstream_data_sources": ["198.51.100.0/28"]}
    )
    assert channel_settings(settings, None, secure.TlsRuntime()).upstream_data_mode == "active"
    context = context_from_settings(settings, Metrics())
    assert context.upstream_data_sources == (ip_network("198.51.100.0/28"),)
    assert context.channel_settings.upstream_data_mode == "active"
