"""Wire layer (sans-IO codec): MoQT draft-16 data plane (§10 of draft-16).

What changes from draft-14 (`moqrelay.wire.data`):

- SUBGROUP_HEADER types 0x30-0x35 / 0x38-0x3D carry no Publisher Priority: the
  subgroup inherits the track's (DEFAULT_PUBLISHER_PRIORITY, 128 when omitted).
  Datagram types 0x08-0x0F / 0x28-0x2D likewise. Decoders fill the priority in
  from `default_priority(track_alias)`; encoders leave it out when it equals the
  `default_priority` they are given.
- Object statuses are Normal, End of Group and End of Track only (0x1 is gone).
- Extension headers are Key-Value-Pairs with delta-encoded types.
- Fetch objects start with Serialization Flags and omit what repeats the prior
  object; a fetch stream can also carry End of Non-Existent / Unknown Range markers.

Subgroup objects and datagrams decode into the draft-14 dataclasses
(`SubgroupHeader`, `ObjectRecord`, `ObjectDatagram`); extension blocks stay raw
bytes in their draft-16 encoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from moqrelay.wire.control import Param
from moqrelay.wire.data import (
    DEFAULT_MAX_OBJECT_SIZE,
    FETCH_HEADER_TYPE,
    STATUS_END_OF_GROUP,
    STATUS_END_OF_TRACK,
    STATUS_NORMAL,
    FetchHeader,
    ObjectDatagram,
    ObjectRecord,
    SubgroupHeader,
    subgroup_stream_type,
)
from moqrelay.wire.draft16 import decode_kvps, encode_kvps
from moqrelay.wire.errors import ProtocolViolation
from moqrelay.wire.varint import (
    MAX_VARINT,
    Buffer,
    NeedMoreData,
    Reader,
    encode_varint,
    truncation_is_violation,
)

__all__ = [
    "DEFAULT_PUBLISHER_PRIORITY",
    "FLAG_END_OF_NON_EXISTENT_RANGE",
    "FLAG_END_OF_UNKNOWN_RANGE",
    "DataEvent16",
    "DataStreamDecoder16",
    "FetchObject16",
    "FetchRangeEnd",
    "FetchStreamEncoder16",
    "decode_datagram",
    "encode_datagram",
    "encode_extensions",
    "encode_subgroup_header",
    "encode_subgroup_object",
    "parse_extensions",
]

DEFAULT_PUBLISHER_PRIORITY = 128  # §11: when DEFAULT_PUBLISHER_PRIORITY is omitted

_STATUSES = frozenset({STATUS_NORMAL, STATUS_END_OF_GROUP, STATUS_END_OF_TRACK})

_SUBGROUP_EXTENSIONS = 0x01
_SUBGROUP_ID_MODE = 0x06
_SUBGROUP_FIRST_OBJECT = 0x02
_SUBGROUP_FIELD = 0x04
_SUBGROUP_DEFAULT_PRIORITY = 0x20
# §10.4.2: 0b00X1XXXX without SUBGROUP_ID_MODE 0b11.
_SUBGROUP_TYPES = frozenset(
    t for t in range(0x10, 0x40) if t & 0x10 and t & _SUBGROUP_ID_MODE != _SUBGROUP_ID_MODE
)

_DATAGRAM_EXTENSIONS = 0x01
_DATAGRAM_END_OF_GROUP = 0x02
_DATAGRAM_ZERO_OBJECT_ID = 0x04
_DATAGRAM_DEFAULT_PRIORITY = 0x08
_DATAGRAM_STATUS = 0x20

FLAG_END_OF_NON_EXISTENT_RANGE = 0x8C
FLAG_END_OF_UNKNOWN_RANGE = 0x10C
_FETCH_SUBGROUP_MASK = 0x03
_FETCH_SUBGROUP_ZERO = 0x00
_FETCH_SUBGROUP_PRIOR = 0x01
_FETCH_SUBGROUP_NEXT = 0x02
_FETCH_SUBGROUP_FIELD = 0x03
_FETCH_OBJECT_ID = 0x04
_FETCH_GROUP_ID = 0x08
_FETCH_PRIORITY = 0x10
_FETCH_EXTENSIONS = 0x20
_FETCH_DATAGRAM = 0x40
_FETCH_MAX_FLAGS = 0x7F

_COMPACT_AT = 64 * 1024


def _no_track_default(track_alias: int) -> int:
    return DEFAULT_PUBLISHER_PRIORITY


# Extension headers ----------------------------------------------------------------------


def parse_extensions(block: bytes) -> list[Param]:
    """Parse a draft-16 extension block (delta-encoded KVPs back to back)."""
    r = Reader(block)
    with truncation_is_violation("extension headers"):
        return decode_kvps(r)


def encode_extensions(params: list[Param]) -> bytes:
    """Encode extension headers as a draft-16 block (without its length)."""
    return encode_kvps(params)


def _check_object(status: int, extensions: bytes) -> None:
    if status not in _STATUSES:
        raise ProtocolViolation(f"unknown object status {status}")
    if extensions:
        if status != STATUS_NORMAL:
            raise ProtocolViolation("an object with a status carries extension headers")
        parse_extensions(extensions)


def _check_encode(status: int, payload: Buffer, extensions: bytes | None) -> None:
    if status not in _STATUSES:
        raise ValueError(f"object status {status} does not exist in draft-16")
    if status != STATUS_NORMAL and (len(payload) or extensions):
        raise ValueError(f"object status {status} requires no payload and no extensions")


# Subgroup streams ------------------------------------------------------------------------


def encode_subgroup_header(
    track_alias: int,
    group_id: int,
    subgroup_id: int,
    publisher_priority: int,
    *,
    extensions: bool,
    end_of_group: bool = False,
    default_priority: int | None = None,
) -> bytes:
    """Encode a SUBGROUP_HEADER (§10.4.2); the priority is left out when it is the default."""
    stream_type = subgroup_stream_type(
        subgroup_id=subgroup_id, extensions=extensions, end_of_group=end_of_group
    )
    omit_priority = publisher_priority == default_priority
    if omit_priority:
        stream_type |= _SUBGROUP_DEFAULT_PRIORITY
    out = bytearray(encode_varint(stream_type))
    out += encode_varint(track_alias)
    out += encode_varint(group_id)
    if stream_type & _SUBGROUP_FIELD:
        out += encode_varint(subgroup_id)
    if not omit_priority:
        out.append(publisher_priority)
    return bytes(out)


def encode_subgroup_object(
    object_id_delta: int,
    payload: bytes | memoryview,
    *,
    extensions: bytes | None,
    status: int = STATUS_NORMAL,
) -> bytes:
    """Encode one subgroup object (§10.4.2); `extensions` None when the type has none."""
    _check_encode(status, payload, extensions)
    out = bytearray(encode_varint(object_id_delta))
    if extensions is not None:
        out += encode_varint(len(extensions))
        out += extensions
    if status != STATUS_NORMAL or not len(payload):
        out.append(0)
        out += encode_varint(status)
    else:
        out += encode_varint(len(payload))
        out += payload
    return bytes(out)


# Fetch streams ---------------------------------------------------------------------------


@dataclass(slots=True)
class FetchObject16:
    """One object of a draft-16 fetch stream. `subgroup_id` None: datagram preference.

    Fetch objects carry no status (§10.2.1.1): missing objects are gaps or ranges.
    """

    group_id: int
    subgroup_id: int | None
    object_id: int
    publisher_priority: int
    extensions: bytes
    payload: bytes


@dataclass(slots=True)
class FetchRangeEnd:
    """End of Non-Existent Range (0x8C) or End of Unknown Range (0x10C), §10.4.4.2:
    the objects after the previous one, up to this Location inclusive, do not exist
    (`unknown` False) or have an unknown status (`unknown` True).

    On the wire: the flags, Group ID and Object ID, and no Payload Length (§10.4.4.2
    lists only those; aiomoqt and later drafts agree)."""

    group_id: int
    object_id: int
    unknown: bool


class FetchStreamEncoder16:
    """Encode the objects of one fetch stream, each against the one before (§10.4.4).

    It picks the shortest Serialization Flags: fields equal to the prior object's
    (or its successor's, for the object and subgroup ids) are left out. The prior
    state follows `DataStreamDecoder16`: an End of Range marker is the prior for
    the group and object ids only, and a datagram-preference object counts as
    subgroup 0.
    """

    __slots__ = ("_group", "_object", "_priority", "_subgroup")

    def __init__(self) -> None:
        self._group: int | None = None
        self._object = 0
        self._subgroup: int | None = None
        self._priority: int | None = None

    def header(self, request_id: int) -> bytes:
        """The FETCH_HEADER that starts the stream."""
        return encode_varint(FETCH_HEADER_TYPE) + encode_varint(request_id)

    def encode(self, obj: FetchObject16) -> bytes:
        """Encode one object."""
        flags = 0
        prior_subgroup = self._subgroup
        if obj.subgroup_id is None:
            flags |= _FETCH_DATAGRAM
        elif obj.subgroup_id == 0:
            flags |= _FETCH_SUBGROUP_ZERO
        elif prior_subgroup is not None and obj.subgroup_id == prior_subgroup:
            flags |= _FETCH_SUBGROUP_PRIOR
        elif prior_subgroup is not None and obj.subgroup_id == prior_subgroup + 1:
            flags |= _FETCH_SUBGROUP_NEXT
        else:
            flags |= _FETCH_SUBGROUP_FIELD
        if self._group is None or obj.object_id != self._object + 1:
            flags |= _FETCH_OBJECT_ID
        if obj.group_id != self._group:
            flags |= _FETCH_GROUP_ID
        if obj.publisher_priority != self._priority:
            flags |= _FETCH_PRIORITY
        if obj.extensions:
            flags |= _FETCH_EXTENSIONS
        out = bytearray(encode_varint(flags))
        if flags & _FETCH_GROUP_ID:
            out += encode_varint(obj.group_id)
        if flags & _FETCH_SUBGROUP_MASK == _FETCH_SUBGROUP_FIELD and obj.subgroup_id is not None:
            out += encode_varint(obj.subgroup_id)
        if flags & _FETCH_OBJECT_ID:
            out += encode_varint(obj.object_id)
        if flags & _FETCH_PRIORITY:
            out.append(obj.publisher_priority)
        if flags & _FETCH_EXTENSIONS:
            out += encode_varint(len(obj.extensions))
            out += obj.extensions
        out += encode_varint(len(obj.payload))
        out += obj.payload
        self._group, self._object = obj.group_id, obj.object_id
        self._subgroup = 0 if obj.subgroup_id is None else obj.subgroup_id
        self._priority = obj.publisher_priority
        return bytes(out)

    def encode_range_end(self, marker: FetchRangeEnd) -> bytes:
        """Encode an End of Range marker: flags, Group ID, Object ID, nothing else."""
        flags = FLAG_END_OF_UNKNOWN_RANGE if marker.unknown else FLAG_END_OF_NON_EXISTENT_RANGE
        self._group, self._object = marker.group_id, marker.object_id
        return (
            encode_varint(flags) + encode_varint(marker.group_id) + encode_varint(marker.object_id)
        )


DataEvent16: TypeAlias = (
    SubgroupHeader | FetchHeader | ObjectRecord | FetchObject16 | FetchRangeEnd
)


class DataStreamDecoder16:
    """Decode one draft-16 unidirectional data stream, fed in arbitrary pieces.

    Events: the header (SubgroupHeader or FetchHeader), then ObjectRecord per
    subgroup object, or FetchObject16 / FetchRangeEnd per fetch-stream entry.
    `default_priority(track_alias)` gives the priority of a subgroup whose header
    leaves it out. Once it has raised a ProtocolViolation the decoder is dead.
    """

    __slots__ = (
        "_buf",
        "_default_priority",
        "_error",
        "_extensions",
        "_header",
        "_last_object_id",
        "_max_object_size",
        "_pos",
        "_prior",
    )

    def __init__(
        self,
        max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
        default_priority: Callable[[int], int] = _no_track_default,
    ) -> None:
        self._max_object_size = max_object_size
        self._default_priority = default_priority
        self._buf = bytearray()
        self._pos = 0
        self._header: SubgroupHeader | FetchHeader | None = None
        self._extensions = False
        self._last_object_id = -1
        # Fetch streams: (group, object, subgroup, priority) of the prior entry; an
        # End of Range marker before any object leaves subgroup and priority None.
        self._prior: tuple[int, int, int | None, int | None] | None = None
        self._error: ProtocolViolation | None = None

    @property
    def header(self) -> SubgroupHeader | FetchHeader | None:
        """The stream header, once decoded."""
        return self._header

    def feed(self, data: Buffer) -> list[DataEvent16]:
        """Add stream bytes; return the events they complete, in order."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        r = Reader(buf, self._pos)
        events: list[DataEvent16] = []
        try:
            while not r.at_end():
                start = r.pos
                try:
                    events.append(self._parse_unit(r))
                except NeedMoreData:
                    r.pos = start
                    break
        except ProtocolViolation as exc:
            self._fail(exc)
            raise
        self._pos = r.pos
        if self._pos >= len(buf):
            buf.clear()
            self._pos = 0
        elif self._pos >= _COMPACT_AT:
            del buf[: self._pos]
            self._pos = 0
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

    def _parse_unit(self, r: Reader) -> DataEvent16:
        header = self._header
        if header is None:
            return self._parse_header(r)
        if type(header) is SubgroupHeader:
            return self._parse_subgroup_object(r, header)
        return self._parse_fetch_entry(r)

    def _parse_header(self, r: Reader) -> SubgroupHeader | FetchHeader:
        stream_type = r.varint()
        header: SubgroupHeader | FetchHeader
        if stream_type == FETCH_HEADER_TYPE:
            header = FetchHeader(r.varint())
        elif stream_type in _SUBGROUP_TYPES:
            track_alias = r.varint()
            group_id = r.varint()
            subgroup_id: int | None = 0
            mode = stream_type & _SUBGROUP_ID_MODE
            if mode == _SUBGROUP_FIELD:
                subgroup_id = r.varint()
            elif mode == _SUBGROUP_FIRST_OBJECT:
                subgroup_id = None
            if stream_type & _SUBGROUP_DEFAULT_PRIORITY:
                priority = self._default_priority(track_alias)
            else:
                priority = r.uint8()
            header = SubgroupHeader(stream_type, track_alias, group_id, subgroup_id, priority)
            self._extensions = bool(stream_type & _SUBGROUP_EXTENSIONS)
        else:
            raise ProtocolViolation(f"unknown data stream type 0x{stream_type:x}")
        self._header = header
        return header

    def _read_extensions(self, r: Reader) -> bytes:
        length = r.varint()
        if length > self._max_object_size:
            raise ProtocolViolation(f"extension headers of {length} bytes are too long")
        return r.bytes_(length)

    def _read_payload(self, r: Reader, length: int) -> bytes:
        if length > self._max_object_size:
            raise ProtocolViolation(f"object of {length} bytes is too long")
        return r.bytes_(length)

    def _parse_subgroup_object(self, r: Reader, header: SubgroupHeader) -> ObjectRecord:
        delta = r.varint()
        extensions = self._read_extensions(r) if self._extensions else b""
        length = r.varint()
        if length == 0:
            status = r.varint()
            payload = b""
        else:
            status = STATUS_NORMAL
            payload = self._read_payload(r, length)
        _check_object(status, extensions)
        last = self._last_object_id
        object_id = delta if last < 0 else last + delta + 1
        if object_id > MAX_VARINT:
            raise ProtocolViolation("object id overflows")
        self._last_object_id = object_id
        if header.subgroup_id is None:
            header.subgroup_id = object_id
        return ObjectRecord(object_id, payload, status, extensions)

    def _parse_fetch_entry(self, r: Reader) -> FetchObject16 | FetchRangeEnd:
        flags = r.varint()
        prior = self._prior
        if flags in (FLAG_END_OF_NON_EXISTENT_RANGE, FLAG_END_OF_UNKNOWN_RANGE):
            group_id = r.varint()
            object_id = r.varint()
            # The marker is the prior for the group and object ids only.
            subgroup, priority = (None, None) if prior is None else (prior[2], prior[3])
            self._prior = (group_id, object_id, subgroup, priority)
            return FetchRangeEnd(group_id, object_id, flags == FLAG_END_OF_UNKNOWN_RANGE)
        if flags > _FETCH_MAX_FLAGS:
            raise ProtocolViolation(f"unknown serialization flags 0x{flags:x}")
        if prior is None:
            if not flags & _FETCH_GROUP_ID or not flags & _FETCH_OBJECT_ID:
                raise ProtocolViolation("the first fetch object refers to a prior object")
            prior = (0, 0, None, None)
        group_id = r.varint() if flags & _FETCH_GROUP_ID else prior[0]
        subgroup_id: int | None = None
        mode = flags & _FETCH_SUBGROUP_MASK
        if flags & _FETCH_DATAGRAM:
            subgroup_id = None
        elif mode == _FETCH_SUBGROUP_FIELD:
            subgroup_id = r.varint()
        elif mode == _FETCH_SUBGROUP_ZERO:
            subgroup_id = 0
        elif prior[2] is None:
            raise ProtocolViolation("a fetch object refers to a prior subgroup id there is not")
        else:
            subgroup_id = prior[2] + (mode == _FETCH_SUBGROUP_NEXT)
        object_id = r.varint() if flags & _FETCH_OBJECT_ID else prior[1] + 1
        if flags & _FETCH_PRIORITY:
            priority = r.uint8()
        elif prior[3] is None:
            raise ProtocolViolation("a fetch object refers to a prior priority there is not")
        else:
            priority = prior[3]
        extensions = self._read_extensions(r) if flags & _FETCH_EXTENSIONS else b""
        payload = self._read_payload(r, r.varint())
        if extensions:
            parse_extensions(extensions)
        # A datagram-preference object counts as subgroup 0 for the next one.
        self._prior = (group_id, object_id, subgroup_id or 0, priority)
        return FetchObject16(group_id, subgroup_id, object_id, priority, extensions, payload)


# Datagrams -------------------------------------------------------------------------------


def encode_datagram(d: ObjectDatagram, *, default_priority: int | None = None) -> bytes:
    """Encode an OBJECT_DATAGRAM (§10.3.1) with the smallest type that carries it."""
    extensions = d.extensions
    datagram_type = _DATAGRAM_EXTENSIONS if extensions else 0
    if d.status is None:
        if d.end_of_group:
            datagram_type |= _DATAGRAM_END_OF_GROUP
    else:
        _check_encode(d.status, d.payload, extensions)
        if d.end_of_group:
            raise ValueError("a status datagram has no end-of-group flag")
        datagram_type |= _DATAGRAM_STATUS
    if d.object_id == 0:
        datagram_type |= _DATAGRAM_ZERO_OBJECT_ID
    omit_priority = d.publisher_priority == default_priority
    if omit_priority:
        datagram_type |= _DATAGRAM_DEFAULT_PRIORITY
    out = bytearray(encode_varint(datagram_type))
    out += encode_varint(d.track_alias)
    out += encode_varint(d.group_id)
    if d.object_id:
        out += encode_varint(d.object_id)
    if not omit_priority:
        out.append(d.publisher_priority)
    if extensions:
        out += encode_varint(len(extensions))
        out += extensions
    if d.status is None:
        out += d.payload
    else:
        out += encode_varint(d.status)
    return bytes(out)


def decode_datagram(
    data: Buffer, default_priority: Callable[[int], int] = _no_track_default
) -> ObjectDatagram:
    """Decode one whole OBJECT_DATAGRAM (§10.3.1)."""
    r = Reader(data)
    with truncation_is_violation("OBJECT_DATAGRAM"):
        datagram_type = r.varint()
        is_status = bool(datagram_type & _DATAGRAM_STATUS)
        if datagram_type & ~0x2F or (is_status and datagram_type & _DATAGRAM_END_OF_GROUP):
            raise ProtocolViolation(f"unknown datagram type 0x{datagram_type:x}")
        track_alias = r.varint()
        group_id = r.varint()
        object_id = 0 if datagram_type & _DATAGRAM_ZERO_OBJECT_ID else r.varint()
        if datagram_type & _DATAGRAM_DEFAULT_PRIORITY:
            priority = default_priority(track_alias)
        else:
            priority = r.uint8()
        extensions = b""
        if datagram_type & _DATAGRAM_EXTENSIONS:
            length = r.varint()
            if length == 0:
                raise ProtocolViolation("datagram with the extensions bit has 0 extension bytes")
            extensions = r.bytes_(length)
        status: int | None = None
        payload = b""
        if is_status:
            status = r.varint()
            if not r.at_end():
                raise ProtocolViolation("bytes after the status of a status datagram")
        else:
            payload = r.rest()
    _check_object(STATUS_NORMAL if status is None else status, extensions)
    end_of_group = bool(datagram_type & _DATAGRAM_END_OF_GROUP)
    return ObjectDatagram(
        track_alias, group_id, object_id, priority, extensions, payload, status, end_of_group
    )
