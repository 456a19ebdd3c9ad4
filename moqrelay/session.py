"""Session layer: one MoQT draft-14 session over any transport.

`MoqtSession` is the `ISessionHandler` a transport talks to. It owns the
control stream (the client's first bidirectional stream), the SETUP exchange,
request-id parity and windows in both directions, and the decoding of incoming
data streams and datagrams. Everything else goes to a `SessionApp` (the relay,
or a client) as decoded messages and objects. Any protocol error ends only
this session, with the draft's error code; an exception in the app ends it
with INTERNAL_ERROR and is logged.

Teardown is flat: when the transport reports the session closed, the session
flips its state, drops its stream maps and tells the app once; the app hands
its own children to the reaper.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from moqrelay import counters
from moqrelay.transport.interfaces import (
    ISessionHandler,
    IStream,
    IStreamReceiver,
    ITransportSession,
)
from moqrelay.wire import control as c
from moqrelay.wire.data import (
    DataStreamDecoder,
    FetchHeader,
    FetchObject,
    ObjectDatagram,
    ObjectRecord,
    SubgroupHeader,
    decode_datagram,
)
from moqrelay.wire.errors import ProtocolViolation, SessionErrorCode

_log = Logger()

IMPLEMENTATION = b"moqrelay/0.1"
# What a relay's own upstream session says it is: other relays never forward its
# requests or announcements further (see moqrelay/relay/upstream.py).
RELAY_IMPLEMENTATION = b"moqrelay-relay/0.1"

REQUEST_TYPES: tuple[type, ...] = (
    c.Subscribe,
    c.SubscribeUpdate,
    c.Fetch,
    c.SubscribeNamespace,
    c.Publish,
    c.PublishNamespace,
    c.TrackStatus,
)

_SETUP_TYPES = (c.ClientSetup, c.ServerSetup)

# A request stays open until the final answer goes back (or the peer cancels it);
# the MAX_REQUEST_ID window is raised as requests complete.
_FINAL_ANSWERS: tuple[type, ...] = (
    c.SubscribeError,
    c.PublishDone,
    c.FetchOk,
    c.FetchError,
    c.TrackStatusOk,
    c.TrackStatusError,
    c.PublishNamespaceOk,
    c.PublishNamespaceError,
    c.SubscribeNamespaceOk,
    c.SubscribeNamespaceError,
    c.PublishOk,
    c.PublishError,
)
_CANCELS: tuple[type, ...] = (c.Unsubscribe, c.FetchCancel)


@dataclass
class SessionLimits:
    """Per-session bounds; every field is a command-line option of the relay."""

    setup_timeout: float = 10.0
    request_window: int = 100
    max_control_message: int = 65535
    max_incoming_streams: int = 10_000
    max_object_size: int = 16 << 20


class SessionApp(Protocol):
    """What a MoQT session reports to the relay or a client."""

    def session_ready(self) -> None:
        """SETUP is done; requests may flow."""

    def control_message(self, msg: c.ControlMessage) -> None:
        """Any control message other than SETUP and request-id flow control."""

    def data_header(self, stream: IncomingData) -> None:
        """An incoming data stream's header is known (``stream.header``)."""

    def data_object(self, stream: IncomingData, obj: ObjectRecord | FetchObject) -> None:
        """One object arrived on an incoming data stream."""

    def data_end(self, stream: IncomingData, reset_code: int | None) -> None:
        """The data stream ended: FIN (``None``) or RESET_STREAM with a code."""

    def datagram(self, datagram: ObjectDatagram) -> None:
        """An OBJECT_DATAGRAM arrived."""

    def session_ended(self, code: int, reason: str) -> None:
        """The session is gone; called once."""


AppFactory = Callable[["MoqtSession"], SessionApp]


class ControlChannel(Protocol):
    """The control-message half of a session: what a module that only talks needs."""

    def send(self, msg: c.ControlMessage) -> None:
        """Send one control message."""

    def send_request(self, make: Callable[[int], c.ControlMessage]) -> None:
        """Send a new request once the peer's request window allows it."""


@implementer(IStreamReceiver)
class _ControlReceiver:
    def __init__(self, session: MoqtSession) -> None:
        self.session = session

    def stream_data(self, data: bytes, fin: bool) -> None:
        self.session._control_data(data, fin)

    def stream_reset(self, code: int) -> None:
        self.session._fail(ProtocolViolation("control stream reset by peer"))

    def stream_stop_sending(self, code: int) -> None:
        self.session._fail(ProtocolViolation("STOP_SENDING on the control stream"))


