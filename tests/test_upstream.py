"""Tests for moqrelay.relay.upstream: --announce forwarding, pull-through, backoff, no loops."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.client.api import MoqtClient, RequestRejected
from moqrelay.relay.hub import Relay
from moqrelay.relay.upstream import UpstreamLink
from moqrelay.session import MoqtSession
from moqrelay.testing import MemorySession, memory_session_pair
from moqrelay.transport.interfaces import HandlerFactory, ITransportSession
from moqrelay.wire import control as c
from moqrelay.wire.errors import PublishDoneCode, SubscribeErrorCode
from tests.helpers import Recorder, settle

NS = (b"live", b"demo")


class Chain:
    """Relay B announcing to relay A, in memory, on one clock."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.a = Relay(self.clock)
        self.b = Relay(self.clock)
        self.a_up = True
        self.links: list[MemorySession] = []
        self.link = UpstreamLink(self.clock, self.b, "moqt://a/", self.connector, rng=lambda: 0.5)

    def connector(self, url: str, factory: HandlerFactory) -> Deferred[ITransportSession]:
        if not self.a_up:
            return fail(ConnectionRefusedError("relay A is down"))
        client_side, _ = memory_session_pair(
            self.clock, factory, lambda t: MoqtSession(t, self.clock, self.a.app_factory)
        )
        self.links.append(client_side)
        return succeed(client_side)

    def client(self, relay: Relay) -> tuple[MoqtClient, MemorySession]:
        def client_factory(t: ITransportSession) -> MoqtSession:
            return MoqtSession(t, self.clock, MoqtClient)

        side, _ = memory_session_pair(
            self.clock, client_factory, lambda t: MoqtSession(t, self.clock, relay.app_factory)
        )
        settle(self.clock)
        assert isinstance(side.handler, MoqtSession)
        app = side.handler.app
        assert isinstance(app, MoqtClient)
        return app, side

    def kill_a(self) -> None:
        """Relay A vanishes: every session to it drops, and new connections are refused."""
        self.a_up = False
        for side in self.links:
            side.abort()
        settle(self.clock)


class ChainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.chain = Chain()
        self.clock = self.chain.clock
        self.chain.link.start()
        settle(self.clock)

    def publish(self, relay: Relay) -> tuple[MoqtClient, MemorySession, object]:
        publisher, side = self.chain.client(relay)
        publisher.announce(NS)
        settle(self.clock)
        return publisher, side, publisher.offer_track(NS, b"video")

    def test_viewer_on_b_pulls_a_track_published_on_a(self) -> None:
        _, _, track = self.publish(self.chain.a)
        viewer, _ = self.chain.client(self.chain.b)
        rec = Recorder()
        d = viewer.subscribe(NS, b"video", rec)
        settle(self.clock)
        self.successResultOf(d)
        track.send_object(0, 0, b"through B")  # type: ignore[attr-defined]
        settle(self.clock)
        self.assertEqual(rec.ids(), [(0, 0)])

    def test_namespaces_announced_on_b_reach_a(self) -> None:
        _, _, track = self.publish(self.chain.b)
        self.assertIn(NS, self.chain.a.namespaces)
        viewer, _ = self.chain.client(self.chain.a)
        rec = Recorder()
        viewer.subscribe(NS, b"video", rec)
        settle(self.clock)
        track.send_object(0, 0, b"forwarded")  # type: ignore[attr-defined]
        settle(self.clock)
        self.assertEqual(rec.ids(), [(0, 0)])

    def test_namespace_done_follows_upstream(self) -> None:
        _, side, _ = self.publish(self.chain.b)
        self.assertIn(NS, self.chain.a.namespaces)
        side.abort()
        settle(self.clock)
        self.assertNotIn(NS, self.chain.a.namespaces)

    def test_unknown_upstream_track_errors_back_to_the_viewer(self) -> None:
        viewer, _ = self.chain.client(self.chain.b)
        d = viewer.subscribe((b"nowhere",), b"x", Recorder())
        settle(self.clock)
        failure = self.failureResultOf(d, RequestRejected)
        self.assertEqual(failure.value.code, SubscribeErrorCode.TRACK_DOES_NOT_EXIST)
        self.assertEqual(self.chain.b.tracks, {})

    def test_one_upstream_subscription_however_many_viewers_come_and_go(self) -> None:
        _, _, track = self.publish(self.chain.a)
        for _ in range(1000):
            viewer, side = self.chain.client(self.chain.b)
            viewer.subscribe(NS, b"video", Recorder())
            settle(self.clock)
            self.assertEqual(len(track.subscribers), 1)  # type: ignore[attr-defined]
            side.abort()
            settle(self.clock)
        self.assertEqual(track.subscribers, {})  # type: ignore[attr-defined]
        upstream = self.chain.b.upstream_peer
        assert upstream is not None
        self.assertEqual(upstream.upstream, {})
        self.assertEqual(upstream.tracks_by_alias, {})
        self.assertEqual(self.chain.b.tracks, {})
        self.assertEqual(self.chain.a.tracks, {})
        self.assertEqual(len(self.chain.a.peers), 2)

    def test_losing_a_keeps_b_serving_and_reconnects_with_backoff(self) -> None:
        _, _, local_track = self.publish(self.chain.b)
        local_viewer, _ = self.chain.client(self.chain.b)
        local = Recorder()
        local_viewer.subscribe(NS, b"video", local)
        _, _, _ = self.publish_elsewhere()
        pulled_viewer, _ = self.chain.client(self.chain.b)
        d = pulled_viewer.subscribe((b"remote",), b"video", Recorder())
        settle(self.clock)
        pulled = self.successResultOf(d)
        self.chain.kill_a()
        done = self.successResultOf(pulled.done)
        self.assertEqual(done.status_code, PublishDoneCode.GOING_AWAY)
        local_track.send_object(0, 0, b"still here")  # type: ignore[attr-defined]
        settle(self.clock)
        self.assertEqual(local.ids(), [(0, 0)])
        # Retries at 0.5, 1, 2, 4 ... seconds (rng 0.5 = no jitter), bounded by max_delay.
        attempts = self.chain.link.attempts
        for _ in range(4):
            self.clock.advance(self.chain.link.max_delay)
        self.assertGreater(self.chain.link.attempts, attempts)
        self.assertIsNone(self.chain.b.upstream_peer)
        self.chain.a_up = True
        self.clock.advance(self.chain.link.max_delay)
        settle(self.clock)
        self.assertIsNotNone(self.chain.b.upstream_peer)
        self.assertEqual(self.chain.link.connections, 2)
        # Re-announced on reconnect.
        self.assertIn(NS, self.chain.a.namespaces)
        self.assertEqual(self.chain.link.delay, self.chain.link.initial_delay)

    def publish_elsewhere(self) -> tuple[MoqtClient, MemorySession, object]:
        publisher, side = self.chain.client(self.chain.a)
        publisher.announce((b"remote",))
        settle(self.clock)
        return publisher, side, publisher.offer_track((b"remote",), b"video")

    def test_goaway_from_upstream_reconnects(self) -> None:
        upstream = self.chain.b.upstream_peer
        assert upstream is not None
        (a_side,) = [p for p in self.chain.a.peers]
        a_side.session.send(c.GoAway(b""))
        settle(self.clock)
        self.clock.advance(1.0)
        settle(self.clock)
        self.assertEqual(self.chain.link.connections, 2)
        self.assertIsNot(self.chain.b.upstream_peer, upstream)

    def test_stop_closes_the_session_and_stops_retrying(self) -> None:
        d = self.chain.link.stop()
        settle(self.clock)
        self.successResultOf(d)
        self.assertIsNone(self.chain.b.upstream_peer)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class NoLoopTests(SynchronousTestCase):
    def test_two_relays_announcing_to_each_other_do_not_ping_pong(self) -> None:
        clock = Clock()
        a, b = Relay(clock), Relay(clock)
        sides: list[MemorySession] = []

        def connector_to(target: Relay):  # type: ignore[no-untyped-def]
            def connect(url: str, factory: HandlerFactory) -> Deferred[ITransportSession]:
                side, _ = memory_session_pair(
                    clock, factory, lambda t: MoqtSession(t, clock, target.app_factory)
                )
                sides.append(side)
                return succeed(side)

            return connect

        UpstreamLink(clock, a, "x", connector_to(b)).start()
        UpstreamLink(clock, b, "x", connector_to(a)).start()
        settle(clock)

        def client(relay: Relay) -> MoqtClient:
            side, _ = memory_session_pair(
                clock,
                lambda t: MoqtSession(t, clock, MoqtClient),
                lambda t: MoqtSession(t, clock, relay.app_factory),
            )
            settle(clock)
            assert isinstance(side.handler, MoqtSession)
            app = side.handler.app
            assert isinstance(app, MoqtClient)
            return app

        publisher = client(a)
        d = publisher.announce(NS)
        settle(clock)
        self.successResultOf(d)
        # A announced it to B; B did not send it back to A.
        self.assertIn(NS, b.namespaces)
        (owner,) = a.namespaces.owners(NS)
        self.assertFalse(owner.is_relay)
        viewer = client(b)
        d2 = viewer.subscribe((b"unknown",), b"t", Recorder())
        settle(clock)
        self.failureResultOf(d2, RequestRejected)
        self.assertEqual(a.tracks, {})
        self.assertEqual(b.tracks, {})
        for side in sides:
            self.assertFalse(side.closed)
