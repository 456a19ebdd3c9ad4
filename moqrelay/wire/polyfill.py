"""Wire layer (sans-IO codec): frames of the WebSocket "webtransport" polyfill.

One WebSocket binary message carries exactly one frame. The first byte is the
frame type (always below 0x40, so it is also a one-byte varint); every other
integer is a QUIC varint. There are no lengths and no offsets: the message
boundary ends the frame and WebSocket keeps everything in order.

    0x08 STREAM             stream id, data = rest of the message
    0x09 STREAM + FIN       stream id, final data = rest of the message
    0x04 RESET_STREAM       stream id, error code
    0x05 STOP_SENDING       stream id, error code
    0x1D APPLICATION_CLOSE  error code, reason = rest of the message (UTF-8)

See ``../shared/reference/webtransport-over-websocket.md`` (from the project root) for
the handshake, the stream id rules and a real capture. This module only converts frames
to bytes and back; the stream state machine lives in `moqrelay.transport.websocket`.
"""

from __future__ import annotations

from dataclasses import dataclass

from moqrelay.wire.errors import ProtocolViolation
from moqrelay.wire.varint import NeedMoreData, Reader, encode_varint

__all__ = [
    "MAX_STREAM_FRAME_DATA",
    "STREAM_HEADER_MAX",
    "TYPE_APPLICATION_CLOSE",
    "TYPE_RESET_STREAM",
    "TYPE_STOP_SENDING",
    "TYPE_STREAM",
    "TYPE_STREAM_FIN",
    "ApplicationCloseFrame",
    "Frame",
    "ResetStreamFrame",
    "StopSendingFrame",
    "StreamFrame",
    "decode_frame",
    "encode_frame",
    "split_stream_frame",
]

# @moq/qmux (used by @moq/lite) rejects larger STREAM frames: 16 384 - 24.
MAX_STREAM_FRAME_DATA = 16360

TYPE_RESET_STREAM = 0x04
TYPE_STOP_SENDING = 0x05
TYPE_STREAM = 0x08
TYPE_STREAM_FIN = 0x09
TYPE_APPLICATION_CLOSE = 0x1D


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """Data on a stream; ``fin`` ends the sender's direction after ``data``."""

    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True)
class ResetStreamFrame:
    """The sender abandons its direction of a stream with an application error code."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class StopSendingFrame:
    """The receiver asks the sender to stop sending on a stream."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class ApplicationCloseFrame:
    """The whole session ends with an application error code and a reason."""

    code: int
    reason: str


Frame = StreamFrame | ResetStreamFrame | StopSendingFrame | ApplicationCloseFrame

_TYPE_BYTES = {
    t: bytes((t,))
    for t in (
        TYPE_RESET_STREAM,
        TYPE_STOP_SENDING,
        TYPE_STREAM,
        TYPE_STREAM_FIN,
        TYPE_APPLICATION_CLOSE,
    )
}


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame as the payload of one binary WebSocket message.

    Values out of varint range and reasons that are not encodable as UTF-8 raise
    ValueError / UnicodeEncodeError: those are programming errors, not input.
    """
    match frame:
        case StreamFrame(stream_id, data, fin):
            kind = TYPE_STREAM_FIN if fin else TYPE_STREAM
            return b"".join((_TYPE_BYTES[kind], encode_varint(stream_id), data))
        case ResetStreamFrame(stream_id, code):
            return b"".join(
                (_TYPE_BYTES[TYPE_RESET_STREAM], encode_varint(stream_id), encode_varint(code))
            )
        case StopSendingFrame(stream_id, code):
            return b"".join(
                (_TYPE_BYTES[TYPE_STOP_SENDING], encode_varint(stream_id), encode_varint(code))
            )
        case ApplicationCloseFrame(code, reason):
            return b"".join(
                (
                    _TYPE_BYTES[TYPE_APPLICATION_CLOSE],
                    encode_varint(code),
                    reason.encode("utf-8"),
                )
            )
    raise TypeError(f"not a polyfill frame: {frame!r}")


STREAM_HEADER_MAX = 9
"""A STREAM frame's header (type byte and stream id) is at most this many bytes."""


def split_stream_frame(head: bytes) -> tuple[int, int, bool] | None:
    """``(stream id, data offset, fin)`` if ``head`` starts a STREAM frame, else None.

    ``head`` is the start of a message (at least its first `STREAM_HEADER_MAX`
    bytes when it has that many). It lets a reader that unmasks frames itself
    unmask the data straight into the bytes it hands on, with no second copy.
    None for any other frame type or a truncated stream id: `decode_frame`
    then decodes (or refuses) the whole message.
    """
    if len(head) < 2:
        return None
    kind = head[0]
    if kind != TYPE_STREAM and kind != TYPE_STREAM_FIN:
        return None
    size = 1 << (head[1] >> 6)
    end = 1 + size
    if len(head) < end:
        return None
    stream_id = int.from_bytes(head[1:end], "big") & ((1 << (8 * size - 2)) - 1)
    return stream_id, end, kind == TYPE_STREAM_FIN


def decode_frame(message: bytes | bytearray | memoryview) -> Frame:
    """Decode the payload of one binary WebSocket message.

    Raises `ProtocolViolation` for an empty message, an unknown frame type, a
    truncated varint, trailing bytes after RESET_STREAM / STOP_SENDING, or a
    reason that is not valid UTF-8.
    """
    if not message:
        raise ProtocolViolation("empty polyfill frame")
    reader = Reader(message, 1)
    kind = message[0]
    try:
        if kind == TYPE_STREAM or kind == TYPE_STREAM_FIN:
            stream_id = reader.varint()
            return StreamFrame(stream_id, reader.rest(), kind == TYPE_STREAM_FIN)
        if kind == TYPE_RESET_STREAM or kind == TYPE_STOP_SENDING:
            stream_id = reader.varint()
            code = reader.varint()
            if not reader.at_end():
                raise ProtocolViolation(f"trailing bytes after polyfill frame type {kind:#04x}")
            if kind == TYPE_RESET_STREAM:
                return ResetStreamFrame(stream_id, code)
            return StopSendingFrame(stream_id, code)
        if kind == TYPE_APPLICATION_CLOSE:
            code = reader.varint()
            try:
                reason = reader.rest().decode("utf-8")
            except UnicodeDecodeError as e:
                raise ProtocolViolation("APPLICATION_CLOSE reason is not UTF-8") from e
            return ApplicationCloseFrame(code, reason)
    except NeedMoreData:
        raise ProtocolViolation(f"truncated polyfill frame type {kind:#04x}") from None
    raise ProtocolViolation(f"unknown polyfill frame type {kind:#04x}")
