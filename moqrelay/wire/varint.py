"""Wire layer (sans-IO codec): QUIC variable-length integers and a read cursor.

`Reader` walks a ``bytes``, ``bytearray`` or ``memoryview`` without copying it.
Reading past the end raises `NeedMoreData`, which is *not* a protocol error: the
incremental stream decoders catch it and wait for more input. Decoders of a
complete unit (one control message payload, one datagram) wrap their parsing in
`truncation_is_violation`, which turns it into a `ProtocolViolation`.
"""

from __future__ import annotations

from types import TracebackType

from moqrelay.wire.errors import ProtocolViolation

__all__ = [
    "MAX_VARINT",
    "NeedMoreData",
    "Reader",
    "encode_varint",
    "truncation_is_violation",
    "varint_size",
]

MAX_VARINT = 2**62 - 1

_SMALL = [bytes((i,)) for i in range(64)]
# Indexed by the two top bits of the first byte.
_SIZES = (1, 2, 4, 8)
_MASKS = (0x3F, 0x3FFF, 0x3FFF_FFFF, 0x3FFF_FFFF_FFFF_FFFF)

Buffer = bytes | bytearray | memoryview


class NeedMoreData(Exception):
    """The buffer ends before the value being read (internal, not a protocol error).

    `needed_end` is the buffer position the read needed to reach, when known
    (0 otherwise): incremental decoders use it to skip re-parsing until then.
    """

    needed_end: int

    def __init__(self, needed_end: int = 0) -> None:
        super().__init__(needed_end)
        self.needed_end = needed_end


def varint_size(value: int) -> int:
    """Return how many bytes `encode_varint` uses for `value`."""
    if value < 0:
        raise ValueError(f"varint out of range: {value}")
    if value < 0x40:
        return 1
    if value < 0x4000:
        return 2
    if value < 0x4000_0000:
        return 4
    if value <= MAX_VARINT:
        return 8
    raise ValueError(f"varint out of range: {value}")


def encode_varint(value: int) -> bytes:
    """Encode `value` in the shortest varint form (ValueError if it does not fit)."""
    if 0 <= value < 0x40:
        return _SMALL[value]
    if 0x40 <= value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if 0x4000 <= value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if 0x4000_0000 <= value <= MAX_VARINT:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"varint out of range: {value}")


class Reader:
    """A read cursor over `data[pos:end]` (end defaults to the end of `data`).

    Reads never copy more than the bytes they return; `view` copies nothing.
    A memoryview obtained from `view` over a ``bytearray`` pins that bytearray's
    size until the view is released.
    """

    __slots__ = ("_buf", "_end", "pos")

    pos: int

    def __init__(self, data: Buffer, pos: int = 0, end: int | None = None) -> None:
        self._buf = data
        self.pos = pos
        self._end = len(data) if end is None else end

    @property
    def end(self) -> int:
        """The position reads stop at."""
        return self._end

    def remaining(self) -> int:
        """Bytes left before the end."""
        return self._end - self.pos

    def at_end(self) -> bool:
        """True when every byte has been read."""
        return self.pos >= self._end

    def varint(self) -> int:
        """Read one varint (any length form is accepted)."""
        pos = self.pos
        if pos >= self._end:
            raise NeedMoreData(pos + 1)
        first = self._buf[pos]
        prefix = first >> 6
        if prefix == 0:
            self.pos = pos + 1
            return first
        end = pos + _SIZES[prefix]
        if end > self._end:
            raise NeedMoreData(end)
        self.pos = end
        return int.from_bytes(self._buf[pos:end], "big") & _MASKS[prefix]

    def uint8(self) -> int:
        """Read one raw byte."""
        pos = self.pos
        if pos >= self._end:
            raise NeedMoreData(pos + 1)
        self.pos = pos + 1
        return self._buf[pos]

    def uint16(self) -> int:
        """Read a 16-bit big-endian unsigned integer."""
        pos = self.pos
        end = pos + 2
        if end > self._end:
            raise NeedMoreData(end)
        self.pos = end
        return int.from_bytes(self._buf[pos:end], "big")

    def skip(self, n: int) -> None:
        """Advance over `n` bytes without reading them."""
        end = self.pos + n
        if end > self._end:
            raise NeedMoreData(end)
        self.pos = end

    def bytes_(self, n: int) -> bytes:
        """Read `n` bytes as a new ``bytes`` object (one copy)."""
        pos = self.pos
        end = pos + n
        if end > self._end:
            raise NeedMoreData(end)
        self.pos = end
        return _copy(self._buf, pos, end)

    def view(self, n: int) -> memoryview:
        """Read `n` bytes as a zero-copy memoryview."""
        pos = self.pos
        end = pos + n
        if end > self._end:
            raise NeedMoreData(end)
        self.pos = end
        return memoryview(self._buf)[pos:end]

    def length_prefixed(self) -> bytes:
        """Read a varint byte count followed by that many bytes."""
        return self.bytes_(self.varint())

    def rest(self) -> bytes:
        """Read every remaining byte."""
        pos = self.pos
        self.pos = self._end
        return _copy(self._buf, pos, self._end)

    def copy_range(self, start: int, end: int) -> bytes:
        """Copy `data[start:end]` (positions already read) without moving the cursor."""
        return _copy(self._buf, start, end)


def _copy(buf: Buffer, start: int, end: int) -> bytes:
    if type(buf) is bytes:
        return buf[start:end]
    if type(buf) is bytearray:
        # A bytearray slice would be a bytearray copy, then a second copy into bytes.
        with memoryview(buf) as view:
            return view[start:end].tobytes()
    return bytes(buf[start:end])


class truncation_is_violation:  # noqa: N801  (used like a function: `with truncation_is_violation(...)`)
    """Context manager for decoders of a complete unit: NeedMoreData means truncated input.

    ``with truncation_is_violation("SUBSCRIBE"): ...`` turns a NeedMoreData raised
    inside into ``ProtocolViolation("truncated SUBSCRIBE")``.
    """

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, NeedMoreData):
            raise ProtocolViolation(f"truncated {self._what}") from None
