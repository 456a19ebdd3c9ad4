"""Tests for moqrelay.relay.peer: PUBLISH, the dispatch table, in memory."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.client.api import RequestRejected
from moqrelay.relay.peer import _HANDLERS, RelayPeer
from tests.helpers import MemoryRelay, Recorder, settle

NS = (b"live", b"demo")


class PublishAndNamespaceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = MemoryRelay()
        self.clock = self.world.clock

    def test_publish_without_announce_is_subscribable(self) -> None:
        publisher, _, _ = self.world.connect()
        d = publisher.publish_track(NS, b"pushed")
        settle(self.clock)
        track = self.successResultOf(d)
        viewer, _, _ = self.world.connect()
        rec = Recorder()
        viewer.subscribe(NS, b"pushed", rec)
        settle(self.clock)
        track.send_object(0, 0, b"a")
        track.send_object(0, 1, b"b")
        settle(self.clock)
        self.assertEqual(rec.ids(), [(0, 0), (0, 1)])

    def test_published_track_survives_its_last_viewer(self) -> None:
        publisher, _, _ = self.world.connect()
        publisher.publish_track(NS, b"pushed")
        settle(self.clock)
        viewer, _, _ = self.world.connect()
        d = viewer.subscribe(NS, b"pushed", Recorder())
        settle(self.clock)
        self.successResultOf(d).unsubscribe()
        settle(self.clock)
        self.assertIn((NS, b"pushed"), self.world.relay.tracks)

    def test_a_track_may_have_several_publishers_but_each_publishes_it_once(self) -> None:
        first, _, _ = self.world.connect()
        second, _, _ = self.world.connect()
        first.publish_track(NS, b"t")
        settle(self.clock)
        d = second.publish_track(NS, b"t")
        settle(self.clock)
        self.successResultOf(d)
        self.assertEqual(len(self.world.relay.tracks[(NS, b"t")].sources), 2)
        again = second.publish_track(NS, b"t")
        settle(self.clock)
        self.assertEqual(self.failureResultOf(again, RequestRejected).value.code, 0x4)


class DispatchTests(SynchronousTestCase):
    def test_every_control_message_handler_exists(self) -> None:
        for name in _HANDLERS.values():
            self.assertTrue(callable(getattr(RelayPeer, name, None)), name)
