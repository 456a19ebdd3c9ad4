"""Tests for moqrelay.relay.hub: routing, fan-out, deduplication, teardown, in memory."""

from __future__ import annotations

import gc
import weakref

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.client.api import RequestRejected
from moqrelay.relay.hub import RelayConfig
from moqrelay.session import SessionLimits
from moqrelay.wire import control as c
from moqrelay.wire.errors import PublishDoneCode, SubscribeErrorCode
from tests.helpers import MemoryRelay, Recorder, recursion_headroom, settle

NS = (b"live", b"demo")


class FanOutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = MemoryRelay()
        self.clock = self.world.clock
        self.publisher, self.pub_side, _ = self.world.connect()
        announced = self.publisher.announce(NS)
        settle(self.clock)
        self.successResultOf(announced)
        self.track = self.publisher.offer_track(NS, b"video")

    def subscribe(self, **kwargs: object) -> tuple[Recorder, object]:
        viewer, _, _ = self.world.connect()
        rec = Recorder()
        d = viewer.subscribe(NS, b"video", rec, **kwargs)  # type: ignore[arg-type]
        settle(self.clock)
        return rec, self.successResultOf(d)

    def test_every_viewer_gets_every_object_in_order(self) -> None:
        recorders = [self.subscribe()[0] for _ in range(5)]
        for group in range(3):
            for obj in range(4):
                self.track.send_object(group, obj, b"%d-%d" % (group, obj))
            self.track.end_subgroup(group)
        settle(self.clock)
        expected = [(g, o) for g in range(3) for o in range(4)]
        for rec in recorders:
            self.assertEqual(rec.ids(), expected)
            self.assertEqual(rec.objects[5].payload, b"1-1")

    def test_one_upstream_subscription_for_many_viewers(self) -> None:
        for _ in range(4):
            self.subscribe()
        self.assertEqual(len(self.track.subscribers), 1)

    def test_unknown_track_is_refused(self) -> None:
        viewer, _, _ = self.world.connect()
        d = viewer.subscribe((b"nobody",), b"x", Recorder())
        settle(self.clock)
        failure = self.failureResultOf(d, RequestRejected)
        self.assertEqual(failure.value.code, SubscribeErrorCode.TRACK_DOES_NOT_EXIST)

    def test_last_viewer_leaving_cancels_upstream_and_a_new_one_resubscribes(self) -> None:
        _, sub = self.subscribe()
        sub.unsubscribe()  # type: ignore[attr-defined]
        settle(self.clock)
        self.assertEqual(self.track.subscribers, {})
        self.assertEqual(self.world.relay.tracks, {})
        rec, _ = self.subscribe()
        self.assertEqual(len(self.track.subscribers), 1)
        self.track.send_object(0, 0, b"x")
        settle(self.clock)
        self.assertEqual(rec.ids(), [(0, 0)])

    def test_late_joiner_starts_at_the_current_group(self) -> None:
        first, _ = self.subscribe()
        for obj in range(3):
            self.track.send_object(7, obj, b"a")
        settle(self.clock)
        late, sub = self.subscribe()
        self.assertEqual(sub.largest, c.Location(7, 2))  # type: ignore[attr-defined]
        self.track.send_object(7, 3, b"b")
        settle(self.clock)
        self.assertEqual(late.ids(), [(7, 0), (7, 1), (7, 2), (7, 3)])
        self.assertEqual(len(first.objects), 4)

    def test_next_group_start_filter_waits_for_the_next_group(self) -> None:
        self.subscribe()
        self.track.send_object(1, 0, b"a")
        settle(self.clock)
        rec, _ = self.subscribe(filter_type=c.FILTER_NEXT_GROUP_START)
        self.track.send_object(1, 1, b"b")
        self.track.send_object(2, 0, b"c")
        settle(self.clock)
        self.assertEqual(rec.ids(), [(2, 0)])

    def test_publisher_gone_ends_viewers_with_publish_done(self) -> None:
        _, sub = self.subscribe()
        self.track.send_object(0, 0, b"a")
        settle(self.clock)
        self.pub_side.abort()
        settle(self.clock)
        done = self.successResultOf(sub.done)  # type: ignore[attr-defined]
        self.assertEqual(done.status_code, PublishDoneCode.TRACK_ENDED)
        self.assertEqual(done.stream_count, 1)
        self.assertEqual(self.world.relay.tracks, {})
        self.assertEqual(len(self.world.relay.namespaces), 0)


