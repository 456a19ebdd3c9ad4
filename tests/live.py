"""Test support for end-to-end tests over real sockets on 127.0.0.1.

`RelayFixture` runs a `RelayService` on ephemeral ports and connects clients
to it over WebSocket, raw QUIC and WebTransport; every client and the relay
are closed after each test, and the test waits until QUIC ports and timers
are gone so that trial's reactor stays clean.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from moqrelay.auth import Authorizer
from moqrelay.client.api import MoqtClient, TrackPublisher
from moqrelay.client.connect import connect
from moqrelay.relay.config import RelayConfig
from moqrelay.service import RelayService
from moqrelay.session import SessionLimits
from moqrelay.tls import generate_dev_chain
from moqrelay.transport.quic import QuicEndpoint
from moqrelay.transport.quicstack import DEFAULT_STACK
from tests.helpers import Recorder

NS = (b"live", b"demo")
CHAIN = generate_dev_chain()


async def wait_until(predicate: Any, timeout: float = 20.0, step: float = 0.01) -> None:
    """Poll the real reactor until ``predicate()`` holds (bounded)."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"timed out waiting for {predicate}")
        await deferLater(reactor, step, lambda: None)
        waited += step


class RelayFixture(TestCase):
    """Starts a relay on 127.0.0.1 and closes every client and the relay afterwards."""

    limits = SessionLimits()
    config = RelayConfig()
    handshake_timeout = 10.0
    idle_timeout = 30.0
    quic_stack = DEFAULT_STACK

    async def start_relay(self, authorizer: Authorizer | None = None) -> None:
        self.service = await self.new_relay(authorizer=authorizer)
        self.clients: list[MoqtClient] = []
        (self.tcp_port,) = await self.service.tcp_ports()
        self.udp_port = self.service.udp_port()
        self.addCleanup(self.stop_all)

    async def new_relay(
        self, port: int = 0, announce: str | None = None, authorizer: Authorizer | None = None
    ) -> RelayService:
        service = RelayService(
            reactor,
            bind=("127.0.0.1", port),
            chains=[CHAIN],
            config=self.config,
            limits=self.limits,
            dev=True,
            announce=announce,
            announce_verify=False,
            handshake_timeout=self.handshake_timeout,
            idle_timeout=self.idle_timeout,
            authorizer=authorizer,
            quic_stack=self.quic_stack,
        )
        if service.upstream is not None:
            service.upstream.initial_delay = service.upstream.delay = 0.05
            service.upstream.max_delay = 0.2
        service.startService()
        await service.tcp_ports()
        return service

    def url(self, scheme: str, service: RelayService | None = None) -> str:
        return relay_url(service or self.service, scheme)

    async def client(self, scheme: str = "wss", service: RelayService | None = None) -> MoqtClient:
        client = await connect(
            reactor, self.url(scheme, service), verify=False, fingerprint=None, limits=self.limits
        )
        self.clients.append(client)
        return client

    async def publisher(
        self, scheme: str = "wss", service: RelayService | None = None
    ) -> tuple[MoqtClient, TrackPublisher]:
        client = await self.client(scheme, service)
        await client.announce(NS)
        return client, client.offer_track(NS, b"video")

    async def healthy_pair(self) -> tuple[TrackPublisher, Recorder]:
        _, track = await self.publisher("wss")
        rec = Recorder()
        await (await self.client("wss")).subscribe(NS, b"video", rec)
        return track, rec

    async def still_healthy(
        self, track: TrackPublisher, rec: Recorder, group: int, peers: int = 2
    ) -> None:
        """The healthy publisher and viewer still work, and only ``peers`` sessions remain."""
        before = len(rec.objects)
        track.send_object(group, 0, b"still flowing")
        await wait_until(lambda: len(rec.objects) == before + 1)
        self.assertEqual(len(self.service.relay.peers), peers)

    async def stop_all(self) -> None:
        waits = []
        for client in self.clients:
            if not client.closed.called:
                client.close()
            waits.append(client.closed)
        await gatherResults(waits)
        if self.service.running:
            await self.service.stopService()
        await wait_until(lambda: not self.service.relay.peers)
        # QUIC clients close their UDP ports only after the draining period.
        await wait_until(_quic_is_quiet, timeout=10.0)


def _quic_is_quiet() -> bool:
    """No QUIC port or QUIC/WebTransport timer left in the reactor."""
    ports = [
        r for r in reactor.getReaders() if isinstance(getattr(r, "protocol", None), QuicEndpoint)
    ]
    calls = [
        c for c in reactor.getDelayedCalls() if "Quic" in repr(c) or "WebTransport" in repr(c)
    ]
    return not (ports or calls)


def relay_url(service: RelayService, scheme: str) -> str:
    if scheme in ("ws", "wss"):
        (port,) = [p.port.getHost().port for p in service.web_services if p.port is not None]  # type: ignore[attr-defined]
    else:
        port = service.udp_port()
    return f"{scheme}://127.0.0.1:{port}/moq"
