"""Tests for moqrelay.relay.subscription: SUBSCRIBE_UPDATE and datagram delivery, in memory."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.wire import control as c
from moqrelay.wire.errors import (
    PublishDoneCode,
)
from tests.helpers import MemoryRelay, Recorder, settle

NS = (b"live", b"demo")


class SubscribeUpdateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = MemoryRelay()
        self.clock = self.world.clock
        _, self.track = self.world.publish(NS, b"video")
        self.viewer, self.viewer_side, _ = self.world.connect()
        self.rec = Recorder()
        d = self.viewer.subscribe(NS, b"video", self.rec)
        settle(self.clock)
        self.sub = self.successResultOf(d)

    def test_forward_zero_keeps_the_subscription_without_data(self) -> None:
        self.viewer.update_subscription(self.sub, c.Location(0, 0), 0, forward=False)
        self.track.send_object(0, 0, b"a")
        settle(self.clock)
        self.assertEqual(self.rec.objects, [])
        self.viewer.update_subscription(self.sub, c.Location(0, 0), 0, forward=True)
        self.track.send_object(1, 0, b"b")
        settle(self.clock)
        self.assertEqual(self.rec.ids(), [(1, 0)])

    def test_narrowing_the_end_ends_the_subscription(self) -> None:
        self.viewer.update_subscription(self.sub, c.Location(0, 0), 2)
        self.track.send_object(0, 0, b"a")
        self.track.send_object(1, 0, b"b")
        self.track.send_object(2, 0, b"c")
        settle(self.clock)
        self.assertEqual(self.rec.ids(), [(0, 0), (1, 0)])
        done = self.successResultOf(self.sub.done)
        self.assertEqual(done.status_code, PublishDoneCode.SUBSCRIPTION_ENDED)

    def test_widening_is_a_protocol_violation(self) -> None:
        self.viewer.update_subscription(self.sub, c.Location(0, 0), 5)
        settle(self.clock)
        self.viewer.update_subscription(self.sub, c.Location(0, 0), 0)
        settle(self.clock)
        self.assertEqual(self.viewer_side.close_code, 0x3)


class DatagramTests(SynchronousTestCase):
    def test_datagrams_go_as_datagrams_or_on_streams(self) -> None:
        world = MemoryRelay()
        clock = world.clock
        _, track = world.publish(NS, b"audio")
        quic_like, quic_side, _ = world.connect()
        ws_like, ws_side, ws_relay_side = world.connect()
        # The relay's side of this viewer has no datagrams, like a WebSocket session.
        ws_relay_side.handler.app.takes_datagrams = False  # type: ignore[union-attr]
        by_datagram, by_stream = Recorder(), Recorder()
        quic_like.subscribe(NS, b"audio", by_datagram)
        ws_like.subscribe(NS, b"audio", by_stream)
        settle(clock)
        for obj in range(3):
            track.send_datagram(0, obj, b"d%d" % obj)
        settle(clock)
        self.assertEqual(by_datagram.ids(), [(0, 0), (0, 1), (0, 2)])
        self.assertEqual(by_stream.ids(), [(0, 0), (0, 1), (0, 2)])
        self.assertEqual(by_stream.objects[2].payload, b"d2")
        self.assertEqual(len(quic_side.datagrams_received), 3)
        self.assertEqual(ws_side.datagrams_received, [])