@implementer(IStreamReceiver)
class IncomingData:
    """One incoming unidirectional data stream (subgroup or fetch)."""

    __slots__ = ("__weakref__", "context", "decoder", "header", "session", "stream")

    def __init__(self, session: MoqtSession, stream: IStream) -> None:
        self.session = session
        self.stream = stream
        self.decoder = DataStreamDecoder(max_object_size=session.limits.max_object_size)
        self.header: SubgroupHeader | FetchHeader | None = None
        # Whatever the app attaches to route this stream's objects (a subgroup).
        self.context: object = None

    def stream_data(self, data: bytes, fin: bool) -> None:
        self.session._incoming_data(self, data, fin)

    def stream_reset(self, code: int) -> None:
        self.session._incoming_end(self, code)

    def stream_stop_sending(self, code: int) -> None:
        """Uni streams we only read cannot be stopped by the peer; nothing to do."""

    def stop(self, code: int) -> None:
        """Ask the peer to stop sending and forget the stream."""
        self.stream.stop_sending(code)
        self.session._forget(self)


@implementer(ISessionHandler)
class MoqtSession:
    """A MoQT draft-14 session on one transport session."""

    def __init__(
        self,
        transport: ITransportSession,
        reactor: IReactorTime,
        app_factory: AppFactory,
        limits: SessionLimits | None = None,
        setup_params: list[c.Param] | None = None,
    ) -> None:
        self.transport = transport
        self.reactor = reactor
        self.limits = limits or SessionLimits()
        self.is_client: bool = transport.is_client
        self.ready = False
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.peer_params: list[c.Param] = []
        self.path: str = transport.path
        self.goaway_received = False
        self._control: IStream | None = None
        self._decoder = c.ControlStreamDecoder(self.limits.max_control_message)
        self._incoming: dict[int, IncomingData] = {}
        window = self.limits.request_window
        # Requests the peer sends us: the client's ids are even, the server's odd.
        self._peer_next_id = 1 if self.is_client else 0
        self._peer_max_id = self._peer_next_id + 2 * window
        self._open_requests = 0
        # Requests we send.
        self._our_next_id = 0 if self.is_client else 1
        self._our_max_id = 0
        self._blocked_sent_at = -1
        self._queued_requests: deque[Callable[[int], c.ControlMessage]] = deque()
        self._setup_timer: IDelayedCall | None = reactor.callLater(
            self.limits.setup_timeout, self._setup_timed_out
        )
        self.app: SessionApp = app_factory(self)
        counters.session_opened(transport.transport_name)
        if self.is_client:
            self._control = transport.open_bidi_stream()
            self._control.set_receiver(_ControlReceiver(self))
            params = list(setup_params or [])
            if transport.setup_carries_path:
                if transport.path:
                    params.append((c.SETUP_PATH, transport.path.encode()))
                if transport.authority:
                    params.append((c.SETUP_AUTHORITY, transport.authority.encode()))
            params.append((c.SETUP_MAX_REQUEST_ID, self._peer_max_id))
            if c.get_param(params, c.SETUP_MOQT_IMPLEMENTATION) is None:
                params.append((c.SETUP_MOQT_IMPLEMENTATION, IMPLEMENTATION))
            self._write_control(c.ClientSetup([c.DRAFT_14], params))

    # -- sending ---------------------------------------------------------

    def send(self, msg: c.ControlMessage) -> None:
        """Send one control message (dropped before the control stream exists and once the
        session is closed)."""
        if self.closed or self._control is None:
            return
        self._write_control(msg)
        if isinstance(msg, _FINAL_ANSWERS):
            counters.final_answer_sent(msg)
            self._request_completed()

    def _write_control(self, msg: c.ControlMessage) -> None:
        assert self._control is not None
        self._control.write(c.encode_message(msg))

    def send_request(self, make: Callable[[int], c.ControlMessage]) -> None:
        """Send a new request once the peer's MAX_REQUEST_ID allows one.

        ``make`` gets the request id and returns the message; it runs at once
        when the window is open, otherwise when the peer raises it.
        """
        if self.closed:
            return
        if self._queued_requests or self._our_next_id >= self._our_max_id:
            self._queued_requests.append(make)
            self._announce_blocked()
            return
        self._send_new_request(make)

    def _send_new_request(self, make: Callable[[int], c.ControlMessage]) -> None:
        request_id = self._our_next_id
        self._our_next_id += 2
        self._write_control(make(request_id))

    def _announce_blocked(self) -> None:
        if self._blocked_sent_at != self._our_max_id and self.ready:
            self._blocked_sent_at = self._our_max_id
            self._write_control(c.RequestsBlocked(self._our_max_id))

    def _flush_requests(self) -> None:
        while self._queued_requests and self._our_next_id < self._our_max_id:
            self._send_new_request(self._queued_requests.popleft())
        if self._queued_requests:
            self._announce_blocked()

    def open_uni_stream(self) -> IStream:
        return self.transport.open_uni_stream()

    def close(self, code: int = SessionErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the session with a MoQT termination code; idempotent."""
        if self.closed:
            return
        self.transport.close(code, reason)
        self._teardown(code, reason)

    # -- ISessionHandler ---------------------------------------------------

    def stream_opened(self, stream: IStream, bidirectional: bool) -> None:
        if self.closed:
            return
        if bidirectional:
            if self._control is None and not self.is_client:
                self._control = stream
                stream.set_receiver(_ControlReceiver(self))
                return
            self._fail(ProtocolViolation("unexpected bidirectional stream"))
            return
        if not self.ready:
            self._fail(ProtocolViolation("data stream before SETUP completed"))
            return
        if len(self._incoming) >= self.limits.max_incoming_streams:
            stream.stop_sending(0)
            self._fail(ProtocolViolation("too many concurrent data streams"))
            return
        incoming = IncomingData(self, stream)
        self._incoming[stream.stream_id] = incoming
        stream.set_receiver(incoming)

    def datagram_received(self, data: bytes) -> None:
        if self.closed or not self.ready:
            return
        try:
            datagram = decode_datagram(data)
        except ProtocolViolation as e:
            self._fail(e)
            return
        self._call_app(self.app.datagram, datagram)

    def session_closed(self, code: int, reason: str) -> None:
        self._teardown(code, reason)

    # -- internals -------------------------------------------------------

    def _teardown(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        counters.session_closed(self.transport.transport_name, code)
        if self._setup_timer is not None and self._setup_timer.active():
            self._setup_timer.cancel()
        self._setup_timer = None
        self._incoming = {}
        self._queued_requests.clear()
        self._control = None
        try:
            self.app.session_ended(code, reason)
        except Exception:
            _log.failure("session teardown failed")

    def _fail(self, error: ProtocolViolation) -> None:
        _log.info(
            "closing session with {peer}: {reason} (code {code:#x})",
            peer=self.transport.peer,
            reason=error.reason,
            code=error.code,
        )
        self.close(error.code, error.reason)

    def _setup_timed_out(self) -> None:
        self._setup_timer = None
        if not self.ready:
            self._fail(
                ProtocolViolation(
                    "no SETUP within the setup timeout", SessionErrorCode.CONTROL_MESSAGE_TIMEOUT
                )
            )

    def _call_app(self, method: Callable[..., None], *args: object) -> None:
        try:
            method(*args)
        except ProtocolViolation as e:
            self._fail(e)
        except Exception:
            _log.failure("internal error handling a message from {peer}", peer=self.transport.peer)
            self.close(SessionErrorCode.INTERNAL_ERROR, "internal error")

    def _control_data(self, data: bytes, fin: bool) -> None:
        if self.closed:
            return
        try:
            messages = self._decoder.feed(data)
            for msg in messages:
                if self.closed:
                    return
                self._handle(msg)
            if fin:
                raise ProtocolViolation("control stream closed by peer")
        except ProtocolViolation as e:
            self._fail(e)
        except Exception:
            _log.failure(
                "internal error on the control stream of {peer}", peer=self.transport.peer
            )
            self.close(SessionErrorCode.INTERNAL_ERROR, "internal error")

    def _handle(self, msg: c.ControlMessage) -> None:
        if not self.ready:
            self._handle_setup(msg)
            return
        if isinstance(msg, _SETUP_TYPES):
            raise ProtocolViolation("second SETUP message")
        if isinstance(msg, REQUEST_TYPES):
            self._check_request_id(msg.request_id)  # type: ignore[union-attr]
            if isinstance(msg, c.SubscribeUpdate):
                self._request_completed()
        elif isinstance(msg, _CANCELS):
            self._request_completed()
        elif isinstance(msg, c.MaxRequestId):
            if msg.request_id <= self._our_max_id:
                raise ProtocolViolation("MAX_REQUEST_ID did not increase")
            self._our_max_id = msg.request_id
            self._flush_requests()
            return
        elif isinstance(msg, c.RequestsBlocked):
            _log.debug(
                "{peer} is blocked on request id {id}",
                peer=self.transport.peer,
                id=msg.maximum_request_id,
            )
            return
        elif isinstance(msg, c.GoAway):
            if self.goaway_received:
                raise ProtocolViolation("second GOAWAY")
            if not self.is_client and msg.new_session_uri:
                raise ProtocolViolation("a client may not send a GOAWAY with a URI")
            self.goaway_received = True
        self.app.control_message(msg)

    def _check_request_id(self, request_id: int) -> None:
        if request_id != self._peer_next_id:
            raise ProtocolViolation(
                f"request id {request_id}, expected {self._peer_next_id}",
                SessionErrorCode.INVALID_REQUEST_ID,
            )
        if request_id >= self._peer_max_id:
            raise ProtocolViolation(
                f"request id {request_id} is not below MAX_REQUEST_ID {self._peer_max_id}",
                SessionErrorCode.TOO_MANY_REQUESTS,
            )
        self._peer_next_id += 2
        self._open_requests += 1

    def _request_completed(self) -> None:
        self._open_requests = max(0, self._open_requests - 1)
        window = self.limits.request_window
        credit = (self._peer_max_id - self._peer_next_id) // 2
        if credit < window / 2:
            new_max = self._peer_next_id + 2 * (window - self._open_requests)
            if new_max > self._peer_max_id:
                self._peer_max_id = new_max
                self._write_control(c.MaxRequestId(new_max))

    def _handle_setup(self, msg: c.ControlMessage) -> None:
        if self.is_client:
            if not isinstance(msg, c.ServerSetup):
                raise ProtocolViolation("expected SERVER_SETUP")
            if msg.version != c.DRAFT_14:
                raise ProtocolViolation(
                    f"server selected unsupported version {msg.version:#x}",
                    SessionErrorCode.VERSION_NEGOTIATION_FAILED,
                )
            self._setup_done(msg.params)
            return
        if not isinstance(msg, c.ClientSetup):
            raise ProtocolViolation("expected CLIENT_SETUP")
        if c.DRAFT_14 not in msg.versions:
            offered = ", ".join(f"{v:#x}" for v in msg.versions)
            raise ProtocolViolation(
                f"no supported version offered ({offered})",
                SessionErrorCode.VERSION_NEGOTIATION_FAILED,
            )
        path = c.get_param(msg.params, c.SETUP_PATH)
        if path is not None:
            if not self.transport.setup_carries_path:
                raise ProtocolViolation(
                    "PATH is only allowed on raw QUIC", SessionErrorCode.INVALID_PATH
                )
            if not isinstance(path, bytes):
                raise ProtocolViolation("malformed PATH", SessionErrorCode.MALFORMED_PATH)
            try:
                self.path = path.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ProtocolViolation(
                    "PATH is not UTF-8", SessionErrorCode.MALFORMED_PATH
                ) from e
        self._write_control(
            c.ServerSetup(c.DRAFT_14, [(c.SETUP_MAX_REQUEST_ID, self._peer_max_id)])
        )
        self._setup_done(msg.params)

    def _setup_done(self, params: list[c.Param]) -> None:
        self.peer_params = params
        peer_max = c.get_param(params, c.SETUP_MAX_REQUEST_ID)
        self._our_max_id = peer_max if isinstance(peer_max, int) else 0
        self.ready = True
        if self._setup_timer is not None and self._setup_timer.active():
            self._setup_timer.cancel()
        self._setup_timer = None
        self.app.session_ready()
        self._flush_requests()

    def _incoming_data(self, incoming: IncomingData, data: bytes, fin: bool) -> None:
        if self.closed or incoming.stream.stream_id not in self._incoming:
            return
        try:
            for event in incoming.decoder.feed(data):
                if isinstance(event, (SubgroupHeader, FetchHeader)):
                    incoming.header = event
                    self.app.data_header(incoming)
                else:
                    self.app.data_object(incoming, event)
                if self.closed or incoming.stream.stream_id not in self._incoming:
                    return
            if fin:
                incoming.decoder.end_of_stream()
                self._forget(incoming)
                self.app.data_end(incoming, None)
        except ProtocolViolation as e:
            self._fail(e)
        except Exception:
            _log.failure("internal error on a data stream from {peer}", peer=self.transport.peer)
            self.close(SessionErrorCode.INTERNAL_ERROR, "internal error")

    def _incoming_end(self, incoming: IncomingData, code: int) -> None:
        if self.closed or self._incoming.pop(incoming.stream.stream_id, None) is None:
            return
        self._call_app(self.app.data_end, incoming, code)

    def _forget(self, incoming: IncomingData) -> None:
        self._incoming.pop(incoming.stream.stream_id, None)
        incoming.stream.set_receiver(None)
