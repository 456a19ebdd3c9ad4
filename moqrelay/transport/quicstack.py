"""Transport layer: the QUIC stacks the adapter can run on, and how to pick one.

`QuicEndpoint` keeps aioquic's sans-IO API as its contract
(``receive_datagram``/``datagrams_to_send``/``next_event``/``get_timer``/
``handle_timer`` and ``H3Connection``). Two libraries offer it: aioquic (pure
Python, the reference) and qh3 (a fork whose packet core is Rust). Each is
wrapped by one module in `moqrelay.compat` that exposes the same names, listed
by `QuicStack`; everything that differs between them, and every private part
either has, sits behind a function there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

STACK_NAMES = ("aioquic", "qh3")
# aioquic stays the default until qh3's server completes handshakes with aioquic
# clients (our own tools and the upstream link): see README, "QUIC stacks".
DEFAULT_STACK = "aioquic"


class QuicStack(Protocol):
    """What `moqrelay.compat.aioquic` and `moqrelay.compat.qh3` both provide."""

    @property
    def NAME(self) -> str: ...
    @property
    def PACKET_INITIAL(self) -> Any: ...
    @property
    def PACKET_VERSION_NEGOTIATION(self) -> Any: ...
    # Raised by a write, a new stream, a datagram or a ping on a connection that is closing.
    @property
    def CONNECTION_ERRORS(self) -> tuple[type[Exception], ...]: ...

    @property
    def ConnectionIdIssued(self) -> type[Any]: ...
    @property
    def ConnectionIdRetired(self) -> type[Any]: ...
    @property
    def ConnectionTerminated(self) -> type[Any]: ...
    @property
    def DatagramFrameReceived(self) -> type[Any]: ...
    @property
    def HandshakeCompleted(self) -> type[Any]: ...
    @property
    def ProtocolNegotiated(self) -> type[Any]: ...
    @property
    def StopSendingReceived(self) -> type[Any]: ...
    @property
    def StreamDataReceived(self) -> type[Any]: ...
    @property
    def StreamReset(self) -> type[Any]: ...
    @property
    def H3DataReceived(self) -> type[Any]: ...
    @property
    def H3DatagramReceived(self) -> type[Any]: ...
    @property
    def H3HeadersReceived(self) -> type[Any]: ...
    @property
    def H3WebTransportStreamDataReceived(self) -> type[Any]: ...

    def supported_versions(self) -> list[int]: ...

    def qlog_file_logger(self) -> type[Any]: ...

    def trace_odcid(self, trace: Any) -> bytes: ...

    def end_qlog_trace(self, quic: Any) -> None: ...

    def pull_header(self, datagram: bytes, host_cid_length: int) -> Any: ...

    def encode_version_negotiation(
        self, source_cid: bytes, destination_cid: bytes, supported_versions: Sequence[int]
    ) -> bytes: ...

    def encode_retry(
        self,
        version: int,
        source_cid: bytes,
        destination_cid: bytes,
        original_destination_cid: bytes,
        retry_token: bytes,
    ) -> bytes: ...

    def retry_tokens(self) -> RetryTokens: ...

    def server_configuration(
        self,
        cert_pem: bytes,
        key_pem: bytes,
        *,
        alpn_protocols: list[str],
        idle_timeout: float,
        max_datagram_frame_size: int,
        connection_id_length: int,
    ) -> Any: ...

    def client_configuration(
        self,
        *,
        alpn_protocols: list[str],
        idle_timeout: float,
        max_datagram_frame_size: int,
        connection_id_length: int,
        server_name: str,
        verify: bool,
    ) -> Any: ...

    def new_connection(
        self,
        configuration: Any,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
    ) -> Any: ...

    def datagrams_to_send(self, quic: Any, now: float) -> list[tuple[bytes, Any]]: ...

    def unsent_bytes(self, quic: Any, stream_id: int, end_offset: int) -> int: ...

    def pending_datagrams(self, quic: Any) -> int: ...

    def remote_max_datagram_frame_size(self, quic: Any) -> int | None: ...

    def max_datagram_size(self, quic: Any) -> int: ...

    def remote_idle_timeout(self, quic: Any) -> float | None: ...

    def peer_certificate_der(self, quic: Any) -> bytes | None: ...

    def h3_connection(self, quic: Any, settings: dict[int, int]) -> Any: ...

    def h3_mark_webtransport_stream(self, h3: Any, stream_id: int, session_id: int) -> None: ...

    def h3_forget_stream(self, h3: Any, stream_id: int) -> None: ...

    def h3_send_datagram(self, h3: Any, session_id: int, data: bytes) -> None: ...

    def h3_datagram_session_id(self, event: Any) -> int: ...


class RetryTokens(Protocol):
    """Address validation tokens for Retry (RFC 9000, 8.1.2)."""

    def create(
        self, addr: Any, original_destination_cid: bytes, retry_source_cid: bytes, now: float
    ) -> bytes: ...

    def validate(self, addr: Any, destination_cid: bytes, token: bytes, now: float) -> bytes:
        """The original destination CID the token carries; ValueError when it is not valid."""
        ...


def load_quic_stack(name: str) -> QuicStack:
    """The compat module of the stack called ``name`` (imported on first use)."""
    if name == "aioquic":
        from moqrelay.compat import aioquic

        return aioquic
    if name == "qh3":
        from moqrelay.compat import qh3

        return qh3
    raise ValueError(f"unknown QUIC stack {name!r} (choose from {', '.join(STACK_NAMES)})")
