"""Tests for moqrelay.relay.tracks: the bounded group cache, alone and in memory."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.relay.config import RelayConfig
from moqrelay.relay.tracks import Subgroup, Track
from moqrelay.wire.control import Location
from moqrelay.wire.data import encode_subgroup_object
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
        (source,) = relay_track.sources.values()
        self.assertEqual(source.open, 2)


class RecordingViewer:
    """A `TrackViewer` that records what the track tells it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def object_available(self, subgroup: Subgroup) -> None:
        self.events.append(("object", subgroup.group_id, len(subgroup.objects)))

    def subgroup_closed(self, subgroup: Subgroup) -> None:
        self.events.append(("closed", subgroup.group_id, len(subgroup.objects)))

    def activate(self) -> None:
        """Not used by the track itself."""

    def fail(self, code: int, reason: str) -> None:
        """Not used by the track itself."""

    def end(self, status: int, reason: str) -> None:
        """Not used by the track itself."""


class CacheTests(SynchronousTestCase):
    """`Track` alone, with a recording viewer."""

    def setUp(self) -> None:
        self.track = Track(((b"ns",), b"t"), max_groups=2, max_bytes=10_000)
        self.viewer = RecordingViewer()
        self.track.subscriptions[self.viewer] = None

    def add(self, group: int, payload: bytes = b"x", subgroup_id: int = 0) -> Subgroup:
        subgroup = self.track.open_subgroup(group, subgroup_id, 128, False)
        self.track.add_object(subgroup, 0, payload, 0, b"")
        return subgroup

    def test_objects_are_stored_once_encoded_and_every_viewer_told(self) -> None:
        subgroup = self.add(0, b"payload")
        (obj,) = subgroup.objects
        self.assertEqual(
            obj.wire, encode_subgroup_object(0, b"payload", extensions=None, status=0)
        )
        self.assertEqual(self.viewer.events, [("object", 0, 1)])
        self.assertEqual(self.track.largest, Location(0, 0))
        self.track.close_subgroup(subgroup, None)
        self.track.close_subgroup(subgroup, None)
        self.assertEqual(self.viewer.events[1:], [("closed", 0, 1)])

    def test_the_oldest_groups_leave_past_the_group_bound_and_release_their_source(self) -> None:
        released: list[int] = []
        first = self.add(0)
        first.releases.append(lambda: released.append(0))
        self.add(1)
        self.add(2)
        self.assertEqual(sorted(self.track.groups), [1, 2])
        self.assertTrue(first.evicted)
        self.assertEqual(released, [0])
        self.assertIn(("closed", 0, 1), self.viewer.events)
        self.track.add_object(first, 1, b"late", 0, b"")
        self.assertEqual(len(first.objects), 1)

    def test_the_byte_bound_keeps_the_newest_group_whatever_its_size(self) -> None:
        self.add(0, b"a" * 6000)
        self.add(1, b"b" * 6000)
        self.assertEqual(sorted(self.track.groups), [1])
        self.add(1, b"c" * 6000, subgroup_id=1)
        self.assertEqual(sorted(self.track.groups), [1])
        self.assertGreater(self.track.cached_bytes, self.track.max_bytes)

    def test_cached_subgroups_start_at_a_group(self) -> None:
        for group in (3, 1, 2):
            self.add(group)
        self.assertEqual([s.group_id for s in self.track.cached_subgroups(2)], [2, 3])
