"""Transport layer: WebTransport over HTTP/3 (ALPN h3), as an `ITransportSession`.

The HTTP/3 connection is the QUIC stack's own ``H3Connection`` (aioquic or qh3,
through `moqrelay.compat`) announcing the settings that browsers need
(`BROWSER_SETTINGS`: extended CONNECT, draft-02 ENABLE_WEBTRANSPORT,
SETTINGS_WT_MAX_SESSIONS, H3_DATAGRAM), with locally opened bidirectional
streams registered so the peer's answers on them come back as WebTransport data
instead of being parsed as HTTP/3 frames.

`WebTransportApplication` drives one HTTP/3 connection for `QuicEndpoint`: a
server accepts one extended CONNECT with ``:protocol webtransport`` on any path
(other requests get 404, other CONNECTs 501, a second session 429); a client
sends that CONNECT after the handshake. The accepted session is a
`WebTransportSession`: WebTransport streams, HTTP datagrams, stream error codes
mapped into the HTTP/3 range, and the CLOSE_WEBTRANSPORT_SESSION capsule.
`quic_applications` is the ALPN map a `QuicEndpoint` needs to speak both raw
MoQT and WebTransport; this module imports quic.py, never the other way.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from moqrelay.transport.interfaces import ITransportSession
from moqrelay.transport.quic import (
    ALPN_H3,
    ALPN_MOQT,
    ApplicationFactory,
    QuicConnectError,
    QuicEndpointConnection,
    QuicSessionBase,
    RawQuicSession,
)
from moqrelay.wire.varint import NeedMoreData, Reader, encode_varint

_log = Logger()

SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8
SETTINGS_H3_DATAGRAM = 0x33
SETTINGS_ENABLE_WEBTRANSPORT = 0x2B603742  # draft-02
SETTINGS_WT_MAX_SESSIONS = 0x14E9CD29
# Added to the stack's own HTTP/3 settings. qh3 does not send ENABLE_CONNECT_PROTOCOL
# by itself, and Chromium refuses WebTransport without it.
BROWSER_SETTINGS = {
    SETTINGS_ENABLE_CONNECT_PROTOCOL: 1,
    SETTINGS_H3_DATAGRAM: 1,
    SETTINGS_ENABLE_WEBTRANSPORT: 1,
    SETTINGS_WT_MAX_SESSIONS: 1,
}
H3_NO_ERROR = 0x100
# The first bytes of a WebTransport stream: WEBTRANSPORT_STREAM (bidirectional) or
# the WebTransport stream type (unidirectional), then the session id.
_WT_BIDI_SIGNAL = 0x41
_WT_UNI_STREAM_TYPE = 0x54
CLOSE_WEBTRANSPORT_SESSION = 0x2843
MAX_CLOSE_REASON = 1024
# Capsules other than CLOSE are skipped; one bigger than this ends the session.
MAX_CAPSULE_SIZE = 65536
# After sending CLOSE_WEBTRANSPORT_SESSION, the QUIC connection is closed at the
# latest this long after, if the peer has not closed it first.
CLOSE_LINGER = 1.0

_WT_ERROR_FIRST = 0x52E4A40FA8DB
_WT_ERROR_LAST = 0x52E5AC983162


def webtransport_code_to_http3(code: int) -> int:
    """A 32-bit WebTransport stream error code as carried by RESET_STREAM / STOP_SENDING."""
    code &= 0xFFFFFFFF
    return _WT_ERROR_FIRST + code + code // 0x1E


def http3_code_to_webtransport(wire_code: int) -> int | None:
    """The WebTransport error code inside an HTTP/3 one, or None when it carries none."""
    if not _WT_ERROR_FIRST <= wire_code <= _WT_ERROR_LAST or (wire_code - 0x21) % 0x1F == 0:
        return None
    shifted = wire_code - _WT_ERROR_FIRST
    return shifted - shifted // 0x1F


def encode_close_capsule(code: int, reason: str) -> bytes:
    """CLOSE_WEBTRANSPORT_SESSION: u32 code and a UTF-8 reason (cut to 1024 bytes)."""
    body = struct.pack("!I", code & 0xFFFFFFFF) + reason.encode()[:MAX_CLOSE_REASON]
    return encode_varint(CLOSE_WEBTRANSPORT_SESSION) + encode_varint(len(body)) + body


def pull_capsules(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Remove every complete capsule from ``buffer``: a list of (type, value)."""
    capsules: list[tuple[int, bytes]] = []
    while buffer:
        reader = Reader(bytes(buffer[:16]))
        try:
            capsule_type = reader.varint()
            length = reader.varint()
        except NeedMoreData:
            break
        start = reader.pos
        if len(buffer) < start + length:
            break
        capsules.append((capsule_type, bytes(buffer[start : start + length])))
        del buffer[: start + length]
    return capsules


