"""Tests for moqrelay.relay.hub: routing, fan-out, deduplication, teardown, in memory."""

from __future__ import annotations

import gc
import itertools
import weakref

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.client.api import MoqtClient, RequestRejected, TrackPublisher
from moqrelay.relay.config import RelayConfig
from moqrelay.relay.serve import DownstreamStream
from moqrelay.relay.subscription import FORGET_CHUNK
from moqrelay.session import SessionLimits
from moqrelay.testing import MemorySession
from moqrelay.wire import control as c
from moqrelay.wire.errors import (
    PublishDoneCode,
    SubscribeErrorCode,
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


class MultiplePublisherTests(SynchronousTestCase):
    """Draft-14's Multiple Publishers: every publisher of a namespace feeds its tracks."""

    def setUp(self) -> None:
        self.world = MemoryRelay()
        self.clock = self.world.clock

    def publisher(self) -> tuple[MoqtClient, TrackPublisher, MemorySession]:
        client, side, _ = self.world.connect()
        d = client.announce(NS)
        track = client.offer_track(NS, b"video")
        settle(self.clock)
        self.successResultOf(d)
        return client, track, side

    def test_a_restarted_encoder_is_served_while_its_old_session_lingers(self) -> None:
        _, _, old_side = self.publisher()
        # The old encoder is gone without a CONNECTION_CLOSE: its session lingers, unread.
        old_side.pause_reading()
        _, track, _ = self.publisher()
        viewer, _, _ = self.world.connect()
        rec = Recorder()
        d = viewer.subscribe(NS, b"video", rec)
        settle(self.clock)
        self.successResultOf(d)
        track.send_object(0, 0, b"from the new encoder")
        settle(self.clock)
        self.assertEqual(rec.ids(), [(0, 0)])
        # The old session times out at last: the viewer carries on.
        old_side.abort()
        settle(self.clock)
        track.send_object(0, 1, b"still here")
        settle(self.clock)
        self.assertEqual(rec.ids(), [(0, 0), (0, 1)])

    def test_redundant_publishers_one_vanishes_no_gap_no_duplicate(self) -> None:
        _, first, first_side = self.publisher()
        _, second, _ = self.publisher()
        viewer, _, _ = self.world.connect()
        rec = Recorder()
        viewer.subscribe(NS, b"video", rec)
        settle(self.clock)
        (relay_track,) = self.world.relay.tracks.values()
        self.assertEqual(len(relay_track.sources), 2)
        for group in range(3):
            for obj in range(5):
                for track in (first, second):
                    track.send_object(group, obj, b"%d.%d" % (group, obj))
                if (group, obj) == (1, 2):
                    first_side.abort()
                settle(self.clock)
            second.end_subgroup(group)
        settle(self.clock)
        self.assertEqual(rec.ids(), [(g, o) for g in range(3) for o in range(5)])
        self.assertEqual(len(relay_track.sources), 1)

    def test_a_publisher_that_numbers_groups_anew_restarts_the_track(self) -> None:
        _, old, old_side = self.publisher()
        viewer, _, _ = self.world.connect()
        d = viewer.subscribe(NS, b"video", Recorder())
        settle(self.clock)
        sub = self.successResultOf(d)
        for group in range(6):
            old.send_object(group, 0, b"old")
        settle(self.clock)
        old_side.pause_reading()
        _, new, _ = self.publisher()
        new.send_object(0, 0, b"new numbering")
        settle(self.clock)
        done = self.successResultOf(sub.done)
        self.assertEqual(done.status_code, PublishDoneCode.TRACK_ENDED)
        self.assertIn("restarted", done.reason)
        # Subscribing again gets the new encoder's track from its next object on.
        rec = Recorder()
        again = viewer.subscribe(NS, b"video", rec)
        settle(self.clock)
        self.successResultOf(again)
        new.send_object(0, 1, b"after the restart")
        settle(self.clock)
        self.assertEqual([o.payload for o in rec.objects], [b"after the restart"])

    def test_a_publishers_done_leaves_the_track_to_the_others(self) -> None:
        _, first, _ = self.publisher()
        _, second, _ = self.publisher()
        viewer, _, _ = self.world.connect()
        rec = Recorder()
        d = viewer.subscribe(NS, b"video", rec)
        settle(self.clock)
        sub = self.successResultOf(d)
        first.end(PublishDoneCode.TRACK_ENDED, "first encoder stops")
        settle(self.clock)
        self.assertNoResult(sub.done)
        second.send_object(0, 0, b"second goes on")
        settle(self.clock)
        self.assertEqual(rec.ids(), [(0, 0)])
