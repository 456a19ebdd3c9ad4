"""Test support: an in-memory transport pair implementing the session interface.

Two `MemorySession` objects are joined back to back. Everything one side
writes is delivered to the other from the injected clock (``callLater(0)``),
so tests with `task.Clock` decide exactly when bytes move. Backpressure is
simulated: a side whose peer is ``paused`` (a viewer that stops reading)
accumulates queued bytes, and its ``when_writable`` Deferreds fire only once
the peer resumes and the queue drains below the low-water mark.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from moqrelay.transport.interfaces import (
    HandlerFactory,
    ISessionHandler,
    IStream,
    IStreamReceiver,
    ITransportSession,
)

_Event = Callable[[], None]


@implementer(IStream)
class MemoryStream:
    """One end of an in-memory stream."""

    def __init__(self, session: MemorySession, stream_id: int, can_send: bool) -> None:
        self.stream_id = stream_id
        self.session = session
        self.receiver: IStreamReceiver | None = None
        self.can_send = can_send
        self.send_closed = not can_send
        self.reset_code: int | None = None
        self.finished = False
        # Once we asked the peer to stop, nothing more reaches our receiver.
        self.stop_sent = False
        # Our receive half is over (FIN or RESET seen), or there is none (our uni stream).
        self.receive_ended = can_send and bool(stream_id & 2)

    def set_receiver(self, receiver: IStreamReceiver | None) -> None:
        self.receiver = receiver

    def write(self, data: bytes) -> None:
        if self.send_closed or not data:
            return
        self.session._send(self.stream_id, len(data), lambda peer: peer._data(self, data, False))

    def finish(self) -> None:
        if self.send_closed:
            return
        self.send_closed = True
        self.finished = True
        self.session._send(self.stream_id, 0, lambda peer: peer._data(self, b"", True))

    def reset(self, code: int) -> None:
        if self.send_closed:
            return
        self.send_closed = True
        self.reset_code = code
        self.session._send(self.stream_id, 0, lambda peer: peer._reset(self.stream_id, code))

    def stop_sending(self, code: int) -> None:
        if self.stop_sent or self.receive_ended:
            return
        self.stop_sent = True
        self.session._send(
            self.stream_id, 0, lambda peer: peer._stop_sending(self.stream_id, code)
        )


@implementer(ITransportSession)
class MemorySession:
    """One side of an in-memory session; see `memory_session_pair`."""

    transport_name = "memory"
    supports_datagrams = True
    # Larger datagrams are dropped, as a QUIC path of the minimum MTU would.
    max_datagram_size = 1200

    def __init__(
        self,
        clock: IReactorTime,
        is_client: bool,
        path: str = "",
        low_water: int = 16384,
        high_water: int = 65536,
        *,
        setup_carries_path: bool = False,
        authority: str = "",
    ) -> None:
        self.clock = clock
        self.is_client = is_client
        self.path = path
        self.setup_carries_path = setup_carries_path
        self.authority = authority
        self.peer = "memory-server" if is_client else "memory-client"
        self.handler: ISessionHandler | None = None
        self.other: MemorySession | None = None
        self.streams: dict[int, MemoryStream] = {}
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.paused = False
        self.low_water = low_water
        self.high_water = high_water
        self._queue: deque[tuple[int, _DeliverTo]] = deque()
        self._queued = 0
        self._pump_scheduled = False
        self._waiters: list[Deferred[None]] = []
        self._next_bidi = 0 if is_client else 1
        self._next_uni = 2 if is_client else 3
        self.datagrams_received: list[bytes] = []

    # ITransportSession

    def open_bidi_stream(self) -> IStream:
        stream = MemoryStream(self, self._next_bidi, True)
        self._next_bidi += 4
        self.streams[stream.stream_id] = stream
        return stream

    def open_uni_stream(self) -> IStream:
        stream = MemoryStream(self, self._next_uni, True)
        self._next_uni += 4
        self.streams[stream.stream_id] = stream
        return stream

    def send_datagram(self, data: bytes) -> None:
        if len(data) > self.max_datagram_size:
            return
        self._send(-1, len(data), lambda peer: peer._datagram(data))

    def queued_bytes(self) -> int:
        return self._queued

    def when_writable(self) -> Deferred[None]:
        if self.closed:
            return Deferred()
        if self._queued <= self.high_water:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        other = self.other
        handler = self._shut(code, reason)
        if handler is not None:
            self.clock.callLater(0, handler.session_closed, code, reason)
        if other is not None:
            self.clock.callLater(0, other._lost, code, reason)

    def abort(self) -> None:
        """Vanish without a close: both sides see the session end with code 0."""
        self.close(0, "connection lost")

    # Reading side (the test controls it)

    def pause_reading(self) -> None:
        """Stop delivering what the peer sends us, like a viewer that stops reading."""
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.other is not None:
            self.other._schedule_pump()

    # Internals

    def _send(self, stream_id: int, size: int, deliver: _DeliverTo) -> None:
        if self.closed:
            return
        self._queue.append((size, deliver))
        self._queued += size
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and not self.closed:
            self._pump_scheduled = True
            self.clock.callLater(0, self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        other = self.other
        while self._queue and not self.closed and other is not None and not other.paused:
            size, deliver = self._queue.popleft()
            self._queued -= size
            deliver(other)
        if self._queued <= self.low_water and self._waiters:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def _stream_for(self, peer_stream: MemoryStream) -> MemoryStream | None:
        stream = self.streams.get(peer_stream.stream_id)
        if stream is None and not self.closed and self.handler is not None:
            bidi = not peer_stream.stream_id & 2
            stream = MemoryStream(self, peer_stream.stream_id, bidi)
            self.streams[stream.stream_id] = stream
            self.handler.stream_opened(stream, bidi)
            if self.closed:
                return None
        return stream

    def _data(self, peer_stream: MemoryStream, data: bytes, fin: bool) -> None:
        stream = self._stream_for(peer_stream)
        if stream is None:
            return
        stream.receive_ended = stream.receive_ended or fin
        if not stream.stop_sent and stream.receiver is not None:
            stream.receiver.stream_data(data, fin)

    def _reset(self, stream_id: int, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.receive_ended = True
        if not stream.stop_sent and stream.receiver is not None:
            stream.receiver.stream_reset(code)

    def _stop_sending(self, stream_id: int, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.reset(code)
        if stream.receiver is not None:
            stream.receiver.stream_stop_sending(code)

    def _datagram(self, data: bytes) -> None:
        self.datagrams_received.append(data)
        if self.handler is not None:
            self.handler.datagram_received(data)

    def _lost(self, code: int, reason: str) -> None:
        handler = self._shut(code, reason)
        if handler is not None:
            handler.session_closed(code, reason)

    def _shut(self, code: int, reason: str) -> ISessionHandler | None:
        """Flip to closed and drop every reference; return the handler still to notify."""
        if self.closed:
            return None
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        self._queue.clear()
        self._queued = 0
        self._waiters = []
        self.streams = {}
        handler, self.handler = self.handler, None
        return handler


_DeliverTo = Callable[[MemorySession], None]


def memory_session_pair(
    clock: IReactorTime,
    client_factory: HandlerFactory,
    server_factory: HandlerFactory,
    path: str = "",
    low_water: int = 16384,
    high_water: int = 65536,
    *,
    setup_carries_path: bool = False,
    authority: str = "",
) -> tuple[MemorySession, MemorySession]:
    """A connected (client, server) pair, each with its handler attached.

    Give the relay side the same ``high_water`` as the relay's
    ``max_queued_bytes``, as the real services do. With ``setup_carries_path``
    the pair behaves like raw QUIC: the server learns ``path`` (and the
    ``authority``) from CLIENT_SETUP only.
    """
    client = MemorySession(
        clock,
        True,
        path,
        low_water,
        high_water,
        setup_carries_path=setup_carries_path,
        authority=authority,
    )
    server = MemorySession(
        clock,
        False,
        "" if setup_carries_path else path,
        low_water,
        high_water,
        setup_carries_path=setup_carries_path,
    )
    client.other, server.other = server, client
    server.handler = server_factory(server)
    client.handler = client_factory(client)
    return client, server