class SlowViewerTests(SynchronousTestCase):
    def test_slow_viewer_skips_ahead_and_others_are_not_stalled(self) -> None:
        world = MemoryRelay(RelayConfig(max_queued_bytes=4096, max_skipped_groups=100))
        clock = world.clock
        publisher, _, _ = world.connect()
        publisher.announce(NS)
        settle(clock)
        track = publisher.offer_track(NS, b"video")
        fast_viewer, _, _ = world.connect()
        slow_viewer, slow_side, _ = world.connect()
        fast, slow = Recorder(), Recorder()
        fast_viewer.subscribe(NS, b"video", fast)
        slow_viewer.subscribe(NS, b"video", slow)
        settle(clock)
        slow_side.pause_reading()
        for group in range(10):
            for obj in range(10):
                track.send_object(group, obj, b"x" * 1000)
            track.end_subgroup(group)
            settle(clock)
        self.assertEqual(len(fast.objects), 100)
        slow_side.resume_reading()
        settle(clock)
        groups = sorted({g for g, _ in slow.ids()})
        self.assertIn(9, groups)
        self.assertLess(len(groups), 10)
        tail = [o for g, o in slow.ids() if g == 9]
        self.assertEqual(tail, list(range(10)))

    def test_viewer_that_never_reads_is_ended_too_far_behind(self) -> None:
        world = MemoryRelay(RelayConfig(max_queued_bytes=4096, max_skipped_groups=3))
        clock = world.clock
        publisher, _, _ = world.connect()
        publisher.announce(NS)
        settle(clock)
        track = publisher.offer_track(NS, b"video")
        viewer, viewer_side, relay_side = world.connect()
        d = viewer.subscribe(NS, b"video", Recorder())
        settle(clock)
        sub = self.successResultOf(d)
        viewer_side.pause_reading()
        for group in range(20):
            for obj in range(5):
                track.send_object(group, obj, b"x" * 1000)
            track.end_subgroup(group)
            settle(clock)
        self.assertLessEqual(relay_side.queued_bytes(), 4096 + 2000)
        viewer_side.resume_reading()
        settle(clock)
        done = self.successResultOf(sub.done)
        self.assertEqual(done.status_code, PublishDoneCode.TOO_FAR_BEHIND)


class FlatTeardownTests(SynchronousTestCase):
    """The seed scenario in memory: huge fan-out state vanishing at once stays flat."""

    def setUp(self) -> None:
        # The publisher keeps 10,000 subgroup streams open, and then opens one more.
        self.world = MemoryRelay(limits=SessionLimits(max_incoming_streams=20_000))
        self.clock = self.world.clock
        self.publisher, self.pub_side, _ = self.world.connect()
        self.publisher.announce(NS)
        settle(self.clock)
        self.track = self.publisher.offer_track(NS, b"video")

    def open_subgroups(self, group: int, count: int) -> None:
        for subgroup in range(count):
            self.track.send_object(group, 0, b"x", subgroup_id=subgroup)
        settle(self.clock)

    def relay_objects(self, relay_side: object) -> list[weakref.ref[object]]:
        session = relay_side.handler  # type: ignore[attr-defined]
        peer = session.app
        refs: list[weakref.ref[object]] = [weakref.ref(session), weakref.ref(peer)]
        for sub in peer.subscriptions.values():
            refs.append(weakref.ref(sub))
            refs.extend(weakref.ref(stream) for stream in sub.streams.values())
        return refs

    def test_viewer_with_10000_open_subgroups_vanishes(self) -> None:
        stayer, _, _ = self.world.connect()
        stay = Recorder()
        stayer.subscribe(NS, b"video", stay)
        leaver, leaver_side, relay_side = self.world.connect()
        leaver.subscribe(NS, b"video", Recorder())
        settle(self.clock)
        self.open_subgroups(0, 10_000)
        refs = self.relay_objects(relay_side)
        self.assertGreater(len(refs), 10_000)
        del relay_side
        with recursion_headroom(50):
            leaver_side.abort()
            settle(self.clock)
        gc.collect()
        self.assertEqual([r for r in refs if r() is not None], [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.world.relay.peers), 2)
        self.track.send_object(1, 0, b"after")
        settle(self.clock)
        self.assertEqual(len(stay.objects), 10_001)
        self.assertEqual(stay.objects[-1].payload, b"after")

    def test_publisher_with_10000_open_subgroups_vanishes(self) -> None:
        viewers = []
        for _ in range(3):
            viewer, _, _ = self.world.connect()
            rec = Recorder()
            d = viewer.subscribe(NS, b"video", rec)
            settle(self.clock)
            viewers.append((rec, self.successResultOf(d)))
        self.open_subgroups(0, 10_000)
        track = self.world.relay.tracks[(NS, b"video")]
        track_ref = weakref.ref(track)
        del track
        with recursion_headroom(50):
            self.pub_side.abort()
            settle(self.clock)
        gc.collect()
        self.assertIsNone(track_ref())
        for rec, sub in viewers:
            self.assertEqual(len(rec.objects), 10_000)
            done = self.successResultOf(sub.done)
            self.assertEqual(done.status_code, PublishDoneCode.TRACK_ENDED)
            self.assertEqual(done.stream_count, 10_000)
        self.assertEqual(self.world.relay.tracks, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_1000_viewers_vanish_at_once(self) -> None:
        stayer, _, _ = self.world.connect()
        stay = Recorder()
        stayer.subscribe(NS, b"video", stay)
        sides = []
        for _ in range(1000):
            viewer, side, _ = self.world.connect()
            viewer.subscribe(NS, b"video", Recorder())
            sides.append(side)
        settle(self.clock)
        self.open_subgroups(0, 10)
        peers = [weakref.ref(p) for p in self.world.relay.peers]
        with recursion_headroom(50):
            for side in sides:
                side.abort()
            settle(self.clock)
        gc.collect()
        self.assertEqual(sum(1 for p in peers if p() is not None), 2)
        self.assertEqual(len(self.world.relay.peers), 2)
        self.assertEqual(len(self.track.subscribers), 1)
        self.track.send_object(1, 0, b"after")
        settle(self.clock)
        self.assertEqual(stay.objects[-1].payload, b"after")
        self.assertEqual(self.clock.getDelayedCalls(), [])
