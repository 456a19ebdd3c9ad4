"""Transport layer: QUIC on a Twisted UDP port, driving a sans-IO `QuicConnection`.

`QuicEndpoint` owns one UDP port and every QUIC connection on it, as a server
(ALPN ``moq-00`` for raw MoQT, ``h3`` for WebTransport, see webtransport.py),
as a client (`connect_quic`), or both. It routes datagrams by destination
connection id, answers unknown versions with version negotiation, optionally
validates addresses with Retry, keeps one timer per connection (the stack's
deadline and our keep-alive folded together) and batches every application
write into one ``callLater(0)`` flush per reactor turn. The QUIC library under
it (aioquic or qh3) is a `QuicStack` given to the endpoint, and the application
for each ALPN comes from an injected map (`RawQuicSession` for ``moq-00``; the
WebTransport one is added by whoever also wants ``h3``).

`RawQuicSession` presents a raw QUIC connection as an `ITransportSession`;
`QuicSessionBase` and `TransportStream` hold what it shares with the
WebTransport session: stream maps, per-stream send/receive state, backpressure
accounting and a flat teardown (maps are dropped, never walked).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from moqrelay.tls import CertificateChain
from moqrelay.transport.interfaces import (
    HandlerFactory,
    ISessionHandler,
    IStream,
    IStreamReceiver,
    ITransportSession,
)
from moqrelay.transport.qlog import QlogDirectory
from moqrelay.transport.quicstack import DEFAULT_STACK, QuicStack, load_quic_stack
from moqrelay.transport.udp import BatchDatagramProtocol, listen_udp, write_datagrams

_log = Logger()

ALPN_MOQT = "moq-00"
ALPN_H3 = "h3"

NetworkAddress = Any
# QUIC transport error codes and frame types (RFC 9000, 20.1 and 12.4).
NO_ERROR = 0x0
INTERNAL_ERROR = 0x1
CRYPTO_ERROR = 0x100
FRAME_PADDING = 0x00
FRAME_CRYPTO = 0x06
# A client's first datagram must be at least this long (RFC 9000, 14.1).
SMALLEST_MAX_DATAGRAM_SIZE = 1200

CONNECTION_ID_LENGTH = 8
# Room for a short header (1 + 20-byte CID + 4-byte packet number), the AEAD tag (16)
# and the DATAGRAM frame's type and length: a payload up to this fits any 1-RTT packet.
_DATAGRAM_OVERHEAD = 64
# Datagrams are dropped rather than queued without bound while congestion control holds them.
_MAX_PENDING_DATAGRAMS = 256
# The transport error a client closes with when the pinned fingerprint does not match.
_BAD_CERTIFICATE = CRYPTO_ERROR + 42  # TLS alert bad_certificate


class QuicConnectError(Exception):
    """A client connection failed: timeout, handshake failure, refusal or bad certificate."""


class CertificateFingerprintError(QuicConnectError):
    """The server's leaf certificate does not have the pinned SHA-256 fingerprint."""


