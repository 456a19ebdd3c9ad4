"""Transport layer: MoQT sessions over WebSocket with the "webtransport" polyfill framing.

One binary WebSocket message carries one polyfill frame (`moqrelay.wire.polyfill`).
`WebSocketSession` is the `ITransportSession` on top: QUIC-style stream ids,
implicit stream opening, STOP_SENDING answered with RESET_STREAM, APPLICATION_CLOSE,
and backpressure from the TCP transport (it is the transport's push producer).
It talks to the socket only through a small link object, so tests drive it
without Autobahn. The Autobahn (Twisted) server and client protocols below are
thin adapters: `WebSocketTransportFactory` for the relay (served directly or
through `moqrelay.web`), `connect_websocket` for clients.

Autobahn does the opening handshake, control frames (ping, pong, close) and the
close handshake. The data path bypasses it both ways: a server session frames
its own (unmasked) binary messages, queues each stream write as (headers, data)
without copying the data, and hands a reactor turn's frames to the transport in
one write; both sides read whole final binary frames themselves
(`_read_messages`) and give Autobahn every other frame whole. The private parts
of Autobahn and Twisted this needs are in `moqrelay.compat.autobahn`.

Teardown is flat: whatever ends the session (APPLICATION_CLOSE, WebSocket close,
TCP drop, ping timeout, our own close) clears the stream map in one step and
calls ``session_closed`` exactly once; streams are never closed one by one.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from websockets.speedups import apply_mask
from zope.interface import implementer

from moqrelay.compat import autobahn as compat
from moqrelay.transport.interfaces import (
    HandlerFactory,
    ISessionHandler,
    IStream,
    IStreamReceiver,
    ITransportSession,
)
from moqrelay.wire.errors import ProtocolViolation, SessionErrorCode
from moqrelay.wire.polyfill import (
    MAX_STREAM_FRAME_DATA,
    STREAM_HEADER_MAX,
    ApplicationCloseFrame,
    ResetStreamFrame,
    StopSendingFrame,
    StreamFrame,
    decode_frame,
    encode_frame,
    split_stream_frame,
)

__all__ = [
    "MAX_REASON_BYTES",
    "SUBPROTOCOL",
    "WebSocketConnectError",
    "WebSocketSession",
    "WebSocketTransportFactory",
    "client_tls_options",
    "connect_websocket",
]

_log = Logger()

SUBPROTOCOL = "webtransport"
"""The only WebSocket subprotocol we speak (the simple polyfill framing, not qmux-00)."""

MAX_REASON_BYTES = 1024
"""APPLICATION_CLOSE reasons we send are cut to this many UTF-8 bytes."""

_CLOSE_HANDSHAKE_TIMEOUT = 2.0
# Our largest outgoing message is a full STREAM frame (type byte + 8-byte id + data).
_MIN_MESSAGE_SIZE = MAX_STREAM_FRAME_DATA + 64
# Frames the session builds itself are handed to the transport at the end of the
# reactor turn, or as soon as this many bytes wait (Twisted's TLS write aggregator
# writes at 64 000 bytes too).
_FLUSH_SIZE = 64_000

# Half states of a stream.
_OPEN = 0
_STOPPING = 1  # receive half: we sent STOP_SENDING and wait for the peer's FIN or RESET
_DONE = 2  # finished or reset
_ABSENT = 3  # this half does not exist (the send half of a peer uni stream, ...)

_KIND_STREAM = "STREAM"
_KIND_RESET = "RESET_STREAM"
_KIND_STOP = "STOP_SENDING"


class WebSocketConnectError(ConnectionError):
    """A WebSocket session could not be established (refused, wrong subprotocol, TLS ...)."""


class _Link(Protocol):
    """What a `WebSocketSession` needs from the WebSocket connection under it."""

    writes_frames: bool
    """Whether the session frames its messages itself and hands them to `write_frames`
    (a server: its frames are not masked), rather than calling `send_message`."""

    def send_message(self, payload: bytes) -> None:
        """Send one binary WebSocket message (dropped once the WebSocket is closing)."""

    def write_frames(self, frames: list[bytes]) -> None:
        """Write unmasked binary WebSocket frames, headers included, in this order
        (dropped once the WebSocket is closing)."""

    def close_connection(self) -> None:
        """Start closing the WebSocket; the connection ends within a bounded time."""

    def pause_reading(self) -> None:
        """Stop reading from the socket."""

    def resume_reading(self) -> None:
        """Read from the socket again."""

    def abort_connection(self) -> None:
        """Drop the TCP connection at once, without any close handshake."""


@implementer(IStream)
class _WebSocketStream:
    """One stream of a `WebSocketSession`."""

    __slots__ = ("_data_header", "_receiver", "_recv", "_send", "_session", "stream_id")

    def __init__(self, session: WebSocketSession, stream_id: int, send: int, recv: int) -> None:
        self.stream_id = stream_id
        self._session = session
        self._send = send
        self._recv = recv
        self._receiver: IStreamReceiver | None = None
        # The STREAM frame header of this stream's data, encoded once: every relayed
        # object is one write, to every viewer.
        self._data_header = b""

    def __repr__(self) -> str:
        return f"<_WebSocketStream {self.stream_id} send={self._send} recv={self._recv}>"

    def set_receiver(self, receiver: IStreamReceiver | None) -> None:
        self._receiver = receiver

    def write(self, data: bytes) -> None:
        if self._send != _OPEN or not data:
            return
        header = self._data_header
        if not header:
            header = self._data_header = encode_frame(StreamFrame(self.stream_id, b"", False))
        session = self._session
        out = session._out
        if out is None or len(data) > MAX_STREAM_FRAME_DATA:
            session._write_stream(header, data)
            return
        # The hot path of every relayed object, kept flat: the frame's headers and the
        # object's bytes (shared by every viewer) are queued side by side, and joined
        # once per reactor turn for the whole session.
        size = len(header) + len(data)
        frame = _HEADER_16.pack(0x82, 126, size) if size > 125 else bytes((0x82, size))
        out.append(frame + header)
        out.append(data)
        session._out_size += size
        session._written += size
        if session._written > session._high_water:
            session._blocked = True
        if session._tick_call is None:
            session._tick_call = session._clock.callLater(0, session._tick)
        if session._out_size >= _FLUSH_SIZE:
            session._flush()

    def finish(self) -> None:
        if self._send != _OPEN:
            return
        self._send = _DONE
        self._session._send_frame(encode_frame(StreamFrame(self.stream_id, b"", True)))
        self._session._forget_if_done(self)

    def reset(self, code: int) -> None:
        if self._send != _OPEN:
            return
        self._send = _DONE
        self._session._send_frame(encode_frame(ResetStreamFrame(self.stream_id, code)))
        self._session._forget_if_done(self)

    def stop_sending(self, code: int) -> None:
        if self._recv != _OPEN:
            return
        self._recv = _STOPPING
        self._session._send_frame(encode_frame(StopSendingFrame(self.stream_id, code)))


@implementer(ITransportSession, IPushProducer)
class WebSocketSession:
    """An `ITransportSession` over one WebSocket speaking the polyfill framing.

    Also the push producer registered on the TCP transport: while the transport
    has paused us, or while more than ``high_water`` bytes were written since it
    last drained, the session is not writable; it is writable again once the
    transport resumes us (or a reactor turn passes without a pause) and the
    count is below ``low_water``. Writes are never refused.
    """

    supports_datagrams = False
    transport_name = "websocket"
    setup_carries_path = False
    authority = ""

    def __init__(
        self,
        clock: IReactorTime,
        link: _Link,
        *,
        is_client: bool,
        path: str = "",
        peer: str = "",
        low_water: int = 64 * 1024,
        high_water: int = 256 * 1024,
    ) -> None:
        if not 0 < low_water <= high_water:
            raise ValueError("need 0 < low_water <= high_water")
        self.is_client = is_client
        self.path = path
        self.peer = peer
        self._clock = clock
        self._link = link
        self._low_water = low_water
        self._high_water = high_water
        self._handler: ISessionHandler | None = None
        self._closed = False
        self._streams: dict[int, _WebSocketStream] = {}
        self._local_bit = 0 if is_client else 1
        # Next id to open, indexed by the uni bit: [bidi, uni].
        self._next_local = [self._local_bit, 2 | self._local_bit]
        self._next_remote = [self._local_bit ^ 1, 2 | (self._local_bit ^ 1)]
        self._paused = False
        self._blocked = False
        self._written = 0
        self._tick_call: IDelayedCall | None = None
        self._fire_call: IDelayedCall | None = None
        self._waiters: list[Deferred[None]] = []
        # Frames built here and not yet handed to the link (None: the link frames them).
        self._out: list[bytes] | None = [] if link.writes_frames else None
        self._out_size = 0

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        return f"<WebSocketSession {side} {self.peer} {self.path!r} closed={self._closed}>"

    @property
    def closed(self) -> bool:
        """Whether the session has ended (``session_closed`` was or is being delivered)."""
        return self._closed

    def start(self, handler_factory: HandlerFactory) -> None:
        """Create the handler; called once the WebSocket handshake is complete."""
        try:
            handler = handler_factory(self)
        except Exception:
            _log.failure("session handler factory failed for {peer}", peer=self.peer)
            self.close(SessionErrorCode.INTERNAL_ERROR, "internal error")
            return
        if not self._closed:
            self._handler = handler

    # -- ITransportSession ---------------------------------------------------

    def open_bidi_stream(self) -> IStream:
        return self._open_local(uni=False)

    def open_uni_stream(self) -> IStream:
        return self._open_local(uni=True)

    def send_datagram(self, data: bytes) -> None:
        """Datagrams cannot cross this transport: dropped."""

    def queued_bytes(self) -> int:
        return self._written

    def when_writable(self) -> Deferred[None]:
        if self._closed:
            return Deferred()
        if not self._blocked:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._cancel_waiter)
        self._waiters.append(waiter)
        return waiter

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._send_frame(encode_frame(ApplicationCloseFrame(code, _truncate(reason))))
        self._flush()
        handler = self._shutdown()
        self._link.close_connection()
        self._clock.callLater(0, _notify_closed, handler, code, reason)

    # -- connection control (tests and tools; not part of ITransportSession) ---

    def pause_reading(self) -> None:
        """Stop reading from the socket, like a viewer that stops reading."""
        self._link.pause_reading()

    def resume_reading(self) -> None:
        self._link.resume_reading()

    def abort(self) -> None:
        """Drop the connection abruptly; both sides then see ``session_closed`` with code 0."""
        if not self._closed:
            self._link.abort_connection()

    # -- IPushProducer (called by the TCP transport) --------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        self._blocked = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._written = 0
        self._maybe_unblock()

    def stopProducing(self) -> None:
        """The connection is going away; ``connection_lost`` reports it."""

    # -- events from the WebSocket ---------------------------------------------

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        """One WebSocket message arrived."""
        if self._closed:
            return
        try:
            if not is_binary:
                raise ProtocolViolation("text WebSocket message")
            self._dispatch(payload)
        except Exception as e:
            self._failed(e)

    def stream_frame_received(self, stream_id: int, data: bytes, fin: bool) -> None:
        """A STREAM frame arrived, its header already split off by the reader."""
        if self._closed:
            return
        try:
            self._on_stream(stream_id, data, fin)
        except Exception as e:
            self._failed(e)

    def connection_lost(self, reason: str) -> None:
        """The WebSocket is gone (close handshake, TCP drop, timeout)."""
        _notify_closed(self._shutdown(), SessionErrorCode.NO_ERROR, reason)

    # -- internals -------------------------------------------------------------

    def _failed(self, error: Exception) -> None:
        """Close the session after handling a message raised ``error`` (in an except block)."""
        if isinstance(error, ProtocolViolation):
            _log.info(
                "closing WebSocket session with {peer}: {reason}",
                peer=self.peer,
                reason=error.reason,
            )
            self.close(error.code, error.reason)
        else:
            _log.failure("WebSocket session handler failed for {peer}", peer=self.peer)
            self.close(SessionErrorCode.INTERNAL_ERROR, "internal error")

    def _open_local(self, *, uni: bool) -> _WebSocketStream:
        stream_id = self._next_local[uni]
        self._next_local[uni] = stream_id + 4
        if self._closed:
            return _WebSocketStream(self, stream_id, _DONE, _DONE)
        stream = _WebSocketStream(self, stream_id, _OPEN, _ABSENT if uni else _OPEN)
        self._streams[stream_id] = stream
        return stream

    def _dispatch(self, payload: bytes) -> None:
        match decode_frame(payload):
            case StreamFrame(stream_id, data, fin):
                self._on_stream(stream_id, data, fin)
            case ResetStreamFrame(stream_id, code):
                self._on_reset(stream_id, code)
            case StopSendingFrame(stream_id, code):
                self._on_stop_sending(stream_id, code)
            case ApplicationCloseFrame(code, reason):
                handler = self._shutdown()
                _notify_closed(handler, code, reason)
                self._link.close_connection()

    def _lookup(self, stream_id: int, kind: str) -> _WebSocketStream | None:
        """The stream a frame is for; None to ignore the frame; opens peer streams."""
        uni = (stream_id >> 1) & 1
        if stream_id & 1 == self._local_bit:
            if uni and kind != _KIND_STOP:
                raise ProtocolViolation(f"{kind} on our unidirectional stream {stream_id}")
            if stream_id >= self._next_local[uni]:
                raise ProtocolViolation(f"{kind} on stream {stream_id}, which we never opened")
            return self._streams.get(stream_id)
        if uni and kind == _KIND_STOP:
            raise ProtocolViolation(
                f"STOP_SENDING on the peer's unidirectional stream {stream_id}"
            )
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if stream_id < self._next_remote[uni]:
            if kind == _KIND_STREAM:
                raise ProtocolViolation(f"STREAM on ended or skipped stream {stream_id}")
            return None
        self._next_remote[uni] = stream_id + 4
        if kind != _KIND_STREAM or self._handler is None:
            return None
        stream = _WebSocketStream(self, stream_id, _ABSENT if uni else _OPEN, _OPEN)
        self._streams[stream_id] = stream
        self._handler.stream_opened(stream, not uni)
        return None if self._closed else stream

    def _on_stream(self, stream_id: int, data: bytes, fin: bool) -> None:
        stream = self._lookup(stream_id, _KIND_STREAM)
        if stream is None:
            return
        if stream._recv == _DONE:
            raise ProtocolViolation(f"STREAM after the end of stream {stream_id}")
        if fin:
            stopping = stream._recv == _STOPPING
            stream._recv = _DONE
            self._forget_if_done(stream)
            if stopping:
                return
        elif stream._recv == _STOPPING or not data:
            return
        receiver = stream._receiver
        if receiver is not None:
            receiver.stream_data(data, fin)

    def _on_reset(self, stream_id: int, code: int) -> None:
        stream = self._lookup(stream_id, _KIND_RESET)
        if stream is None or stream._recv == _DONE:
            return
        stopping = stream._recv == _STOPPING
        stream._recv = _DONE
        self._forget_if_done(stream)
        receiver = stream._receiver
        if receiver is not None and not stopping:
            receiver.stream_reset(code)

    def _on_stop_sending(self, stream_id: int, code: int) -> None:
        stream = self._lookup(stream_id, _KIND_STOP)
        if stream is None or stream._send != _OPEN:
            return
        stream.reset(code)
        receiver = stream._receiver
        if receiver is not None:
            receiver.stream_stop_sending(code)

    def _forget_if_done(self, stream: _WebSocketStream) -> None:
        if stream._send in (_DONE, _ABSENT) and stream._recv in (_DONE, _ABSENT):
            if self._streams.get(stream.stream_id) is stream:
                del self._streams[stream.stream_id]

    def _write_stream(self, header: bytes, data: bytes) -> None:
        """``data`` of the stream whose STREAM frame header is ``header``, in frames."""
        if len(data) <= MAX_STREAM_FRAME_DATA:
            self._send_frame(header + data)
            return
        view = memoryview(data)
        for start in range(0, len(data), MAX_STREAM_FRAME_DATA):
            self._send_frame(b"".join((header, view[start : start + MAX_STREAM_FRAME_DATA])))
            if self._closed:
                return

    def _send_frame(self, payload: bytes) -> None:
        if self._closed:
            return
        out = self._out
        if out is None:
            self._link.send_message(payload)
        else:
            out.append(_binary_frame_header(len(payload)))
            out.append(payload)
            self._out_size += len(payload)
        self._written += len(payload)
        if self._written > self._high_water:
            self._blocked = True
        if self._tick_call is None:
            self._tick_call = self._clock.callLater(0, self._tick)
        if self._out_size >= _FLUSH_SIZE:
            self._flush()

    def _flush(self) -> None:
        """Hand the frames built so far to the link, in one call."""
        out = self._out
        if out:
            self._out = []
            self._out_size = 0
            self._link.write_frames(out)

    def _tick(self) -> None:
        """A reactor turn passed: a transport that did not pause us took it all."""
        self._tick_call = None
        self._flush()
        if not self._paused:
            self._written = 0
            self._maybe_unblock()

    def _maybe_unblock(self) -> None:
        if self._closed or not self._blocked or self._paused:
            return
        if self._written >= self._low_water:
            return
        self._blocked = False
        if self._waiters and self._fire_call is None:
            self._fire_call = self._clock.callLater(0, self._fire_waiters)

    def _fire_waiters(self) -> None:
        self._fire_call = None
        if self._closed or self._blocked:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _cancel_waiter(self, waiter: Deferred[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _shutdown(self) -> ISessionHandler | None:
        """Flip to closed and drop every reference at once; return the handler to notify."""
        if self._closed:
            return None
        self._closed = True
        self._streams = {}
        self._waiters = []
        # Frames not handed over yet are dropped; later writes take the slow path,
        # which drops them too.
        self._out = None
        self._out_size = 0
        for call in (self._tick_call, self._fire_call):
            if call is not None and call.active():
                call.cancel()
        self._tick_call = self._fire_call = None
        handler, self._handler = self._handler, None
        return handler


def _binary_frame_header(size: int) -> bytes:
    """RFC 6455 header of one final, unmasked binary frame of ``size`` payload bytes."""
    if size < 126:
        return bytes((0x82, size))
    if size < 0x10000:
        return _HEADER_16.pack(0x82, 126, size)
    return _HEADER_64.pack(0x82, 127, size)


_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def _notify_closed(handler: ISessionHandler | None, code: int, reason: str) -> None:
    if handler is None:
        return
    try:
        handler.session_closed(code, reason)
    except Exception:
        _log.failure("session_closed handler failed")


def _truncate(reason: str) -> str:
    """At most MAX_REASON_BYTES of UTF-8, cut on a character boundary."""
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= MAX_REASON_BYTES:
        return encoded.decode("utf-8")
    return encoded[:MAX_REASON_BYTES].decode("utf-8", "ignore")


def _request_path(uri: str) -> str:
    parts = urlsplit(uri)
    return parts.path + ("?" + parts.query if parts.query else "")


# -- Autobahn adapters ---------------------------------------------------------


class _AutobahnLink:
    """`_Link` over an Autobahn WebSocket protocol."""

    __slots__ = ("_protocol", "writes_frames")

    def __init__(self, protocol: _ServerProtocol | _ClientProtocol) -> None:
        self._protocol = protocol
        # A server's frames are not masked: it builds them itself, at a fraction of
        # the cost of Autobahn's sendMessage (frame objects, debug-log arguments built
        # even with debug logging off).
        self.writes_frames = isinstance(protocol, WebSocketServerProtocol)

    def send_message(self, payload: bytes) -> None:
        protocol = self._protocol
        if protocol.state == WebSocketProtocol.STATE_OPEN:
            protocol.sendMessage(payload, isBinary=True)

    def write_frames(self, frames: list[bytes]) -> None:
        protocol = self._protocol
        transport = protocol.transport
        if protocol.state != WebSocketProtocol.STATE_OPEN or transport is None:
            return
        if compat.has_queued_sends(protocol):
            protocol.sendData(b"".join(frames))
        else:
            compat.write_batch(transport, frames)

    def close_connection(self) -> None:
        # Autobahn aborts the TCP connection if the close handshake does not
        # finish within closeHandshakeTimeout (a peer that stopped reading).
        if self._protocol.state == WebSocketProtocol.STATE_OPEN:
            self._protocol.sendClose(1000)

    def pause_reading(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            cast(IPushProducer, transport).pauseProducing()

    def resume_reading(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            cast(IPushProducer, transport).resumeProducing()

    def abort_connection(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            cast(ITCPTransport, transport).abortConnection()


def _open_session(
    protocol: _ServerProtocol | _ClientProtocol,
    clock: IReactorTime,
    handler_factory: HandlerFactory,
    *,
    is_client: bool,
    path: str,
    low_water: int,
    high_water: int,
) -> WebSocketSession:
    session = WebSocketSession(
        clock,
        _AutobahnLink(protocol),
        is_client=is_client,
        path=path,
        peer=str(protocol.peer),
        low_water=low_water,
        high_water=high_water,
    )
    cast(IConsumer, protocol.transport).registerProducer(session, True)
    session.start(handler_factory)
    return session


def _connection_ended(
    protocol: _ServerProtocol | _ClientProtocol,
    was_clean: bool,
    code: int | None,
    reason: str | None,
) -> str:
    """Tidy Autobahn's timers at connection loss; return the reason to report."""
    compat.cancel_close_handshake_timer(protocol)
    if was_clean:
        return f"WebSocket closed ({code}{': ' + reason if reason else ''})"
    return reason or "WebSocket connection lost"


