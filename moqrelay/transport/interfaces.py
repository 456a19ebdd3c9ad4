"""Transport layer: the one WebTransport-like session interface the MoQT layer sees.

Raw QUIC, WebTransport (HTTP/3) and the WebSocket polyfill each implement
`ITransportSession` and `IStream`; `moqrelay.testing` implements them in memory.
Nothing above this layer knows which transport a session uses.

Contract shared by every implementation:

- A transport is given a *handler factory* ``Callable[[ITransportSession],
  ISessionHandler]``. It calls the factory once the session is established
  (WebSocket upgrade done, QUIC handshake done, or WebTransport CONNECT
  accepted) and then reports everything through the returned handler.
- Streams: a stream has a send half, a receive half, or both. Writes are
  queued, never raise, and are silently dropped once the send half is finished,
  reset or the session is closed. ``reset`` and ``finish`` are idempotent.
  ``reset`` after ``finish`` is left open: QUIC may abandon what it has not sent
  yet (the reader then sees a RESET), WebSocket has nothing left to abandon (the
  reader sees the FIN); callers must not rely on either, and the relay never
  resets a stream it has finished.
- Backpressure is per session: ``queued_bytes()`` is what the transport
  holds that has not reached the network yet, and ``when_writable()`` gives a
  Deferred that fires (from the reactor, never synchronously inside ``write``)
  once the queue has drained below the transport's low-water mark. It is
  already fired when the session is writable now. Deferreds still pending
  when the session closes are never fired, nor are those asked for after it;
  their owners are torn down by the reaper instead.
- ``ISessionHandler.session_closed`` is called exactly once, on each side with
  the code and reason given to ``close``, after which the transport calls
  nothing else on the handler or on any stream receiver. It is never called
  synchronously from inside ``close()``: always from the reactor, a later turn.
  Handlers must keep ``session_closed`` flat: flip state and hand children to
  the reaper, never close a tree inline.
- A stream's receiver hears its data in order, then at most one FIN or one
  RESET_STREAM (with the writer's code).
- A peer STOP_SENDING is answered by the transport itself with a RESET_STREAM
  carrying the same code; the writer's receiver is told through
  ``IStreamReceiver.stream_stop_sending``. The side that sent STOP_SENDING
  hears nothing more on that stream.

``tests/test_transport_contract.py`` runs the same tests of this contract on
every implementation.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


class IStreamReceiver(Interface):
    """What a stream reports to its owner."""

    def stream_data(data: bytes, fin: bool) -> None:
        """Bytes arrived in order on the receive half; ``fin`` ends it."""

    def stream_reset(code: int) -> None:
        """The peer abandoned its send half with an application error code."""

    def stream_stop_sending(code: int) -> None:
        """The peer asked us to stop; our send half is already reset with ``code``."""


class IStream(Interface):
    """One stream of a session, bidirectional or unidirectional."""

    stream_id = Attribute("int: QUIC-style stream id (bit 0: server-initiated, bit 1: uni)")

    def set_receiver(receiver: IStreamReceiver | None) -> None:
        """Route this stream's events to ``receiver`` (``None`` discards them)."""

    def write(data: bytes) -> None:
        """Queue ``data`` on the send half."""

    def finish() -> None:
        """End the send half cleanly (FIN) after the queued data."""

    def reset(code: int) -> None:
        """Abandon the send half with an application error code."""

    def stop_sending(code: int) -> None:
        """Ask the peer to stop sending on the receive half."""


class ISessionHandler(Interface):
    """The MoQT side of a session, as called by the transport."""

    def stream_opened(stream: IStream, bidirectional: bool) -> None:
        """The peer opened ``stream`` (its first bytes follow through the receiver)."""

    def datagram_received(data: bytes) -> None:
        """A datagram arrived (QUIC DATAGRAM or HTTP datagram payload)."""

    def session_closed(code: int, reason: str) -> None:
        """The session is gone (peer close, connection loss, timeout or our close)."""


class ITransportSession(Interface):
    """One established transport session, as used by the MoQT layer."""

    supports_datagrams = Attribute("bool: whether send_datagram can deliver anything")
    is_client = Attribute("bool: whether this side initiated the session")
    path = Attribute("str: the request path and query the client asked for ('' if none)")
    peer = Attribute("str: a printable peer address, for logs")
    authority = Attribute(
        "str: the host[:port] the client asked for ('' if the transport has none)"
    )
    setup_carries_path = Attribute(
        "bool: whether the MoQT SETUP carries PATH and AUTHORITY (raw QUIC: no request"
        " carries them); elsewhere the WebTransport CONNECT or WebSocket upgrade does"
    )
    transport_name = Attribute("str: 'quic', 'webtransport', 'websocket' or 'memory', for logs")

    def open_bidi_stream() -> IStream:
        """Open a bidirectional stream (a client uses it for the control stream)."""

    def open_uni_stream() -> IStream:
        """Open a unidirectional stream we send on."""

    def send_datagram(data: bytes) -> None:
        """Send a datagram, or drop it when unsupported or too large."""

    def queued_bytes() -> int:
        """Bytes accepted by ``write`` that have not reached the network yet."""

    def when_writable() -> Deferred[None]:
        """A Deferred fired once ``queued_bytes()`` is below the low-water mark."""

    def close(code: int, reason: str) -> None:
        """Close the whole session with an application code; idempotent."""


HandlerFactory = Callable[[ITransportSession], ISessionHandler]
