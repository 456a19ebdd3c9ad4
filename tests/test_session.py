"""Tests for moqrelay.session: SETUP, request ids, errors that end only one session."""

from __future__ import annotations

from itertools import zip_longest

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from moqrelay.client.api import MoqtClient, TrackPublisher
from moqrelay.relay.hub import Relay
from moqrelay.relay.peer import RelayPeer
from moqrelay.relay.subscription import Subscription
from moqrelay.session import MoqtSession, SessionLimits
from moqrelay.testing import MemorySession, memory_session_pair
from moqrelay.transport.interfaces import (
    ISessionHandler,
    IStream,
    IStreamReceiver,
    ITransportSession,
)
from moqrelay.wire import control as c
from moqrelay.wire.errors import ProtocolViolation, SessionErrorCode
from tests.helpers import MemoryRelay, settle

# The reference's section 12.1 and the captured @moq/lite CLIENT_SETUP (12.3).
CLIENT_SETUP_D14 = bytes.fromhex("20 0014 01 c0000000ff00000e 02 024064 0705 70796d6f71")
LITE_SETUP = bytes.fromhex(
    "20002c03c0000000ff0dad02c0000000ff0dad01c0000000ff00000e"
    "02028000a455070b6d6f712d6c6974652d6a73"
)


@implementer(ISessionHandler, IStreamReceiver)
class RawPeer:
    """A client that writes raw bytes on its control stream and records what comes back."""

    def __init__(self, transport: ITransportSession) -> None:
        self.transport = transport
        self.control: IStream = transport.open_bidi_stream()
        self.control.set_receiver(self)
        self.received = b""
        self.decoder = c.ControlStreamDecoder()
        self.messages: list[c.ControlMessage] = []
        self.closed: tuple[int, str] | None = None

    def stream_opened(self, stream: IStream, bidirectional: bool) -> None:
        """Data streams are not examined here."""

    def datagram_received(self, data: bytes) -> None:
        """Not used."""

    def session_closed(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def stream_data(self, data: bytes, fin: bool) -> None:
        self.messages.extend(self.decoder.feed(data))

    def stream_reset(self, code: int) -> None:
        """Not used."""

    def stream_stop_sending(self, code: int) -> None:
        """Not used."""

    def send(self, msg: c.ControlMessage) -> None:
        self.control.write(c.encode_message(msg))


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.relay = Relay(self.clock)

    def raw(self, limits: SessionLimits | None = None) -> tuple[RawPeer, MemorySession]:
        peers: list[RawPeer] = []

        def client(t: ITransportSession) -> RawPeer:
            peers.append(RawPeer(t))
            return peers[0]

        def server(t: ITransportSession) -> MoqtSession:
            return MoqtSession(t, self.clock, self.relay.app_factory, limits)

        _, server_side = memory_session_pair(self.clock, client, server)
        return peers[0], server_side

    def test_captured_moq_lite_setup_gets_draft14_and_max_request_id(self) -> None:
        peer, _ = self.raw()
        peer.control.write(LITE_SETUP[:1])
        peer.control.write(LITE_SETUP[1:3])
        peer.control.write(LITE_SETUP[3:])
        settle(self.clock)
        setup = peer.messages[0]
        assert isinstance(setup, c.ServerSetup)
        self.assertEqual(setup.version, c.DRAFT_14)
        self.assertEqual(c.get_param(setup.params, c.SETUP_MAX_REQUEST_ID), 200)
        self.assertIsNone(peer.closed)

    def test_no_common_version(self) -> None:
        peer, _ = self.raw()
        peer.send(c.ClientSetup([0xFF0DAD02], []))
        settle(self.clock)
        assert peer.closed is not None
        self.assertEqual(peer.closed[0], SessionErrorCode.VERSION_NEGOTIATION_FAILED)

    def test_message_before_setup(self) -> None:
        peer, _ = self.raw()
        peer.send(c.Unsubscribe(0))
        settle(self.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.PROTOCOL_VIOLATION)

    def test_setup_timeout(self) -> None:
        peer, _ = self.raw(SessionLimits(setup_timeout=2.0))
        self.clock.advance(2.0)
        settle(self.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.CONTROL_MESSAGE_TIMEOUT)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_path_is_refused_off_raw_quic(self) -> None:
        peer, _ = self.raw()
        peer.send(c.ClientSetup([c.DRAFT_14], [(c.SETUP_PATH, b"/x")]))
        settle(self.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.INVALID_PATH)

    def pair(
        self, path: str, *, setup_carries_path: bool = False, authority: str = ""
    ) -> tuple[MoqtSession, MoqtSession]:
        """Client and relay MoqtSessions joined in memory, SETUP done."""
        sessions: list[MoqtSession] = []

        def client(t: ITransportSession) -> MoqtSession:
            sessions.append(MoqtSession(t, self.clock, MoqtClient))
            return sessions[-1]

        def server(t: ITransportSession) -> MoqtSession:
            sessions.append(MoqtSession(t, self.clock, self.relay.app_factory))
            return sessions[-1]

        memory_session_pair(
            self.clock,
            client,
            server,
            path,
            setup_carries_path=setup_carries_path,
            authority=authority,
        )
        settle(self.clock)
        relay_side, client_side = sessions
        self.assertTrue(client_side.ready and relay_side.ready)
        return client_side, relay_side

    def test_setup_carries_path_and_authority_when_the_transport_says_so(self) -> None:
        _, relay_side = self.pair("/room?x=1", setup_carries_path=True, authority="relay:4443")
        self.assertEqual(relay_side.path, "/room?x=1")
        self.assertEqual(c.get_param(relay_side.peer_params, c.SETUP_PATH), b"/room?x=1")
        self.assertEqual(c.get_param(relay_side.peer_params, c.SETUP_AUTHORITY), b"relay:4443")

    def test_setup_leaves_path_to_the_request_otherwise(self) -> None:
        _, relay_side = self.pair("/room?x=1", authority="relay:4443")
        self.assertEqual(relay_side.path, "/room?x=1")
        self.assertIsNone(c.get_param(relay_side.peer_params, c.SETUP_PATH))
        self.assertIsNone(c.get_param(relay_side.peer_params, c.SETUP_AUTHORITY))

    def setup(self, peer: RawPeer) -> None:
        peer.control.write(CLIENT_SETUP_D14)
        settle(self.clock)

    def test_request_id_wrong_parity(self) -> None:
        peer, _ = self.raw()
        self.setup(peer)
        peer.send(c.PublishNamespace(1, (b"a",), []))
        settle(self.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.INVALID_REQUEST_ID)

    def test_request_id_reused(self) -> None:
        peer, _ = self.raw()
        self.setup(peer)
        peer.send(c.PublishNamespace(0, (b"a",), []))
        peer.send(c.PublishNamespace(0, (b"b",), []))
        settle(self.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.INVALID_REQUEST_ID)

    def test_request_beyond_the_window(self) -> None:
        peer, _ = self.raw(SessionLimits(request_window=2))
        self.setup(peer)
        setup = peer.messages[0]
        assert isinstance(setup, c.ServerSetup)
        self.assertEqual(c.get_param(setup.params, c.SETUP_MAX_REQUEST_ID), 4)
        for rid in (0, 2, 4, 6):
            peer.send(c.PublishNamespace(rid, (b"ns%d" % rid,), []))
        settle(self.clock)
        self.assertIsNone(peer.closed)
        raised = [m.request_id for m in peer.messages if isinstance(m, c.MaxRequestId)]
        self.assertEqual(raised, [8, 12])

    def test_open_requests_hold_the_window(self) -> None:
        peer, _ = self.raw(SessionLimits(request_window=1))
        self.setup(peer)
        peer.send(c.PublishNamespace(0, (b"a",), []))
        settle(self.clock)
        self.assertEqual(peer.messages[-1], c.MaxRequestId(4))
        # The relay subscribes upstream to this very peer, which never answers:
        # the SUBSCRIBE stays open and holds the only slot of the window.
        peer.send(c.Subscribe(2, (b"a",), b"t", 0, 0, True, c.FILTER_LARGEST_OBJECT))
        settle(self.clock)
        self.assertIsNone(peer.closed)
        peer.send(c.PublishNamespace(4, (b"c",), []))
        settle(self.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.TOO_MANY_REQUESTS)

    def test_garbage_on_control_stream_ends_only_that_session(self) -> None:
        world = MemoryRelay()
        healthy, _, _ = world.connect()
        peer_list: list[RawPeer] = []

        def client(t: ITransportSession) -> RawPeer:
            peer_list.append(RawPeer(t))
            return peer_list[0]

        memory_session_pair(
            world.clock, client, lambda t: MoqtSession(t, world.clock, world.relay.app_factory)
        )
        peer = peer_list[0]
        peer.control.write(CLIENT_SETUP_D14)
        peer.control.write(b"\x7f\x00\x01\x00")
        settle(world.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.PROTOCOL_VIOLATION)
        d = healthy.announce((b"still", b"fine"))
        settle(world.clock)
        self.successResultOf(d)
        self.assertEqual(len(world.relay.peers), 1)

    def test_second_bidi_stream_is_a_violation(self) -> None:
        peer, _ = self.raw()
        self.setup(peer)
        extra = peer.transport.open_bidi_stream()
        extra.write(b"x")
        settle(self.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.PROTOCOL_VIOLATION)

    def test_fin_on_control_stream_is_a_violation(self) -> None:
        peer, _ = self.raw()
        self.setup(peer)
        peer.control.finish()
        settle(self.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.PROTOCOL_VIOLATION)

    def test_bad_data_stream_ends_the_session(self) -> None:
        peer, _ = self.raw()
        self.setup(peer)
        stream = peer.transport.open_uni_stream()
        stream.write(b"\x3f\x00")
        settle(self.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.PROTOCOL_VIOLATION)

    def test_oversized_control_message(self) -> None:
        peer, _ = self.raw(SessionLimits(max_control_message=64))
        self.setup(peer)
        peer.send(c.PublishNamespace(0, (b"x" * 100,), []))
        settle(self.clock)
        self.assertEqual(peer.closed and peer.closed[0], SessionErrorCode.PROTOCOL_VIOLATION)


class ClientRequestWindowTests(SynchronousTestCase):
    def client_against_raw(self, clock: Clock) -> tuple[MemorySession, RawPeer]:
        """A client MoqtSession whose server is a RawPeer the test drives."""
        peers: list[RawPeer] = []

        def server(t: ITransportSession) -> RawPeer:
            peers.append(_ServerRaw(t))
            return peers[0]

        client_side, _ = memory_session_pair(
            clock, lambda t: MoqtSession(t, clock, _NullApp), server
        )
        settle(clock)
        return client_side, peers[0]

    def test_requests_wait_for_max_request_id_and_say_blocked(self) -> None:
        clock = Clock()
        client_side, raw = self.client_against_raw(clock)
        raw.send(c.ServerSetup(c.DRAFT_14, [(c.SETUP_MAX_REQUEST_ID, 2)]))
        settle(clock)
        session = client_side.handler
        assert isinstance(session, MoqtSession)
        for name in (b"a", b"b", b"c"):
            session.send_request(lambda rid, name=name: c.PublishNamespace(rid, (name,), []))
        settle(clock)
        sent = [m for m in raw.messages if not isinstance(m, c.ClientSetup)]
        self.assertEqual(sent, [c.PublishNamespace(0, (b"a",), []), c.RequestsBlocked(2)])
        raw.send(c.MaxRequestId(6))
        settle(clock)
        later = [m.request_id for m in raw.messages if isinstance(m, c.PublishNamespace)]
        self.assertEqual(later, [0, 2, 4])

    def test_max_request_id_must_grow(self) -> None:
        clock = Clock()
        client_side, raw = self.client_against_raw(clock)
        raw.send(c.ServerSetup(c.DRAFT_14, [(c.SETUP_MAX_REQUEST_ID, 10)]))
        raw.send(c.MaxRequestId(10))
        settle(clock)
        self.assertEqual(client_side.close_code, SessionErrorCode.PROTOCOL_VIOLATION)


class _ServerRaw(RawPeer):
    """The server end: waits for the client's control stream instead of opening one."""

    def __init__(self, transport: ITransportSession) -> None:
        self.transport = transport
        self.received = b""
        self.decoder = c.ControlStreamDecoder()
        self.messages = []
        self.closed = None

    def stream_opened(self, stream: IStream, bidirectional: bool) -> None:
        if bidirectional:
            self.control = stream
            stream.set_receiver(self)


class _NullApp:
    def __init__(self, session: MoqtSession) -> None:
        self.session = session

    def session_ready(self) -> None:
        """Nothing to do."""

    def control_message(self, msg: c.ControlMessage) -> None:
        """Ignored."""

    def data_header(self, stream: object) -> None:
        """Ignored."""

    def data_object(self, stream: object, obj: object) -> None:
        """Ignored."""

    def data_end(self, stream: object, reset_code: int | None) -> None:
        """Ignored."""

    def datagram(self, datagram: object) -> None:
        """Ignored."""

    def session_ended(self, code: int, reason: str) -> None:
        """Ignored."""


# -- random valid and invalid message sequences ------------------------------------

# Weighted towards what exists, so that sequences reach deep states (live subscriptions).
NAMESPACES = st.sampled_from([(b"a",), (b"a",), (b"a",), (b"a", b"b"), (b"c",)])
TRACKS = st.sampled_from([b"t1", b"t1", b"t1", b"t2"])


def _request(kind: str, rid: int, ns: tuple[bytes, ...], name: bytes) -> c.ControlMessage:
    if kind == "subscribe":
        return c.Subscribe(rid, ns, name, 1, 0, True, c.FILTER_LARGEST_OBJECT)
    if kind == "announce":
        return c.PublishNamespace(rid, ns, [])
    if kind == "fetch":
        return c.Fetch(rid, 1, 0, c.FETCH_STANDALONE, ns, name, c.Location(0, 0), c.Location(1, 0))
    if kind == "joining":
        return c.Fetch(rid, 1, 0, c.FETCH_RELATIVE_JOINING, joining_request_id=0, joining_start=1)
    if kind == "status":
        return c.TrackStatus(rid, ns, name, 1, 0, True, c.FILTER_LARGEST_OBJECT)
    if kind == "namespaces":
        return c.SubscribeNamespace(rid, ns, [])
    if kind == "publish":
        return c.Publish(rid, ns, name, rid, 1, None, True)
    return c.SubscribeUpdate(rid, 0, c.Location(0, 0), 0, 1, True)


# Weighted towards what exists and towards requests, so that sessions live long enough
# to build state (live subscriptions, namespaces) before something lethal ends them.
KINDS = (
    ["request"] * 10
    + ["unsubscribe"] * 3
    + ["object"] * 4
    + ["done", "unsubscribe_namespace", "max_request_id", "goaway", "garbage", "data_stream"]
    + ["abort"]
)
REQUEST_KINDS = ["subscribe"] * 4 + [
    "announce", "fetch", "joining", "status", "namespaces", "publish", "update",
]  # fmt: skip
ACTIONS = st.tuples(
    st.sampled_from(KINDS),
    st.sampled_from(REQUEST_KINDS),
    NAMESPACES,
    TRACKS,
    st.sampled_from([0] * 12 + [2, -2, 1]),
    st.integers(0, 300),
    st.binary(min_size=1, max_size=24),
)
Action = tuple[str, str, tuple[bytes, ...], bytes, int, int, bytes]


class RandomSequenceTests(SynchronousTestCase):
    """Random valid and invalid sequences end at most the session that sent them."""

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(st.lists(ACTIONS, max_size=25), st.lists(ACTIONS, max_size=25))
    def test_the_relay_survives_any_sequence(
        self, first: list[Action], second: list[Action]
    ) -> None:
        world = MemoryRelay()
        clock = world.clock
        watcher, _, _ = world.connect()
        publisher, _, _ = world.connect()
        publisher.announce((b"a",))
        settle(clock)
        track = publisher.offer_track((b"a",), b"t1")
        peers = [self.raw_peer(world) for _ in range(2)]
        for actions in zip_longest(first, second):
            for peer, action in zip(peers, actions, strict=True):
                if action is not None:
                    self.act(peer, action, track)
            settle(clock)
            self.check_consistency(world)
        for peer in peers:
            peer.transport.close(0, "done")
        settle(clock)
        # Only the two well-behaved sessions are left, with nothing of the others.
        self.assertEqual(len(world.relay.peers), 2)
        self.assertEqual(world.relay.reaper.pending(), 0)
        for key, live in world.relay.tracks.items():
            for sub in live.subscriptions:
                assert isinstance(sub, Subscription)
                self.assertIn(sub.viewer, world.relay.peers, key)
        d = watcher.announce((b"still", b"working"))
        settle(clock)
        self.successResultOf(d)
        self.assertEqual(self.flushLoggedErrors(), [])
        clock.advance(60)
        settle(clock)
        self.assertEqual(clock.getDelayedCalls(), [])

    def check_consistency(self, world: MemoryRelay) -> None:
        """Every registry agrees with every other one after each step."""
        relay = world.relay
        for peer in relay.peers:
            self.assertFalse(peer.session.closed)
            for request_id, sub in peer.subscriptions.items():
                self.assertEqual(sub.request_id, request_id)
                self.assertIs(sub.viewer, peer)
                self.assertNotEqual(sub.state, "closed")
                if sub.state in ("pending", "active"):
                    self.assertIn(sub, sub.track.subscriptions)
            for namespace in peer.namespaces:
                self.assertIn(peer, relay.namespaces.owners(namespace))
            for request_id, upstream in peer.upstream.items():
                self.assertEqual(upstream.sources[peer].request_id, request_id)
        for key, track in relay.tracks.items():
            self.assertEqual(track.key, key)
            self.assertNotEqual(track.state, "ended")
            for publisher in track.sources:
                self.assertIn(publisher, relay.peers)
            for viewer in track.subscriptions:
                assert isinstance(viewer, Subscription) and isinstance(viewer.viewer, RelayPeer)
                self.assertIs(viewer.viewer.subscriptions.get(viewer.request_id), viewer)
        for namespace, owner in relay.namespaces.items():
            self.assertIn(owner, relay.peers)
            self.assertIn(namespace, owner.namespaces)

    def raw_peer(self, world: MemoryRelay) -> _Fuzzer:
        peers: list[_Fuzzer] = []

        def client(t: ITransportSession) -> _Fuzzer:
            peers.append(_Fuzzer(t))
            return peers[0]

        memory_session_pair(
            world.clock, client, lambda t: MoqtSession(t, world.clock, world.relay.app_factory)
        )
        peers[0].control.write(CLIENT_SETUP_D14)
        settle(world.clock)
        return peers[0]

    def act(self, peer: _Fuzzer, action: Action, track: TrackPublisher) -> None:
        if peer.closed is not None:
            return
        kind, what, ns, name, skew, number, blob = action
        if kind == "request":
            rid = max(0, peer.next_id + skew)
            if skew == 0:
                peer.next_id += 2
            peer.send(_request(what, rid, ns, name))
        elif kind == "unsubscribe":
            peer.send(c.Unsubscribe(2 * (number % 4)))
        elif kind == "done":
            peer.send(c.PublishNamespaceDone(ns))
        elif kind == "unsubscribe_namespace":
            peer.send(c.UnsubscribeNamespace(ns))
        elif kind == "max_request_id":
            peer.send(c.MaxRequestId(number))
        elif kind == "goaway":
            peer.send(c.GoAway(blob[: number % 3]))
        elif kind == "garbage":
            peer.control.write(blob)
        elif kind == "data_stream":
            stream = peer.transport.open_uni_stream()
            stream.write(blob)
            stream.finish()
        elif kind == "object":
            track.send_object(number % 4, number // 4 % 4, b"x")
        else:
            peer.transport.abort()  # type: ignore[attr-defined]


class _Fuzzer(RawPeer):
    def __init__(self, transport: ITransportSession) -> None:
        super().__init__(transport)
        self.next_id = 0

    def stream_data(self, data: bytes, fin: bool) -> None:
        try:
            self.messages.extend(self.decoder.feed(data))
        except ProtocolViolation:
            self.decoder = c.ControlStreamDecoder()