def _copy_factory_options(protocol: Any, base: type) -> None:
    """Copy Autobahn's per-connection options from the factory, as Autobahn would.

    Autobahn's own copy (when the connection is made) also pretty-prints the 29 options for a
    debug line, whether or not debug logging is on: about 0.2 ms per connection, which is most
    of the relay's cost of accepting one. Our protocols copy the options here first, with the
    same precedence (an attribute the protocol already has wins), and give Autobahn an empty
    ``CONFIG_ATTRS`` so that its loop has nothing to format.
    """
    factory = protocol.factory
    for name in compat.option_names(base):
        if not hasattr(protocol, name):
            setattr(protocol, name, getattr(factory, name))


def _frame_limit(protocol: Any) -> int:
    """The largest binary frame `_read_messages` reads itself: Autobahn's frame and message
    limits (0 is no limit to Autobahn)."""
    limits = [n for n in (protocol.maxFramePayloadSize, protocol.maxMessagePayloadSize) if n]
    return min(limits, default=1 << 62)


def _read_messages(protocol: _ServerProtocol | _ClientProtocol, data: bytes) -> bytes:
    """Read the frames at the start of ``data``; return the partial frame left at its end.

    The publisher's side of the hot path. Each message of the polyfill is one final binary
    frame: this reads those itself (one unmasking, straight into the bytes handed on, instead
    of Autobahn's masker object per frame, its re-slicing of the buffer and its per-message
    futures). Any other frame (control, text, fragmented, oversized, malformed) goes to
    Autobahn whole, so that Autobahn always gets whole frames and never falls behind.
    """
    view = memoryview(data)
    end = len(data)
    pos = 0
    masked = protocol._mask_bit
    limit = protocol._max_frame
    autobahn_mid_message = not compat.between_messages(protocol)
    while end - pos >= 2:
        first = data[pos]
        second = data[pos + 1]
        length = second & 0x7F
        start = pos + 2
        if length == 126:
            start = pos + 4
            if end < start:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
        elif length == 127:
            start = pos + 10
            if end < start:
                break
            length = int.from_bytes(view[pos + 2 : start], "big")
        if second & 0x80:
            start += 4
        if length > limit:
            # Autobahn refuses it as soon as it has its header.
            compat.feed(protocol, data[pos:])
            return b""
        stop = start + length
        if stop > end:
            break
        session = protocol._session
        if first != 0x82 or second & 0x80 != masked or autobahn_mid_message or session is None:
            compat.feed(protocol, data[pos:stop])
            autobahn_mid_message = not compat.between_messages(protocol)
        elif masked:
            mask = data[start - 4 : start]
            head = apply_mask(view[start : min(stop, start + STREAM_HEADER_MAX)], mask)
            split = split_stream_frame(head)
            if split is None:
                session.message_received(apply_mask(view[start:stop], mask), True)
            else:
                stream_id, offset, fin = split
                turn = offset & 3
                body = apply_mask(view[start + offset : stop], mask[turn:] + mask[:turn])
                session.stream_frame_received(stream_id, body, fin)
        else:
            split = split_stream_frame(data[start : min(stop, start + STREAM_HEADER_MAX)])
            if split is None:
                session.message_received(data[start:stop], True)
            else:
                stream_id, offset, fin = split
                session.stream_frame_received(stream_id, data[start + offset : stop], fin)
        pos = stop
        if protocol.state != WebSocketProtocol.STATE_OPEN:
            # Closing: Autobahn reads the rest (it waits for the peer's close frame).
            if pos < end:
                compat.feed(protocol, data[pos:])
            return b""
    return data[pos:]


