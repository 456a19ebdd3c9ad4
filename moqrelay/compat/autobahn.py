"""Compatibility: the private parts of Autobahn and Twisted the WebSocket transport uses.

`moqrelay.transport.websocket` keeps Autobahn for the handshake, control frames
and the close handshake, but reads whole binary data frames itself and writes
its own (unmasked) frames. For that it must know whether Autobahn is in the
middle of a frame or message, hand Autobahn the bytes it should parse (and take
back those it holds past its last frame), and tidy a timer Autobahn leaves
behind; it also writes its frames past Twisted's TLS write aggregator, which it
does not need. Each such access is one function here;
``tests/test_compat_autobahn.py`` checks that the installed Autobahn and Twisted
still have what each relies on.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOProtocol

__all__ = [
    "between_messages",
    "cancel_close_handshake_timer",
    "feed",
    "has_queued_sends",
    "inside_frame",
    "option_names",
    "take_unparsed",
    "write_batch",
]


def option_names(protocol_class: Any) -> list[str]:
    """The per-connection options Autobahn copies from the factory (``CONFIG_ATTRS``)."""
    return list(protocol_class.CONFIG_ATTRS)


def has_queued_sends(protocol: Any) -> bool:
    """Whether Autobahn holds writes back in its send queue (chopped or synced sends).

    Bytes written straight to the transport while it does would overtake them.
    """
    return bool(protocol.send_queue)


def inside_frame(protocol: Any) -> bool:
    """Whether Autobahn's reader has read a frame's header and waits for its payload:
    then the next bytes received continue that frame and must go to Autobahn."""
    return protocol.current_frame is not None


def take_unparsed(protocol: Any) -> bytes:
    """Take the bytes Autobahn's reader holds past the last frame it read (the start of
    the next frame, when not `inside_frame`), so another reader can go on from there."""
    data: bytes = protocol.data
    protocol.data = b""
    return data


def between_messages(protocol: Any) -> bool:
    """Whether Autobahn's reader holds nothing of a frame nor of a (fragmented) message:
    the next frame received starts a new message."""
    return not protocol.data and protocol.current_frame is None and not protocol.inside_message


def feed(protocol: Any, data: bytes) -> None:
    """Give received bytes to Autobahn's own reader, skipping the Twisted adapter's
    ``dataReceived`` (which builds debug-log arguments on every call)."""
    protocol._dataReceived(data)


def cancel_close_handshake_timer(protocol: Any) -> None:
    """Cancel the close-handshake timer Autobahn leaves running when the TCP connection
    goes before the peer's close frame arrives (it would later fire as a no-op)."""
    timer = protocol.closeHandshakeTimeoutCall
    if timer is not None:
        protocol.closeHandshakeTimeoutCall = None
        timer.cancel()


def write_batch(transport: Any, frames: list[bytes]) -> None:
    """Write one reactor turn's worth of frames to a TCP or TLS transport.

    Over TLS, Twisted's ``BufferingTLSTransport`` joins small writes for a turn before
    encrypting them, then slices what it joined into 16 KiB records (a copy each).
    The frames come batched already: they are joined once and handed to the TLS
    layer as a memoryview, which it slices into records without copying, after
    whatever the aggregator holds (Autobahn's own frames) so that order is kept.
    """
    if isinstance(transport, BufferingTLSTransport):
        transport._aggregator.flush()
        TLSMemoryBIOProtocol.write(transport, memoryview(b"".join(frames)))
    else:
        transport.writeSequence(frames)