def _parse_close_capsule(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        return 0, ""
    (code,) = struct.unpack("!I", value[:4])
    return code, value[4:].decode(errors="replace")


@implementer(ITransportSession)
class WebTransportSession(QuicSessionBase):
    """One WebTransport session: its CONNECT stream id is its session id."""

    transport_name = "webtransport"
    setup_carries_path = False

    def __init__(
        self,
        application: WebTransportApplication,
        connection: QuicEndpointConnection,
        session_id: int,
        *,
        path: str,
        authority: str,
        low_water: int,
        high_water: int,
    ) -> None:
        super().__init__(
            connection, path=path, authority=authority, low_water=low_water, high_water=high_water
        )
        self.session_id = session_id
        self._application = application
        self._h3 = application.h3
        self._uni_prefix = encode_varint(_WT_UNI_STREAM_TYPE) + encode_varint(session_id)
        self._bidi_prefix = encode_varint(_WT_BIDI_SIGNAL) + encode_varint(session_id)
        self._quarter_id_size = len(encode_varint(session_id // 4))

    @property
    def supports_datagrams(self) -> bool:
        settings = self._h3.received_settings
        return (
            settings is not None
            and settings.get(SETTINGS_H3_DATAGRAM) == 1
            and self._stack.remote_max_datagram_frame_size(self._quic) is not None
        )

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self._application.send_close(code, reason)
        self._close_locally(code, reason)

    def _stream_prefix(self, unidirectional: bool) -> bytes:
        return self._uni_prefix if unidirectional else self._bidi_prefix

    def _stream_opened_locally(self, stream_id: int, unidirectional: bool) -> None:
        if not unidirectional:
            self._stack.h3_mark_webtransport_stream(self._h3, stream_id, self.session_id)

    def _send_datagram_frame(self, data: bytes) -> None:
        self._stack.h3_send_datagram(self._h3, self.session_id, data)

    def _datagram_overhead(self) -> int:
        return self._quarter_id_size

    def _wire_code(self, code: int) -> int:
        return webtransport_code_to_http3(code)

    def _app_code(self, wire_code: int) -> int:
        code = http3_code_to_webtransport(wire_code)
        return 0 if code is None else code

    def _stream_forgotten(self, stream_id: int) -> None:
        self._stack.h3_forget_stream(self._h3, stream_id)


class WebTransportApplication:
    """The HTTP/3 side of one QUIC connection (ALPN h3), carrying at most one session."""

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
        self.h3 = self._stack.h3_connection(connection.quic, BROWSER_SETTINGS)
        self._path = path
        self._authority = authority
        self._low_water = low_water
        self._high_water = high_water
        self.session: WebTransportSession | None = None
        self._connect_stream_id: int | None = None
        self._capsules = bytearray()
        self._linger_call: IDelayedCall | None = None

    # -- Application (driven by QuicEndpoint) ------------------------------------------

    def handshake_completed(self) -> None:
        if not self._connection.is_client:
            return
        stream_id = self._quic.get_next_available_stream_id()
        self._connect_stream_id = stream_id
        self._send_headers(
            stream_id,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"webtransport"),
                (b":scheme", b"https"),
                (b":authority", self._authority.encode()),
                (b":path", self._path.encode()),
                (b"sec-webtransport-http3-draft02", b"1"),
            ],
        )

    def quic_event(self, event: Any) -> None:
        session = self.session
        stack = self._stack
        if session is not None:
            if isinstance(event, stack.StreamReset | stack.StopSendingReceived):
                if event.stream_id == session.session_id:
                    self._peer_closed(0, "CONNECT stream closed")
                elif isinstance(event, stack.StreamReset):
                    session.on_stream_reset(event.stream_id, event.error_code)
                else:
                    session.on_stop_sending(event.stream_id, event.error_code)
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)

    def transmitted(self) -> None:
        if self.session is not None:
            self.session.transmitted()

    def connection_terminated(self, code: int, reason: str) -> None:
        self._cancel_linger()
        if self.session is not None:
            self.session.connection_terminated(code, reason)

    # -- HTTP/3 events ---------------------------------------------------------------------

    def _h3_event(self, event: Any) -> None:
        session = self.session
        stack = self._stack
        if isinstance(event, stack.H3WebTransportStreamDataReceived):
            if session is not None and event.session_id == session.session_id:
                session.on_stream_data(event.stream_id, event.data, event.stream_ended)
        elif isinstance(event, stack.H3DatagramReceived):
            if session is not None and stack.h3_datagram_session_id(event) == session.session_id:
                session.on_datagram(event.data)
        elif isinstance(event, stack.H3DataReceived):
            if session is not None and event.stream_id == session.session_id:
                self._connect_stream_data(event.data, event.stream_ended)
        elif isinstance(event, stack.H3HeadersReceived):
            if self._connection.is_client:
                self._response(event)
            else:
                self._request(event)

    def _send_headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False
    ) -> None:
        try:
            self.h3.send_headers(stream_id, headers, end_stream=end_stream)
        except self._stack.CONNECTION_ERRORS:
            return
        self._connection.schedule_flush()

    def _request(self, event: Any) -> None:
        headers = dict(event.headers)
        method = headers.get(b":method")
        if method == b"CONNECT" and headers.get(b":protocol") == b"webtransport":
            if self.session is not None:
                self._answer(event.stream_id, b"429")
                return
            self._send_headers(
                event.stream_id,
                [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")],
            )
            self.session = self._new_session(
                event.stream_id,
                path=headers.get(b":path", b"").decode(errors="replace"),
                authority=headers.get(b":authority", b"").decode(errors="replace"),
            )
            self._connection.established(self.session)
        elif method == b"CONNECT":
            self._answer(event.stream_id, b"501")
        else:
            self._answer(event.stream_id, b"404")

    def _answer(self, stream_id: int, status: bytes) -> None:
        self._send_headers(stream_id, [(b":status", status)], end_stream=True)

    def _response(self, event: Any) -> None:
        if event.stream_id != self._connect_stream_id or self.session is not None:
            return
        status = dict(event.headers).get(b":status", b"")
        if status.startswith(b"1"):
            return
        if status == b"200":
            self.session = self._new_session(
                event.stream_id, path=self._path, authority=self._authority
            )
            self._connection.established(self.session)
            return
        attempt, self._connection.attempt = self._connection.attempt, None
        if attempt is not None:
            attempt.fail(
                QuicConnectError(f"WebTransport CONNECT refused: status {status.decode()}")
            )
        self._connection.abandon(H3_NO_ERROR, "session refused")

    def _new_session(self, session_id: int, *, path: str, authority: str) -> WebTransportSession:
        return WebTransportSession(
            self,
            self._connection,
            session_id,
            path=path,
            authority=authority,
            low_water=self._low_water,
            high_water=self._high_water,
        )

    # -- session end -------------------------------------------------------------------

    def _connect_stream_data(self, data: bytes, ended: bool) -> None:
        self._capsules += data
        for capsule_type, value in pull_capsules(self._capsules):
            if capsule_type == CLOSE_WEBTRANSPORT_SESSION:
                code, reason = _parse_close_capsule(value)
                self._peer_closed(code, reason)
                return
        if ended:
            self._peer_closed(0, "")
        elif len(self._capsules) > MAX_CAPSULE_SIZE:
            self._peer_closed(0, "capsule too large")

    def _peer_closed(self, code: int, reason: str) -> None:
        """The peer ended the session (or answered our close): close the connection now."""
        self._cancel_linger()
        self._capsules = bytearray()
        if self.session is not None:
            self.session.report_closed(code, reason)
        self._quic.close(error_code=H3_NO_ERROR, reason_phrase="")
        self._connection.schedule_flush()

    def send_close(self, code: int, reason: str) -> None:
        """Send CLOSE_WEBTRANSPORT_SESSION and FIN on the CONNECT stream, then linger."""
        assert self.session is not None
        try:
            self.h3.send_data(
                self.session.session_id, encode_close_capsule(code, reason), end_stream=True
            )
        except Exception:
            _log.failure("could not send CLOSE_WEBTRANSPORT_SESSION")
            self._quic.close(error_code=H3_NO_ERROR, reason_phrase=reason)
        if self._linger_call is None:
            self._linger_call = self._reactor.callLater(CLOSE_LINGER, self._linger_over)

    def _linger_over(self) -> None:
        self._linger_call = None
        self._quic.close(error_code=H3_NO_ERROR, reason_phrase="")
        self._connection.schedule_flush()

    def _cancel_linger(self) -> None:
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None


def quic_applications() -> dict[str, ApplicationFactory]:
    """The ALPN map of a `QuicEndpoint` that speaks raw MoQT and WebTransport."""
    return {ALPN_MOQT: RawQuicSession, ALPN_H3: WebTransportApplication}
