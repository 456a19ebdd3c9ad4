"""Wire layer (sans-IO codec): MoQT draft-14 data plane.

Subgroup streams (SUBGROUP_HEADER + objects), fetch streams (FETCH_HEADER +
objects) and OBJECT_DATAGRAMs. `DataStreamDecoder` turns the bytes of one
unidirectional stream, split anywhere, into a header event followed by object
events; `decode_datagram` decodes one whole datagram. Object extension headers
are kept as the raw Key-Value-Pair block (relays forward them unchanged), after
checking that the block parses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from moqrelay.wire.control import Param, encode_kvps, read_kvp
from moqrelay.wire.errors import KeyValueFormattingError, ProtocolViolation
from moqrelay.wire.varint import (
    MAX_VARINT,
    Buffer,
    NeedMoreData,
    Reader,
    encode_varint,
    truncation_is_violation,
)

__all__ = [
    "DEFAULT_MAX_OBJECT_SIZE",
    "FETCH_HEADER_TYPE",
    "STATUS_DOES_NOT_EXIST",
    "STATUS_END_OF_GROUP",
    "STATUS_END_OF_TRACK",
    "STATUS_NORMAL",
    "DataEvent",
    "DataStreamDecoder",
    "FetchHeader",
    "FetchObject",
    "ObjectDatagram",
    "ObjectRecord",
    "SubgroupHeader",
    "decode_datagram",
    "encode_datagram",
    "encode_extensions",
    "encode_fetch_header",
    "encode_fetch_object",
    "encode_subgroup_header",
    "encode_subgroup_object",
    "parse_extensions",
    "subgroup_stream_type",
]

STATUS_NORMAL = 0x0
STATUS_DOES_NOT_EXIST = 0x1
STATUS_END_OF_GROUP = 0x3
STATUS_END_OF_TRACK = 0x4
_STATUSES = frozenset(
    {STATUS_NORMAL, STATUS_DOES_NOT_EXIST, STATUS_END_OF_GROUP, STATUS_END_OF_TRACK}
)

FETCH_HEADER_TYPE = 0x05
DEFAULT_MAX_OBJECT_SIZE = 16 * 1024 * 1024

_SUBGROUP_BASE = 0x10
_TYPE_EXTENSIONS = 0x01
_TYPE_SUBGROUP_FIRST_OBJECT = 0x02
_TYPE_SUBGROUP_FIELD = 0x04
_TYPE_END_OF_GROUP = 0x08
_SUBGROUP_TYPES = frozenset(range(0x10, 0x16)) | frozenset(range(0x18, 0x1E))

_DATAGRAM_EXTENSIONS = 0x01
_DATAGRAM_END_OF_GROUP = 0x02
_DATAGRAM_NO_OBJECT_ID = 0x04
_DATAGRAM_STATUS = 0x20
_DATAGRAM_MAX_PAYLOAD_TYPE = 0x07

_EMPTY_OBJECT_NORMAL = b"\x00\x00"  # payload length 0, status Normal
# Compact the stream buffer once this many consumed bytes sit in front of it.
_COMPACT_AT = 64 * 1024


# Extension headers -------------------------------------------------------------------


def parse_extensions(block: bytes) -> list[Param]:
    """Parse an extension-header block (KVPs back to back); KeyValueFormattingError if bad."""
    r = Reader(block)
    params: list[Param] = []
    try:
        while not r.at_end():
            params.append(read_kvp(r))
    except NeedMoreData:
        raise KeyValueFormattingError("truncated extension header") from None
    return params


def encode_extensions(params: list[Param]) -> bytes:
    """Encode extension headers as a KVP block (without its length)."""
    return encode_kvps(params)


def _check_extensions(block: bytes, status: int) -> None:
    """Validate a non-empty extension block of an object with `status`."""
    if status == STATUS_DOES_NOT_EXIST:
        raise ProtocolViolation("an Object Does Not Exist status carries extension headers")
    parse_extensions(block)


def _check_status_payload(status: int, payload: Buffer, extensions: bytes | None) -> None:
    if status not in _STATUSES:
        raise ValueError(f"unknown object status {status}")
    if status != STATUS_NORMAL and len(payload):
        raise ValueError(f"object status {status} requires an empty payload")
    if status == STATUS_DOES_NOT_EXIST and extensions:
        raise ValueError("an Object Does Not Exist status cannot carry extensions")


# Subgroup streams --------------------------------------------------------------------


@dataclass(slots=True)
class SubgroupHeader:
    """SUBGROUP_HEADER: the first thing on a subgroup stream.

    `subgroup_id` is None only in the first-object-id mode (subgroup_mode 1),
    until the stream decoder has seen the first object and fills it in.
    """

    stream_type: int
    track_alias: int
    group_id: int
    subgroup_id: int | None
    publisher_priority: int

    @property
    def has_extensions(self) -> bool:
        """Every object on the stream carries an extension-headers length."""
        return bool((self.stream_type - _SUBGROUP_BASE) & _TYPE_EXTENSIONS)

    @property
    def end_of_group(self) -> bool:
        """The last object before FIN is the last object of the group."""
        return bool((self.stream_type - _SUBGROUP_BASE) & _TYPE_END_OF_GROUP)

    @property
    def subgroup_mode(self) -> int:
        """0: subgroup id 0; 1: subgroup id = first object id; 2: explicit field."""
        return ((self.stream_type - _SUBGROUP_BASE) >> 1) & 0x3


def subgroup_stream_type(
    *,
    subgroup_id: int,
    first_object_id: int | None = None,
    extensions: bool,
    end_of_group: bool,
) -> int:
    """Pick the SUBGROUP_HEADER type for a new stream.

    Subgroup 0 uses the types without a subgroup field (0x10/0x11/0x18/0x19);
    any other subgroup uses the explicit-field types. The first-object-id types
    are never chosen, whatever `first_object_id` is: some clients misread them
    (reference §13.8), so the argument is accepted but does not change the result.
    """
    stream_type = _SUBGROUP_BASE if subgroup_id == 0 else _SUBGROUP_BASE | _TYPE_SUBGROUP_FIELD
    if extensions:
        stream_type |= _TYPE_EXTENSIONS
    if end_of_group:
        stream_type |= _TYPE_END_OF_GROUP
    return stream_type


def encode_subgroup_header(
    track_alias: int,
    group_id: int,
    subgroup_id: int,
    publisher_priority: int,
    *,
    extensions: bool,
    end_of_group: bool = False,
    stream_type: int | None = None,
) -> bytes:
    """Encode a SUBGROUP_HEADER, its type chosen by `subgroup_stream_type`.

    `stream_type` forces one of the twelve types instead (to reproduce a given
    encoding); it must agree with `extensions`, `end_of_group` and, for the
    subgroup-0 types, `subgroup_id`. The first-object-id types write no subgroup
    field: `subgroup_id` must then be the first object's id.
    """
    if stream_type is None:
        stream_type = subgroup_stream_type(
            subgroup_id=subgroup_id, extensions=extensions, end_of_group=end_of_group
        )
    elif stream_type not in _SUBGROUP_TYPES:
        raise ValueError(f"0x{stream_type:x} is not a SUBGROUP_HEADER type")
    bits = stream_type - _SUBGROUP_BASE
    if bool(bits & _TYPE_EXTENSIONS) != extensions:
        raise ValueError(f"type 0x{stream_type:x} disagrees with extensions={extensions}")
    if bool(bits & _TYPE_END_OF_GROUP) != end_of_group:
        raise ValueError(f"type 0x{stream_type:x} disagrees with end_of_group={end_of_group}")
    subgroup_bits = bits & (_TYPE_SUBGROUP_FIELD | _TYPE_SUBGROUP_FIRST_OBJECT)
    if subgroup_bits == 0 and subgroup_id != 0:
        raise ValueError(f"type 0x{stream_type:x} means subgroup 0, not {subgroup_id}")
    out = bytearray(encode_varint(stream_type))
    out += encode_varint(track_alias)
    out += encode_varint(group_id)
    if subgroup_bits == _TYPE_SUBGROUP_FIELD:
        out += encode_varint(subgroup_id)
    out.append(publisher_priority)
    return bytes(out)


def encode_subgroup_object(
    object_id_delta: int,
    payload: bytes | memoryview,
    *,
    extensions: bytes | None,
    status: int = STATUS_NORMAL,
) -> bytes:
    """Encode one object of a subgroup stream.

    `extensions` is the raw extension block: None when the stream type has no
    extensions field, b"" for a present but empty one.
    """
    if status != STATUS_NORMAL or extensions:
        _check_status_payload(status, payload, extensions)
    parts: list[bytes | memoryview] = [encode_varint(object_id_delta)]
    if extensions is not None:
        parts.append(encode_varint(len(extensions)))
        parts.append(extensions)
    if status != STATUS_NORMAL:
        parts.append(b"\x00")
        parts.append(encode_varint(status))
    elif len(payload) == 0:
        parts.append(_EMPTY_OBJECT_NORMAL)
    else:
        parts.append(encode_varint(len(payload)))
        parts.append(payload)
    return b"".join(parts)


@dataclass(slots=True)
class ObjectRecord:
    """One object decoded from a subgroup stream (absolute object id, raw extensions)."""

    object_id: int
    payload: bytes
    status: int
    extensions: bytes


# Fetch streams -----------------------------------------------------------------------


@dataclass(slots=True)
class FetchHeader:
    """FETCH_HEADER: the first thing on a fetch stream."""

    request_id: int


@dataclass(slots=True)
class FetchObject:
    """One object on a fetch stream."""

    group_id: int
    subgroup_id: int
    object_id: int
    publisher_priority: int
    extensions: bytes
    payload: bytes
    status: int


def encode_fetch_header(request_id: int) -> bytes:
    """Encode a FETCH_HEADER."""
    return encode_varint(FETCH_HEADER_TYPE) + encode_varint(request_id)


def encode_fetch_object(obj: FetchObject) -> bytes:
    """Encode one object of a fetch stream."""
    status = obj.status
    payload = obj.payload
    extensions = obj.extensions
    if status != STATUS_NORMAL or extensions:
        _check_status_payload(status, payload, extensions)
    out = bytearray(encode_varint(obj.group_id))
    out += encode_varint(obj.subgroup_id)
    out += encode_varint(obj.object_id)
    out.append(obj.publisher_priority)
    out += encode_varint(len(extensions))
    out += extensions
    if status != STATUS_NORMAL:
        out.append(0)
        out += encode_varint(status)
    elif not payload:
        out += _EMPTY_OBJECT_NORMAL
    else:
        out += encode_varint(len(payload))
        out += payload
    return bytes(out)


DataEvent: TypeAlias = SubgroupHeader | FetchHeader | ObjectRecord | FetchObject


class DataStreamDecoder:
    """Decode one unidirectional data stream (subgroup or fetch), fed in arbitrary pieces.

    The first event is the header (SubgroupHeader or FetchHeader), then one
    ObjectRecord (subgroup stream) or FetchObject (fetch stream) per object.
    Bytes are parsed straight from the fed buffer when nothing is pending, and
    otherwise appended to one bytearray read at an offset, so feeding a large
    object in small pieces costs time linear in its size. Once it has raised a
    ProtocolViolation the decoder is dead and raises it again on every call.
    """

    __slots__ = (
        "_buf",
        "_error",
        "_extensions",
        "_header",
        "_last_object_id",
        "_max_object_size",
        "_need",
        "_pos",
    )

    def __init__(self, max_object_size: int = DEFAULT_MAX_OBJECT_SIZE) -> None:
        self._max_object_size = max_object_size
        self._buf = bytearray()
        self._pos = 0
        # Bytes needed, from _pos, before parsing can make progress.
        self._need = 1
        self._header: SubgroupHeader | FetchHeader | None = None
        self._extensions = False
        self._last_object_id = -1
        self._error: ProtocolViolation | None = None

    @property
    def header(self) -> SubgroupHeader | FetchHeader | None:
        """The stream header, once decoded."""
        return self._header

    def feed(self, data: Buffer) -> list[DataEvent]:
        """Add stream bytes; return the events they complete, in order."""
        if self._error is not None:
            raise self._error
        if not data:
            return []
        buf = self._buf
        work: Buffer
        if self._pos < len(buf):
            buf += data
            if len(buf) - self._pos < self._need:
                return []
            work = buf
            r = Reader(buf, self._pos)
        else:
            if len(data) < self._need:
                buf += data
                return []
            work = data
            r = Reader(data)
        events: list[DataEvent] = []
        try:
            while not r.at_end():
                start = r.pos
                try:
                    events.append(self._parse_unit(r))
                except NeedMoreData as more:
                    r.pos = start
                    self._need = max(more.needed_end - start, 1)
                    break
            else:
                self._need = 1
        except ProtocolViolation as exc:
            self._fail(exc)
            raise
        self._keep_rest(work, r.pos)
        return events

    def end_of_stream(self) -> None:
        """The stream ended with a FIN: an incomplete header or object is a violation."""
        if self._error is not None:
            raise self._error
        if self._pos < len(self._buf):
            where = "the stream header" if self._header is None else "an object"
            exc = ProtocolViolation(f"data stream ended inside {where}")
            self._fail(exc)
            raise exc

    def _fail(self, exc: ProtocolViolation) -> None:
        self._error = exc
        self._buf = bytearray()
        self._pos = 0

    def _keep_rest(self, work: Buffer, pos: int) -> None:
        buf = self._buf
        if work is not buf:
            if pos < len(work):
                buf += memoryview(work)[pos:]
            self._pos = 0
        elif pos >= len(buf):
            buf.clear()
            self._pos = 0
        elif pos >= _COMPACT_AT and pos * 2 >= len(buf):
            del buf[:pos]
            self._pos = 0
        else:
            self._pos = pos

    def _parse_unit(self, r: Reader) -> DataEvent:
        header = self._header
        if header is None:
            return self._parse_header(r)
        if type(header) is SubgroupHeader:
            return self._parse_subgroup_object(r, header)
        return self._parse_fetch_object(r)

    def _parse_header(self, r: Reader) -> SubgroupHeader | FetchHeader:
        stream_type = r.varint()
        if stream_type == FETCH_HEADER_TYPE:
            header: SubgroupHeader | FetchHeader = FetchHeader(r.varint())
            self._extensions = True  # every fetch object has an extensions length
        elif stream_type in _SUBGROUP_TYPES:
            track_alias = r.varint()
            group_id = r.varint()
            bits = stream_type - _SUBGROUP_BASE
            subgroup_id: int | None = 0
            if bits & _TYPE_SUBGROUP_FIELD:
                subgroup_id = r.varint()
            elif bits & _TYPE_SUBGROUP_FIRST_OBJECT:
                subgroup_id = None
            priority = r.uint8()
            header = SubgroupHeader(stream_type, track_alias, group_id, subgroup_id, priority)
            self._extensions = bool(bits & _TYPE_EXTENSIONS)
        else:
            raise ProtocolViolation(f"unknown data stream type 0x{stream_type:x}")
        self._header = header
        return header

    def _read_body(self, r: Reader) -> tuple[bytes, int, bytes]:
        """Read [extensions,] length, [status,] payload: returns payload, status, extensions."""
        ext_start = ext_end = 0
        if self._extensions:
            ext_length = r.varint()
            if ext_length > self._max_object_size:
                raise ProtocolViolation(f"extension headers of {ext_length} bytes are too long")
            ext_start = r.pos
            r.skip(ext_length)
            ext_end = r.pos
        length = r.varint()
        if length == 0:
            status = r.varint()
            if status not in _STATUSES:
                raise ProtocolViolation(f"unknown object status {status}")
            payload = b""
        elif length > self._max_object_size:
            raise ProtocolViolation(f"object of {length} bytes is too long")
        else:
            status = STATUS_NORMAL
            payload = r.bytes_(length)
        if ext_end > ext_start:
            extensions = r.copy_range(ext_start, ext_end)
            _check_extensions(extensions, status)
            return payload, status, extensions
        return payload, status, b""

    def _parse_subgroup_object(self, r: Reader, header: SubgroupHeader) -> ObjectRecord:
        delta = r.varint()
        payload, status, extensions = self._read_body(r)
        last = self._last_object_id
        object_id = delta if last < 0 else last + delta + 1
        if object_id > MAX_VARINT:
            raise ProtocolViolation("object id overflows")
        self._last_object_id = object_id
        if header.subgroup_id is None:
            header.subgroup_id = object_id
        return ObjectRecord(object_id, payload, status, extensions)

    def _parse_fetch_object(self, r: Reader) -> FetchObject:
        group_id = r.varint()
        subgroup_id = r.varint()
        object_id = r.varint()
        priority = r.uint8()
        payload, status, extensions = self._read_body(r)
        return FetchObject(group_id, subgroup_id, object_id, priority, extensions, payload, status)


# Datagrams ---------------------------------------------------------------------------


@dataclass(slots=True)
class ObjectDatagram:
    """One OBJECT_DATAGRAM. `status` is None for payload datagrams (types 0x00-0x07)."""

    track_alias: int
    group_id: int
    object_id: int
    publisher_priority: int
    extensions: bytes
    payload: bytes
    status: int | None
    end_of_group: bool


def encode_datagram(d: ObjectDatagram) -> bytes:
    """Encode a datagram with the smallest type that carries it."""
    extensions = d.extensions
    if d.status is None:
        datagram_type = 0
        if extensions:
            datagram_type |= _DATAGRAM_EXTENSIONS
        if d.end_of_group:
            datagram_type |= _DATAGRAM_END_OF_GROUP
        if d.object_id == 0:
            datagram_type |= _DATAGRAM_NO_OBJECT_ID
    else:
        _check_status_payload(d.status, d.payload, extensions)
        if d.end_of_group:
            raise ValueError("a status datagram has no end-of-group flag")
        datagram_type = _DATAGRAM_STATUS | (_DATAGRAM_EXTENSIONS if extensions else 0)
    out = bytearray(encode_varint(datagram_type))
    out += encode_varint(d.track_alias)
    out += encode_varint(d.group_id)
    if not datagram_type & _DATAGRAM_NO_OBJECT_ID:
        out += encode_varint(d.object_id)
    out.append(d.publisher_priority)
    if extensions:
        out += encode_varint(len(extensions))
        out += extensions
    if d.status is None:
        out += d.payload
    else:
        out += encode_varint(d.status)
    return bytes(out)


def decode_datagram(data: Buffer) -> ObjectDatagram:
    """Decode one whole OBJECT_DATAGRAM."""
    r = Reader(data)
    with truncation_is_violation("OBJECT_DATAGRAM"):
        datagram_type = r.varint()
        is_status = datagram_type & _DATAGRAM_STATUS == _DATAGRAM_STATUS
        if datagram_type > _DATAGRAM_MAX_PAYLOAD_TYPE and datagram_type not in (
            _DATAGRAM_STATUS,
            _DATAGRAM_STATUS | _DATAGRAM_EXTENSIONS,
        ):
            raise ProtocolViolation(f"unknown datagram type 0x{datagram_type:x}")
        track_alias = r.varint()
        group_id = r.varint()
        object_id = 0
        if is_status or not datagram_type & _DATAGRAM_NO_OBJECT_ID:
            object_id = r.varint()
        priority = r.uint8()
        extensions = b""
        if datagram_type & _DATAGRAM_EXTENSIONS:
            ext_length = r.varint()
            if ext_length == 0:
                raise ProtocolViolation("datagram with the extensions bit has 0 extension bytes")
            extensions = r.bytes_(ext_length)
        if is_status:
            status: int | None = r.varint()
            if status not in _STATUSES:
                raise ProtocolViolation(f"unknown object status {status}")
            if not r.at_end():
                raise ProtocolViolation("bytes after the status of a status datagram")
            payload = b""
            end_of_group = False
        else:
            status = None
            payload = r.rest()
            end_of_group = bool(datagram_type & _DATAGRAM_END_OF_GROUP)
    if extensions:
        _check_extensions(extensions, STATUS_NORMAL if status is None else status)
    return ObjectDatagram(
        track_alias, group_id, object_id, priority, extensions, payload, status, end_of_group
    )
