"""Tests for moqrelay.compat.autobahn: the installed Autobahn still has what each function uses.

Each test drives a real Autobahn server protocol (the relay's own, over an in-memory
transport) so that an upgrade that renames or drops a private attribute fails here.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from moqrelay.compat import autobahn as compat
from moqrelay.tls import generate_dev_chain
from moqrelay.transport.interfaces import ISessionHandler, IStream, ITransportSession
from moqrelay.transport.websocket import WebSocketTransportFactory, client_tls_options
from moqrelay.web import tls_context_factory

_HANDSHAKE = (
    b"GET /moq HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: webtransport\r\n\r\n"
)
# A masked binary frame carrying STREAM id 2, data "hi", and a masked ping.
_MASK = b"\x01\x02\x03\x04"
_FRAME = b"\x82\x84" + _MASK + bytes(b ^ _MASK[i % 4] for i, b in enumerate(b"\x08\x02hi"))
_PING = b"\x89\x80" + _MASK


@implementer(ISessionHandler)
class _Handler:
    def __init__(self) -> None:
        self.streams: list[IStream] = []

    def stream_opened(self, stream: IStream, bidirectional: bool) -> None:
        self.streams.append(stream)

    def datagram_received(self, data: bytes) -> None:
        """None over WebSocket."""

    def session_closed(self, code: int, reason: str) -> None:
        """Not needed here."""


def _open_protocol() -> tuple[Any, StringTransport, _Handler]:
    """A relay server protocol after its opening handshake, with no timer running."""
    handler = _Handler()

    def make_handler(session: ITransportSession) -> _Handler:
        return handler

    factory = WebSocketTransportFactory(
        Clock(), make_handler, auto_ping_interval=0, open_handshake_timeout=0
    )
    protocol: Any = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(_HANDSHAKE)
    assert protocol.state == WebSocketProtocol.STATE_OPEN, transport.value()
    transport.clear()
    return protocol, transport, handler


class CompatAutobahnTests(SynchronousTestCase):
    def test_option_names(self) -> None:
        for base in (WebSocketServerProtocol, WebSocketClientProtocol):
            names = compat.option_names(base)
            self.assertIn("autoPingInterval", names)
            self.assertIn("maxFramePayloadSize", names)
        protocol, _, _ = _open_protocol()
        # Autobahn's own copy was skipped; ours set every option it would have.
        for name in compat.option_names(WebSocketServerProtocol):
            self.assertTrue(hasattr(protocol, name), name)
        self.assertEqual(protocol.maxFramePayloadSize, 1 << 20)

    def test_has_queued_sends(self) -> None:
        protocol, _, _ = _open_protocol()
        self.assertFalse(compat.has_queued_sends(protocol))
        protocol.send_queue.append((b"held back", True))
        self.assertTrue(compat.has_queued_sends(protocol))

    def test_feed_and_reader_state(self) -> None:
        protocol, transport, handler = _open_protocol()
        self.assertFalse(compat.inside_frame(protocol))
        self.assertTrue(compat.between_messages(protocol))
        compat.feed(protocol, _FRAME[:3])  # the header is not whole yet: only buffered
        self.assertFalse(compat.inside_frame(protocol))
        self.assertFalse(compat.between_messages(protocol))
        compat.feed(protocol, _FRAME[3:7])  # the header is whole: inside the frame
        self.assertTrue(compat.inside_frame(protocol))
        compat.feed(protocol, _FRAME[7:])
        self.assertFalse(compat.inside_frame(protocol))
        self.assertTrue(compat.between_messages(protocol))
        self.assertEqual([s.stream_id for s in handler.streams], [2])
        compat.feed(protocol, _PING)
        self.assertEqual(transport.value(), b"\x8a\x00")  # Autobahn's pong

    def test_take_unparsed(self) -> None:
        protocol, _, handler = _open_protocol()
        compat.feed(protocol, _FRAME[:1])
        self.assertEqual(compat.take_unparsed(protocol), _FRAME[:1])
        self.assertTrue(compat.between_messages(protocol))
        self.assertEqual(compat.take_unparsed(protocol), b"")
        compat.feed(protocol, _FRAME)  # Autobahn reads on from a frame boundary
        self.assertEqual([s.stream_id for s in handler.streams], [2])

    def test_between_messages_of_a_fragmented_message(self) -> None:
        protocol, _, _ = _open_protocol()
        first = b"\x02\x81" + _MASK + bytes((0x08 ^ _MASK[0],))
        compat.feed(protocol, first)
        self.assertFalse(compat.inside_frame(protocol))
        self.assertFalse(compat.between_messages(protocol))

    def test_cancel_close_handshake_timer(self) -> None:
        protocol, _, _ = _open_protocol()
        protocol.sendClose(1000)
        timer = protocol.closeHandshakeTimeoutCall
        cancelled: list[object] = []
        timer.cancel, real_cancel = (lambda: cancelled.append(timer)), timer.cancel
        compat.cancel_close_handshake_timer(protocol)
        real_cancel()
        self.assertIsNone(protocol.closeHandshakeTimeoutCall)
        self.assertEqual(cancelled, [timer])
        compat.cancel_close_handshake_timer(protocol)
        self.assertEqual(cancelled, [timer])


class _Received(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def _tls_pair() -> tuple[Any, _Received, Clock, Any]:
    """An in-memory TLS connection: (server transport, client's app protocol, clock, pump)."""
    clock = Clock()
    received = _Received()
    server_factory = TLSMemoryBIOFactory(
        tls_context_factory([generate_dev_chain()]), False, Factory.forProtocol(Protocol), clock
    )
    client_factory = TLSMemoryBIOFactory(
        client_tls_options("localhost", verify=False),
        True,
        Factory.forProtocol(lambda: received),
        clock,
    )
    server: Any = server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    client: Any = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
    wires = StringTransport(), StringTransport()
    server.makeConnection(wires[0])
    client.makeConnection(wires[1])

    def pump() -> None:
        while wires[0].value() or wires[1].value():
            to_client, to_server = wires[0].value(), wires[1].value()
            wires[0].clear()
            wires[1].clear()
            if to_client:
                client.dataReceived(to_client)
            if to_server:
                server.dataReceived(to_server)

    pump()
    return server, received, clock, pump


class WriteBatchTests(SynchronousTestCase):
    def test_over_tls_after_what_the_aggregator_holds(self) -> None:
        server, received, clock, pump = _tls_pair()
        self.assertIsInstance(server, BufferingTLSTransport)
        server.write(b"held by the aggregator, ")
        big = bytes(range(256)) * 200  # several TLS records
        compat.write_batch(server, [b"then ", big])
        pump()
        self.assertEqual(received.data, b"held by the aggregator, then " + big)
        clock.advance(0)
        pump()
        self.assertEqual(received.data, b"held by the aggregator, then " + big)

    def test_over_tcp(self) -> None:
        transport = StringTransport()
        compat.write_batch(transport, [b"a", b"bc"])
        self.assertEqual(transport.value(), b"abc")
