"""Benchmark harness (outside the relay layers): minimal WebSocket and QUIC fan-outs to compare
against.

The WebSocket baseline is the least a relay must do on the WebSocket side: TLS,
WebSocket framing (Autobahn, the library the relay uses), and one ``sendMessage``
per viewer for every binary message the publisher sends. There is no MoQT: no
control stream, no polyfill framing, no tracks, groups, caches or queues.
Backpressure is Twisted's own: each viewer's transport pauses the publisher's
reading while its buffer is full, so the baseline never loses a message.

The QUIC baseline is the same on the relay's own QUIC stack
(`moqrelay.transport.quic`: aioquic under our Twisted adapter, ALPN ``moq-00``,
the relay's default endpoint settings), so it is the limit of the relay's QUIC
path: no MoQT, only length-prefixed objects (a 4-byte big-endian length, then
the payload). Every client opens one uni stream and sends one byte on it first:
``P`` makes its session the publisher, whose objects follow on that stream;
``V`` makes it a viewer, which the server answers on a uni stream of its own
with one ``V`` byte (the client is ready once it has it), followed by every
object the publisher sends, one write per object per viewer. Backpressure:
while any viewer's session holds ``high_water`` bytes or more, the server stops
consuming what the publisher sends (it keeps it, unparsed) until every viewer
is writable again, so nothing is lost; the load side keeps the publisher at
most one group ahead of its slowest viewer, which bounds what is kept.

Server process (started by relay_bench.py, stopped with SIGTERM):

    PYTHONPATH=. python bench/baselines.py

prints one JSON line ``{"tcp": port, "udp": port, "pid": pid}`` once listening
on 127.0.0.1: the WebSocket baseline on TCP and the QUIC baseline on UDP.
The client side (`connect_baseline`, `connect_quic_baseline`) is used by
relay_bench.py in the load process.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable
from typing import Any, cast

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from moqrelay.relay.config import RelayConfig
from moqrelay.tls import CertificateChain, generate_dev_chain
from moqrelay.transport.interfaces import (
    ISessionHandler,
    IStream,
    IStreamReceiver,
    ITransportSession,
)
from moqrelay.transport.quic import QuicEndpoint, connect_quic
from moqrelay.transport.udp import listen_udp
from moqrelay.transport.websocket import client_tls_options
from moqrelay.web import tls_context_factory

_log = Logger()

PUBLISHER_PATH = "/pub"
PUBLISHER_HELLO = b"P"
VIEWER_HELLO = b"V"
LENGTH = struct.Struct("!I")
# The relay's own per-session queue bound (RelayService gives it to its QuicEndpoint).
QUIC_HIGH_WATER = RelayConfig().max_queued_bytes


# -- server --------------------------------------------------------------------


@implementer(IPushProducer)
class _ViewerBackpressure:
    """Registered on a viewer's transport: a full viewer pauses the publisher."""

    def __init__(self, hub: FanOutHub) -> None:
        self.hub = hub
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.hub.viewer_paused()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.hub.viewer_resumed()

    def stopProducing(self) -> None:
        self.resumeProducing()


class FanOutHub:
    """One publisher connection and the viewers its messages go to."""

    def __init__(self) -> None:
        self.publisher: FanOutServerProtocol | None = None
        self.viewers: dict[FanOutServerProtocol, None] = {}
        self.paused_viewers = 0

    def forward(self, payload: bytes) -> None:
        for viewer in self.viewers:
            viewer.sendMessage(payload, isBinary=True)

    def viewer_paused(self) -> None:
        self.paused_viewers += 1
        if self.paused_viewers == 1 and self.publisher is not None:
            cast(Any, self.publisher.transport).pauseProducing()

    def viewer_resumed(self) -> None:
        self.paused_viewers -= 1
        if self.paused_viewers == 0 and self.publisher is not None:
            cast(Any, self.publisher.transport).resumeProducing()