def _data_received(protocol: _ServerProtocol | _ClientProtocol, data: bytes) -> None:
    partial, protocol._partial = protocol._partial, b""
    if (
        protocol._session is None
        or protocol.state != WebSocketProtocol.STATE_OPEN
        or compat.inside_frame(protocol)
    ):
        compat.feed(protocol, partial + data if partial else data)
        return
    # Bytes Autobahn kept past its last frame (those that came with the handshake, say) come
    # first; only one of the two leftovers can be non-empty.
    held = compat.take_unparsed(protocol)
    if held or partial:
        data = held + partial + data
    protocol._partial = _read_messages(protocol, data)


class _ServerProtocol(WebSocketServerProtocol):
    CONFIG_ATTRS: list[str] = []
    _session: WebSocketSession | None = None
    # Client frames are masked.
    _mask_bit = 0x80
    _max_frame = 0
    _partial = b""

    def connectionMade(self) -> None:
        _copy_factory_options(self, WebSocketServerProtocol)
        self._max_frame = _frame_limit(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        _data_received(self, data)

    def onConnect(self, request: ConnectionRequest) -> str:
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(
                ConnectionDeny.BAD_REQUEST,
                f"the {SUBPROTOCOL!r} WebSocket subprotocol is required",
            )
        return SUBPROTOCOL

    def onOpen(self) -> None:
        factory = cast(WebSocketTransportFactory, self.factory)
        self._session = _open_session(
            self,
            factory.clock,
            factory.handler_factory,
            is_client=False,
            path=_request_path(self.http_request_uri),
            low_water=factory.low_water,
            high_water=factory.high_water,
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._session is not None:
            self._session.message_received(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session, self._session = self._session, None
        reason_text = _connection_ended(self, wasClean, code, reason)
        if session is not None:
            session.connection_lost(reason_text)


class WebSocketTransportFactory(WebSocketServerFactory):
    """Accepts WebSocket upgrades offering ``webtransport`` and runs a session on each.

    Use it with ``listenTCP``/``listenSSL`` or an endpoint directly, or behind
    `moqrelay.web.make_web_site` (WebSocket upgrades on any path of the HTTPS site).
    """

    protocol = _ServerProtocol

    def __init__(
        self,
        reactor: IReactorTime,
        handler_factory: HandlerFactory,
        *,
        max_message_size: int = 1 << 20,
        auto_ping_interval: float = 15.0,
        auto_ping_timeout: float = 30.0,
        open_handshake_timeout: float = 10.0,
        allowed_origins: list[str] | None = None,
        low_water: int = 64 * 1024,
        high_water: int = 256 * 1024,
    ) -> None:
        if max_message_size < _MIN_MESSAGE_SIZE:
            raise ValueError(f"max_message_size must be at least {_MIN_MESSAGE_SIZE}")
        if not 0 < low_water <= high_water:
            raise ValueError("need 0 < low_water <= high_water")
        super().__init__(protocols=[SUBPROTOCOL], server="moqrelay", reactor=reactor)
        self.clock = reactor
        self.handler_factory = handler_factory
        self.low_water = low_water
        self.high_water = high_water
        self.noisy = False
        self.setProtocolOptions(
            webStatus=False,
            utf8validateIncoming=False,
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            autoPingInterval=auto_ping_interval,
            autoPingTimeout=auto_ping_timeout,
            openHandshakeTimeout=open_handshake_timeout,
            closeHandshakeTimeout=_CLOSE_HANDSHAKE_TIMEOUT,
            perMessageCompressionAccept=lambda offers: None,
            allowedOrigins=["*"] if allowed_origins is None else allowed_origins,
            allowNullOrigin=allowed_origins is None,
        )


# -- client ----------------------------------------------------------------------


class _ClientProtocol(WebSocketClientProtocol):
    CONFIG_ATTRS: list[str] = []
    _session: WebSocketSession | None = None
    # Server frames are not masked.
    _mask_bit = 0
    _max_frame = 0
    _partial = b""

    def connectionMade(self) -> None:
        _copy_factory_options(self, WebSocketClientProtocol)
        self._max_frame = _frame_limit(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        _data_received(self, data)

    def onOpen(self) -> None:
        factory = cast(_ClientFactory, self.factory)
        attempt = factory.attempt
        if self.websocket_protocol_in_use != SUBPROTOCOL:
            attempt.failed(
                WebSocketConnectError(
                    f"server selected subprotocol {self.websocket_protocol_in_use!r}, "
                    f"not {SUBPROTOCOL!r}"
                )
            )
            self.dropConnection(abort=True)
            return
        self._session = _open_session(
            self,
            factory.clock,
            factory.handler_factory,
            is_client=True,
            path=_request_path(factory.resource),
            low_water=64 * 1024,
            high_water=256 * 1024,
        )
        attempt.opened(self._session)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._session is not None:
            self._session.message_received(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session, self._session = self._session, None
        reason_text = _connection_ended(self, wasClean, code, reason)
        if session is not None:
            session.connection_lost(reason_text)
        else:
            cast(_ClientFactory, self.factory).attempt.failed(WebSocketConnectError(reason_text))


class _ClientFactory(WebSocketClientFactory):
    protocol = _ClientProtocol

    def __init__(
        self,
        reactor: IReactorTime,
        url: str,
        handler_factory: HandlerFactory,
        attempt: _ConnectAttempt,
    ) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL], useragent="moqrelay", reactor=reactor)
        self.clock = reactor
        self.handler_factory = handler_factory
        self.attempt = attempt
        self.noisy = False


class _ConnectAttempt:
    """The Deferred of one `connect_websocket` call, with its timeout and cancellation."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.result: Deferred[ITransportSession] = Deferred(self._cancel)
        self._connecting: Deferred[Any] | None = None
        self._protocol: _ClientProtocol | None = None
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._timed_out, timeout)

    def start(self, endpoint: IStreamClientEndpoint, factory: _ClientFactory) -> None:
        connecting = endpoint.connect(factory)
        if not connecting.called:
            self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, protocol: _ClientProtocol) -> None:
        self._connecting = None
        self._protocol = protocol
        if self.result.called:
            self._abort()

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        self.failed(failure)

    def opened(self, session: WebSocketSession) -> None:
        self._stop_timer()
        self._protocol = None
        if self.result.called:
            session.close(SessionErrorCode.NO_ERROR, "connection attempt abandoned")
        else:
            self.result.callback(session)

    def failed(self, reason: Exception | Failure) -> None:
        self._stop_timer()
        if not self.result.called:
            self.result.errback(reason)

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        self.failed(defer.TimeoutError(f"WebSocket session not established within {timeout} s"))
        self._abort()

    def _cancel(self, result: Deferred[ITransportSession]) -> None:
        self._stop_timer()
        self._abort()

    def _abort(self) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            cast(ITCPTransport, protocol.transport).abortConnection()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """Client TLS without CA verification, optionally pinning the leaf's SHA-256."""

    def __init__(self, host: str, fingerprint: str | None) -> None:
        self._server_name = None if isIPAddress(host) or isIPv6Address(host) else host
        self._fingerprint = fingerprint.lower().replace(":", "") if fingerprint else None
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        if self._fingerprint is None:
            context.set_verify(SSL.VERIFY_NONE)
        else:
            context.set_verify(SSL.VERIFY_PEER, self._verify)
        self._context = context

    def _verify(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if depth > 0:
            return True
        der = cert.to_cryptography().public_bytes(Encoding.DER)
        return hashlib.sha256(der).hexdigest() == self._fingerprint

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name.encode("idna"))
        return connection


def client_tls_options(
    host: str, *, verify: bool = True, fingerprint: str | None = None
) -> IOpenSSLClientConnectionCreator:
    """Client TLS settings for ``host`` (also the SNI name when it is not an IP address).

    ``fingerprint`` (lowercase hex SHA-256 of the leaf, as served by ``/fingerprint``)
    pins the leaf and replaces CA verification; otherwise ``verify`` chooses between
    the platform's trust roots with hostname checking and no verification at all.
    """
    if fingerprint is None and verify:
        return optionsForClientTLS(host)
    return _UnverifiedClientTLS(host, fingerprint)


def connect_websocket(
    reactor: Any,
    url: str,
    handler_factory: HandlerFactory,
    *,
    verify: bool = True,
    fingerprint: str | None = None,
    timeout: float = 10.0,
) -> Deferred[ITransportSession]:
    """Open a polyfill session to a ``ws://`` or ``wss://`` URL.

    ``handler_factory`` is called with the session once the WebSocket is open,
    before the returned Deferred fires with it. The Deferred fails with
    `WebSocketConnectError` (refused upgrade, wrong subprotocol, TLS failure),
    `twisted.internet.defer.TimeoutError` after ``timeout`` seconds, or the
    connection error; cancelling it abandons the attempt.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return defer.fail(ValueError(f"not a ws:// or wss:// URL: {url!r}"))
    secure = parts.scheme == "wss"
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    attempt = _ConnectAttempt(reactor, timeout)
    factory = _ClientFactory(reactor, url, handler_factory, attempt)
    factory.setProtocolOptions(
        utf8validateIncoming=False,
        maxFramePayloadSize=1 << 20,
        maxMessagePayloadSize=1 << 20,
        openHandshakeTimeout=0,  # the attempt's own timer covers TCP, TLS and the upgrade
        closeHandshakeTimeout=_CLOSE_HANDSHAKE_TIMEOUT,
        autoPingInterval=15.0,
        autoPingTimeout=30.0,
    )
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if secure:
        creator = client_tls_options(host, verify=verify, fingerprint=fingerprint)
        endpoint = wrapClientTLS(creator, endpoint)
    attempt.start(endpoint, factory)
    return attempt.result
