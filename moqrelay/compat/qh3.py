"""qh3 under the QUIC adapter: the `moqrelay.transport.quicstack.QuicStack` names.

qh3 is a fork of aioquic whose packet core (packets, recovery, congestion and
flow control, streams, crypto) is Rust, behind the same sans-IO calls. Where it
differs from aioquic, the functions here make it look like aioquic to the
adapter: HTTP datagrams are addressed by flow id (session id / 4), certificates
are loaded from PEM, Retry tokens have their own signature, and bytes not yet
sent come from the public ``get_send_buffer_size``.

The private parts used here, and only here: ``qh3._hazmat.Buffer`` (header
parsing), ``QuicConnection._core``
(``poll_transmit``, see `datagrams_to_send`), ``_quic_logger``,
``_remote_max_datagram_frame_size``, ``_tls.remote_transport_parameters``, and
in HTTP/3 ``_get_local_settings``, ``_get_or_create_stream`` (with
``H3Stream.frame_type`` and ``session_id``) and ``_stream``.
"""

from __future__ import annotations

import ssl
import weakref
from collections.abc import Sequence
from typing import Any

from qh3._hazmat import Buffer
from qh3.h3 import events as h3_events
from qh3.h3.connection import FrameType, H3Connection
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.events import (
    ConnectionIdIssued as ConnectionIdIssued,
)
from qh3.quic.events import (
    ConnectionIdRetired as ConnectionIdRetired,
)
from qh3.quic.events import (
    ConnectionTerminated as ConnectionTerminated,
)
from qh3.quic.events import (
    DatagramFrameReceived as DatagramFrameReceived,
)
from qh3.quic.events import (
    HandshakeCompleted as HandshakeCompleted,
)
from qh3.quic.events import (
    ProtocolNegotiated as ProtocolNegotiated,
)
from qh3.quic.events import (
    StopSendingReceived as StopSendingReceived,
)
from qh3.quic.events import (
    StreamDataReceived as StreamDataReceived,
)
from qh3.quic.events import (
    StreamReset as StreamReset,
)
from qh3.quic.logger import QuicFileLogger, QuicLoggerTrace
from qh3.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from qh3.quic.retry import QuicRetryTokenHandler
from twisted.logger import Logger

_log = Logger()
# Connections whose packet builder has failed once: said once each, not on every poll.
_builder_failed: weakref.WeakSet[Any] = weakref.WeakSet()

H3DataReceived = h3_events.DataReceived
H3DatagramReceived = h3_events.DatagramReceived
H3HeadersReceived = h3_events.HeadersReceived
H3WebTransportStreamDataReceived = h3_events.WebTransportStreamDataReceived

NAME = "qh3"
PACKET_INITIAL = QuicPacketType.INITIAL
PACKET_VERSION_NEGOTIATION = QuicPacketType.VERSION_NEGOTIATION
# qh3 raises where aioquic queues: a write, a new stream, a datagram or a ping on a
# closing connection raise QuicConnectionError.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (QuicConnectionError,)


def supported_versions() -> list[int]:
    return [int(version) for version in QuicConfiguration().supported_versions]


def pull_header(datagram: bytes, host_cid_length: int) -> Any:
    """The long or short header of the first packet; ValueError when it is not QUIC."""
    return pull_quic_header(Buffer(data=datagram), host_cid_length=host_cid_length)


def encode_version_negotiation(
    source_cid: bytes, destination_cid: bytes, supported_versions: Sequence[int]
) -> bytes:
    return encode_quic_version_negotiation(
        source_cid=source_cid,
        destination_cid=destination_cid,
        supported_versions=list(supported_versions),
    )


def encode_retry(
    version: int,
    source_cid: bytes,
    destination_cid: bytes,
    original_destination_cid: bytes,
    retry_token: bytes,
) -> bytes:
    return encode_quic_retry(
        version=version,
        source_cid=source_cid,
        destination_cid=destination_cid,
        original_destination_cid=original_destination_cid,
        retry_token=retry_token,
    )


class RetryTokens:
    """qh3's token handler (RSA-OAEP over the address and both CIDs, no timestamp)."""

    def __init__(self) -> None:
        self._handler = QuicRetryTokenHandler()

    def create(
        self, addr: Any, original_destination_cid: bytes, retry_source_cid: bytes, now: float
    ) -> bytes:
        return self._handler.create_token(addr, original_destination_cid, retry_source_cid)

    def validate(self, addr: Any, destination_cid: bytes, token: bytes, now: float) -> bytes:
        original, retry_source = self._handler.validate_token(addr, token)
        if retry_source != destination_cid:
            raise ValueError("token was not issued for this connection id")
        return original


def retry_tokens() -> RetryTokens:
    return RetryTokens()


def server_configuration(
    cert_pem: bytes,
    key_pem: bytes,
    *,
    alpn_protocols: list[str],
    idle_timeout: float,
    max_datagram_frame_size: int,
    connection_id_length: int,
) -> Any:
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=alpn_protocols,
        idle_timeout=idle_timeout,
        max_datagram_frame_size=max_datagram_frame_size,
        connection_id_length=connection_id_length,
    )
    configuration.load_cert_chain(cert_pem, key_pem)
    return configuration