class FanOutServerProtocol(WebSocketServerProtocol):
    hub: FanOutHub

    def onConnect(self, request: Any) -> None:
        self.is_publisher = request.path == PUBLISHER_PATH

    def onOpen(self) -> None:
        if self.is_publisher:
            self.hub.publisher = self
        else:
            self.backpressure = _ViewerBackpressure(self.hub)
            cast(Any, self.transport).registerProducer(self.backpressure, True)
            self.hub.viewers[self] = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.is_publisher:
            self.hub.forward(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.hub.publisher is self:
            self.hub.publisher = None
        elif self in self.hub.viewers:
            del self.hub.viewers[self]
            self.backpressure.stopProducing()


def fanout_server_factory(reactor: Any) -> WebSocketServerFactory:
    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = FanOutServerProtocol
    factory.noisy = False
    hub = FanOutHub()
    FanOutServerProtocol.hub = hub
    factory.setProtocolOptions(
        webStatus=False,
        utf8validateIncoming=False,
        maxFramePayloadSize=1 << 20,
        maxMessagePayloadSize=1 << 20,
        perMessageCompressionAccept=lambda offers: None,
    )
    return factory


class QuicFanOutHub:
    """The QUIC baseline's server side: one publisher session, the viewers it feeds."""

    def __init__(self, reactor: IReactorTime, high_water: int = QUIC_HIGH_WATER) -> None:
        self.reactor = reactor
        self.high_water = high_water
        self.publisher: ITransportSession | None = None
        self.viewers: dict[ITransportSession, IStream] = {}
        self.blocked: set[ITransportSession] = set()
        self.pending = bytearray()  # publisher bytes not forwarded yet
        self.forwarded = 0  # objects forwarded (each to every viewer)
        self.pauses = 0  # times a full viewer session held the publisher's bytes
        self._forward_call: IDelayedCall | None = None

    def handler(self, session: ITransportSession) -> ISessionHandler:
        """The `QuicEndpoint` handler factory."""
        return _QuicFanOutSession(self, session)

    def add_viewer(self, session: ITransportSession) -> None:
        stream = session.open_uni_stream()
        stream.write(VIEWER_HELLO)
        self.viewers[session] = stream

    def received(self, data: bytes) -> None:
        self.pending += data
        if not self.blocked:
            self._forward()

    def _forward(self) -> None:
        """Forward every complete object, until a viewer's session is full."""
        pending = self.pending
        offset = 0
        high_water = self.high_water
        while not self.blocked and len(pending) - offset >= LENGTH.size:
            end = offset + LENGTH.size + LENGTH.unpack_from(pending, offset)[0]
            if end > len(pending):
                break
            frame = bytes(pending[offset:end])
            offset = end
            self.forwarded += 1
            for session, stream in self.viewers.items():
                stream.write(frame)
                if session.queued_bytes() >= high_water:
                    self._block(session)
        del pending[:offset]

    def _block(self, session: ITransportSession) -> None:
        if session not in self.blocked:
            if not self.blocked:
                self.pauses += 1
            self.blocked.add(session)
            session.when_writable().addCallback(lambda _: self._unblock(session))

    def _unblock(self, session: ITransportSession) -> None:
        self.blocked.discard(session)
        if not self.blocked:
            self._forward()

    def session_closed(self, session: ITransportSession) -> None:
        if self.publisher is session:
            self.publisher = None
            self.pending = bytearray()
        self.viewers.pop(session, None)
        if session in self.blocked:
            # Its when_writable() never fires now; resume the others from the reactor.
            self.blocked.discard(session)
            if not self.blocked and self._forward_call is None:
                self._forward_call = self.reactor.callLater(0, self._forward_later)

    def _forward_later(self) -> None:
        self._forward_call = None
        if not self.blocked:
            self._forward()


@implementer(ISessionHandler, IStreamReceiver)
class _QuicFanOutSession:
    """One client session of the QUIC baseline, and the uni stream it opens."""

    def __init__(self, hub: QuicFanOutHub, session: ITransportSession) -> None:
        self.hub = hub
        self.session = session
        self.role = b""

    def stream_opened(self, stream: IStream, bidirectional: bool) -> None:
        if bidirectional or self.role:
            stream.stop_sending(0)
            return
        stream.set_receiver(self)

    def stream_data(self, data: bytes, fin: bool) -> None:
        if self.role == PUBLISHER_HELLO:
            self.hub.received(data)
            return
        if self.role or not data:
            return
        role = data[:1]
        if role == PUBLISHER_HELLO and self.hub.publisher is None:
            self.role = role
            self.hub.publisher = self.session
            self.hub.received(data[1:])
        elif role == VIEWER_HELLO:
            self.role = role
            self.hub.add_viewer(self.session)
        else:
            self.session.close(1, "one publisher; the first byte is P or V")

    def stream_reset(self, code: int) -> None:
        self.session.close(1, "the baseline's streams are not reset")

    def stream_stop_sending(self, code: int) -> None:
        self.session.close(1, "the baseline's streams are not stopped")

    def datagram_received(self, data: bytes) -> None:
        pass

    def session_closed(self, code: int, reason: str) -> None:
        self.hub.session_closed(self.session)


def quic_fanout_endpoint(
    reactor: IReactorTime, chains: list[CertificateChain], high_water: int = QUIC_HIGH_WATER
) -> tuple[QuicEndpoint, QuicFanOutHub]:
    """The QUIC baseline's endpoint (to listen on with ``listen_udp``) and its hub, with the
    relay's default endpoint settings (RelayService's idle timeout and queue bounds)."""
    hub = QuicFanOutHub(reactor, high_water)
    endpoint = QuicEndpoint(
        reactor,
        chains=chains,
        handler_factory=hub.handler,
        high_water=hub.high_water,
        low_water=hub.high_water // 4,
    )
    return endpoint, hub


def main() -> None:
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    chain = generate_dev_chain()
    endpoint = SSL4ServerEndpoint(reactor, 0, tls_context_factory([chain]), interface="127.0.0.1")
    quic_endpoint = quic_fanout_endpoint(reactor, [chain])[0]
    udp = listen_udp(reactor, 0, quic_endpoint, interface="127.0.0.1", max_packet_size=65535)

    def listening(port: IListeningPort) -> None:
        line = {
            "tcp": getattr(port.getHost(), "port", 0),
            "udp": getattr(udp.getHost(), "port", 0),
            "pid": os.getpid(),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def failed(failure: Any) -> None:
        _log.failure("the baseline could not listen", failure)
        reactor.stop()

    endpoint.listen(fanout_server_factory(reactor)).addCallbacks(listening, failed)
    reactor.run()


# -- client (load side) --------------------------------------------------------


class BaselineClient(WebSocketClientProtocol):
    """A publisher or viewer connection; viewers hand each message to ``on_message``."""

    on_message: Callable[[bytes], None] | None = None
    opened: Deferred[BaselineClient]
    closed: Deferred[None]

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.on_message is not None:
            self.on_message(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"baseline connection failed: {reason}"))
        if not self.closed.called:
            self.closed.callback(None)

    def send(self, payload: bytes) -> None:
        self.sendMessage(payload, isBinary=True)

    def close(self) -> None:
        self.sendClose()


class _ClientFactory(WebSocketClientFactory):
    protocol = BaselineClient

    def __init__(self, url: str, reactor: Any, on_message: Callable[[bytes], None] | None):
        super().__init__(url, reactor=reactor)
        self.noisy = False
        self.on_message = on_message
        self.setProtocolOptions(
            utf8validateIncoming=False,
            maxFramePayloadSize=1 << 20,
            maxMessagePayloadSize=1 << 20,
        )
        self.opened: Deferred[BaselineClient] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def buildProtocol(self, addr: Any) -> BaselineClient:
        protocol = cast(BaselineClient, super().buildProtocol(addr))
        protocol.on_message = self.on_message
        protocol.opened = self.opened
        protocol.closed = self.closed
        return protocol


async def connect_baseline(
    reactor: Any, port: int, *, publisher: bool, on_message: Callable[[bytes], None] | None = None
) -> BaselineClient:
    """An open wss:// connection to the baseline server on 127.0.0.1:``port``."""
    path = PUBLISHER_PATH if publisher else "/view"
    factory = _ClientFactory(f"wss://127.0.0.1:{port}{path}", reactor, on_message)
    endpoint = wrapClientTLS(
        client_tls_options("127.0.0.1", verify=False),
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
    )
    await endpoint.connect(factory)
    client: BaselineClient = await factory.opened
    return client


@implementer(ISessionHandler, IStreamReceiver)
class QuicBaselineClient:
    """A publisher or viewer session of the QUIC baseline; a viewer hands each object's
    payload to ``on_message``."""

    def __init__(
        self,
        reactor: IReactorTime,
        session: ITransportSession,
        on_message: Callable[[bytes], None] | None,
    ) -> None:
        self.reactor = reactor
        self.session = session
        self.on_message = on_message
        self.stream: IStream | None = None
        self.ready: Deferred[None] = Deferred()  # a viewer: the server has registered it
        self.closed: Deferred[None] = Deferred()
        self._buffer = bytearray()
        self._greeted = False

    def start(self, publisher: bool) -> None:
        """Say which one we are, on our uni stream (a publisher's objects follow on it)."""
        self.stream = self.session.open_uni_stream()
        self.stream.write(PUBLISHER_HELLO if publisher else VIEWER_HELLO)
        if publisher:
            self.ready.callback(None)
        else:
            self.stream.finish()

    def send(self, payload: bytes) -> None:
        assert self.stream is not None
        self.stream.write(LENGTH.pack(len(payload)) + payload)

    def close(self) -> None:
        self.session.close(0, "")

    # -- ISessionHandler -------------------------------------------------------------------

    def stream_opened(self, stream: IStream, bidirectional: bool) -> None:
        stream.set_receiver(self)

    def datagram_received(self, data: bytes) -> None:
        pass

    def session_closed(self, code: int, reason: str) -> None:
        error = ConnectionError(f"baseline session closed: {reason} (0x{code:x})")
        self.reactor.callLater(0, self._settle, error)
        self.reactor.callLater(0, self.closed.callback, None)

    def _settle(self, error: Exception | None) -> None:
        """Fire ``ready`` (from the reactor), unless it has fired already."""
        if self.ready.called:
            return
        if error is None:
            self.ready.callback(None)
        else:
            self.ready.errback(error)

    # -- IStreamReceiver (the server's uni stream to a viewer) -----------------------------

    def stream_data(self, data: bytes, fin: bool) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        if not self._greeted and buffer:
            self._greeted = True
            offset = 1
            self.reactor.callLater(0, self._settle, None)
        on_message = self.on_message
        while len(buffer) - offset >= LENGTH.size:
            start = offset + LENGTH.size
            end = start + LENGTH.unpack_from(buffer, offset)[0]
            if end > len(buffer):
                break
            if on_message is not None:
                on_message(bytes(buffer[start:end]))
            offset = end
        del buffer[:offset]

    def stream_reset(self, code: int) -> None:
        self.close()

    def stream_stop_sending(self, code: int) -> None:
        self.close()


async def connect_quic_baseline(
    reactor: Any, port: int, *, publisher: bool, on_message: Callable[[bytes], None] | None = None
) -> QuicBaselineClient:
    """A ready session to the QUIC baseline server on UDP 127.0.0.1:``port`` (a viewer is
    ready once the server has registered it)."""
    clients: list[QuicBaselineClient] = []

    def handler(session: ITransportSession) -> ISessionHandler:
        clients.append(QuicBaselineClient(reactor, session, on_message))
        return clients[0]

    await connect_quic(
        reactor, f"moqt://127.0.0.1:{port}/bench", handler, verify=False, timeout=30.0
    )
    (client,) = clients
    client.start(publisher)
    await client.ready
    return client


if __name__ == "__main__":
    main()
