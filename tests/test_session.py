"""Tests for moqrelay.session: SETUP, request ids, errors that end only one session."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from moqrelay.relay.hub import Relay
from moqrelay.session import MoqtSession, SessionLimits
from moqrelay.testing import MemorySession, memory_session_pair
from moqrelay.transport.interfaces import (
    ISessionHandler,
    IStream,
    IStreamReceiver,
    ITransportSession,
)
from moqrelay.wire import control as c
from moqrelay.wire.errors import SessionErrorCode
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
    def test_requests_wait_for_max_request_id_and_say_blocked(self) -> None:
        clock = Clock()
        sent: list[c.ControlMessage] = []
        peers: list[RawPeer] = []

        def server(t: ITransportSession) -> RawPeer:
            peers.append(_ServerRaw(t))
            return peers[0]

        client_side, _ = memory_session_pair(
            clock, lambda t: MoqtSession(t, clock, _NullApp), server
        )
        settle(clock)
        raw = peers[0]
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
        peers: list[RawPeer] = []

        def server(t: ITransportSession) -> RawPeer:
            peers.append(_ServerRaw(t))
            return peers[0]

        client_side, _ = memory_session_pair(
            clock, lambda t: MoqtSession(t, clock, _NullApp), server
        )
        settle(clock)
        peers[0].send(c.ServerSetup(c.DRAFT_14, [(c.SETUP_MAX_REQUEST_ID, 10)]))
        peers[0].send(c.MaxRequestId(10))
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
