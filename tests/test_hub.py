"""Tests for moqrelay.relay.hub: routing, fan-out, deduplication, teardown, in memory."""

from __future__ import annotations

import gc
import itertools
import weakref

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.auth import Authorizer, encode_token_struct
from moqrelay.client.api import MoqtClient, ReceivedObject, RequestRejected
from moqrelay.client.token import make_token
from moqrelay.relay.config import RelayConfig
from moqrelay.relay.peer import _HANDLERS, RelayPeer
from moqrelay.relay.serve import DownstreamStream
from moqrelay.relay.subscription import FORGET_CHUNK
from moqrelay.session import SessionLimits
from moqrelay.wire import control as c
from moqrelay.wire.data import FetchObject
from moqrelay.wire.errors import (
    PublishDoneCode,
    SessionErrorCode,
    SubscribeErrorCode,
    SubscribeNamespaceErrorCode,
)
from tests.helpers import MemoryRelay, Recorder, one_turn, recursion_headroom, settle

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
        _, track = world.publish(NS, b"video")
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
        _, track = world.publish(NS, b"video")
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

    def test_a_vanished_viewers_streams_are_freed_without_the_garbage_collector(self) -> None:
        """Downstream streams and their transport streams are unlinked at teardown, so that
        reference counting frees them at once (a mass disconnect leaves the collector less
        to do in one pause)."""
        leaver, leaver_side, relay_side = self.world.connect()
        leaver.subscribe(NS, b"video", Recorder())
        settle(self.clock)
        self.open_subgroups(0, 10)
        (sub,) = relay_side.handler.app.subscriptions.values()  # type: ignore[union-attr]
        refs = [weakref.ref(downstream) for downstream in sub.streams.values()]
        refs += [weakref.ref(downstream.stream) for downstream in sub.streams.values()]
        self.assertEqual(len(refs), 20)
        del sub, relay_side
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        leaver_side.abort()
        settle(self.clock)
        self.assertEqual([r for r in refs if r() is not None], [])

    def test_every_control_message_handler_exists(self) -> None:
        for name in _HANDLERS.values():
            self.assertTrue(callable(getattr(RelayPeer, name, None)), name)

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


class SeedRegressionTests(SynchronousTestCase):
    """The crash this relay exists to avoid, at full size: one viewer with 100,000 open
    subgroup streams closes its tab."""

    def test_viewer_with_100000_open_subgroups_vanishes(self) -> None:
        world = MemoryRelay(limits=SessionLimits(max_incoming_streams=200_000))
        clock = world.clock
        publisher, _, _ = world.connect()
        publisher.announce(NS)
        settle(clock)
        track = publisher.offer_track(NS, b"video")
        stayer, _, _ = world.connect()
        stay = Recorder()
        stayer.subscribe(NS, b"video", stay)
        leaver, leaver_side, relay_side = world.connect()
        leaver.subscribe(NS, b"video", Recorder())
        settle(clock)
        for subgroup in range(100_000):
            track.send_object(0, 0, b"x", subgroup_id=subgroup)
        settle(clock)
        (sub,) = relay_side.handler.app.subscriptions.values()  # type: ignore[union-attr]
        self.assertEqual(len(sub.streams), 100_000)
        refs = [weakref.ref(sub), weakref.ref(relay_side.handler)]
        refs += [weakref.ref(stream) for stream in list(sub.streams.values())[::1000]]
        del sub, relay_side
        with recursion_headroom(50):
            leaver_side.abort()
            settle(clock)
        gc.collect()
        self.assertEqual([r for r in refs if r() is not None], [])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(world.relay.peers), 2)
        track.send_object(1, 0, b"after")
        settle(clock)
        self.assertEqual(len(stay.objects), 100_001)
        self.assertEqual(stay.objects[-1].payload, b"after")


