"""Tests for the transport layer's WebSocket polyfill (moqrelay.transport.websocket).

`SessionStateTests` and `BackpressureTests` drive `WebSocketSession` through a
fake link and `task.Clock`; the end-to-end classes run Autobahn over real
sockets on 127.0.0.1 and wait for every server-side disconnect.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator
from typing import Any, cast

from autobahn.websocket import protocol as autobahn_protocol
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from moqrelay.compat import autobahn as autobahn_compat
from moqrelay.tls import generate_dev_chain
from moqrelay.transport import websocket as websocket_module
from moqrelay.transport.interfaces import (
    ISessionHandler,
    IStream,
    IStreamReceiver,
    ITransportSession,
)
from moqrelay.transport.websocket import (
    MAX_REASON_BYTES,
    SUBPROTOCOL,
    WebSocketConnectError,
    WebSocketSession,
    WebSocketTransportFactory,
    connect_websocket,
)
from moqrelay.web import tls_context_factory
from moqrelay.wire.polyfill import (
    MAX_STREAM_FRAME_DATA,
    ApplicationCloseFrame,
    Frame,
    ResetStreamFrame,
    StopSendingFrame,
    StreamFrame,
    decode_frame,
    encode_frame,
)

# -- shared fakes ----------------------------------------------------------------


@implementer(IStreamReceiver)
class Recorder:
    """Records what one stream reports; optionally runs a hook on each event."""

    def __init__(self, stream: IStream, on_event: Callable[[Recorder], None] | None = None):
        self.stream = stream
        self.events: list[tuple[str, Any]] = []
        self.data = bytearray()
        self.fin = False
        self.on_event = on_event

    def stream_data(self, data: bytes, fin: bool) -> None:
        self.events.append(("data", (data, fin)))
        self.data += data
        self.fin = self.fin or fin
        if self.on_event is not None:
            self.on_event(self)

    def stream_reset(self, code: int) -> None:
        self.events.append(("reset", code))
        if self.on_event is not None:
            self.on_event(self)

    def stream_stop_sending(self, code: int) -> None:
        self.events.append(("stop_sending", code))
        if self.on_event is not None:
            self.on_event(self)


@implementer(ISessionHandler)
class RecordingHandler:
    """Attaches a Recorder to every stream the peer opens and records the session end."""

    def __init__(self, session: ITransportSession) -> None:
        self.session = session
        self.opened: list[tuple[IStream, bool]] = []
        self.receivers: dict[int, Recorder] = {}
        self.closed: list[tuple[int, str]] = []
        self.closed_d: Deferred[tuple[int, str]] = Deferred()
        self.calls_after_close = 0

    def stream_opened(self, stream: IStream, bidirectional: bool) -> None:
        if self.closed:
            self.calls_after_close += 1
        self.opened.append((stream, bidirectional))
        self.receivers[stream.stream_id] = Recorder(stream, self.on_stream_event)
        stream.set_receiver(self.receivers[stream.stream_id])

    def on_stream_event(self, recorder: Recorder) -> None:
        if self.closed:
            self.calls_after_close += 1

    def datagram_received(self, data: bytes) -> None:
        raise AssertionError("no datagrams over WebSocket")

    def session_closed(self, code: int, reason: str) -> None:
        if self.closed:
            self.calls_after_close += 1
        self.closed.append((code, reason))
        if not self.closed_d.called:
            self.closed_d.callback((code, reason))


class FakeLink:
    """Records the messages sent. With ``writes_frames`` the session frames them itself
    (as over a server's WebSocket); `write_frames` then checks and strips the frame
    headers and keeps each call's pieces in ``writes``."""

    def __init__(self, clock: Clock | None = None, writes_frames: bool = False) -> None:
        self.clock = clock or Clock()
        self.writes_frames = writes_frames
        self.sent: list[bytes] = []
        self.writes: list[list[bytes]] = []
        self.closes = 0
        self.paused = False
        self.aborted = False

    def send_message(self, payload: bytes) -> None:
        assert not self.writes_frames
        self.sent.append(payload)

    def write_frames(self, frames: list[bytes]) -> None:
        assert self.writes_frames
        self.writes.append(list(frames))
        self.sent.extend(_unframe(b"".join(frames)))

    def close_connection(self) -> None:
        self.closes += 1

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def abort_connection(self) -> None:
        self.aborted = True

    def frames(self) -> list[Frame]:
        return [decode_frame(message) for message in self.sent]

    def take(self) -> list[Frame]:
        frames = self.frames()
        self.sent.clear()
        return frames


def _unframe(data: bytes) -> list[bytes]:
    """The payloads of whole, final, unmasked binary WebSocket frames."""
    payloads = []
    while data:
        assert data[0] == 0x82 and data[1] & 0x80 == 0, data[:2]
        size, start = data[1], 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
            assert size > 125
        elif size == 127:
            size, start = int.from_bytes(data[2:10], "big"), 10
            assert size > 0xFFFF
        payloads.append(data[start : start + size])
        assert len(payloads[-1]) == size
        data = data[start + size :]
    return payloads


def make_session(
    *,
    is_client: bool = False,
    low_water: int = 1000,
    high_water: int = 4000,
    writes_frames: bool = False,
) -> tuple[WebSocketSession, FakeLink, RecordingHandler, Clock]:
    clock = Clock()
    link = FakeLink(clock, writes_frames)
    session = WebSocketSession(
        clock,
        link,
        is_client=is_client,
        path="/moq",
        peer="test",
        low_water=low_water,
        high_water=high_water,
    )
    handlers: list[RecordingHandler] = []

    def factory(s: ITransportSession) -> RecordingHandler:
        handlers.append(RecordingHandler(s))
        return handlers[-1]

    session.start(factory)
    return session, link, handlers[0], clock


def feed(session: WebSocketSession, *frames: Frame) -> None:
    for frame in frames:
        session.message_received(encode_frame(frame), True)


# -- the framing state machine -------------------------------------------------------


class SessionStateTests(SynchronousTestCase):
    def assertViolation(
        self, link: FakeLink, handler: RecordingHandler, fragment: str, code: int = 0x3
    ) -> None:
        close = link.frames()[-1]
        assert isinstance(close, ApplicationCloseFrame)
        self.assertEqual(close.code, code)
        self.assertIn(fragment, close.reason)
        self.assertEqual(link.closes, 1)
        self.assertEqual(handler.closed, [])  # reported from the clock, never inside close()
        link.clock.advance(0)
        self.assertEqual(len(handler.closed), 1)
        self.assertEqual(handler.closed[0], (code, close.reason))

    def test_attributes(self) -> None:
        session, _, _, _ = make_session()
        self.assertTrue(ITransportSession.providedBy(session))
        self.assertEqual(session.transport_name, "websocket")
        self.assertFalse(session.supports_datagrams)
        self.assertFalse(session.is_client)
        self.assertEqual(session.path, "/moq")

    def test_server_stream_ids(self) -> None:
        session, _, _, _ = make_session()
        self.assertEqual([session.open_uni_stream().stream_id for _ in range(3)], [3, 7, 11])
        self.assertEqual([session.open_bidi_stream().stream_id for _ in range(2)], [1, 5])

    def test_client_stream_ids(self) -> None:
        session, _, _, _ = make_session(is_client=True)
        self.assertEqual([session.open_bidi_stream().stream_id for _ in range(2)], [0, 4])
        self.assertEqual([session.open_uni_stream().stream_id for _ in range(2)], [2, 6])

    def test_opening_sends_nothing(self) -> None:
        session, link, _, _ = make_session()
        session.open_uni_stream()
        session.open_bidi_stream()
        self.assertEqual(link.sent, [])

    def test_peer_streams_open_implicitly(self) -> None:
        session, link, handler, _ = make_session()
        feed(session, StreamFrame(0, b"\x20", False), StreamFrame(2, b"ab", False))
        feed(session, StreamFrame(0, b"\x00\x2c", False), StreamFrame(2, b"", True))
        self.assertEqual(
            [(s.stream_id, bidi) for s, bidi in handler.opened], [(0, True), (2, False)]
        )
        self.assertEqual(handler.receivers[0].data, b"\x20\x00\x2c")
        self.assertEqual(
            handler.receivers[2].events, [("data", (b"ab", False)), ("data", (b"", True))]
        )
        self.assertEqual(link.sent, [])

    def test_capture_server_side(self) -> None:
        """The captured server messages come out of the session byte for byte."""
        session, link, handler, _ = make_session()
        feed(session, StreamFrame(0, bytes.fromhex("20"), False))
        control = handler.opened[0][0]
        control.write(bytes.fromhex("21 00 0c c0 00 00 00 ff 00 00 0e 01 02 40 64"))
        subgroup = session.open_uni_stream()
        subgroup.write(bytes.fromhex("14 00 00 00 00 00 04 61 62 63 64 00 04 65 66 67 68"))
        subgroup.finish()
        self.assertEqual(
            link.sent,
            [
                bytes.fromhex("08 00 21 00 0c c0 00 00 00 ff 00 00 0e 01 02 40 64"),
                bytes.fromhex("08 03 14 00 00 00 00 00 04 61 62 63 64 00 04 65 66 67 68"),
                bytes.fromhex("09 03"),
            ],
        )

    def test_a_stream_encodes_its_data_header_once(self) -> None:
        session, link, _, _ = make_session(high_water=1 << 30)
        first, second = session.open_uni_stream(), session.open_uni_stream()
        encoded: list[object] = []

        def counting(frame: Any) -> bytes:
            encoded.append(frame)
            return encode_frame(frame)

        self.patch(websocket_module, "encode_frame", counting)
        for payload in (b"a", b"bc", b"def"):
            first.write(payload)
            second.write(payload)
        self.assertEqual(encoded, [StreamFrame(3, b"", False), StreamFrame(7, b"", False)])
        self.assertEqual(
            [(f.stream_id, f.data) for f in link.take() if isinstance(f, StreamFrame)],
            [(3, b"a"), (7, b"a"), (3, b"bc"), (7, b"bc"), (3, b"def"), (7, b"def")],
        )

    def test_split_at_max_frame_data(self) -> None:
        session, link, _, _ = make_session(high_water=1 << 30)
        stream = session.open_uni_stream()
        data = bytes(range(256)) * 160  # 40 960 bytes
        stream.write(data)
        frames = link.take()
        sizes = [len(f.data) for f in frames if isinstance(f, StreamFrame)]
        self.assertEqual(sizes, [MAX_STREAM_FRAME_DATA, MAX_STREAM_FRAME_DATA, 40960 - 32720])
        self.assertEqual(b"".join(f.data for f in frames if isinstance(f, StreamFrame)), data)
        self.assertTrue(all(isinstance(f, StreamFrame) and not f.fin for f in frames))

    def test_exactly_max_frame_data_is_one_frame(self) -> None:
        session, link, _, _ = make_session(high_water=1 << 30)
        stream = session.open_uni_stream()
        stream.write(b"x" * MAX_STREAM_FRAME_DATA)
        stream.write(b"y" * (MAX_STREAM_FRAME_DATA + 1))
        self.assertEqual([len(m) - 2 for m in link.sent], [MAX_STREAM_FRAME_DATA] * 2 + [1])

    def test_finish_and_reset_are_idempotent(self) -> None:
        session, link, _, _ = make_session()
        a, b = session.open_uni_stream(), session.open_uni_stream()
        a.write(b"1")
        a.finish()
        a.finish()
        a.write(b"dropped")
        a.reset(5)
        b.reset(5)
        b.reset(6)
        b.finish()
        b.write(b"dropped")
        self.assertEqual(
            link.frames(),
            [StreamFrame(3, b"1", False), StreamFrame(3, b"", True), ResetStreamFrame(7, 5)],
        )

    def test_empty_write_sends_nothing(self) -> None:
        session, link, _, _ = make_session()
        session.open_uni_stream().write(b"")
        self.assertEqual(link.sent, [])

    def test_stop_sending_answered_with_reset(self) -> None:
        session, link, handler, _ = make_session()
        stream = session.open_uni_stream()
        recorder = Recorder(stream)
        stream.set_receiver(recorder)
        stream.write(b"abc")
        feed(session, StopSendingFrame(3, 0x42))
        self.assertEqual(link.frames()[1:], [ResetStreamFrame(3, 0x42)])
        self.assertEqual(recorder.events, [("stop_sending", 0x42)])
        stream.write(b"dropped")
        stream.finish()
        feed(session, StopSendingFrame(3, 0x43))
        self.assertEqual(len(link.sent), 2)
        self.assertEqual(handler.closed, [])

    def test_stop_sending_on_peer_bidi(self) -> None:
        session, link, handler, _ = make_session()
        feed(session, StreamFrame(0, b"hello", False))
        feed(session, StopSendingFrame(0, 7))
        self.assertEqual(link.frames(), [ResetStreamFrame(0, 7)])
        self.assertEqual(handler.receivers[0].events[-1], ("stop_sending", 7))

    def test_stop_sending_after_fin_is_ignored(self) -> None:
        session, link, _, _ = make_session()
        stream = session.open_bidi_stream()
        stream.finish()
        feed(session, StopSendingFrame(1, 9))
        self.assertEqual(link.frames(), [StreamFrame(1, b"", True)])

    def test_peer_reset(self) -> None:
        session, _, handler, _ = make_session()
        feed(session, StreamFrame(2, b"ab", False), ResetStreamFrame(2, 3))
        feed(session, ResetStreamFrame(2, 4))
        self.assertEqual(handler.receivers[2].events, [("data", (b"ab", False)), ("reset", 3)])
        self.assertEqual(handler.closed, [])

    def test_our_stop_sending(self) -> None:
        session, link, handler, _ = make_session()
        feed(session, StreamFrame(2, b"ab", False))
        stream = handler.opened[0][0]
        stream.stop_sending(0)
        stream.stop_sending(0)
        feed(session, StreamFrame(2, b"in flight", False), ResetStreamFrame(2, 0))
        self.assertEqual(link.frames(), [StopSendingFrame(2, 0)])
        self.assertEqual(handler.receivers[2].events, [("data", (b"ab", False))])
        # The stream is gone; a new STREAM on it would be data after its end.
        feed(session, StreamFrame(2, b"late", False))
        self.assertViolation(link, handler, "ended or skipped")

    def test_data_after_fin(self) -> None:
        session, link, handler, _ = make_session()
        feed(session, StreamFrame(0, b"a", True), StreamFrame(0, b"b", False))
        self.assertViolation(link, handler, "after the end")

    def test_bidi_forgotten_when_both_halves_end(self) -> None:
        session, link, handler, _ = make_session()
        stream = session.open_bidi_stream()
        stream.write(b"q")
        feed(session, StreamFrame(1, b"r", True))
        stream.finish()
        # Stale frames for a stream we opened and forgot are ignored.
        feed(session, ResetStreamFrame(1, 0), StopSendingFrame(1, 0), StreamFrame(1, b"x", False))
        self.assertEqual(handler.closed, [])
        self.assertEqual(len(link.sent), 2)

    def test_stream_on_our_uni(self) -> None:
        session, link, handler, _ = make_session()
        session.open_uni_stream()
        feed(session, StreamFrame(3, b"x", False))
        self.assertViolation(link, handler, "our unidirectional stream 3")

    def test_reset_on_our_uni(self) -> None:
        session, link, handler, _ = make_session()
        feed(session, ResetStreamFrame(7, 0))
        self.assertViolation(link, handler, "RESET_STREAM on our unidirectional")

    def test_stop_sending_on_peer_uni(self) -> None:
        session, link, handler, _ = make_session()
        feed(session, StreamFrame(2, b"x", False), StopSendingFrame(2, 0))
        self.assertViolation(link, handler, "STOP_SENDING on the peer's unidirectional")

    def test_peer_uses_our_parity(self) -> None:
        session, link, handler, _ = make_session()
        feed(session, StreamFrame(1, b"x", False))
        self.assertViolation(link, handler, "never opened")

    def test_client_side_parity(self) -> None:
        session, link, handler, _ = make_session(is_client=True)
        feed(session, StreamFrame(3, b"subgroup", False))
        self.assertEqual([(s.stream_id, bidi) for s, bidi in handler.opened], [(3, False)])
        feed(session, StreamFrame(2, b"x", False))
        self.assertViolation(link, handler, "our unidirectional stream 2")

    def test_ids_going_backwards(self) -> None:
        session, link, handler, _ = make_session()
        feed(session, StreamFrame(6, b"x", False), StreamFrame(2, b"y", False))
        self.assertViolation(link, handler, "ended or skipped stream 2")
        self.assertEqual(len(handler.opened), 1)

    def test_skipped_ids_are_allowed_forwards(self) -> None:
        session, _, handler, _ = make_session()
        feed(session, StreamFrame(10, b"x", False), StreamFrame(14, b"y", False))
        self.assertEqual([s.stream_id for s, _ in handler.opened], [10, 14])

    def test_reset_on_unseen_peer_stream_is_consumed(self) -> None:
        session, _, handler, _ = make_session()
        feed(session, ResetStreamFrame(2, 0), StopSendingFrame(4, 0))
        self.assertEqual(handler.opened, [])
        self.assertEqual(handler.closed, [])

    def test_text_message(self) -> None:
        session, link, handler, _ = make_session()
        session.message_received(b"\x08\x00hi", False)
        self.assertViolation(link, handler, "text")

    def test_unknown_frame_type(self) -> None:
        session, link, handler, _ = make_session()
        session.message_received(b"\x1c\x00", True)
        self.assertViolation(link, handler, "unknown polyfill frame type 0x1c")

    def test_truncated_frame(self) -> None:
        session, link, handler, _ = make_session()
        session.message_received(b"\x04\x02", True)
        self.assertViolation(link, handler, "truncated")

    def test_peer_application_close(self) -> None:
        session, link, handler, _ = make_session()
        feed(session, StreamFrame(0, b"x", False), ApplicationCloseFrame(0x10, "going away"))
        self.assertEqual(handler.closed, [(0x10, "going away")])
        self.assertEqual(link.closes, 1)
        self.assertEqual(link.sent, [])
        self.assertTrue(session.closed)
        feed(session, StreamFrame(0, b"ignored", False), StreamFrame(4, b"ignored", False))
        session.connection_lost("later")
        self.assertEqual(len(handler.closed), 1)
        self.assertEqual(handler.calls_after_close, 0)
        self.assertEqual(handler.receivers[0].data, b"x")

    def test_close(self) -> None:
        session, link, handler, clock = make_session()
        stream = session.open_uni_stream()
        session.close(0x3, "bad")
        session.close(0x4, "again")
        self.assertEqual(link.sent, [bytes.fromhex("1d 03 62 61 64")])
        self.assertEqual(link.closes, 1)
        self.assertEqual(handler.closed, [])
        clock.advance(0)
        self.assertEqual(handler.closed, [(0x3, "bad")])
        stream.write(b"dropped")
        session.open_uni_stream().write(b"dropped")
        session.connection_lost("connection done")
        self.assertEqual(len(link.sent), 1)
        self.assertEqual(handler.closed, [(0x3, "bad")])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_close_reason_truncated(self) -> None:
        session, link, _, _ = make_session()
        session.close(0, "é" * 2000)
        frame = link.frames()[0]
        assert isinstance(frame, ApplicationCloseFrame)
        self.assertEqual(frame.reason, "é" * (MAX_REASON_BYTES // 2))

    def test_connection_lost(self) -> None:
        session, link, handler, _ = make_session()
        feed(session, StreamFrame(0, b"x", False))
        session.connection_lost("peer dropped the TCP connection")
        session.connection_lost("twice")
        self.assertEqual(handler.closed, [(0, "peer dropped the TCP connection")])
        feed(session, StreamFrame(0, b"y", False))
        self.assertEqual(handler.calls_after_close, 0)
        self.assertEqual(link.sent, [])

    def test_handler_closes_inside_stream_opened(self) -> None:
        session, _, handler, clock = make_session()

        def close_on_open(stream: IStream, bidirectional: bool) -> None:
            session.close(0x7, "too many")

        handler.stream_opened = close_on_open  # type: ignore[method-assign]
        feed(session, StreamFrame(0, b"x", False))
        clock.advance(0)
        self.assertEqual(handler.closed, [(0x7, "too many")])
        self.assertEqual(handler.calls_after_close, 0)

    def test_handler_error_closes_with_internal_error(self) -> None:
        session, link, handler, _ = make_session()

        def broken(stream: IStream, bidirectional: bool) -> None:
            raise RuntimeError("boom")

        handler.stream_opened = broken  # type: ignore[method-assign]
        feed(session, StreamFrame(0, b"x", False))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertViolation(link, handler, "internal error", code=0x1)

    def test_handler_factory_error(self) -> None:
        link = FakeLink()
        session = WebSocketSession(Clock(), link, is_client=False)

        def broken(s: ITransportSession) -> ISessionHandler:
            raise RuntimeError("no handler")

        session.start(broken)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(session.closed)
        self.assertEqual(link.frames(), [ApplicationCloseFrame(1, "internal error")])

    def test_datagrams_dropped(self) -> None:
        session, link, _, _ = make_session()
        session.send_datagram(b"dropped")
        self.assertEqual(link.sent, [])

    def test_reading_control_and_abort(self) -> None:
        session, link, _, _ = make_session()
        session.pause_reading()
        self.assertTrue(link.paused)
        session.resume_reading()
        self.assertFalse(link.paused)
        session.abort()
        self.assertTrue(link.aborted)

    def test_teardown_is_flat(self) -> None:
        """10^4 open streams go with the connection without recursion or callbacks."""
        session, _, handler, clock = make_session()
        streams = [session.open_uni_stream() for _ in range(5000)]
        for i in range(5000):
            feed(session, StreamFrame(i * 4, b"x", False))
        limit = sys.getrecursionlimit()
        depth = len(_stack())
        sys.setrecursionlimit(depth + 40)
        try:
            session.connection_lost("gone")
        finally:
            sys.setrecursionlimit(limit)
        self.assertEqual(handler.closed, [(0, "gone")])
        self.assertEqual(handler.calls_after_close, 0)
        self.assertEqual(session._streams, {})
        streams[0].write(b"dropped")
        self.assertEqual(clock.getDelayedCalls(), [])


def _stack() -> list[Any]:
    import inspect

    return inspect.stack(0)


# -- backpressure (the push producer) ------------------------------------------------


class BackpressureTests(SynchronousTestCase):
    def test_writable_at_start(self) -> None:
        session, _, _, _ = make_session()
        self.assertIsNone(self.successResultOf(session.when_writable()))
        self.assertEqual(session.queued_bytes(), 0)

    def test_high_water_then_next_turn(self) -> None:
        session, _, _, clock = make_session(low_water=1000, high_water=4000)
        stream = session.open_uni_stream()
        stream.write(b"x" * 3000)
        self.successResultOf(session.when_writable())
        stream.write(b"x" * 3000)
        self.assertGreater(session.queued_bytes(), 4000)
        waiter = session.when_writable()
        self.assertNoResult(waiter)
        clock.advance(0)  # the turn ends without a pause: the transport took it all
        self.assertIsNone(self.successResultOf(waiter))
        self.assertEqual(session.queued_bytes(), 0)

    def test_transport_pause_and_resume(self) -> None:
        session, _, _, clock = make_session()
        stream = session.open_uni_stream()
        stream.write(b"x" * 100)
        session.pauseProducing()
        first, second = session.when_writable(), session.when_writable()
        clock.advance(0)
        clock.advance(10)
        self.assertNoResult(first)
        session.resumeProducing()
        self.assertNoResult(first)  # never synchronously inside resumeProducing
        self.assertEqual(session.queued_bytes(), 0)
        clock.advance(0)
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(session.when_writable())

    def test_writes_never_refused(self) -> None:
        session, link, _, _ = make_session()
        session.pauseProducing()
        stream = session.open_uni_stream()
        stream.write(b"x" * 10)
        stream.write(b"y" * 10)
        self.assertEqual(len(link.sent), 2)

    def test_cancelled_waiter_is_forgotten(self) -> None:
        session, _, _, clock = make_session()
        session.pauseProducing()
        waiter = session.when_writable()
        waiter.cancel()
        self.failureResultOf(waiter, defer.CancelledError)
        session.resumeProducing()
        clock.advance(0)  # would raise AlreadyCalledError if it were still queued

    def test_pending_waiters_never_fire_after_close(self) -> None:
        session, _, _, clock = make_session()
        session.open_uni_stream().write(b"x" * 5000)
        waiter = session.when_writable()
        session.close(0, "bye")
        clock.advance(0)
        self.assertEqual(clock.getDelayedCalls(), [])
        session.resumeProducing()
        clock.advance(1)
        self.assertNoResult(waiter)
        self.assertNoResult(session.when_writable())


# -- end to end over real sockets -----------------------------------------------------


class _TrackedConnection(ProtocolWrapper):
    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason or Failure(ConnectionError()))
        cast(Tracker, self.factory).connection_lost(self)


class Tracker(WrappingFactory):
    """Wraps a server factory to learn when each server-side connection is gone."""

    protocol = _TrackedConnection

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.connections: list[ProtocolWrapper] = []
        self._lost: dict[ProtocolWrapper, Deferred[None]] = {}

    def buildProtocol(self, addr: Any) -> Any:
        wrapper = super().buildProtocol(addr)
        self.connections.append(wrapper)
        self._lost[wrapper] = Deferred()
        return wrapper

    def connection_lost(self, wrapper: ProtocolWrapper) -> None:
        self._lost[wrapper].callback(None)

    def all_lost(self) -> Deferred[Any]:
        return defer.gatherResults(list(self._lost.values()))


@implementer(ISessionHandler)
class EchoHandler(RecordingHandler):
    """Server side: echoes bidi streams in place and uni streams on a new uni stream."""

    def __init__(self, session: ITransportSession) -> None:
        super().__init__(session)
        self.replies: dict[int, IStream] = {}

    def stream_opened(self, stream: IStream, bidirectional: bool) -> None:
        super().stream_opened(stream, bidirectional)
        self.replies[stream.stream_id] = (
            stream if bidirectional else self.session.open_uni_stream()
        )

    def on_stream_event(self, recorder: Recorder) -> None:
        super().on_stream_event(recorder)
        reply = self.replies[recorder.stream.stream_id]
        kind, value = recorder.events[-1]
        if kind == "data":
            data, fin = value
            reply.write(data)
            if fin:
                reply.finish()


class ClientHandler(RecordingHandler):
    """Client side: fires `done[stream_id]` when a stream's data ends with FIN."""

    def __init__(self, session: ITransportSession) -> None:
        super().__init__(session)
        self.finished: dict[int, Deferred[bytes]] = {}

    def ended(self, stream_id: int) -> Deferred[bytes]:
        return self.finished.setdefault(stream_id, Deferred())

    def stream_opened(self, stream: IStream, bidirectional: bool) -> None:
        super().stream_opened(stream, bidirectional)

    def on_stream_event(self, recorder: Recorder) -> None:
        super().on_stream_event(recorder)
        if recorder.fin:
            d = self.ended(recorder.stream.stream_id)
            if not d.called:
                d.callback(bytes(recorder.data))

    def watch(self, stream: IStream) -> Recorder:
        recorder = Recorder(stream, self.on_stream_event)
        self.receivers[stream.stream_id] = recorder
        stream.set_receiver(recorder)
        return recorder


class EndToEndMixin:
    """Server listening on 127.0.0.1 (plain or TLS) with EchoHandler sessions."""

    timeout = 30

    server_handlers: list[EchoHandler]
    client_handlers: list[ClientHandler]
    tracker: Tracker
    port: IListeningPort

    def listen(self, tls: bool = False) -> str:
        self.server_handlers = []
        self.client_handlers = []
        self.client_lost: list[Deferred[None]] = []

        def server_factory(session: ITransportSession) -> EchoHandler:
            self.server_handlers.append(EchoHandler(session))
            return self.server_handlers[-1]

        self.ws_factory = WebSocketTransportFactory(reactor, server_factory)
        factory: Any = self.ws_factory
        if tls:
            # The tracker goes outside TLS: Autobahn wants to see the TLS transport itself.
            self.chain = generate_dev_chain()
            factory = TLSMemoryBIOFactory(tls_context_factory([self.chain]), False, factory)
        self.tracker = Tracker(factory)
        self.port = listen(self.tracker)
        scheme = "wss" if tls else "ws"
        return f"{scheme}://127.0.0.1:{port_number(self.port)}"

    def client_factory(self, session: ITransportSession) -> ClientHandler:
        self.client_handlers.append(ClientHandler(session))
        self.client_lost.append(client_disconnected(session))
        return self.client_handlers[-1]

    @inlineCallbacks
    def cleanup(self) -> Generator[Deferred[Any], Any, None]:
        for handler in self.client_handlers:
            handler.session.close(0, "test over")
        yield self.tracker.all_lost()
        yield defer.gatherResults(self.client_lost)
        yield defer.maybeDeferred(self.port.stopListening)


class WebSocketEndToEndTests(EndToEndMixin, TestCase):
    def setUp(self) -> None:
        self.url = self.listen()
        self.addCleanup(self.cleanup)

    @inlineCallbacks
    def test_streams_both_ways(self) -> Generator[Deferred[Any], Any, None]:
        session = yield connect_websocket(reactor, self.url + "/moq/path?x=1", self.client_factory)
        client = self.client_handlers[0]
        self.assertIs(client.session, session)
        self.assertTrue(session.is_client)
        self.assertEqual(session.path, "/moq/path?x=1")

        control = session.open_bidi_stream()
        client.watch(control)
        big = bytes(range(256)) * 200  # 51 200 bytes: split into four STREAM frames
        control.write(big)
        control.finish()
        self.assertEqual((yield client.ended(0)), big)

        uni = session.open_uni_stream()
        uni.write(b"subgroup ")
        uni.write(b"objects")
        uni.finish()
        # The server echoes on its first uni stream: id 3, opened implicitly.
        self.assertEqual((yield client.ended(3)), b"subgroup objects")
        self.assertEqual([(s.stream_id, b) for s, b in client.opened], [(3, False)])

        server = self.server_handlers[0]
        self.assertEqual(server.session.path, "/moq/path?x=1")
        self.assertEqual(server.session.transport_name, "websocket")
        self.assertFalse(server.session.is_client)
        self.assertEqual([(s.stream_id, b) for s, b in server.opened], [(0, True), (2, False)])

        session.close(0x10, "bye")
        self.assertEqual((yield server.closed_d), (0x10, "bye"))
        yield self.tracker.all_lost()
        self.assertEqual(server.closed, [(0x10, "bye")])
        self.assertEqual(client.closed, [(0x10, "bye")])
        self.assertEqual(server.calls_after_close + client.calls_after_close, 0)

    @inlineCallbacks
    def test_stop_sending_both_ways_then_server_close(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        session = yield connect_websocket(reactor, self.url, self.client_factory)
        client = self.client_handlers[0]
        stream = session.open_uni_stream()
        mine = client.watch(stream)
        stream.write(b"first")
        yield wait_until(lambda: bool(self.server_handlers and self.server_handlers[0].opened))
        server = self.server_handlers[0]
        server.opened[0][0].stop_sending(0x21)
        # The client's transport answers with RESET_STREAM and tells the writer.
        yield wait_until(lambda: mine.events == [("stop_sending", 0x21)])
        stream.write(b"dropped after the reset")

        reply = server.replies[2]
        reply_events = Recorder(reply)
        reply.set_receiver(reply_events)
        reply.write(b"+reply")
        yield wait_until(
            lambda: 3 in client.receivers and client.receivers[3].data == b"first+reply"
        )
        client.receivers[3].stream.stop_sending(0x22)
        yield wait_until(lambda: reply_events.events == [("stop_sending", 0x22)])
        self.assertEqual(server.receivers[2].events, [("data", (b"first", False))])

        server.session.close(0x5, "server says bye")
        self.assertEqual((yield client.closed_d), (0x5, "server says bye"))
        yield self.tracker.all_lost()
        self.assertEqual(client.closed, [(0x5, "server says bye")])
        self.assertEqual(server.closed, [(0x5, "server says bye")])

    @inlineCallbacks
    def test_abrupt_drop_by_client(self) -> Generator[Deferred[Any], Any, None]:
        session = yield connect_websocket(reactor, self.url, self.client_factory)
        session.open_uni_stream().write(b"x")
        session.abort()
        server_closed = yield self.server_waiting_close()
        yield self.tracker.all_lost()
        self.assertEqual(server_closed[0], 0)
        self.assertEqual(len(self.server_handlers[0].closed), 1)
        self.assertEqual(len(self.client_handlers[0].closed), 1)
        self.assertEqual(self.client_handlers[0].closed[0][0], 0)

    @inlineCallbacks
    def test_abrupt_drop_by_server(self) -> Generator[Deferred[Any], Any, None]:
        yield connect_websocket(reactor, self.url, self.client_factory)
        client = self.client_handlers[0]
        cast(ITCPTransport, self.tracker.connections[0].transport).abortConnection()
        code, reason = yield client.closed_d
        yield self.tracker.all_lost()
        self.assertEqual(code, 0)
        self.assertIn("uncleanly", reason)
        self.assertEqual(len(client.closed), 1)
        self.assertEqual(len(self.server_handlers[0].closed), 1)

    @inlineCallbacks
    def test_options_copied_without_formatting_them(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """Both ends get the factory's Autobahn options, and none is pretty-printed."""
        formatted: list[object] = []

        def pformat(value: object) -> str:
            formatted.append(value)
            return ""

        self.patch(autobahn_protocol, "pformat", pformat)
        session = yield connect_websocket(reactor, self.url, self.client_factory)
        server: Any = self.tracker.connections[0].wrappedProtocol
        client_protocol = session._link._protocol
        self.assertEqual(server.maxMessagePayloadSize, self.ws_factory.maxMessagePayloadSize)
        self.assertEqual(server.autoPingInterval, 15.0)
        self.assertFalse(server.utf8validateIncoming)
        self.assertEqual(client_protocol.openHandshakeTimeout, 0)
        self.assertEqual(client_protocol.maxMessagePayloadSize, 1 << 20)
        self.assertEqual([value for value in formatted if isinstance(value, list) and value], [])

    def server_waiting_close(self) -> Deferred[tuple[int, str]]:
        return self.server_handlers[0].closed_d

    @inlineCallbacks
    def test_backpressure_reader_stops(self) -> Generator[Deferred[Any], Any, None]:
        """A viewer that stops reading leaves when_writable pending until it reads again."""
        session = yield connect_websocket(reactor, self.url, self.client_factory)
        client = self.client_handlers[0]
        yield wait_until(lambda: bool(self.server_handlers))
        server_session = self.server_handlers[0].session
        session.pause_reading()
        stream = server_session.open_uni_stream()
        chunk = b"v" * 65536
        written = 0
        while True:
            waiter = server_session.when_writable()
            if not waiter.called and not (yield fired_within(waiter, 0.5)):
                break
            stream.write(chunk)
            written += len(chunk)
            if written > 128 * 1024 * 1024:
                self.fail("the session never stopped being writable")
        self.assertGreater(server_session.queued_bytes(), 0)
        self.assertFalse(waiter.called)
        self.assertLess(len(client.receivers.get(3, Recorder(stream)).data), written)
        resumed: Deferred[None] = Deferred()
        waiter.addBoth(lambda _: resumed.callback(None))
        stream.finish()
        session.resume_reading()
        yield resumed
        received = yield client.ended(3)
        self.assertEqual(len(received), written)

    @inlineCallbacks
    def test_ping_timeout(self) -> Generator[Deferred[Any], Any, None]:
        """A peer that stops answering pings is dropped; session_closed comes once."""
        self.ws_factory.setProtocolOptions(autoPingInterval=0.1, autoPingTimeout=0.1)
        session = yield connect_websocket(reactor, self.url, self.client_factory)
        session.pause_reading()
        yield wait_until(lambda: bool(self.server_handlers))
        server = self.server_handlers[0]
        code, reason = yield server.closed_d
        self.assertEqual(code, 0)
        self.assertIn("ping timeout", reason)
        session.resume_reading()
        yield self.client_handlers[0].closed_d
        yield self.tracker.all_lost()
        self.assertEqual(len(server.closed), 1)
        self.assertEqual(len(self.client_handlers[0].closed), 1)

    @inlineCallbacks
    def test_refuses_without_webtransport(self) -> Generator[Deferred[Any], Any, None]:
        response = yield raw_request(port_number(self.port), "qmux-00")
        self.assertTrue(response.startswith(b"HTTP/1.1 400 "), response)
        self.assertIn(b"'webtransport' WebSocket subprotocol is required", response)

    @inlineCallbacks
    def test_selects_webtransport_among_offers(self) -> Generator[Deferred[Any], Any, None]:
        response = yield raw_request(
            port_number(self.port), "qmux-00, webtransport.moq-lite, webtransport"
        )
        self.assertTrue(response.startswith(b"HTTP/1.1 101 "), response)
        self.assertIn(f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n".encode(), response)
        self.assertEqual(self.server_handlers[0].session.path, "/relay")
        yield self.server_handlers[0].closed_d

    @inlineCallbacks
    def test_text_message_closes_session(self) -> Generator[Deferred[Any], Any, None]:
        session = yield connect_websocket(reactor, self.url, self.client_factory)
        client = self.client_handlers[0]
        protocol = session._link._protocol
        protocol.sendMessage(b"hello", isBinary=False)
        code, reason = yield client.closed_d
        yield self.tracker.all_lost()
        self.assertEqual((code, reason), (0x3, "text WebSocket message"))
        self.assertEqual(self.server_handlers[0].closed, [(0x3, "text WebSocket message")])


class ClientConnectTests(TestCase):
    timeout = 30

    def test_bad_url(self) -> None:
        for url in ("https://example.com/", "moqt://h:1/", "ws:///nohost"):
            self.failureResultOf(connect_websocket(reactor, url, RecordingHandler), ValueError)

    @inlineCallbacks
    def test_refused(self) -> Generator[Deferred[Any], Any, None]:
        port = listen(Factory.forProtocol(Protocol))
        number = port_number(port)
        yield defer.maybeDeferred(port.stopListening)
        with self.assertRaises(ConnectionRefusedError):
            yield connect_websocket(reactor, f"ws://127.0.0.1:{number}/", RecordingHandler)

    @inlineCallbacks
    def test_timeout(self) -> Generator[Deferred[Any], Any, None]:
        tracker = Tracker(Factory.forProtocol(Protocol))  # accepts, never answers
        port = listen(tracker)
        url = f"ws://127.0.0.1:{port_number(port)}/"
        with self.assertRaises(defer.TimeoutError):
            yield connect_websocket(reactor, url, RecordingHandler, timeout=0.3)
        yield tracker.all_lost()
        yield defer.maybeDeferred(port.stopListening)

    @inlineCallbacks
    def test_cancel(self) -> Generator[Deferred[Any], Any, None]:
        tracker = Tracker(Factory.forProtocol(Protocol))
        port = listen(tracker)
        d = connect_websocket(reactor, f"ws://127.0.0.1:{port_number(port)}/", RecordingHandler)
        yield wait_until(lambda: bool(tracker.connections))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        yield tracker.all_lost()
        yield defer.maybeDeferred(port.stopListening)


class SecureWebSocketTests(EndToEndMixin, TestCase):
    def setUp(self) -> None:
        self.url = self.listen(tls=True)
        self.addCleanup(self.cleanup)

    @inlineCallbacks
    def test_pinned_fingerprint(self) -> Generator[Deferred[Any], Any, None]:
        session = yield connect_websocket(
            reactor, self.url + "/wss", self.client_factory, fingerprint=self.chain.fingerprint()
        )
        client = self.client_handlers[0]
        stream = session.open_bidi_stream()
        client.watch(stream)
        stream.write(b"over tls")
        stream.finish()
        self.assertEqual((yield client.ended(0)), b"over tls")
        self.assertEqual(self.server_handlers[0].session.path, "/wss")

    @inlineCallbacks
    def test_verify_false(self) -> Generator[Deferred[Any], Any, None]:
        session = yield connect_websocket(reactor, self.url, self.client_factory, verify=False)
        self.assertTrue(session.is_client)

    @inlineCallbacks
    def test_verify_rejects_self_signed(self) -> Generator[Deferred[Any], Any, None]:
        with self.assertRaises(WebSocketConnectError):
            yield connect_websocket(reactor, self.url, self.client_factory)
        self.assertEqual(self.client_handlers, [])
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_wrong_fingerprint(self) -> Generator[Deferred[Any], Any, None]:
        with self.assertRaises(WebSocketConnectError):
            yield connect_websocket(reactor, self.url, self.client_factory, fingerprint="00" * 32)
        self.assertEqual(self.client_handlers, [])
        self.flushLoggedErrors()


# -- helpers -------------------------------------------------------------------------


def client_disconnected(session: ITransportSession) -> Deferred[None]:
    """Fires once the client's TCP connection is gone and Autobahn has tidied up."""
    protocol = session._link._protocol  # type: ignore[attr-defined]
    original = protocol.onClose
    lost: Deferred[None] = Deferred()

    def onClose(*args: Any) -> None:
        original(*args)
        reactor.callLater(0, lost.callback, None)

    protocol.onClose = onClose
    return lost


def listen(factory: Any) -> IListeningPort:
    return reactor.listenTCP(0, factory, interface="127.0.0.1")


def port_number(port: IListeningPort) -> int:
    return cast(IPv4Address, port.getHost()).port


@inlineCallbacks
def wait_until(predicate: Callable[[], bool]) -> Generator[Deferred[Any], Any, None]:
    while not predicate():
        yield deferLater(0.005)


def deferLater(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def fired_within(waiter: Deferred[None], seconds: float) -> Deferred[bool]:
    result: Deferred[bool] = Deferred()

    def timed_out() -> None:
        if not result.called:
            result.callback(False)

    call = reactor.callLater(seconds, timed_out)

    def fired(value: object) -> object:
        if call.active():
            call.cancel()
        if not result.called:
            result.callback(True)
        return value

    waiter.addBoth(fired)
    return result


class _RawClient(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.received)


@inlineCallbacks
def raw_request(port: int, protocols: str) -> Generator[Deferred[Any], Any, bytes]:
    """Send a WebSocket upgrade by hand and return the response head."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = yield endpoint.connect(Factory.forProtocol(_RawClient))
    client.transport.write(
        b"GET /relay HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: " + protocols.encode() + b"\r\n\r\n"
    )
    response: bytes = yield client.done
    return response


class FrameHeaderTests(SynchronousTestCase):
    """The server's own frame headers (its hot path) are RFC 6455's, at every size class."""

    def test_sizes(self) -> None:
        from moqrelay.transport.websocket import _binary_frame_header

        self.assertEqual(_binary_frame_header(0), b"\x82\x00")
        self.assertEqual(_binary_frame_header(125), b"\x82\x7d")
        self.assertEqual(_binary_frame_header(126), b"\x82\x7e\x00\x7e")
        self.assertEqual(_binary_frame_header(16360), b"\x82\x7e\x3f\xe8")
        self.assertEqual(_binary_frame_header(65535), b"\x82\x7e\xff\xff")
        self.assertEqual(_binary_frame_header(65536), b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00")


# -- the server frames its own messages (the fan-out hot path) -------------------------


class FramingTests(SynchronousTestCase):
    """A session over a link that `writes_frames` (a server's) queues its frames and hands
    them over once per reactor turn."""

    def test_frames_wait_for_the_end_of_the_turn(self) -> None:
        session, link, _, clock = make_session(writes_frames=True, high_water=1 << 30)
        first, second = session.open_uni_stream(), session.open_uni_stream()
        data = b"o" * 4096
        first.write(b"\x14\x00")
        first.write(data)
        second.write(data)
        first.finish()
        second.reset(5)
        self.assertEqual(link.writes, [])
        clock.advance(0)
        self.assertEqual(len(link.writes), 1)
        self.assertEqual(
            link.take(),
            [
                StreamFrame(3, b"\x14\x00"),
                StreamFrame(3, data),
                StreamFrame(7, data),
                StreamFrame(3, b"", True),
                ResetStreamFrame(7, 5),
            ],
        )

    def test_object_bytes_are_not_copied(self) -> None:
        """Every viewer's frame carries the very bytes object written: one encoding, shared."""
        session, link, _, clock = make_session(writes_frames=True, high_water=1 << 30)
        streams = [session.open_uni_stream() for _ in range(3)]
        data = bytes(range(256)) * 16
        for stream in streams:
            stream.write(data)
        clock.advance(0)
        [pieces] = link.writes
        self.assertEqual([piece is data for piece in pieces], [False, True] * 3)

    def test_long_writes_are_split(self) -> None:
        session, link, _, clock = make_session(writes_frames=True, high_water=1 << 30)
        stream = session.open_uni_stream()
        data = bytes(range(256)) * 160
        stream.write(data)
        clock.advance(0)
        frames = link.take()
        self.assertEqual(
            [len(f.data) for f in frames if isinstance(f, StreamFrame)],
            [MAX_STREAM_FRAME_DATA, MAX_STREAM_FRAME_DATA, 40960 - 32720],
        )
        self.assertEqual(b"".join(f.data for f in frames if isinstance(f, StreamFrame)), data)

    def test_handed_over_early_past_the_flush_size(self) -> None:
        session, link, _, clock = make_session(writes_frames=True, high_water=1 << 30)
        stream = session.open_uni_stream()
        for _ in range(websocket_module._FLUSH_SIZE // 4096):
            stream.write(b"x" * 4096)
        self.assertEqual(link.writes, [])
        stream.write(b"x" * 4096)
        self.assertEqual(len(link.writes), 1)
        stream.write(b"y")
        clock.advance(0)
        self.assertEqual(len(link.writes), 2)
        self.assertEqual(link.take()[-1], StreamFrame(3, b"y"))

    def test_close_sends_what_waits_first(self) -> None:
        session, link, handler, clock = make_session(writes_frames=True)
        stream = session.open_uni_stream()
        stream.write(b"last")
        session.close(0x3, "bye")
        self.assertEqual(link.take(), [StreamFrame(3, b"last"), ApplicationCloseFrame(0x3, "bye")])
        self.assertEqual(link.closes, 1)
        # session_closed comes from the clock, never from inside close().
        self.assertEqual(handler.closed, [])
        clock.advance(0)
        self.assertEqual(handler.closed, [(0x3, "bye")])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connection_lost_drops_what_waits(self) -> None:
        session, link, _, clock = make_session(writes_frames=True)
        session.open_uni_stream().write(b"never sent")
        session.connection_lost("gone")
        clock.advance(0)
        self.assertEqual(link.writes, [])

    def test_writes_after_close_do_nothing(self) -> None:
        session, link, _, clock = make_session(writes_frames=True)
        stream = session.open_uni_stream()
        session.connection_lost("gone")
        stream.write(b"x" * 100)
        stream.finish()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(link.writes, [])

    def test_backpressure_counts_queued_frames(self) -> None:
        session, _, _, clock = make_session(writes_frames=True, low_water=1000, high_water=4000)
        stream = session.open_uni_stream()
        stream.write(b"x" * 3000)
        self.successResultOf(session.when_writable())
        stream.write(b"x" * 3000)
        self.assertGreater(session.queued_bytes(), 4000)
        waiter = session.when_writable()
        self.assertNoResult(waiter)
        clock.advance(0)
        self.assertIsNone(self.successResultOf(waiter))
        self.assertEqual(session.queued_bytes(), 0)

    def test_a_pause_while_handing_over_blocks(self) -> None:
        session, link, _, clock = make_session(writes_frames=True)
        real = link.write_frames

        def pausing(frames: list[bytes]) -> None:
            real(frames)
            session.pauseProducing()

        link.write_frames = pausing  # type: ignore[method-assign]
        session.open_uni_stream().write(b"x" * 10)
        clock.advance(0)
        self.assertNoResult(session.when_writable())


# -- the server reads whole binary frames itself (the publisher's side) ----------------


def client_frame(payload: bytes, *, opcode: int = 2, fin: bool = True, mask: bytes = b"") -> bytes:
    """One masked client-to-server WebSocket frame."""
    mask = mask or bytes((0x5A, 0xC3, 0x01, 0xFE))
    size = len(payload)
    if size < 126:
        length = bytes((0x80 | size,))
    elif size < 0x10000:
        length = bytes((0x80 | 126,)) + size.to_bytes(2, "big")
    else:
        length = bytes((0x80 | 127,)) + size.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | opcode,)) + length + mask + masked


class ReaderTests(EndToEndMixin, TestCase):
    """Bytes fed straight to the server protocol, as the socket would deliver them."""

    def setUp(self) -> None:
        self.url = self.listen()
        self.addCleanup(self.cleanup)

    @inlineCallbacks
    def server_protocol(self) -> Generator[Deferred[Any], Any, Any]:
        yield connect_websocket(reactor, self.url, self.client_factory)
        yield from wait_until(lambda: bool(self.server_handlers))
        return cast(Any, self.server_handlers[0].session)._link._protocol

    def stream_frames(self, stream_id: int, chunks: list[bytes]) -> bytes:
        frames = [client_frame(encode_frame(StreamFrame(stream_id, c))) for c in chunks]
        return b"".join(frames) + client_frame(encode_frame(StreamFrame(stream_id, b"", True)))

    @inlineCallbacks
    def test_any_split_of_the_bytes(self) -> Generator[Deferred[Any], Any, None]:
        protocol = yield from self.server_protocol()
        chunks = [bytes([n % 256]) * n for n in (1, 125, 126, 200, 4096, MAX_STREAM_FRAME_DATA)]
        data = self.stream_frames(2, chunks) + self.stream_frames(70, chunks)
        sizes = [1, 2, 3, 5, 8, 13, 4099]
        pos = 0
        for n in range(len(data)):
            if pos >= len(data):
                break
            size = sizes[n % len(sizes)]
            protocol.dataReceived(data[pos : pos + size])
            pos += size
        receivers = self.server_handlers[0].receivers
        for stream_id in (2, 70):
            self.assertEqual(bytes(receivers[stream_id].data), b"".join(chunks))
            self.assertTrue(receivers[stream_id].fin)

    @inlineCallbacks
    def test_autobahn_gets_only_the_frames_it_must_read(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        protocol = yield from self.server_protocol()
        fed: list[bytes] = []
        feed_autobahn = autobahn_compat.feed

        def recording(protocol: Any, data: bytes) -> None:
            fed.append(data)
            feed_autobahn(protocol, data)

        self.patch(autobahn_compat, "feed", recording)
        ping = client_frame(b"are you there", opcode=9)
        first = encode_frame(StreamFrame(2, b"first part "))
        second = encode_frame(StreamFrame(2, b"second"))
        fragmented = client_frame(first[:5], fin=False) + client_frame(first[5:], opcode=0)
        data = (
            client_frame(encode_frame(StreamFrame(2, b"fast ")))
            + ping
            + fragmented
            + client_frame(second)
        )
        protocol.dataReceived(data[:-3])
        protocol.dataReceived(data[-3:])
        receiver = self.server_handlers[0].receivers[2]
        self.assertEqual(bytes(receiver.data), b"fast first part second")
        self.assertEqual(
            fed, [ping, client_frame(first[:5], fin=False), client_frame(first[5:], opcode=0)]
        )

    @inlineCallbacks
    def test_reads_on_from_what_autobahn_kept(self) -> Generator[Deferred[Any], Any, None]:
        """Bytes of a frame left in Autobahn's buffer (say, sent with the handshake) are
        taken back: the frames after them are still read without Autobahn."""
        protocol = yield from self.server_protocol()
        data = self.stream_frames(2, [b"kept", b"then", b"more"])
        autobahn_compat.feed(protocol, data[:1])
        fed: list[bytes] = []
        self.patch(autobahn_compat, "feed", lambda protocol, data: fed.append(data))
        protocol.dataReceived(data[1:])
        receiver = self.server_handlers[0].receivers[2]
        self.assertEqual(bytes(receiver.data), b"keptthenmore")
        self.assertTrue(receiver.fin)
        self.assertEqual(fed, [])

    @inlineCallbacks
    def test_a_text_frame_is_refused(self) -> Generator[Deferred[Any], Any, None]:
        protocol = yield from self.server_protocol()
        protocol.dataReceived(client_frame(b"hello", opcode=1))
        code, reason = yield self.client_handlers[0].closed_d
        self.assertEqual((code, reason), (0x3, "text WebSocket message"))

    @inlineCallbacks
    def test_a_bad_polyfill_frame_is_refused(self) -> Generator[Deferred[Any], Any, None]:
        protocol = yield from self.server_protocol()
        protocol.dataReceived(
            client_frame(encode_frame(StreamFrame(2, b"x"))) + client_frame(b"\x42")
        )
        code, reason = yield self.client_handlers[0].closed_d
        self.assertEqual((code, reason), (0x3, "unknown polyfill frame type 0x42"))
        self.assertEqual(bytes(self.server_handlers[0].receivers[2].data), b"x")

    @inlineCallbacks
    def test_an_oversized_frame_fails_the_connection(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        protocol = yield from self.server_protocol()
        header = bytes((0x82, 0x80 | 127)) + (2 << 20).to_bytes(8, "big") + b"abcd"
        protocol.dataReceived(header + b"\x00" * 100)
        yield self.server_handlers[0].closed_d
        self.assertEqual(protocol._partial, b"")
