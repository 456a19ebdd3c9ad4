"""Tests for moqrelay.relay.fetch: FETCH from the cache and forwarded to a publisher, in memory."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.client.api import ReceivedObject, RequestRejected
from moqrelay.relay.fetch import (
    FetchRange,
    FetchRefused,
    collect,
    joining_range,
    standalone_range,
)
from moqrelay.relay.tracks import Track
from moqrelay.wire import control as c
from moqrelay.wire.data import FetchObject
from moqrelay.wire.errors import FetchErrorCode
from tests.helpers import CachedTrackCase, MemoryRelay, Recorder, settle

NS = (b"live", b"demo")


class FetchTests(CachedTrackCase):
    def fetch(
        self, start: c.Location, end: c.Location, **kw: int
    ) -> Deferred[list[ReceivedObject]]:
        d = self.viewer.fetch(NS, b"video", start, end, **kw)
        settle(self.clock)
        return d

    def test_standalone_fetch_of_whole_groups(self) -> None:
        objects = self.successResultOf(self.fetch(c.Location(1, 0), c.Location(2, 0)))
        ids = [(o.group_id, o.object_id) for o in objects]
        self.assertEqual(ids, [(g, o) for g in (1, 2) for o in range(4)])
        self.assertEqual(objects[0].payload, b"1.0")

    def test_standalone_fetch_partial_and_descending(self) -> None:
        d = self.fetch(c.Location(0, 2), c.Location(2, 2), group_order=c.GROUP_ORDER_DESCENDING)
        ids = [(o.group_id, o.object_id) for o in self.successResultOf(d)]
        self.assertEqual(ids, [(2, 0), (2, 1)] + [(1, o) for o in range(4)] + [(0, 2), (0, 3)])

    def test_fetch_errors(self) -> None:
        d = self.fetch(c.Location(2, 0), c.Location(1, 0))
        self.assertEqual(self.failureResultOf(d, RequestRejected).value.code, 0x5)
        d = self.fetch(c.Location(9, 0), c.Location(10, 0))
        self.assertEqual(self.failureResultOf(d, RequestRejected).value.code, 0x5)
        d = self.viewer.fetch((b"none",), b"x", c.Location(0, 0), c.Location(1, 0))
        settle(self.clock)
        self.assertEqual(self.failureResultOf(d, RequestRejected).value.code, 0x4)

    def test_relative_joining_fetch(self) -> None:
        late, sub = self.world.watch(NS, b"video", Recorder())
        self.assertEqual(sub.largest, c.Location(2, 3))
        d2 = late.joining_fetch(sub, 1)
        settle(self.clock)
        ids = [(o.group_id, o.object_id) for o in self.successResultOf(d2)]
        self.assertEqual(ids, [(g, o) for g in (1, 2) for o in range(4)])

    def test_joining_fetch_needs_a_largest_object_subscription(self) -> None:
        late, _, _ = self.world.connect()
        d = late.subscribe(NS, b"video", Recorder(), filter_type=c.FILTER_NEXT_GROUP_START)
        settle(self.clock)
        d2 = late.joining_fetch(self.successResultOf(d), 1)
        settle(self.clock)
        self.assertEqual(self.failureResultOf(d2, RequestRejected).value.code, 0x7)


class FetchForwardingTests(SynchronousTestCase):
    """A FETCH the cache cannot answer goes to the publisher, its stream back to the viewer."""

    def setUp(self) -> None:
        self.world = MemoryRelay()
        self.clock = self.world.clock
        self.publisher, self.pub_side, _ = self.world.connect()
        self.publisher.announce(NS)
        settle(self.clock)
        self.asked: list[c.Fetch] = []

        def archive(msg: c.Fetch) -> list[FetchObject] | None:
            self.asked.append(msg)
            return [
                FetchObject(g, 0, o, 128, b"", b"old %d.%d" % (g, o), 0)
                for g in (0, 1)
                for o in (0, 1)
            ]

        self.publisher.on_fetch = archive
        self.viewer, _, _ = self.world.connect()

    def test_fetch_of_a_track_nobody_watches_is_forwarded(self) -> None:
        d = self.viewer.fetch(NS, b"archive", c.Location(0, 0), c.Location(1, 0))
        settle(self.clock)
        objects = self.successResultOf(d)
        self.assertEqual(
            [o.payload for o in objects], [b"old 0.0", b"old 0.1", b"old 1.0", b"old 1.1"]
        )
        self.assertEqual(self.asked[0].track_name, b"archive")
        (relay_viewer,) = [p for p in self.world.relay.peers if not p.namespaces]
        self.assertEqual(relay_viewer.fetches_out, {})

    def test_range_older_than_the_cache_is_forwarded(self) -> None:
        track = self.publisher.offer_track(NS, b"video")
        self.viewer.subscribe(NS, b"video", Recorder())
        settle(self.clock)
        for group in range(5, 7):
            track.send_object(group, 0, b"new")
        settle(self.clock)
        d = self.viewer.fetch(NS, b"video", c.Location(0, 0), c.Location(1, 0))
        settle(self.clock)
        self.assertEqual(len(self.successResultOf(d)), 4)
        self.assertEqual(len(self.asked), 1)

    def test_publisher_refusal_and_departure_reach_the_viewer(self) -> None:
        self.publisher.on_fetch = lambda msg: None
        d = self.viewer.fetch(NS, b"archive", c.Location(0, 0), c.Location(1, 0))
        settle(self.clock)
        self.assertEqual(self.failureResultOf(d, RequestRejected).value.code, 0x3)
        self.publisher.on_fetch = lambda msg: None
        d2 = self.viewer.fetch((b"nobody",), b"x", c.Location(0, 0), c.Location(1, 0))
        settle(self.clock)
        self.assertEqual(self.failureResultOf(d2, RequestRejected).value.code, 0x4)


def standalone(start: c.Location, end: c.Location) -> c.Fetch:
    return c.Fetch(0, 128, 0, c.FETCH_STANDALONE, NS, b"video", start, end)


class RangeTests(SynchronousTestCase):
    """The range arithmetic and the cache read alone, on a `Track` filled by hand."""

    def setUp(self) -> None:
        self.track = Track((NS, b"video"), 4, 1 << 20)
        for group in range(3):
            for subgroup_id in (0, 1):
                subgroup = self.track.open_subgroup(group, subgroup_id, 128, False)
                for obj in (subgroup_id, subgroup_id + 2):
                    self.track.add_object(subgroup, obj, b"%d.%d" % (group, obj), 0, b"")

    def test_an_end_object_of_zero_means_the_whole_group(self) -> None:
        whole = FetchRange(c.Location(1, 1), c.Location(2, 0))
        self.assertFalse(whole.covers(1, 0))
        self.assertTrue(whole.covers(1, 1))
        self.assertTrue(whole.covers(2, 99))
        self.assertFalse(whole.covers(3, 0))
        partial = FetchRange(c.Location(1, 0), c.Location(2, 2))
        self.assertTrue(partial.covers(2, 1))
        self.assertFalse(partial.covers(2, 2))

    def test_collect_orders_objects_by_id_within_each_group(self) -> None:
        wanted = standalone_range(standalone(c.Location(1, 0), c.Location(2, 0)), self.track)
        ascending = [(o.group_id, o.object_id) for o in collect(self.track, wanted, False)]
        self.assertEqual(ascending, [(g, o) for g in (1, 2) for o in range(4)])
        descending = [(o.group_id, o.object_id) for o in collect(self.track, wanted, True)]
        self.assertEqual(descending, [(g, o) for g in (2, 1) for o in range(4)])

    def test_ranges_that_cannot_be_served_are_refused(self) -> None:
        backwards = standalone(c.Location(2, 0), c.Location(1, 0))
        after = standalone(c.Location(5, 0), c.Location(6, 0))
        for msg in (backwards, after):
            e = self.assertRaises(FetchRefused, standalone_range, msg, self.track)
            self.assertEqual(e.code, FetchErrorCode.INVALID_RANGE)

    def test_joining_ranges_count_back_from_the_largest_object(self) -> None:
        relative = c.Fetch(0, 128, 0, c.FETCH_RELATIVE_JOINING, joining_request_id=2,
                           joining_start=1)  # fmt: skip
        wanted = joining_range(relative, c.Location(2, 3))
        self.assertEqual(wanted, FetchRange(c.Location(1, 0), c.Location(2, 4)))
        e = self.assertRaises(FetchRefused, joining_range, relative, None)
        self.assertEqual(e.code, FetchErrorCode.INVALID_RANGE)
