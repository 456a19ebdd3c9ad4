"""Tests for moqrelay.relay.namespaces: the registry, prefixes and the directory, with fakes."""

from __future__ import annotations

from typing import cast

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.client.api import RequestRejected
from moqrelay.relay.namespaces import (
    NamespaceDirectory,
    NamespaceRegistry,
    format_namespace,
    is_prefix,
)
from moqrelay.relay.reaper import Reaper
from moqrelay.relay.tracks import Source, Track
from moqrelay.wire import control as c
from moqrelay.wire.errors import NamespaceErrorCode, SubscribeNamespaceErrorCode
from tests.fakes import FakePeer, FakeSession
from tests.helpers import MemoryRelay, Recorder, settle

NS = (b"live", b"demo")


def session(peer: FakePeer) -> FakeSession:
    return peer.session


class RegistryTests(SynchronousTestCase):
    def test_longest_announced_prefix_wins(self) -> None:
        registry: NamespaceRegistry[str] = NamespaceRegistry()
        registry.add((b"a",), "short")
        registry.add((b"a", b"b"), "long")
        self.assertEqual(registry.lookup_all((b"a", b"b", b"c")), ["long"])
        self.assertEqual(registry.lookup_all((b"a", b"x")), ["short"])
        self.assertEqual(registry.lookup_all((b"z",)), [])

    def test_a_namespace_has_its_publishers_newest_last(self) -> None:
        registry: NamespaceRegistry[str] = NamespaceRegistry()
        self.assertTrue(registry.add((b"a",), "one"))
        self.assertTrue(registry.add((b"a",), "two"))
        self.assertFalse(registry.add((b"a",), "two"))
        self.assertEqual(registry.owners((b"a",)), ["one", "two"])
        self.assertEqual(registry.lookup_all((b"a", b"x")), ["one", "two"])
        self.assertFalse(registry.remove((b"a",), "three"))
        self.assertTrue(registry.remove((b"a",), "two"))
        self.assertEqual(registry.owners((b"a",)), ["one"])
        self.assertTrue(registry.remove((b"a",), "one"))
        self.assertEqual(len(registry), 0)
        self.assertNotIn((b"a",), registry)

    def test_under_lists_the_namespaces_a_prefix_covers(self) -> None:
        registry: NamespaceRegistry[str] = NamespaceRegistry()
        for ns in [(b"a",), (b"a", b"b"), (b"ab",)]:
            registry.add(ns, "x")
        self.assertEqual(sorted(registry.under((b"a",))), [(b"a",), (b"a", b"b")])

    def test_prefixes_are_whole_fields(self) -> None:
        self.assertTrue(is_prefix((b"a",), (b"a", b"b")))
        self.assertTrue(is_prefix((), (b"a",)))
        self.assertFalse(is_prefix((b"a",), (b"ab",)))
        self.assertFalse(is_prefix((b"a", b"b"), (b"a",)))
        self.assertEqual(format_namespace((b"live", b"\xff")), "live/\\xff")


class DirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.directory: NamespaceDirectory[FakePeer] = NamespaceDirectory(
            Reaper(self.clock), max_namespaces=2, max_publishers=2
        )

    def announce(self, peer: FakePeer, namespace: c.Namespace, request_id: int = 0) -> None:
        self.directory.announce(peer, c.PublishNamespace(request_id, namespace, []))

    def watch(self, peer: FakePeer, prefix: c.Namespace, tracks: list[Track] = []) -> None:  # noqa: B006
        self.directory.watch(peer, c.SubscribeNamespace(0, prefix, []), tracks)

    def test_announcing_answers_and_tells_watchers_and_upstream(self) -> None:
        watcher, blind, publisher, upstream = (
            FakePeer("w"),
            FakePeer("b", sees=False),
            FakePeer("p"),
            FakePeer("u", is_relay=True),
        )
        self.watch(watcher, (b"live",))
        self.watch(blind, (b"live",))
        self.directory.upstream_ready(upstream)
        self.announce(publisher, (b"live", b"a"))
        self.assertEqual(publisher.session.sent, [c.PublishNamespaceOk(0)])
        self.assertEqual(self.directory.lookup((b"live", b"a", b"x")), publisher)
        for peer, expected in [(watcher, 1), (blind, 0), (upstream, 1)]:
            self.assertEqual(len(session(peer).of_type(c.PublishNamespace)), expected, peer.name)

    def test_another_relays_namespaces_never_go_upstream(self) -> None:
        upstream, edge = FakePeer("u", is_relay=True), FakePeer("e", is_relay=True)
        self.directory.upstream_ready(upstream)
        self.announce(edge, (b"x",))
        self.assertEqual(upstream.session.of_type(c.PublishNamespace), [])

    def test_several_publishers_up_to_the_limit_and_no_repeat_per_session(self) -> None:
        first, second, third, watcher = FakePeer("1"), FakePeer("2"), FakePeer("3"), FakePeer("w")
        self.watch(watcher, ())
        self.announce(first, (b"a",))
        self.announce(second, (b"a",), request_id=2)
        self.assertEqual(second.session.sent, [c.PublishNamespaceOk(2)])
        self.assertEqual(self.directory.publishers((b"a", b"x")), [first, second])
        self.assertEqual(self.directory.lookup((b"a",)), second)
        self.assertEqual(self.directory.lookup((b"a",), exclude=second), first)
        # Watchers hear of the namespace once, from its first publisher.
        self.assertEqual(len(watcher.session.of_type(c.PublishNamespace)), 1)
        for peer, namespace in [(third, (b"a",)), (first, (b"a",))]:
            self.announce(peer, namespace, request_id=4)
            error = peer.session.sent[-1]
            assert isinstance(error, c.PublishNamespaceError)
            self.assertEqual(error.error_code, NamespaceErrorCode.INTERNAL_ERROR)
        self.assertIn(
            "too many publishers", cast(c.PublishNamespaceError, third.session.sent[-1]).reason
        )
        self.announce(first, (b"b",), request_id=6)
        self.announce(first, (b"c",), request_id=8)
        error = first.session.sent[-1]
        assert isinstance(error, c.PublishNamespaceError)
        self.assertIn("too many namespaces", error.reason)
        self.assertEqual(first.namespaces, {(b"a",), (b"b",)})

    def test_a_namespace_is_withdrawn_with_its_last_publisher(self) -> None:
        first, second, watcher = FakePeer("1"), FakePeer("2"), FakePeer("w")
        self.watch(watcher, ())
        self.announce(first, (b"a",))
        self.announce(second, (b"a",))
        self.directory.withdraw(first, (b"a",))
        self.assertEqual(watcher.session.of_type(c.PublishNamespaceDone), [])
        self.directory.peer_gone(second)
        settle(self.clock)
        self.assertEqual(len(watcher.session.of_type(c.PublishNamespaceDone)), 1)

    def test_watching_sends_what_exists_and_refuses_overlaps(self) -> None:
        publisher, watcher = FakePeer("p"), FakePeer("w")
        self.announce(publisher, (b"live", b"a"))
        live = Track(((b"live", b"a"), b"video"), 4, 1 << 20)
        live.state = Track.LIVE
        own = Track(((b"live", b"a"), b"own"), 4, 1 << 20)
        own.state = Track.LIVE
        own.sources[watcher] = Source(watcher)
        pending = Track(((b"live", b"a"), b"later"), 4, 1 << 20)
        self.watch(watcher, (b"live",), [live, own, pending])
        self.assertEqual(watcher.offered, [live])
        self.assertEqual(len(watcher.session.of_type(c.PublishNamespace)), 1)
        self.watch(watcher, (b"live", b"a"))
        error = watcher.session.sent[-1]
        assert isinstance(error, c.SubscribeNamespaceError)
        self.assertEqual(error.error_code, SubscribeNamespaceErrorCode.NAMESPACE_PREFIX_OVERLAP)
        self.directory.unwatch(watcher, (b"live",))
        self.assertEqual(self.directory.watching, {})

    def test_withdrawal_tells_watchers(self) -> None:
        publisher, watcher = FakePeer("p"), FakePeer("w")
        self.watch(watcher, ())
        self.announce(publisher, (b"a",))
        self.directory.withdraw(publisher, (b"a",))
        self.directory.withdraw(publisher, (b"a",))
        self.assertEqual(watcher.session.of_type(c.PublishNamespaceDone), [
            c.PublishNamespaceDone((b"a",))
        ])  # fmt: skip
        self.assertIsNone(self.directory.lookup((b"a",)))

    def test_a_closed_session_is_forgotten_at_once_and_watchers_told_later(self) -> None:
        publisher, watcher, successor = FakePeer("p"), FakePeer("w"), FakePeer("s")
        self.watch(watcher, ())
        self.announce(publisher, (b"a",))
        self.announce(publisher, (b"b",), request_id=2)
        self.directory.peer_gone(publisher)
        self.assertEqual(publisher.namespaces, set())
        self.assertIsNone(self.directory.lookup((b"a",)))
        # A successor announces before the news of the withdrawal went out: for the
        # watcher, (a) never went away.
        self.announce(successor, (b"a",))
        self.assertEqual(successor.session.sent, [c.PublishNamespaceOk(0)])
        self.assertEqual(watcher.session.of_type(c.PublishNamespaceDone), [])
        settle(self.clock)
        done = cast(list[c.PublishNamespaceDone], watcher.session.of_type(c.PublishNamespaceDone))
        self.assertEqual([m.namespace for m in done], [(b"b",)])
        self.assertEqual(len(watcher.session.of_type(c.PublishNamespace)), 2)
        self.directory.peer_gone(watcher)
        self.assertEqual(self.directory.watching, {})


