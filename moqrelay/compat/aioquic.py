"""aioquic under the QUIC adapter: the `moqrelay.transport.quicstack.QuicStack` names.

aioquic is pure Python and the reference the project started on. The private
parts used here, and only here: ``aioquic._buffer.Buffer`` (header parsing),
``QuicConnection._streams[...].sender.highest_offset`` (bytes not yet sent, for
backpressure), ``_datagrams_pending``, ``_remote_max_datagram_frame_size``,
``_max_datagram_size``, ``_remote_max_idle_timeout``, ``tls._peer_certificate``,
and in HTTP/3 ``_get_local_settings``, ``_get_or_create_stream`` (with
``H3Stream.frame_type`` and ``session_id``) and ``_stream``.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

from aioquic._buffer import Buffer
from aioquic.h3 import events as h3_events
from aioquic.h3.connection import FrameType, H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued as ConnectionIdIssued,
)
from aioquic.quic.events import (
    ConnectionIdRetired as ConnectionIdRetired,
)
from aioquic.quic.events import (
    ConnectionTerminated as ConnectionTerminated,
)
from aioquic.quic.events import (
    DatagramFrameReceived as DatagramFrameReceived,
)
from aioquic.quic.events import (
    HandshakeCompleted as HandshakeCompleted,
)
from aioquic.quic.events import (
    ProtocolNegotiated as ProtocolNegotiated,
)
from aioquic.quic.events import (
    StopSendingReceived as StopSendingReceived,
)
from aioquic.quic.events import (
    StreamDataReceived as StreamDataReceived,
)
from aioquic.quic.events import (
    StreamReset as StreamReset,
)
from aioquic.quic.logger import QuicFileLogger, QuicLoggerTrace
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from cryptography import x509
from cryptography.hazmat.primitives import serialization

H3DataReceived = h3_events.DataReceived
H3DatagramReceived = h3_events.DatagramReceived
H3HeadersReceived = h3_events.HeadersReceived
H3WebTransportStreamDataReceived = h3_events.WebTransportStreamDataReceived

NAME = "aioquic"
PACKET_INITIAL = QuicPacketType.INITIAL
PACKET_VERSION_NEGOTIATION = QuicPacketType.VERSION_NEGOTIATION
# aioquic queues writes on a closing connection instead of raising.
CONNECTION_ERRORS: tuple[type[Exception], ...] = ()


def supported_versions() -> list[int]:
    return list(QuicConfiguration().supported_versions)


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
    """aioquic's token handler: tokens carry the address, both CIDs and a timestamp."""

    def __init__(self) -> None:
        self._handler = QuicRetryTokenHandler()

    def create(
        self, addr: Any, original_destination_cid: bytes, retry_source_cid: bytes, now: float
    ) -> bytes:
        return self._handler.create_token(
            address=addr,
            original_destination_connection_id=original_destination_cid,
            retry_source_connection_id=retry_source_cid,
            now=now,
        )

    def validate(self, addr: Any, destination_cid: bytes, token: bytes, now: float) -> bytes:
        original: bytes = self._handler.validate_token(
            address=addr, destination_cid=destination_cid, token=token, now=now
        )
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
    certificates = x509.load_pem_x509_certificates(cert_pem)
    configuration.certificate = certificates[0]
    configuration.certificate_chain = certificates[1:]
    configuration.private_key = serialization.load_pem_private_key(key_pem, password=None)
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
    datagrams: list[tuple[bytes, Any]] = quic.datagrams_to_send(now=now)
    return datagrams


def unsent_bytes(quic: Any, stream_id: int, end_offset: int) -> int:
    """Bytes of a stream queued below ``end_offset`` and not yet sent once."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    left: int = end_offset - stream.sender.highest_offset
    return left


def pending_datagrams(quic: Any) -> int:
    return len(quic._datagrams_pending)


def remote_max_datagram_frame_size(quic: Any) -> int | None:
    size: int | None = quic._remote_max_datagram_frame_size
    return size


def max_datagram_size(quic: Any) -> int:
    size: int = quic._max_datagram_size
    return size


def remote_idle_timeout(quic: Any) -> float | None:
    """The peer's max_idle_timeout in seconds (None or 0 when it set none)."""
    timeout: float | None = quic._remote_max_idle_timeout
    return timeout


def peer_certificate_der(quic: Any) -> bytes | None:
    certificate = quic.tls._peer_certificate
    if certificate is None:
        return None
    der: bytes = certificate.public_bytes(serialization.Encoding.DER)
    return der


class _H3Connection(H3Connection):
    """aioquic's HTTP/3 connection, announcing the settings it is given on top of its own."""

    def __init__(self, quic: Any, settings: dict[int, int]) -> None:
        self._extra_settings = settings
        super().__init__(quic, enable_webtransport=True)

    def _get_local_settings(self) -> dict[int, int]:
        settings: dict[int, int] = super()._get_local_settings()
        settings.update(self._extra_settings)
        return settings


def h3_connection(quic: Any, settings: dict[int, int]) -> Any:
    return _H3Connection(quic, settings)


def h3_mark_webtransport_stream(h3: Any, stream_id: int, session_id: int) -> None:
    """A bidirectional stream we opened: the peer's answer on it is WebTransport data."""
    with h3._get_or_create_stream(stream_id) as stream:
        stream.frame_type = FrameType.WEBTRANSPORT_STREAM
        stream.session_id = session_id


def h3_forget_stream(h3: Any, stream_id: int) -> None:
    h3._stream.pop(stream_id, None)


def h3_send_datagram(h3: Any, session_id: int, data: bytes) -> None:
    h3.send_datagram(session_id, data)


def h3_datagram_session_id(event: Any) -> int:
    """aioquic reports an HTTP datagram by the session (CONNECT stream) id."""
    session_id: int = event.stream_id
    return session_id


def qlog_file_logger() -> type[Any]:
    """aioquic's logger that writes one qlog file per connection, ``<ODCID hex>.qlog``."""
    return QuicFileLogger


def trace_odcid(trace: QuicLoggerTrace) -> bytes:
    """The original destination connection id a qlog trace is named after (private)."""
    odcid: bytes = trace._odcid
    return odcid


def end_qlog_trace(quic: QuicConnection) -> None:
    """Write the connection's qlog trace now, if it has one still open (private).

    aioquic ends a trace only once the connection has drained; the adapter forgets a
    connection as soon as it is closed, so it ends the trace itself.
    """
    trace = quic._quic_logger
    logger = quic._configuration.quic_logger
    if trace is not None and logger is not None:
        quic._quic_logger = None
        logger.end_trace(trace)
