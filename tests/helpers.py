"""Shared fixtures for the trial suite: relays and clients joined in memory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.auth import Authorizer
from moqrelay.client.api import (
    ClientSubscription,
    MoqtClient,
    ObjectCallback,
    ReceivedObject,
    SessionLost,
    TrackPublisher,
)
from moqrelay.relay.config import RelayConfig
from moqrelay.relay.hub import Relay
from moqrelay.relay.reaper import Reaper
from moqrelay.session import MoqtSession, SessionLimits
from moqrelay.testing import MemorySession, memory_session_pair
from moqrelay.transport.interfaces import ITransportSession
from moqrelay.wire.control import Namespace, Param


def settle(clock: Clock, limit: int = 100_000) -> int:
    """Run every call due now (and those they schedule for now); return the turns taken."""
    turns = 0
    while any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()):
        clock.advance(0)
        turns += 1
        if turns > limit:
            raise AssertionError("the clock never settled")
    return turns


class MemoryRelay:
    """A relay with clients attached through in-memory sessions."""

    def __init__(
        self,
        config: RelayConfig | None = None,
        limits: SessionLimits | None = None,
        authorizer: Authorizer | None = None,
        reaper_budget: float | None = None,
    ) -> None:
        self.clock = Clock()
        reaper = None
        if reaper_budget is not None:
            # A reaper whose timer advances one unit per reading: with a budget below
            # one, each reactor turn runs exactly one closer, whatever the machine.
            ticks = iter(range(1 << 62))
            reaper = Reaper(self.clock, budget=reaper_budget, timer=lambda: float(next(ticks)))
        self.relay = Relay(self.clock, config, authorizer, reaper)
        self.limits = limits

    def connect(
        self, path: str = "", setup_params: list[Param] | None = None
    ) -> tuple[MoqtClient, MemorySession, MemorySession]:
        """A new client session; returns (client app, client side, relay side)."""
        clock = self.clock
        sessions: list[MoqtSession] = []

        def client_factory(transport: ITransportSession) -> MoqtSession:
            sessions.append(MoqtSession(transport, clock, MoqtClient, self.limits, setup_params))
            return sessions[0]

        def server_factory(transport: ITransportSession) -> MoqtSession:
            return MoqtSession(transport, clock, self.relay.app_factory, self.limits)

        high = self.relay.config.max_queued_bytes
        client_side, relay_side = memory_session_pair(
            clock, client_factory, server_factory, path, low_water=high // 4, high_water=high
        )
        settle(clock)
        app = sessions[0].app
        assert isinstance(app, MoqtClient)
        # Tests of refused sessions look at the close code; the lost SETUP is expected.
        app.ready.addErrback(lambda failure: failure.trap(SessionLost))
        return app, client_side, relay_side

    def publish(self, namespace: Namespace, name: bytes) -> tuple[MoqtClient, TrackPublisher]:
        """A new publisher session that announced ``namespace`` and offers one track."""
        publisher, _, _ = self.connect()
        publisher.announce(namespace)
        settle(self.clock)
        return publisher, publisher.offer_track(namespace, name)

    def watch(
        self, namespace: Namespace, name: bytes, on_object: ObjectCallback
    ) -> tuple[MoqtClient, ClientSubscription]:
        """A new viewer session subscribed (SUBSCRIBE_OK received) to one track."""
        viewer, _, _ = self.connect()
        d = viewer.subscribe(namespace, name, on_object)
        settle(self.clock)
        subscription: list[ClientSubscription] = []
        d.addCallback(subscription.append)
        assert subscription, "the subscription was not accepted"
        return viewer, subscription[0]


class Recorder:
    """Collects received objects."""

    def __init__(self) -> None:
        self.objects: list[ReceivedObject] = []

    def __call__(self, obj: ReceivedObject) -> None:
        self.objects.append(obj)

    def ids(self) -> list[tuple[int, int]]:
        return [(o.group_id, o.object_id) for o in self.objects]


@contextmanager
def recursion_headroom(frames: int) -> Iterator[None]:
    """Allow only ``frames`` more stack frames than the caller has, for the block."""
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back  # type: ignore[assignment]
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def one_turn(clock: Clock) -> int:
    """Run the calls due now, like one reactor iteration: calls they add wait for the next.

    (``Clock.advance(0)`` instead keeps running calls added for the same time.)
    """
    due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)
    return len(due)


class CachedTrackCase(SynchronousTestCase):
    """A publisher of live/demo video with groups 0-2 of objects 0-3 cached in the relay
    ("g.o" payloads), and a viewer subscribed to it."""

    def setUp(self) -> None:
        self.world = MemoryRelay()
        self.clock = self.world.clock
        self.publisher, self.track = self.world.publish((b"live", b"demo"), b"video")
        self.viewer, self.sub = self.world.watch((b"live", b"demo"), b"video", Recorder())
        for group in range(3):
            for obj in range(4):
                self.track.send_object(group, obj, b"%d.%d" % (group, obj))
        settle(self.clock)