class ClientReactor(Protocol):
    """What `connect_quic` needs from a reactor."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kw: object
    ) -> IDelayedCall: ...

    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = ...,
        maxPacketSize: int = ...,
    ) -> IListeningPort: ...

    def resolve(self, name: str, timeout: Sequence[int] = ...) -> Deferred[str]: ...


def format_address(addr: NetworkAddress) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IStream)
class TransportStream:
    """One stream of a `QuicSessionBase`, with its own send and receive half state."""

    def __init__(
        self, session: QuicSessionBase, stream_id: int, *, can_send: bool, can_receive: bool
    ) -> None:
        self.stream_id = stream_id
        self._session = session
        self._receiver: IStreamReceiver | None = None
        self.send_open = can_send  # we may still write (no FIN, no reset yet)
        self.reset_done = not can_send  # RESET_STREAM sent (or nothing to reset)
        self.receive_ended = not can_receive  # peer FIN or RESET_STREAM seen
        self.stop_sent = False
        # Offset just past the last byte handed to the stack (prefix bytes included).
        self.end_offset = 0
        # Not opened yet because the peer's MAX_STREAMS is reached (qh3 refuses where
        # aioquic queues): the bytes to send once it opens, its FIN and its reset code.
        self.blocked: bytearray | None = None
        self.blocked_fin = False
        self.blocked_reset: int | None = None

    def set_receiver(self, receiver: IStreamReceiver | None) -> None:
        self._receiver = receiver

    def write(self, data: bytes) -> None:
        if self.send_open and data:
            self._session._write(self, data, fin=False)

    def finish(self) -> None:
        if self.send_open:
            self.send_open = False
            self._session._write(self, b"", fin=True)

    def reset(self, code: int) -> None:
        if not self.reset_done:
            self.send_open = False
            self.reset_done = True
            self._session._reset(self, code)

    def stop_sending(self, code: int) -> None:
        if not self.receive_ended and not self.stop_sent:
            self.stop_sent = True
            self._session._stop_sending(self, code)

    @property
    def done(self) -> bool:
        """Nothing more can happen on this stream that its owner must hear about."""
        return not self.send_open and self.receive_ended

    def _deliver(self, data: bytes, fin: bool) -> None:
        if fin:
            self.receive_ended = True
        if not self.stop_sent and self._receiver is not None:
            self._receiver.stream_data(data, fin)

    def _peer_reset(self, code: int) -> None:
        self.receive_ended = True
        if not self.stop_sent and self._receiver is not None:
            self._receiver.stream_reset(code)

    def _peer_stop_sending(self, code: int) -> None:
        # aioquic has already reset our send half with the same code.
        self.send_open = False
        self.reset_done = True
        if self._receiver is not None:
            self._receiver.stream_stop_sending(code)


class QuicSessionBase:
    """What raw QUIC and WebTransport sessions share; subclasses add the framing."""

    transport_name = ""

    def __init__(
        self,
        connection: QuicEndpointConnection,
        *,
        path: str,
        authority: str,
        low_water: int,
        high_water: int,
    ) -> None:
        self._connection = connection
        self._quic = connection.quic
        self._stack = connection.endpoint.stack
        self._reactor = connection.endpoint.reactor
        self.is_client = connection.is_client
        self.path = path
        self.authority = authority
        self.peer = format_address(connection.addr)
        self._low_water = low_water
        self._high_water = high_water
        self._handler: ISessionHandler | None = None
        self._streams: dict[int, TransportStream] = {}
        self._unsent: dict[int, TransportStream] = {}
        self._blocked: deque[TransportStream] = deque()
        self._queued = 0
        self._paused = False
        self._waiters: list[Deferred[None]] = []
        self._wake_call: IDelayedCall | None = None
        self._close_call: IDelayedCall | None = None
        self.closed = False  # no more events go to the handler
        self.reported = False  # session_closed was called (or there was no handler)

    # -- ITransportSession -------------------------------------------------------------

    def open_bidi_stream(self) -> IStream:
        return self._open(unidirectional=False)

    def open_uni_stream(self) -> IStream:
        return self._open(unidirectional=True)

    def send_datagram(self, data: bytes) -> None:
        if self.closed or len(data) > self._max_datagram_payload():
            return
        if self._stack.pending_datagrams(self._quic) >= _MAX_PENDING_DATAGRAMS:
            return
        try:
            self._send_datagram_frame(data)
        except self._stack.CONNECTION_ERRORS:
            return
        self._connection.schedule_flush()

    def queued_bytes(self) -> int:
        return self._queued

    def when_writable(self) -> Deferred[None]:
        if self.closed:
            return Deferred()
        if not self._paused and self._queued < self._high_water:
            return succeed(None)
        self._paused = True
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    # -- hooks for subclasses ------------------------------------------------------------

    def _stream_prefix(self, unidirectional: bool) -> bytes:
        """The bytes that open each stream we create (none on raw QUIC)."""
        return b""

    def _stream_opened_locally(self, stream_id: int, unidirectional: bool) -> None:
        """A stream of ours now exists (WebTransport registers bidirectional ones)."""

    def _send_datagram_frame(self, data: bytes) -> None:
        raise NotImplementedError

    def _datagram_overhead(self) -> int:
        return 0

    def _wire_code(self, code: int) -> int:
        """Application error code -> the code carried by RESET_STREAM / STOP_SENDING."""
        return code

    def _app_code(self, wire_code: int) -> int:
        """RESET_STREAM / STOP_SENDING code -> application error code."""
        return wire_code

    def _stream_forgotten(self, stream_id: int) -> None:
        """A stream left our map (WebTransport drops its HTTP/3 state here)."""

    # -- connection side -----------------------------------------------------------------

    def attach(self, handler_factory: HandlerFactory) -> None:
        """The session is established: build its handler."""
        self._handler = handler_factory(cast(ITransportSession, self))

    def transmitted(self) -> None:
        """The connection was just flushed: recompute what is still queued."""
        if self._blocked:
            self._open_blocked()
        if not self._unsent:
            self._queued = 0
        else:
            total = 0
            quic = self._quic
            unsent_bytes = self._stack.unsent_bytes
            for stream_id, stream in list(self._unsent.items()):
                left = 0
                if stream.blocked is not None:
                    left = len(stream.blocked)
                elif not stream.reset_done:
                    left = unsent_bytes(quic, stream_id, stream.end_offset)
                if left > 0:
                    total += left
                else:
                    del self._unsent[stream_id]
            self._queued = total
        if self._paused and self._queued < self._low_water:
            self._paused = False
            if self._waiters and self._wake_call is None:
                self._wake_call = self._reactor.callLater(0, self._wake)

    def connection_terminated(self, code: int, reason: str) -> None:
        """The QUIC connection is gone (peer close, idle timeout, shutdown)."""
        self.report_closed(code, reason)

    def report_closed(self, code: int, reason: str) -> None:
        """Flat teardown: drop every map, then tell the handler once."""
        self.closed = True
        if self.reported:
            return
        self.reported = True
        for call in (self._close_call, self._wake_call):
            if call is not None and call.active():
                call.cancel()
        self._close_call = self._wake_call = None
        self._streams = {}
        self._unsent = {}
        self._blocked = deque()
        self._waiters = []
        self._queued = 0
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.session_closed(code, reason)

    def _close_locally(self, code: int, reason: str) -> None:
        """Stop delivering events and report session_closed on the next reactor turn."""
        self.closed = True
        if not self.reported and self._close_call is None:
            self._close_call = self._reactor.callLater(0, self.report_closed, code, reason)
        self._connection.schedule_flush()

    # -- events from the peer ----------------------------------------------------------------

    def _is_local(self, stream_id: int) -> bool:
        return bool(stream_id & 1) != self.is_client

    def on_stream_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        if self.closed or self._handler is None:
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_local(stream_id):
                return
            bidirectional = not stream_id & 2
            stream = TransportStream(self, stream_id, can_send=bidirectional, can_receive=True)
            self._streams[stream_id] = stream
            self._handler.stream_opened(stream, bidirectional)
            if self.closed:
                return
        stream._deliver(data, fin)
        self._forget_if_done(stream)

    def on_stream_reset(self, stream_id: int, wire_code: int) -> None:
        stream = None if self.closed else self._streams.get(stream_id)
        if stream is not None and not stream.receive_ended:
            stream._peer_reset(self._app_code(wire_code))
            self._forget_if_done(stream)

    def on_stop_sending(self, stream_id: int, wire_code: int) -> None:
        stream = None if self.closed else self._streams.get(stream_id)
        if stream is not None:
            self._unsent.pop(stream_id, None)
            stream._peer_stop_sending(self._app_code(wire_code))
            self._forget_if_done(stream)

    def on_datagram(self, data: bytes) -> None:
        if not self.closed and self._handler is not None:
            self._handler.datagram_received(data)

    # -- what streams call ---------------------------------------------------------------------

    def _open(self, unidirectional: bool) -> IStream:
        if self.closed:
            # A stream that silently drops everything, as the interface asks after close.
            return TransportStream(self, -1, can_send=False, can_receive=False)
        quic = self._quic
        prefix = self._stream_prefix(unidirectional)
        last_blocked = self._last_blocked_id(unidirectional) if self._blocked else None
        if last_blocked is None:
            stream_id = quic.get_next_available_stream_id(is_unidirectional=unidirectional)
        else:
            # The stack has not seen the blocked ids yet: the next one is ours to count.
            stream_id = last_blocked + 4
        stream = TransportStream(self, stream_id, can_send=True, can_receive=not unidirectional)
        stream.end_offset = len(prefix)
        self._streams[stream_id] = stream
        if last_blocked is not None:
            self._block(stream, prefix)
        else:
            try:
                quic.send_stream_data(stream_id, prefix)
            except ValueError:
                # qh3: past the peer's MAX_STREAMS. The id is taken; open it later.
                self._block(stream, prefix)
            except self._stack.CONNECTION_ERRORS:
                stream.send_open = False
                return stream
            else:
                self._stream_opened_locally(stream_id, unidirectional)
        if prefix:
            self._unsent[stream_id] = stream
            self._queued += len(prefix)
        self._connection.schedule_flush()
        return stream

    def _last_blocked_id(self, unidirectional: bool) -> int | None:
        for stream in reversed(self._blocked):
            if bool(stream.stream_id & 2) == unidirectional:
                return stream.stream_id
        return None

    def _block(self, stream: TransportStream, prefix: bytes) -> None:
        stream.blocked = bytearray(prefix)
        self._blocked.append(stream)

    def _open_blocked(self) -> None:
        """Open the streams MAX_STREAMS held back, in order, as far as credit allows."""
        quic = self._quic
        opened = False
        while self._blocked:
            stream = self._blocked[0]
            data = b"" if stream.blocked is None else bytes(stream.blocked)
            try:
                quic.send_stream_data(stream.stream_id, data, end_stream=stream.blocked_fin)
            except ValueError:
                break
            except self._stack.CONNECTION_ERRORS:
                self._blocked.clear()
                return
            self._blocked.popleft()
            stream.blocked = None
            opened = True
            self._stream_opened_locally(stream.stream_id, bool(stream.stream_id & 2))
            if stream.blocked_reset is not None:
                self._unsent.pop(stream.stream_id, None)
                quic.reset_stream(stream.stream_id, self._wire_code(stream.blocked_reset))
            elif data:
                self._unsent[stream.stream_id] = stream
        if opened:
            self._connection.schedule_flush()

    def _write(self, stream: TransportStream, data: bytes, fin: bool) -> None:
        if self.closed:
            stream.send_open = False
            return
        if stream.blocked is not None:
            stream.blocked += data
            stream.blocked_fin = fin
        else:
            try:
                self._quic.send_stream_data(stream.stream_id, data, end_stream=fin)
            except self._stack.CONNECTION_ERRORS:
                stream.send_open = False
                return
        stream.end_offset += len(data)
        self._queued += len(data)
        self._unsent[stream.stream_id] = stream
        self._connection.schedule_flush()
        if fin:
            self._forget_if_done(stream)

    def _reset(self, stream: TransportStream, code: int) -> None:
        self._unsent.pop(stream.stream_id, None)
        if self.closed:
            return
        if stream.blocked is not None:
            stream.blocked = bytearray()
            stream.blocked_reset = code
        else:
            try:
                self._quic.reset_stream(stream.stream_id, self._wire_code(code))
            except self._stack.CONNECTION_ERRORS:
                return
        self._connection.schedule_flush()
        self._forget_if_done(stream)

    def _stop_sending(self, stream: TransportStream, code: int) -> None:
        if self.closed:
            return
        try:
            self._quic.stop_stream(stream.stream_id, self._wire_code(code))
        except ValueError:
            return
        except self._stack.CONNECTION_ERRORS:
            return
        self._connection.schedule_flush()

    def _forget_if_done(self, stream: TransportStream) -> None:
        if stream.done and self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._stream_forgotten(stream.stream_id)

    def _max_datagram_payload(self) -> int:
        remote = self._stack.remote_max_datagram_frame_size(self._quic)
        if remote is None:
            return 0
        local = self._stack.max_datagram_size(self._quic) - _DATAGRAM_OVERHEAD
        return min(remote - 4, local) - self._datagram_overhead()

    def _wake(self) -> None:
        self._wake_call = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def stream_count(self) -> int:
        """Streams still tracked (for tests and metrics)."""
        return len(self._streams)


@implementer(ITransportSession)
class RawQuicSession(QuicSessionBase):
    """MoQT directly on a QUIC connection (ALPN moq-00): QUIC streams and DATAGRAM frames."""

    transport_name = "quic"
    setup_carries_path = True

    @property
    def supports_datagrams(self) -> bool:
        return self._stack.remote_max_datagram_frame_size(self._quic) is not None

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self._quic.close(error_code=code, reason_phrase=reason)
        self._close_locally(code, reason)

    def _send_datagram_frame(self, data: bytes) -> None:
        self._quic.send_datagram_frame(data)

    # -- the application protocol for QuicEndpointConnection ------------------------------

    def quic_event(self, event: Any) -> None:
        stack = self._stack
        if isinstance(event, stack.StreamDataReceived):
            self.on_stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, stack.DatagramFrameReceived):
            self.on_datagram(event.data)
        elif isinstance(event, stack.StreamReset):
            self.on_stream_reset(event.stream_id, event.error_code)
        elif isinstance(event, stack.StopSendingReceived):
            self.on_stop_sending(event.stream_id, event.error_code)

    def handshake_completed(self) -> None:
        self._connection.established(self)


class Application(Protocol):
    """What a `QuicEndpointConnection` drives once ALPN is known (raw MoQT or HTTP/3)."""

    def quic_event(self, event: Any) -> None: ...

    def handshake_completed(self) -> None: ...

    def transmitted(self) -> None: ...

    def connection_terminated(self, code: int, reason: str) -> None: ...


class _ClientAttempt:
    """A pending `QuicEndpoint.connect`: what to build and whom to tell."""

    def __init__(
        self,
        handler_factory: HandlerFactory,
        *,
        webtransport: bool,
        path: str,
        authority: str,
        fingerprint: str | None,
    ) -> None:
        self.handler_factory = handler_factory
        self.webtransport = webtransport
        self.path = path
        self.authority = authority
        self.fingerprint = fingerprint
        self.deferred: Deferred[ITransportSession] | None = Deferred()
        self.timeout_call: IDelayedCall | None = None

    def succeed(self, session: ITransportSession) -> None:
        deferred, self.deferred = self.deferred, None
        self._cancel_timeout()
        if deferred is not None:
            deferred.callback(session)

    def fail(self, error: Exception) -> None:
        deferred, self.deferred = self.deferred, None
        self._cancel_timeout()
        if deferred is not None:
            deferred.errback(error)

    def _cancel_timeout(self) -> None:
        if self.timeout_call is not None and self.timeout_call.active():
            self.timeout_call.cancel()
        self.timeout_call = None


class QuicEndpointConnection:
    """One QUIC connection of an endpoint: the aioquic state, its timer and its application."""

    def __init__(
        self,
        endpoint: QuicEndpoint,
        quic: Any,
        addr: NetworkAddress,
        *,
        handler_factory: HandlerFactory | None,
        attempt: _ClientAttempt | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.quic = quic
        self.addr = addr
        self.is_client: bool = quic.configuration.is_client
        self.handler_factory = handler_factory
        self.attempt = attempt
        self.app: Application | None = None
        self.cids: set[bytes] = set()
        self.timer: IDelayedCall | None = None
        self.timer_at: float | None = None
        self.ping_due: float | None = None
        self.last_received = endpoint.reactor.seconds()
        self.terminated = False
        # Set when we closed a connection nobody will use: drop it right after the close is sent.
        self.drop_after_send: tuple[int, str] | None = None
        self._ping_uid = 0

    def schedule_flush(self) -> None:
        self.endpoint.schedule_flush(self)

    def established(self, session: QuicSessionBase) -> None:
        """The session can carry MoQT: build its handler, tell a waiting client."""
        if self.attempt is not None:
            session.attach(self.attempt.handler_factory)
            self.attempt.succeed(cast(ITransportSession, session))
            self.attempt = None
        elif self.handler_factory is not None:
            session.attach(self.handler_factory)

    def abandon(self, code: int, reason: str, frame_type: int | None = None) -> None:
        """Close (a transport error when ``frame_type`` is given) and forget the connection
        as soon as the close is sent."""
        self.quic.close(error_code=code, frame_type=frame_type, reason_phrase=reason)
        self.drop_after_send = (code, reason)
        self.schedule_flush()

    def keepalive_interval(self) -> float:
        idle: float = self.quic.configuration.idle_timeout
        remote = self.endpoint.stack.remote_idle_timeout(self.quic)
        if remote:
            idle = min(idle, remote)
        return idle / 3

    def next_ping(self) -> int:
        self._ping_uid += 1
        return self._ping_uid


class ApplicationFactory(Protocol):
    """Builds the application for a connection once its ALPN is known."""

    def __call__(
        self,
        connection: QuicEndpointConnection,
        *,
        path: str,
        authority: str,
        low_water: int,
        high_water: int,
    ) -> Application: ...


class QuicEndpoint(BatchDatagramProtocol):
    """One UDP port, many QUIC connections: server (when given chains and a handler factory)
    and/or client (`connect`).

    ``applications`` maps each ALPN the endpoint speaks to the factory of its
    application (raw MoQT only by default); a server offers them in that order.
    ``stack`` is the QUIC library under the adapter (the default stack when None)."""

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        chains: list[CertificateChain] | None,
        handler_factory: HandlerFactory | None,
        idle_timeout: float = 30.0,
        retry: bool = False,
        max_datagram_frame_size: int = 65536,
        low_water: int = 64 * 1024,
        high_water: int = 1024 * 1024,
        applications: Mapping[str, ApplicationFactory] | None = None,
        stack: QuicStack | None = None,
        qlog: QlogDirectory | None = None,
    ) -> None:
        self.reactor = reactor
        self.stack = stack if stack is not None else load_quic_stack(DEFAULT_STACK)
        # One logger for every connection served (None: no qlog).
        self._quic_logger = qlog.logger(self.stack) if qlog is not None else None
        self._applications: dict[str, ApplicationFactory] = dict(
            applications if applications is not None else {ALPN_MOQT: RawQuicSession}
        )
        self._handler_factory = handler_factory
        self.idle_timeout = idle_timeout
        self.max_datagram_frame_size = max_datagram_frame_size
        self.low_water = low_water
        self.high_water = high_water
        self._retry = self.stack.retry_tokens() if retry else None
        self._server_configuration: Any = None
        if chains and handler_factory is not None:
            self._server_configuration = self._make_server_configuration(chains[0])
        self._connections: dict[bytes, QuicEndpointConnection] = {}
        self._live: set[QuicEndpointConnection] = set()
        self._dirty: set[QuicEndpointConnection] = set()
        self._flush_call: IDelayedCall | None = None
        self._port_to_close: IListeningPort | None = None
        self._supported_versions = self.stack.supported_versions()
        self._accepting = True

    def refuse_new_connections(self) -> None:
        """Draining: from now on, Initial packets of new connections go unanswered (the
        client's handshake times out); established connections carry on."""
        self._accepting = False

    @property
    def connections(self) -> int:
        """Live connections on this endpoint."""
        return len(self._live)

    def set_chains(self, chains: list[CertificateChain]) -> None:
        """Serve ``chains`` to new connections (certificate reload); live ones keep theirs."""
        if self._server_configuration is not None and chains:
            self._server_configuration = self._make_server_configuration(chains[0])

    def _make_server_configuration(self, chain: CertificateChain) -> Any:
        configuration = self.stack.server_configuration(
            chain.cert_pem,
            chain.key_pem,
            alpn_protocols=list(self._applications),
            idle_timeout=self.idle_timeout,
            max_datagram_frame_size=self.max_datagram_frame_size,
            connection_id_length=CONNECTION_ID_LENGTH,
        )
        configuration.quic_logger = self._quic_logger
        return configuration

    # -- UDP side ------------------------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        stack = self.stack
        try:
            header = stack.pull_header(datagram, CONNECTION_ID_LENGTH)
        except ValueError:
            return
        if (
            header.packet_type != stack.PACKET_VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in self._supported_versions
        ):
            if self._server_configuration is not None:
                self._send(
                    stack.encode_version_negotiation(
                        header.destination_cid, header.source_cid, self._supported_versions
                    ),
                    addr,
                )
            return
        connection = self._connections.get(header.destination_cid)
        if connection is None:
            if (
                self._server_configuration is None
                or not self._accepting
                or header.packet_type != stack.PACKET_INITIAL
                or len(datagram) < SMALLEST_MAX_DATAGRAM_SIZE
            ):
                return
            connection = self._accept(header.destination_cid, header, addr)
            if connection is None:
                return
        now = self.reactor.seconds()
        connection.last_received = now
        try:
            connection.quic.receive_datagram(datagram, addr, now=now)
        except stack.CONNECTION_ERRORS as e:
            _log.debug("QUIC packet from {addr} dropped: {error}", addr=addr, error=e)
        self._process_events(connection)
        # One transmit per connection per reactor turn, however many datagrams the
        # turn read: datagrams_to_send walks every stream, so once per datagram
        # costs most of the relay's time under load.
        self.schedule_flush(connection)

    def _accept(
        self, dcid: bytes, header: Any, addr: NetworkAddress
    ) -> QuicEndpointConnection | None:
        assert self._server_configuration is not None
        original_dcid: bytes | None = dcid
        retry_scid: bytes | None = None
        if self._retry is not None:
            now = self.reactor.seconds()
            if not header.token and header.version is not None:
                retry_scid = _random_cid()
                token = self._retry.create(addr, dcid, retry_scid, now)
                self._send(
                    self.stack.encode_retry(
                        header.version, retry_scid, header.source_cid, dcid, token
                    ),
                    addr,
                )
                return None
            try:
                original_dcid = self._retry.validate(addr, dcid, header.token, now)
            except ValueError:
                return None
            retry_scid = dcid
        quic = self.stack.new_connection(
            self._server_configuration,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        connection = QuicEndpointConnection(
            self, quic, addr, handler_factory=self._handler_factory
        )
        self._register(connection, dcid)
        self._register(connection, quic.host_cid)
        self._live.add(connection)
        return connection

    def _send(self, datagram: bytes, addr: NetworkAddress) -> None:
        write_datagrams(self.transport, [(datagram, addr)])

    def _register(self, connection: QuicEndpointConnection, cid: bytes) -> None:
        self._connections[cid] = connection
        connection.cids.add(cid)

    # -- client side ---------------------------------------------------------------------

    def connect(
        self,
        addr: NetworkAddress,
        handler_factory: HandlerFactory,
        *,
        server_name: str,
        webtransport: bool = False,
        path: str = "",
        authority: str = "",
        verify: bool = True,
        fingerprint: str | None = None,
        timeout: float = 10.0,
    ) -> Deferred[ITransportSession]:
        """Open a client connection; fires with the session once it can carry MoQT."""
        alpn = ALPN_H3 if webtransport else ALPN_MOQT
        if alpn not in self._applications:
            return fail(QuicConnectError(f"this endpoint has no application for ALPN {alpn}"))
        configuration = self.stack.client_configuration(
            alpn_protocols=[alpn],
            idle_timeout=self.idle_timeout,
            max_datagram_frame_size=self.max_datagram_frame_size,
            connection_id_length=CONNECTION_ID_LENGTH,
            server_name=server_name,
            verify=verify and fingerprint is None,
        )
        attempt = _ClientAttempt(
            handler_factory,
            webtransport=webtransport,
            path=path,
            authority=authority,
            fingerprint=None if fingerprint is None else fingerprint.replace(":", "").lower(),
        )
        deferred = attempt.deferred
        assert deferred is not None
        quic = self.stack.new_connection(configuration)
        connection = QuicEndpointConnection(
            self, quic, addr, handler_factory=None, attempt=attempt
        )
        self._register(connection, quic.host_cid)
        self._live.add(connection)
        attempt.timeout_call = self.reactor.callLater(timeout, self._connect_timeout, connection)
        quic.connect(addr, now=self.reactor.seconds())
        self._transmit(connection)
        return deferred

    def close_port_when_idle(self, port: IListeningPort) -> None:
        """Stop listening on ``port`` once the last connection is gone (client endpoints)."""
        self._port_to_close = port
        if not self._live:
            self._stop_port()

    def _connect_timeout(self, connection: QuicEndpointConnection) -> None:
        attempt = connection.attempt
        if attempt is not None:
            attempt.timeout_call = None
            attempt.fail(
                QuicConnectError(f"timed out connecting to {format_address(connection.addr)}")
            )
            connection.attempt = None
        connection.quic.close(error_code=NO_ERROR, reason_phrase="timeout")
        self._transmit(connection)
        self._drop(connection, NO_ERROR, "connect timeout")

    # -- events --------------------------------------------------------------------------

    def _process_events(self, connection: QuicEndpointConnection) -> None:
        quic = connection.quic
        stack = self.stack
        event = quic.next_event()
        while event is not None and not connection.terminated:
            if isinstance(event, stack.ConnectionIdIssued):
                self._register(connection, event.connection_id)
            elif isinstance(event, stack.ConnectionIdRetired):
                connection.cids.discard(event.connection_id)
                if self._connections.get(event.connection_id) is connection:
                    del self._connections[event.connection_id]
            elif isinstance(event, stack.ConnectionTerminated):
                self._drop(connection, event.error_code, event.reason_phrase)
            else:
                try:
                    self._application_event(connection, event)
                except Exception:
                    _log.failure("error handling a QUIC event from {peer}", peer=connection.addr)
                    quic.close(
                        error_code=INTERNAL_ERROR,
                        frame_type=FRAME_PADDING,
                        reason_phrase="internal error",
                    )
                    self._fail_session(connection, INTERNAL_ERROR, "internal error")
            event = quic.next_event()

    def _application_event(self, connection: QuicEndpointConnection, event: Any) -> None:
        if isinstance(event, self.stack.ProtocolNegotiated):
            connection.app = self._make_application(connection, event.alpn_protocol)
        elif isinstance(event, self.stack.HandshakeCompleted):
            connection.ping_due = self.reactor.seconds() + connection.keepalive_interval()
            if connection.attempt is not None and not self._check_fingerprint(connection):
                return
            if connection.app is not None:
                connection.app.handshake_completed()
        elif connection.app is not None:
            connection.app.quic_event(event)

    def _make_application(
        self, connection: QuicEndpointConnection, alpn: str | None
    ) -> Application | None:
        factory = None if alpn is None else self._applications.get(alpn)
        if factory is None:
            return None
        attempt = connection.attempt
        return factory(
            connection,
            path=attempt.path if attempt is not None else "",
            authority=attempt.authority if attempt is not None else "",
            low_water=self.low_water,
            high_water=self.high_water,
        )

    def _check_fingerprint(self, connection: QuicEndpointConnection) -> bool:
        attempt = connection.attempt
        if attempt is None or attempt.fingerprint is None:
            return True
        der = self.stack.peer_certificate_der(connection.quic)
        actual = "" if der is None else hashlib.sha256(der).hexdigest()
        if actual == attempt.fingerprint:
            return True
        attempt.fail(
            CertificateFingerprintError(
                f"certificate fingerprint {actual or 'none'} != pinned {attempt.fingerprint}"
            )
        )
        connection.attempt = None
        connection.abandon(
            _BAD_CERTIFICATE, "certificate fingerprint mismatch", frame_type=FRAME_CRYPTO
        )
        return False

    def _fail_session(self, connection: QuicEndpointConnection, code: int, reason: str) -> None:
        """We closed the connection ourselves: the session ends now, the drop comes later."""
        app, connection.app = connection.app, None
        if app is not None:
            app.connection_terminated(code, reason)
        connection.schedule_flush()

    # -- sending and timers --------------------------------------------------------------

    def schedule_flush(self, connection: QuicEndpointConnection) -> None:
        """Application data is waiting: flush it (once for everybody) on the next turn."""
        if connection.terminated:
            return
        self._dirty.add(connection)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        dirty, self._dirty = self._dirty, set()
        for connection in dirty:
            self._transmit(connection)

    def _transmit(self, connection: QuicEndpointConnection) -> None:
        if connection.terminated:
            return
        self._dirty.discard(connection)
        now = self.reactor.seconds()
        # One batch per connection and flush: GSO sends a run of its packets in one syscall.
        write_datagrams(self.transport, self.stack.datagrams_to_send(connection.quic, now))
        if connection.drop_after_send is not None:
            self._drop(connection, *connection.drop_after_send)
            return
        if connection.app is not None:
            connection.app.transmitted()
        self._arm_timer(connection)

    def _arm_timer(self, connection: QuicEndpointConnection) -> None:
        deadline = connection.quic.get_timer()
        ping_due = connection.ping_due
        if ping_due is not None and (deadline is None or ping_due < deadline):
            deadline = ping_due
        if deadline == connection.timer_at and connection.timer is not None:
            return
        if connection.timer is not None and connection.timer.active():
            connection.timer.cancel()
        connection.timer = None
        connection.timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.reactor.seconds())
            connection.timer = self.reactor.callLater(delay, self._on_timer, connection)

    def _on_timer(self, connection: QuicEndpointConnection) -> None:
        at = connection.timer_at
        connection.timer = None
        connection.timer_at = None
        now = self.reactor.seconds()
        if at is not None:
            now = max(now, at)
        ping_due = connection.ping_due
        if ping_due is not None and now >= ping_due:
            interval = connection.keepalive_interval()
            quiet_until = connection.last_received + interval
            if now >= quiet_until:
                try:
                    connection.quic.send_ping(connection.next_ping())
                except self.stack.CONNECTION_ERRORS:
                    pass
                connection.ping_due = now + interval
            else:
                connection.ping_due = quiet_until
        try:
            connection.quic.handle_timer(now=now)
        except self.stack.CONNECTION_ERRORS as e:
            _log.debug("QUIC timer of {peer} failed: {error}", peer=connection.addr, error=e)
        self._process_events(connection)
        self._transmit(connection)

    # -- teardown ------------------------------------------------------------------------

    def _drop(self, connection: QuicEndpointConnection, code: int, reason: str) -> None:
        """The connection is over: forget it without touching its streams one by one."""
        if connection.terminated:
            return
        connection.terminated = True
        for cid in connection.cids:
            if self._connections.get(cid) is connection:
                del self._connections[cid]
        connection.cids = set()
        self._live.discard(connection)
        self._dirty.discard(connection)
        if connection.timer is not None and connection.timer.active():
            connection.timer.cancel()
        connection.timer = None
        if self._quic_logger is not None:
            self.stack.end_qlog_trace(connection.quic)
        attempt, connection.attempt = connection.attempt, None
        if attempt is not None:
            attempt.fail(QuicConnectError(f"connection failed: {reason or 'closed'} (0x{code:x})"))
        app, connection.app = connection.app, None
        if app is not None:
            app.connection_terminated(code, reason)
        if not self._live and self._port_to_close is not None:
            self._stop_port()

    def _stop_port(self) -> None:
        port, self._port_to_close = self._port_to_close, None
        if port is not None:
            port.stopListening()

    def close_all(self, code: int = 0, reason: str = "") -> None:
        """Close every connection now (CONNECTION_CLOSE sent at once), e.g. at shutdown."""
        for connection in list(self._live):
            connection.quic.close(error_code=code, reason_phrase=reason)
            self._transmit(connection)
            self._drop(connection, code, reason)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None

    def stopProtocol(self) -> None:
        for connection in list(self._live):
            self._drop(connection, NO_ERROR, "endpoint stopped")
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None


def _random_cid() -> bytes:
    return os.urandom(CONNECTION_ID_LENGTH)


def _parse_url(url: str) -> tuple[bool, str, int, str, str]:
    """(webtransport, host, port, path, authority) of a moqt:// or https:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("moqt", "https"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} (use moqt:// or https://)")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    port = parts.port or 443
    webtransport = parts.scheme == "https"
    path = parts.path
    if parts.query:
        path += "?" + parts.query
    if webtransport and not path.startswith("/"):
        path = "/" + path
    return webtransport, host, port, path, parts.netloc


def connect_quic(
    reactor: ClientReactor,
    url: str,
    handler_factory: HandlerFactory,
    *,
    verify: bool = True,
    fingerprint: str | None = None,
    timeout: float = 10.0,
    idle_timeout: float = 30.0,
    applications: Mapping[str, ApplicationFactory] | None = None,
    stack: QuicStack | None = None,
) -> Deferred[ITransportSession]:
    """Connect to ``moqt://host:port/path`` (raw QUIC) or ``https://host:port/path``
    (WebTransport, when ``applications`` has one for ``h3``) from a fresh ephemeral UDP
    port, closed when the session ends."""
    try:
        webtransport, host, port, path, authority = _parse_url(url)
    except ValueError as e:
        return fail(e)
    try:
        ipaddress.ip_address(host)
        resolved: Deferred[str] = succeed(host)
    except ValueError:
        resolved = reactor.resolve(host)

    def connect(address: str) -> Deferred[ITransportSession]:
        endpoint = QuicEndpoint(
            cast(IReactorTime, reactor),
            chains=None,
            handler_factory=None,
            idle_timeout=idle_timeout,
            applications=applications,
            stack=stack,
        )
        interface = "::" if ":" in address else "0.0.0.0"
        udp_port = listen_udp(reactor, 0, endpoint, interface=interface, max_packet_size=65535)
        deferred = endpoint.connect(
            (address, port),
            handler_factory,
            server_name=host,
            webtransport=webtransport,
            path=path,
            authority=authority,
            verify=verify,
            fingerprint=fingerprint,
            timeout=timeout,
        )
        endpoint.close_port_when_idle(udp_port)
        return deferred

    return resolved.addCallback(connect)