class EmptyPrefixTests(SynchronousTestCase):
    """SUBSCRIBE_NAMESPACE with 0 prefix fields (moq-dev's library) watches everything."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory: NamespaceDirectory[FakePeer] = NamespaceDirectory(
            Reaper(self.clock), max_namespaces=4, max_publishers=2
        )

    def watch(self, peer: FakePeer, prefix: c.Namespace, request_id: int = 0) -> None:
        self.directory.watch(peer, c.SubscribeNamespace(request_id, prefix, []), [])

    def test_an_empty_prefix_sees_every_announcement(self) -> None:
        publisher, watcher = FakePeer("p"), FakePeer("w")
        self.directory.announce(publisher, c.PublishNamespace(0, (b"live", b"a"), []))
        self.watch(watcher, ())
        self.directory.announce(publisher, c.PublishNamespace(2, (b"other",), []))
        self.assertEqual(watcher.session.sent[0], c.SubscribeNamespaceOk(0))
        told = cast(list[c.PublishNamespace], watcher.session.of_type(c.PublishNamespace))
        self.assertEqual([m.namespace for m in told], [(b"live", b"a"), (b"other",)])
        self.assertEqual(self.directory.watchers((b"x", b"y", b"z"), None), [watcher])

    def test_an_empty_prefix_overlaps_everything(self) -> None:
        first, second = FakePeer("1"), FakePeer("2")
        self.watch(first, ())
        self.watch(first, (b"live",), request_id=2)
        self.watch(second, (b"live",))
        self.watch(second, (), request_id=2)
        for peer in (first, second):
            error = peer.session.sent[-1]
            assert isinstance(error, c.SubscribeNamespaceError), peer.name
            self.assertEqual(
                error.error_code, SubscribeNamespaceErrorCode.NAMESPACE_PREFIX_OVERLAP, peer.name
            )
        self.assertEqual(first.namespace_subscriptions, {(): 0})
        self.assertEqual(second.namespace_subscriptions, {(b"live",): 0})

    def test_the_deviation_is_logged_once_per_session(self) -> None:
        first, second = FakePeer("first"), FakePeer("second")
        with capturedLogs() as events:
            self.watch(first, ())
            self.directory.unwatch(first, ())
            self.watch(first, (), request_id=2)
            self.watch(first, (b"a",), request_id=4)
            self.watch(second, (b"a",))
        lines = [formatEvent(event) for event in events]
        self.assertEqual(len([line for line in lines if "empty prefix" in line]), 1, lines)
        self.assertIn("first watches every namespace", lines[0])
        self.directory.peer_gone(first)
        self.assertEqual(self.directory.empty_prefix_logged, set())


class NamespaceRelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = MemoryRelay()
        self.clock = self.world.clock

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

    def test_an_empty_prefix_watcher_gets_every_namespace_and_track(self) -> None:
        publisher, _, _ = self.world.connect()
        publisher.announce((b"live", b"a"))
        publisher.publish_track((b"vod", b"p"), b"t")
        settle(self.clock)
        watcher, _, _ = self.world.connect()
        watcher.on_publish = lambda msg: Recorder()
        d = watcher.subscribe_namespace(())
        settle(self.clock)
        self.successResultOf(d)
        publisher.announce((b"other",))
        settle(self.clock)
        self.assertEqual(watcher.discovered, [(b"live", b"a"), (b"other",)])
        self.assertEqual([m.namespace for m in watcher.offers], [(b"vod", b"p")])
        overlapping = watcher.subscribe_namespace((b"live",))
        settle(self.clock)
        failure = self.failureResultOf(overlapping, RequestRejected)
        self.assertEqual(failure.value.code, SubscribeNamespaceErrorCode.NAMESPACE_PREFIX_OVERLAP)
        watcher.session.send(c.UnsubscribeNamespace(()))
        settle(self.clock)
        self.assertFalse(watcher.session.closed)
        self.assertEqual(self.world.relay.directory.watching, {})
