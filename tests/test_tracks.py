"""Tests for moqrelay.relay.tracks: the bounded group cache, in memory."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.relay.config import RelayConfig
from tests.helpers import MemoryRelay, Recorder, settle

NS = (b"live", b"demo")


class EvictionTests(SynchronousTestCase):
    def test_a_publisher_that_never_finishes_its_streams_cannot_grow_the_relay(self) -> None:
        world = MemoryRelay(RelayConfig(cache_groups=2))
        clock = world.clock
        _, track = world.publish(NS, b"video")
        viewer, _, _ = world.connect()
        rec = Recorder()
        viewer.subscribe(NS, b"video", rec)
        settle(clock)
        for group in range(10):
            for obj in range(3):
                track.send_object(group, obj, b"x")
            settle(clock)
        relay_track = world.relay.tracks[(NS, b"video")]
        self.assertEqual(sorted(relay_track.groups), [8, 9])
        (peer,) = [p for p in world.relay.peers if p.subscriptions]
        (sub,) = peer.subscriptions.values()
        self.assertLessEqual(len(sub.streams), 2)
        self.assertEqual(len(rec.objects), 30)
        (down,) = track.subscribers.values()
        old_stream = down.subgroups[(0, 0)].stream
        track.send_object(0, 3, b"too late")
        settle(clock)
        self.assertEqual(len(rec.objects), 30)
        # The relay stopped the publisher's stream of the evicted group.
        self.assertEqual(old_stream.reset_code, 0x1)  # type: ignore[attr-defined]
        self.assertEqual(relay_track.upstream_open, 2)