class TeardownPerTurnTests(SynchronousTestCase):
    """Teardown work is bounded per reactor turn, not only flat: with a reaper that runs
    one closer per turn, every turn does at most one bounded step."""

    def setUp(self) -> None:
        self.world = MemoryRelay(
            limits=SessionLimits(max_incoming_streams=20_000), reaper_budget=0.5
        )
        self.clock = self.world.clock
        self.publisher, self.pub_side, _ = self.world.connect()
        self.publisher.announce(NS)
        settle(self.clock)
        self.track = self.publisher.offer_track(NS, b"video")

    def test_a_viewers_streams_are_forgotten_a_chunk_per_turn(self) -> None:
        leaver, leaver_side, relay_side = self.world.connect()
        leaver.subscribe(NS, b"video", Recorder())
        settle(self.clock)
        for subgroup in range(5000):
            self.track.send_object(0, 0, b"x", subgroup_id=subgroup)
        settle(self.clock)
        (sub,) = relay_side.handler.app.subscriptions.values()  # type: ignore[union-attr]
        left = [len(sub.streams)]
        leaver_side.abort()
        while one_turn(self.clock):
            left.append(len(sub.streams))
        steps = [before - after for before, after in itertools.pairwise(left)]
        self.assertEqual(left[0], 5000)
        self.assertEqual(left[-1], 0)
        self.assertLessEqual(max(steps), FORGET_CHUNK)
        self.assertGreaterEqual(len(steps), 5000 // FORGET_CHUNK)
        self.assertEqual(self.track.subscribers, {})

    def test_an_ended_track_ends_one_subscription_per_step(self) -> None:
        viewers = []
        for _ in range(20):
            viewer, _, _ = self.world.connect()
            d = viewer.subscribe(NS, b"video", Recorder())
            settle(self.clock)
            viewers.append(self.successResultOf(d))
        for subgroup in range(50):
            self.track.send_object(0, 0, b"x", subgroup_id=subgroup)
        settle(self.clock)
        pumps = [0]
        pump = DownstreamStream.pump

        def counting_pump(stream: DownstreamStream) -> None:
            pumps[0] += 1
            pump(stream)

        self.patch(DownstreamStream, "pump", counting_pump)
        self.pub_side.abort()
        per_turn = []
        while one_turn(self.clock):
            per_turn.append(pumps[0])
            pumps[0] = 0
        # One subscription's 50 streams per turn, never the 20 x 50 of the whole track.
        self.assertEqual(sum(per_turn), 20 * 50)
        self.assertLessEqual(max(per_turn), 50)
        settle(self.clock)
        for sub in viewers:
            self.assertEqual(self.successResultOf(sub.done).stream_count, 50)

    def test_a_publishers_namespaces_are_withdrawn_one_per_step(self) -> None:
        watcher, _, _ = self.world.connect()
        d = watcher.subscribe_namespace((b"many",))
        publisher, side, _ = self.world.connect()
        for n in range(30):
            publisher.announce((b"many", b"%d" % n))
        settle(self.clock)
        self.successResultOf(d)
        self.assertEqual(len(watcher.discovered), 30)
        side.abort()
        # The registry forgets them at once: a restarted publisher may announce again.
        one_turn(self.clock)
        self.assertEqual(len(self.world.relay.namespaces), 1)
        left = [len(watcher.discovered)]
        while one_turn(self.clock):
            left.append(len(watcher.discovered))
        self.assertEqual(left[-1], 0)
        steps = [before - after for before, after in itertools.pairwise(left)]
        self.assertLessEqual(max(steps), 1)


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

    def test_duplicate_publish_is_refused(self) -> None:
        first, _, _ = self.world.connect()
        second, _, _ = self.world.connect()
        first.publish_track(NS, b"t")
        settle(self.clock)
        d = second.publish_track(NS, b"t")
        settle(self.clock)
        self.assertEqual(self.failureResultOf(d, RequestRejected).value.code, 0x4)

    def test_subscribe_namespace_gets_existing_and_new_announcements_and_publishes(self) -> None:
        publisher, _, _ = self.world.connect()
        publisher.announce((b"live", b"a"))
        publisher.publish_track((b"live", b"p"), b"t")
        settle(self.clock)
        watcher, _, _ = self.world.connect()
        rec = Recorder()
        watcher.on_publish = lambda msg: rec
        d = watcher.subscribe_namespace((b"live",))
        settle(self.clock)
        self.successResultOf(d)
        self.assertEqual(watcher.discovered, [(b"live", b"a")])
        self.assertEqual([m.track_name for m in watcher.offers], [b"t"])
        publisher.announce((b"live", b"b"))
        publisher.announce((b"other",))
        settle(self.clock)
        self.assertEqual(watcher.discovered, [(b"live", b"a"), (b"live", b"b")])
        track = publisher.tracks[((b"live", b"p"), b"t")]
        track.send_object(0, 0, b"pushed to the watcher")
        settle(self.clock)
        self.assertEqual(rec.ids(), [(0, 0)])

    def test_namespace_done_reaches_watchers(self) -> None:
        watcher, _, _ = self.world.connect()
        watcher.subscribe_namespace((b"live",))
        publisher, pub_side, _ = self.world.connect()
        publisher.announce((b"live", b"x"))
        settle(self.clock)
        self.assertEqual(watcher.discovered, [(b"live", b"x")])
        pub_side.abort()
        settle(self.clock)
        self.assertEqual(watcher.discovered, [])

    def test_overlapping_prefixes_are_refused(self) -> None:
        watcher, _, _ = self.world.connect()
        watcher.subscribe_namespace((b"live",))
        d = watcher.subscribe_namespace((b"live", b"demo"))
        settle(self.clock)
        failure = self.failureResultOf(d, RequestRejected)
        self.assertEqual(failure.value.code, SubscribeNamespaceErrorCode.NAMESPACE_PREFIX_OVERLAP)

    def test_refused_publish_does_not_break_the_watcher(self) -> None:
        publisher, _, _ = self.world.connect()
        publisher.publish_track(NS, b"t")
        watcher, _, _ = self.world.connect()
        watcher.subscribe_namespace((b"live",))
        settle(self.clock)
        self.assertEqual(len(watcher.offers), 1)
        self.assertEqual(self.world.relay.peers.keys().__len__(), 2)
        self.assertFalse(watcher.session.closed)


class FetchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = MemoryRelay()
        self.clock = self.world.clock
        self.publisher, self.track = self.world.publish(NS, b"video")
        self.viewer, self.sub = self.world.watch(NS, b"video", Recorder())
        for group in range(3):
            for obj in range(4):
                self.track.send_object(group, obj, b"%d.%d" % (group, obj))
        settle(self.clock)

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

    def test_track_status_from_cache_and_forwarded(self) -> None:
        d = self.viewer.track_status(NS, b"video")
        settle(self.clock)
        status = self.successResultOf(d)
        self.assertEqual(status.largest, c.Location(2, 3))
        d = self.viewer.track_status(NS, b"not-subscribed")
        settle(self.clock)
        # Forwarded to the publisher, whose client refuses TRACK_STATUS (NOT_SUPPORTED).
        self.assertEqual(self.failureResultOf(d, RequestRejected).value.code, 0x3)
        d = self.viewer.track_status((b"nobody",), b"x")
        settle(self.clock)
        self.assertEqual(self.failureResultOf(d, RequestRejected).value.code, 0x4)


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


class PublishDoneOrderingTests(SynchronousTestCase):
    def test_publish_done_waits_for_the_streams_it_counts(self) -> None:
        world = MemoryRelay()
        clock = world.clock
        publisher, track = world.publish(NS, b"video")
        rec = Recorder()
        _, sub = world.watch(NS, b"video", rec)
        (down,) = track.subscribers.values()
        # PUBLISH_DONE overtakes the objects (as it may over QUIC): it claims 2 streams.
        publisher.session.send(c.PublishDone(down.request_id, PublishDoneCode.TRACK_ENDED, 2, ""))
        settle(clock)
        self.assertNoResult(sub.done)
        track.send_object(0, 0, b"late")
        track.send_object(1, 0, b"later")
        track.end_subgroup(0)
        track.end_subgroup(1)
        settle(clock)
        self.assertEqual(rec.ids(), [(0, 0), (1, 0)])
        self.assertEqual(self.successResultOf(sub.done).stream_count, 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_publish_done_gives_up_after_the_drain_timeout(self) -> None:
        world = MemoryRelay(RelayConfig(drain_timeout=3.0))
        clock = world.clock
        publisher, track = world.publish(NS, b"video")
        _, sub = world.watch(NS, b"video", Recorder())
        (down,) = track.subscribers.values()
        publisher.session.send(c.PublishDone(down.request_id, PublishDoneCode.TRACK_ENDED, 5, ""))
        settle(clock)
        self.assertNoResult(sub.done)
        clock.advance(3.0)
        settle(clock)
        self.assertEqual(self.successResultOf(sub.done).status_code, PublishDoneCode.TRACK_ENDED)

    def test_last_viewer_leaving_while_publish_done_drains_leaves_no_timer(self) -> None:
        world = MemoryRelay()
        clock = world.clock
        publisher, track = world.publish(NS, b"video")
        viewer, _, _ = world.connect()
        d = viewer.subscribe(NS, b"video", Recorder())
        settle(clock)
        (down,) = track.subscribers.values()
        publisher.session.send(c.PublishDone(down.request_id, PublishDoneCode.TRACK_ENDED, 3, ""))
        settle(clock)
        self.successResultOf(d).unsubscribe()
        settle(clock)
        self.assertEqual(world.relay.tracks, {})
        self.assertEqual(clock.getDelayedCalls(), [])


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


SECRET = b"s" * 32


class AuthorizationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = MemoryRelay(authorizer=Authorizer(SECRET))
        self.clock = self.world.clock
        self.clock.advance(1_000_000)

    def token(
        self, publish: tuple[str, ...] = (), subscribe: tuple[str, ...] = (), ttl: float = 3600
    ) -> str:
        return make_token(
            SECRET, now=self.clock.seconds(), publish=publish, subscribe=subscribe, ttl=ttl
        )

    def publisher(self, path: str) -> MoqtClient:
        publisher, _, _ = self.world.connect(path)
        d = publisher.announce(NS)
        settle(self.clock)
        self.successResultOf(d)
        publisher.offer_track(NS, b"video")
        return publisher

    def test_without_a_token_everything_is_refused(self) -> None:
        client, side, _ = self.world.connect()
        d1 = client.announce(NS)
        d2 = client.subscribe(NS, b"video", Recorder())
        d3 = client.subscribe_namespace((b"live",))
        d4 = client.track_status(NS, b"video")
        d5 = client.publish_track(NS, b"x")
        settle(self.clock)
        for d in (d1, d2, d3, d4, d5):
            failure = self.failureResultOf(d, RequestRejected)
            self.assertIn("token", failure.value.reason)
        self.assertFalse(side.closed)

    def test_url_token_grants_its_prefixes_only(self) -> None:
        jwt = self.token(publish=("live",), subscribe=("live/demo",))
        self.publisher(f"/moq?jwt={jwt}")
        viewer, _, _ = self.world.connect(f"/moq?jwt={jwt}")
        allowed = viewer.subscribe(NS, b"video", Recorder())
        other = viewer.subscribe((b"live", b"other"), b"video", Recorder())
        settle(self.clock)
        self.successResultOf(allowed)
        failure = self.failureResultOf(other, RequestRejected)
        self.assertEqual(failure.value.code, SubscribeErrorCode.UNAUTHORIZED)
        self.assertIn("may not subscribe", failure.value.reason)
        elsewhere = viewer.announce((b"elsewhere",))
        settle(self.clock)
        self.assertEqual(self.failureResultOf(elsewhere, RequestRejected).value.code, 0x1)

    def test_setup_parameter_and_request_parameter_tokens(self) -> None:
        publish = self.token(publish=("live",))
        setup: list[c.Param] = [
            (c.SETUP_AUTHORIZATION_TOKEN, encode_token_struct(publish.encode()))
        ]
        publisher, _, _ = self.world.connect(setup_params=setup)
        d = publisher.announce(NS)
        settle(self.clock)
        self.successResultOf(d)
        publisher.offer_track(NS, b"video")
        viewer, _, _ = self.world.connect()
        token = encode_token_struct(self.token(subscribe=("",)).encode())
        subscribed = viewer.subscribe(
            NS, b"video", Recorder(), params=[(c.PARAM_AUTHORIZATION_TOKEN, token)]
        )
        settle(self.clock)
        self.successResultOf(subscribed)

    def test_bad_tokens_close_the_session(self) -> None:
        forged = make_token(b"x" * 32, now=self.clock.seconds(), publish=["live"])
        _, side, _ = self.world.connect(f"/?jwt={forged}")
        expired = make_token(SECRET, now=self.clock.seconds() - 100, ttl=10, publish=["live"])
        _, side2, _ = self.world.connect(f"/?jwt={expired}")
        settle(self.clock)
        self.assertEqual(side.close_code, SessionErrorCode.UNAUTHORIZED)
        self.assertEqual(side2.close_code, SessionErrorCode.EXPIRED_AUTH_TOKEN)
        self.assertEqual(len(self.world.relay.peers), 0)

    def test_session_closes_when_its_token_expires(self) -> None:
        jwt = self.token(subscribe=("live",), ttl=30)
        _, side, _ = self.world.connect(f"/?jwt={jwt}")
        self.clock.advance(29)
        settle(self.clock)
        self.assertFalse(side.closed)
        self.clock.advance(1)
        settle(self.clock)
        self.assertEqual(side.close_code, SessionErrorCode.EXPIRED_AUTH_TOKEN)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_namespace_watchers_only_see_what_they_may(self) -> None:
        self.publisher(f"/?jwt={self.token(publish=('live',))}")
        watcher, _, _ = self.world.connect(f"/?jwt={self.token(subscribe=('live/other',))}")
        refused = watcher.subscribe_namespace((b"live",))
        settle(self.clock)
        self.failureResultOf(refused, RequestRejected)
        allowed = watcher.subscribe_namespace((b"live", b"other"))
        settle(self.clock)
        self.successResultOf(allowed)
        self.assertEqual(watcher.discovered, [])


class ClientTests(SynchronousTestCase):
    def test_two_tracks_on_one_publisher_session(self) -> None:
        world = MemoryRelay()
        publisher, side, _ = world.connect()
        publisher.announce(NS)
        settle(world.clock)
        tracks = [publisher.offer_track(NS, name) for name in (b"video", b"audio")]
        viewer, _, _ = world.connect()
        recorders = [Recorder(), Recorder()]
        for name, rec in zip((b"video", b"audio"), recorders, strict=True):
            viewer.subscribe(NS, name, rec)
        settle(world.clock)
        for track in tracks:
            track.send_object(0, 0, track.name)
        settle(world.clock)
        self.assertFalse(side.closed)
        self.assertEqual([r.objects[0].payload for r in recorders], [b"video", b"audio"])


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