def client_configuration(
    *,
    alpn_protocols: list[str],
    idle_timeout: float,
    max_datagram_frame_size: int,
    connection_id_length: int,
    server_name: str,
    verify: bool,
) -> Any:
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=alpn_protocols,
        idle_timeout=idle_timeout,
        max_datagram_frame_size=max_datagram_frame_size,
        connection_id_length=connection_id_length,
        server_name=server_name,
    )
    if not verify:
        configuration.verify_mode = ssl.CERT_NONE
    return configuration


def new_connection(
    configuration: Any,
    original_destination_connection_id: bytes | None = None,
    retry_source_connection_id: bytes | None = None,
) -> Any:
    return QuicConnection(
        configuration=configuration,
        original_destination_connection_id=original_destination_connection_id,
        retry_source_connection_id=retry_source_connection_id,
    )


def datagrams_to_send(quic: Any, now: float) -> list[tuple[bytes, Any]]:
    """What qh3's ``datagrams_to_send`` returns, minus its two faults.

    qh3 collects datagrams in a local list and raises "packet builder capacity
    exhausted" (QuicConnectionError) from the middle of the loop during some
    server handshakes: the datagrams already built are lost although the core
    counts them as sent. Polling the core here keeps them and ends the batch
    instead. It also skips qh3's re-parsing of every sent header for a logger
    that is not attached (a few per cent of the relay's time under load).
    """
    core = quic._core
    if core is None or quic._quic_logger is not None:
        public: list[tuple[bytes, Any]] = quic.datagrams_to_send(now=now)
        return public
    datagrams: list[tuple[bytes, Any]] = []
    while True:
        try:
            transmit = core.poll_transmit(now)
        except RuntimeError as e:
            if quic not in _builder_failed:
                _builder_failed.add(quic)
                _log.debug("qh3 stopped building packets: {error}", error=e)
            break
        if transmit is None:
            break
        datagrams.append((transmit[0], transmit[1]))
    return datagrams


def unsent_bytes(quic: Any, stream_id: int, end_offset: int) -> int:
    """Bytes of a stream queued and not yet sent once (qh3 tracks them itself)."""
    left: int = quic.get_send_buffer_size(stream_id)
    return left


def pending_datagrams(quic: Any) -> int:
    """qh3's core bounds its own DATAGRAM queue; it exposes no count."""
    return 0


def remote_max_datagram_frame_size(quic: Any) -> int | None:
    size: int | None = quic._remote_max_datagram_frame_size
    return size


def max_datagram_size(quic: Any) -> int:
    size: int = quic.configuration.max_datagram_size
    return size


def remote_idle_timeout(quic: Any) -> float | None:
    """The peer's max_idle_timeout in seconds (None or 0 when it set none)."""
    tls = quic._tls
    parameters = None if tls is None else tls.remote_transport_parameters
    if parameters is None or not parameters.max_idle_timeout:
        return None
    return float(parameters.max_idle_timeout) / 1000


def peer_certificate_der(quic: Any) -> bytes | None:
    certificate = quic.get_peercert()
    if certificate is None:
        return None
    der: bytes = certificate.public_bytes()
    return der


class _H3Connection(H3Connection):
    """qh3's HTTP/3 connection, announcing the settings it is given on top of its own."""

    def __init__(self, quic: QuicConnection, settings: dict[int, int]) -> None:
        self._extra_settings = settings
        super().__init__(quic, enable_webtransport=True)

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings.update(self._extra_settings)
        return settings


def h3_connection(quic: Any, settings: dict[int, int]) -> Any:
    return _H3Connection(quic, settings)


def h3_mark_webtransport_stream(h3: Any, stream_id: int, session_id: int) -> None:
    """A bidirectional stream we opened: the peer's answer on it is WebTransport data."""
    stream = h3._get_or_create_stream(stream_id)
    stream.frame_type = FrameType.WEBTRANSPORT_STREAM
    stream.session_id = session_id


def h3_forget_stream(h3: Any, stream_id: int) -> None:
    h3._stream.pop(stream_id, None)


def h3_send_datagram(h3: Any, session_id: int, data: bytes) -> None:
    """qh3 addresses HTTP datagrams by flow id: the session's stream id / 4."""
    h3.send_datagram(session_id // 4, data)


def h3_datagram_session_id(event: Any) -> int:
    flow_id: int = event.flow_id
    return flow_id * 4


def qlog_file_logger() -> type[Any]:
    """qh3's logger that writes one qlog file per connection, ``<ODCID hex>.qlog``."""
    return QuicFileLogger


def trace_odcid(trace: QuicLoggerTrace) -> bytes:
    """The original destination connection id a qlog trace is named after (private)."""
    odcid: bytes = trace._odcid
    return odcid


def end_qlog_trace(quic: QuicConnection) -> None:
    """Write the connection's qlog trace now, if it has one still open (private).

    qh3 ends a trace only when its core reports the connection terminated, after the
    drain; the adapter forgets a connection as soon as it is closed, so it ends the
    trace itself.
    """
    quic._end_trace()
