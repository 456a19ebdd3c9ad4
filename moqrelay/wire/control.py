"""Wire layer (sans-IO codec): MoQT draft-14 control messages.

One slotted dataclass per control message, each with its wire type (`TYPE`),
`encode_payload()` and `decode_payload(reader)`; `encode_message` adds the
type and 16-bit length framing, and `ControlStreamDecoder` reassembles framed
messages from a control stream split at arbitrary points.

Decoding validates what the codec can see on its own (field ranges, flags,
namespace and name sizes, reason phrases, duplicate single-valued parameters)
and raises `ProtocolViolation`; everything that needs session state (request id
order, version choice, aliases) is left to the session layer. Encoders raise
``ValueError`` on values that cannot be put on the wire: that is a programming
error, not a peer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Generic, NamedTuple, Self, TypeAlias, TypeVar

from moqrelay.wire.errors import KeyValueFormattingError, ProtocolViolation
from moqrelay.wire.varint import NeedMoreData, Reader, encode_varint, truncation_is_violation

__all__ = [
    "DRAFT_14",
    "FETCH_ABSOLUTE_JOINING",
    "FETCH_RELATIVE_JOINING",
    "FETCH_STANDALONE",
    "FILTER_ABSOLUTE_RANGE",
    "FILTER_ABSOLUTE_START",
    "FILTER_LARGEST_OBJECT",
    "FILTER_NEXT_GROUP_START",
    "GROUP_ORDER_ASCENDING",
    "GROUP_ORDER_DESCENDING",
    "GROUP_ORDER_PUBLISHER",
    "MAX_FULL_TRACK_NAME",
    "MAX_GOAWAY_URI",
    "MAX_KVP_BYTES",
    "MAX_NAMESPACE_FIELDS",
    "MAX_REASON_PHRASE",
    "MESSAGE_TYPES",
    "PARAM_AUTHORIZATION_TOKEN",
    "PARAM_DELIVERY_TIMEOUT",
    "PARAM_MAX_CACHE_DURATION",
    "SETUP_AUTHORITY",
    "SETUP_AUTHORIZATION_TOKEN",
    "SETUP_MAX_AUTH_TOKEN_CACHE_SIZE",
    "SETUP_MAX_REQUEST_ID",
    "SETUP_MOQT_IMPLEMENTATION",
    "SETUP_PATH",
    "ClientSetup",
    "ControlMessage",
    "ControlStreamDecoder",
    "Fetch",
    "FetchCancel",
    "FetchError",
    "FetchOk",
    "FramedMessageDecoder",
    "GoAway",
    "Location",
    "MaxRequestId",
    "Namespace",
    "Param",
    "Publish",
    "PublishDone",
    "PublishError",
    "PublishNamespace",
    "PublishNamespaceCancel",
    "PublishNamespaceDone",
    "PublishNamespaceError",
    "PublishNamespaceOk",
    "PublishOk",
    "RequestsBlocked",
    "ServerSetup",
    "Subscribe",
    "SubscribeError",
    "SubscribeNamespace",
    "SubscribeNamespaceError",
    "SubscribeNamespaceOk",
    "SubscribeOk",
    "SubscribeUpdate",
    "TrackStatus",
    "TrackStatusError",
    "TrackStatusOk",
    "Unsubscribe",
    "UnsubscribeNamespace",
    "encode_kvps",
    "encode_message",
    "get_param",
    "read_kvp",
]

DRAFT_14 = 0xFF00000E

# Setup parameters (the type space shared by every version).
SETUP_PATH = 0x01
SETUP_MAX_REQUEST_ID = 0x02
SETUP_AUTHORIZATION_TOKEN = 0x03
SETUP_MAX_AUTH_TOKEN_CACHE_SIZE = 0x04
SETUP_AUTHORITY = 0x05
SETUP_MOQT_IMPLEMENTATION = 0x07

# Version-specific message parameters.
PARAM_DELIVERY_TIMEOUT = 0x02
PARAM_AUTHORIZATION_TOKEN = 0x03
PARAM_MAX_CACHE_DURATION = 0x04

FILTER_NEXT_GROUP_START = 0x1
FILTER_LARGEST_OBJECT = 0x2
FILTER_ABSOLUTE_START = 0x3
FILTER_ABSOLUTE_RANGE = 0x4

FETCH_STANDALONE = 0x1
FETCH_RELATIVE_JOINING = 0x2
FETCH_ABSOLUTE_JOINING = 0x3

GROUP_ORDER_PUBLISHER = 0
GROUP_ORDER_ASCENDING = 1
GROUP_ORDER_DESCENDING = 2

MAX_NAMESPACE_FIELDS = 32
MAX_FULL_TRACK_NAME = 4096
MAX_REASON_PHRASE = 1024
MAX_GOAWAY_URI = 8192
MAX_KVP_BYTES = 0xFFFF
_MAX_CONTROL_PAYLOAD = 0xFFFF
# The message type a FramedMessageDecoder returns (each draft has its own union).
M = TypeVar("M")


class Location(NamedTuple):
    """A (group, object) position; tuple ordering is the draft's ordering."""

    group: int
    object: int


Param: TypeAlias = tuple[int, int | bytes]
Namespace: TypeAlias = tuple[bytes, ...]


def get_param(params: list[Param], key: int) -> int | bytes | None:
    """Return the value of the first parameter of type `key`, or None."""
    for param_type, value in params:
        if param_type == key:
            return value
    return None


# Key-Value-Pairs (parameters and object extension headers) -----------------------------


def read_kvp(r: Reader) -> Param:
    """Read one Key-Value-Pair: even type -> varint value, odd type -> bytes."""
    kvp_type = r.varint()
    if kvp_type & 1 == 0:
        return (kvp_type, r.varint())
    length = r.varint()
    if length > MAX_KVP_BYTES:
        raise KeyValueFormattingError(f"key-value pair 0x{kvp_type:x} is {length} bytes long")
    return (kvp_type, r.bytes_(length))


def _encode_kvp(out: bytearray, param: Param) -> None:
    kvp_type, value = param
    out += encode_varint(kvp_type)
    if kvp_type & 1 == 0:
        if not isinstance(value, int):
            raise ValueError(f"parameter 0x{kvp_type:x} is even: its value must be an int")
        out += encode_varint(value)
        return
    if isinstance(value, int):
        raise ValueError(f"parameter 0x{kvp_type:x} is odd: its value must be bytes")
    if len(value) > MAX_KVP_BYTES:
        raise ValueError(f"parameter 0x{kvp_type:x} value is longer than {MAX_KVP_BYTES}")
    out += encode_varint(len(value))
    out += value


def encode_kvps(params: list[Param]) -> bytes:
    """Encode Key-Value-Pairs back to back, without a count."""
    out = bytearray()
    for param in params:
        _encode_kvp(out, param)
    return bytes(out)


def _read_params(r: Reader, unique: frozenset[int]) -> list[Param]:
    count = r.varint()
    params: list[Param] = []
    seen: set[int] = set()
    for _ in range(count):
        param = read_kvp(r)
        param_type = param[0]
        if param_type in unique:
            if param_type in seen:
                raise ProtocolViolation(f"duplicate parameter 0x{param_type:x}")
            seen.add(param_type)
        params.append(param)
    return params


def _encode_params(out: bytearray, params: list[Param]) -> None:
    out += encode_varint(len(params))
    for param in params:
        _encode_kvp(out, param)


# Field helpers -----------------------------------------------------------------------


def _read_namespace(r: Reader, min_fields: int = 1) -> Namespace:
    count = r.varint()
    if not min_fields <= count <= MAX_NAMESPACE_FIELDS:
        raise ProtocolViolation(f"track namespace has {count} fields")
    return tuple([r.length_prefixed() for _ in range(count)])


def _check_name_size(namespace: Namespace, track_name: bytes = b"") -> None:
    size = len(track_name)
    for part in namespace:
        size += len(part)
    if size > MAX_FULL_TRACK_NAME:
        raise ProtocolViolation(f"full track name is {size} bytes long")


def _encode_namespace(
    out: bytearray, namespace: Namespace, track_name: bytes = b"", min_fields: int = 1
) -> None:
    if not min_fields <= len(namespace) <= MAX_NAMESPACE_FIELDS:
        raise ValueError(
            f"track namespace must have {min_fields}..32 fields, not {len(namespace)}"
        )
    size = len(track_name) + sum(len(part) for part in namespace)
    if size > MAX_FULL_TRACK_NAME:
        raise ValueError(f"full track name is {size} bytes long")
    out += encode_varint(len(namespace))
    for part in namespace:
        out += encode_varint(len(part))
        out += part


def _encode_bytes(out: bytearray, value: bytes) -> None:
    out += encode_varint(len(value))
    out += value


def _read_reason(r: Reader) -> str:
    length = r.varint()
    if length > MAX_REASON_PHRASE:
        raise ProtocolViolation(f"reason phrase is {length} bytes long")
    raw = r.bytes_(length)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("reason phrase is not UTF-8") from None


def _encode_reason(out: bytearray, reason: str) -> None:
    raw = reason.encode("utf-8")
    if len(raw) > MAX_REASON_PHRASE:
        raise ValueError(f"reason phrase is {len(raw)} bytes long")
    out += encode_varint(len(raw))
    out += raw


def _read_location(r: Reader) -> Location:
    group = r.varint()
    return Location(group, r.varint())


def _encode_location(out: bytearray, location: Location) -> None:
    out += encode_varint(location[0])
    out += encode_varint(location[1])


def _read_flag(r: Reader, what: str) -> bool:
    value = r.uint8()
    if value > 1:
        raise ProtocolViolation(f"{what} is {value}, not 0 or 1")
    return value == 1


def _read_group_order(r: Reader, *, allow_publisher: bool) -> int:
    value = r.uint8()
    lowest = GROUP_ORDER_PUBLISHER if allow_publisher else GROUP_ORDER_ASCENDING
    if not lowest <= value <= GROUP_ORDER_DESCENDING:
        raise ProtocolViolation(f"group order {value} is not allowed here")
    return value


def _encode_group_order(out: bytearray, value: int, *, allow_publisher: bool) -> None:
    lowest = GROUP_ORDER_PUBLISHER if allow_publisher else GROUP_ORDER_ASCENDING
    if not lowest <= value <= GROUP_ORDER_DESCENDING:
        raise ValueError(f"group order {value} is not allowed here")
    out.append(value)


def _read_filter(r: Reader) -> tuple[int, Location | None, int | None]:
    filter_type = r.varint()
    if not FILTER_NEXT_GROUP_START <= filter_type <= FILTER_ABSOLUTE_RANGE:
        raise ProtocolViolation(f"unknown filter type {filter_type}")
    start = None
    end_group = None
    if filter_type >= FILTER_ABSOLUTE_START:
        start = _read_location(r)
        if filter_type == FILTER_ABSOLUTE_RANGE:
            end_group = r.varint()
    return filter_type, start, end_group


def _encode_filter(
    out: bytearray, filter_type: int, start: Location | None, end_group: int | None
) -> None:
    if not FILTER_NEXT_GROUP_START <= filter_type <= FILTER_ABSOLUTE_RANGE:
        raise ValueError(f"unknown filter type {filter_type}")
    if (start is not None) != (filter_type >= FILTER_ABSOLUTE_START):
        raise ValueError(f"filter type {filter_type}: start must be given iff filter >= 3")
    if (end_group is not None) != (filter_type == FILTER_ABSOLUTE_RANGE):
        raise ValueError(f"filter type {filter_type}: end_group must be given iff filter == 4")
    out += encode_varint(filter_type)
    if start is not None:
        _encode_location(out, start)
    if end_group is not None:
        out += encode_varint(end_group)


def _read_largest(r: Reader) -> Location | None:
    return _read_location(r) if _read_flag(r, "content exists") else None


def _encode_largest(out: bytearray, largest: Location | None) -> None:
    if largest is None:
        out.append(0)
    else:
        out.append(1)
        _encode_location(out, largest)


_UNIQUE_SETUP = frozenset(
    {
        SETUP_PATH,
        SETUP_MAX_REQUEST_ID,
        SETUP_MAX_AUTH_TOKEN_CACHE_SIZE,
        SETUP_AUTHORITY,
        SETUP_MOQT_IMPLEMENTATION,
    }
)
_NO_UNIQUE: frozenset[int] = frozenset()
_UNIQUE_TIMEOUT = frozenset({PARAM_DELIVERY_TIMEOUT})
_UNIQUE_CACHE = frozenset({PARAM_MAX_CACHE_DURATION})
_UNIQUE_TIMEOUT_CACHE = frozenset({PARAM_DELIVERY_TIMEOUT, PARAM_MAX_CACHE_DURATION})


# Setup and session-wide messages -----------------------------------------------------


@dataclass(slots=True)
class ClientSetup:
    """CLIENT_SETUP (0x20): the versions the client offers and its setup parameters."""

    TYPE: ClassVar[int] = 0x20

    versions: list[int]
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(len(self.versions)))
        for version in self.versions:
            out += encode_varint(version)
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        # Each version takes at least one byte: a huge count runs out of payload quickly.
        versions = [r.varint() for _ in range(r.varint())]
        return cls(versions, _read_params(r, _UNIQUE_SETUP))


@dataclass(slots=True)
class ServerSetup:
    """SERVER_SETUP (0x21): the selected version and the server's setup parameters."""

    TYPE: ClassVar[int] = 0x21

    version: int
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.version))
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        version = r.varint()
        return cls(version, _read_params(r, _UNIQUE_SETUP))


@dataclass(slots=True)
class GoAway:
    """GOAWAY (0x10): empty URI = reconnect to the current one."""

    TYPE: ClassVar[int] = 0x10

    new_session_uri: bytes

    def encode_payload(self) -> bytes:
        if len(self.new_session_uri) > MAX_GOAWAY_URI:
            raise ValueError("GOAWAY URI is longer than 8192 bytes")
        out = bytearray()
        _encode_bytes(out, self.new_session_uri)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        length = r.varint()
        if length > MAX_GOAWAY_URI:
            raise ProtocolViolation(f"GOAWAY URI is {length} bytes long")
        return cls(r.bytes_(length))


@dataclass(slots=True)
class _RequestIdOnly:
    """Layout shared by messages whose payload is one Request ID."""

    TYPE: ClassVar[int]

    request_id: int

    def encode_payload(self) -> bytes:
        return encode_varint(self.request_id)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        return cls(r.varint())


@dataclass(slots=True)
class MaxRequestId(_RequestIdOnly):
    """MAX_REQUEST_ID (0x15): the peer may use request ids strictly below `request_id`."""

    TYPE: ClassVar[int] = 0x15


@dataclass(slots=True)
class RequestsBlocked:
    """REQUESTS_BLOCKED (0x1A): the sender is blocked on this maximum."""

    TYPE: ClassVar[int] = 0x1A

    maximum_request_id: int

    def encode_payload(self) -> bytes:
        return encode_varint(self.maximum_request_id)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        return cls(r.varint())


@dataclass(slots=True)
class _RequestError:
    """Layout shared by the *_ERROR replies: Request ID, Error Code, Reason Phrase."""

    TYPE: ClassVar[int]

    request_id: int
    error_code: int
    reason: str

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        out += encode_varint(self.error_code)
        _encode_reason(out, self.reason)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        error_code = r.varint()
        return cls(request_id, error_code, _read_reason(r))


# Subscriptions ------------------------------------------------------------------------


@dataclass(slots=True)
class _SubscribeLayout:
    """Layout shared by SUBSCRIBE and TRACK_STATUS."""

    TYPE: ClassVar[int]

    request_id: int
    namespace: Namespace
    track_name: bytes
    subscriber_priority: int
    group_order: int
    forward: bool
    filter_type: int
    start: Location | None = None
    end_group: int | None = None
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        _encode_namespace(out, self.namespace, self.track_name)
        _encode_bytes(out, self.track_name)
        out.append(self.subscriber_priority)
        _encode_group_order(out, self.group_order, allow_publisher=True)
        out.append(1 if self.forward else 0)
        _encode_filter(out, self.filter_type, self.start, self.end_group)
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        namespace = _read_namespace(r)
        track_name = r.length_prefixed()
        _check_name_size(namespace, track_name)
        priority = r.uint8()
        group_order = _read_group_order(r, allow_publisher=True)
        forward = _read_flag(r, "forward")
        filter_type, start, end_group = _read_filter(r)
        params = _read_params(r, _UNIQUE_TIMEOUT)
        return cls(
            request_id,
            namespace,
            track_name,
            priority,
            group_order,
            forward,
            filter_type,
            start,
            end_group,
            params,
        )


@dataclass(slots=True)
class Subscribe(_SubscribeLayout):
    """SUBSCRIBE (0x03). No track alias: the publisher picks it in SUBSCRIBE_OK."""

    TYPE: ClassVar[int] = 0x03


@dataclass(slots=True)
class _SubscribeOkLayout:
    """Layout shared by SUBSCRIBE_OK and TRACK_STATUS_OK (content exists iff largest)."""

    TYPE: ClassVar[int]

    request_id: int
    track_alias: int
    expires: int
    group_order: int
    largest: Location | None
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        out += encode_varint(self.track_alias)
        out += encode_varint(self.expires)
        _encode_group_order(out, self.group_order, allow_publisher=False)
        _encode_largest(out, self.largest)
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        track_alias = r.varint()
        expires = r.varint()
        group_order = _read_group_order(r, allow_publisher=False)
        largest = _read_largest(r)
        params = _read_params(r, _UNIQUE_TIMEOUT_CACHE)
        return cls(request_id, track_alias, expires, group_order, largest, params)


@dataclass(slots=True)
class SubscribeOk(_SubscribeOkLayout):
    """SUBSCRIBE_OK (0x04)."""

    TYPE: ClassVar[int] = 0x04


@dataclass(slots=True)
class SubscribeError(_RequestError):
    """SUBSCRIBE_ERROR (0x05); codes in `SubscribeErrorCode`."""

    TYPE: ClassVar[int] = 0x05


@dataclass(slots=True)
class SubscribeUpdate:
    """SUBSCRIBE_UPDATE (0x02). `end_group` is the wire value: end group + 1, 0 = open."""

    TYPE: ClassVar[int] = 0x02

    request_id: int
    subscription_request_id: int
    start: Location
    end_group: int
    subscriber_priority: int
    forward: bool
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        out += encode_varint(self.subscription_request_id)
        _encode_location(out, self.start)
        out += encode_varint(self.end_group)
        out.append(self.subscriber_priority)
        out.append(1 if self.forward else 0)
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        subscription_request_id = r.varint()
        start = _read_location(r)
        end_group = r.varint()
        priority = r.uint8()
        forward = _read_flag(r, "forward")
        params = _read_params(r, _UNIQUE_TIMEOUT)
        return cls(
            request_id, subscription_request_id, start, end_group, priority, forward, params
        )


@dataclass(slots=True)
class Unsubscribe(_RequestIdOnly):
    """UNSUBSCRIBE (0x0A)."""

    TYPE: ClassVar[int] = 0x0A


@dataclass(slots=True)
class PublishDone:
    """PUBLISH_DONE (0x0B); status codes in `PublishDoneCode`."""

    TYPE: ClassVar[int] = 0x0B

    request_id: int
    status_code: int
    stream_count: int
    reason: str

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        out += encode_varint(self.status_code)
        out += encode_varint(self.stream_count)
        _encode_reason(out, self.reason)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        status_code = r.varint()
        stream_count = r.varint()
        return cls(request_id, status_code, stream_count, _read_reason(r))


@dataclass(slots=True)
class Publish:
    """PUBLISH (0x1D): a publisher-initiated subscription (content exists iff largest)."""

    TYPE: ClassVar[int] = 0x1D

    request_id: int
    namespace: Namespace
    track_name: bytes
    track_alias: int
    group_order: int
    largest: Location | None
    forward: bool
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        _encode_namespace(out, self.namespace, self.track_name)
        _encode_bytes(out, self.track_name)
        out += encode_varint(self.track_alias)
        _encode_group_order(out, self.group_order, allow_publisher=False)
        _encode_largest(out, self.largest)
        out.append(1 if self.forward else 0)
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        namespace = _read_namespace(r)
        track_name = r.length_prefixed()
        _check_name_size(namespace, track_name)
        track_alias = r.varint()
        group_order = _read_group_order(r, allow_publisher=False)
        largest = _read_largest(r)
        forward = _read_flag(r, "forward")
        params = _read_params(r, _UNIQUE_TIMEOUT_CACHE)
        return cls(
            request_id, namespace, track_name, track_alias, group_order, largest, forward, params
        )


@dataclass(slots=True)
class PublishOk:
    """PUBLISH_OK (0x1E)."""

    TYPE: ClassVar[int] = 0x1E

    request_id: int
    forward: bool
    subscriber_priority: int
    group_order: int
    filter_type: int
    start: Location | None = None
    end_group: int | None = None
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        out.append(1 if self.forward else 0)
        out.append(self.subscriber_priority)
        _encode_group_order(out, self.group_order, allow_publisher=False)
        _encode_filter(out, self.filter_type, self.start, self.end_group)
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        forward = _read_flag(r, "forward")
        priority = r.uint8()
        group_order = _read_group_order(r, allow_publisher=False)
        filter_type, start, end_group = _read_filter(r)
        params = _read_params(r, _UNIQUE_TIMEOUT)
        return cls(
            request_id, forward, priority, group_order, filter_type, start, end_group, params
        )


@dataclass(slots=True)
class PublishError(_RequestError):
    """PUBLISH_ERROR (0x1F); codes in `PublishErrorCode`."""

    TYPE: ClassVar[int] = 0x1F


# Fetch --------------------------------------------------------------------------------


@dataclass(slots=True)
class Fetch:
    """FETCH (0x16).

    Standalone (type 0x1) uses namespace, track_name, start and end; the joining
    types (0x2, 0x3) use joining_request_id and joining_start. The other fields
    are None.
    """

    TYPE: ClassVar[int] = 0x16

    request_id: int
    subscriber_priority: int
    group_order: int
    fetch_type: int
    namespace: Namespace | None = None
    track_name: bytes | None = None
    start: Location | None = None
    end: Location | None = None
    joining_request_id: int | None = None
    joining_start: int | None = None
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        out.append(self.subscriber_priority)
        _encode_group_order(out, self.group_order, allow_publisher=True)
        out += encode_varint(self.fetch_type)
        namespace, track_name, start, end = self.namespace, self.track_name, self.start, self.end
        joining_request_id, joining_start = self.joining_request_id, self.joining_start
        if self.fetch_type == FETCH_STANDALONE:
            if (
                namespace is None
                or track_name is None
                or start is None
                or end is None
                or joining_request_id is not None
                or joining_start is not None
            ):
                raise ValueError("standalone FETCH: give namespace, track_name, start, end only")
            _encode_namespace(out, namespace, track_name)
            _encode_bytes(out, track_name)
            _encode_location(out, start)
            _encode_location(out, end)
        elif self.fetch_type in (FETCH_RELATIVE_JOINING, FETCH_ABSOLUTE_JOINING):
            if (
                joining_request_id is None
                or joining_start is None
                or (namespace, track_name, start, end) != (None, None, None, None)
            ):
                raise ValueError("joining FETCH: give joining_request_id, joining_start only")
            out += encode_varint(joining_request_id)
            out += encode_varint(joining_start)
        else:
            raise ValueError(f"unknown fetch type {self.fetch_type}")
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        priority = r.uint8()
        group_order = _read_group_order(r, allow_publisher=True)
        fetch_type = r.varint()
        if fetch_type == FETCH_STANDALONE:
            namespace = _read_namespace(r)
            track_name = r.length_prefixed()
            _check_name_size(namespace, track_name)
            start = _read_location(r)
            end = _read_location(r)
            params = _read_params(r, _NO_UNIQUE)
            return cls(
                request_id,
                priority,
                group_order,
                fetch_type,
                namespace=namespace,
                track_name=track_name,
                start=start,
                end=end,
                params=params,
            )
        if fetch_type in (FETCH_RELATIVE_JOINING, FETCH_ABSOLUTE_JOINING):
            joining_request_id = r.varint()
            joining_start = r.varint()
            params = _read_params(r, _NO_UNIQUE)
            return cls(
                request_id,
                priority,
                group_order,
                fetch_type,
                joining_request_id=joining_request_id,
                joining_start=joining_start,
                params=params,
            )
        raise ProtocolViolation(f"unknown fetch type {fetch_type}")


@dataclass(slots=True)
class FetchOk:
    """FETCH_OK (0x18)."""

    TYPE: ClassVar[int] = 0x18

    request_id: int
    group_order: int
    end_of_track: bool
    end: Location
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        _encode_group_order(out, self.group_order, allow_publisher=False)
        out.append(1 if self.end_of_track else 0)
        _encode_location(out, self.end)
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        group_order = _read_group_order(r, allow_publisher=False)
        end_of_track = _read_flag(r, "end of track")
        end = _read_location(r)
        params = _read_params(r, _UNIQUE_CACHE)
        return cls(request_id, group_order, end_of_track, end, params)


@dataclass(slots=True)
class FetchError(_RequestError):
    """FETCH_ERROR (0x19); codes in `FetchErrorCode`."""

    TYPE: ClassVar[int] = 0x19


@dataclass(slots=True)
class FetchCancel(_RequestIdOnly):
    """FETCH_CANCEL (0x17)."""

    TYPE: ClassVar[int] = 0x17


# Track status --------------------------------------------------------------------------


@dataclass(slots=True)
class TrackStatus(_SubscribeLayout):
    """TRACK_STATUS (0x0D): the SUBSCRIBE layout; answered without a subscription."""

    TYPE: ClassVar[int] = 0x0D


@dataclass(slots=True)
class TrackStatusOk(_SubscribeOkLayout):
    """TRACK_STATUS_OK (0x0E): the SUBSCRIBE_OK layout (track alias 0)."""

    TYPE: ClassVar[int] = 0x0E


@dataclass(slots=True)
class TrackStatusError(_RequestError):
    """TRACK_STATUS_ERROR (0x0F); codes in `SubscribeErrorCode`."""

    TYPE: ClassVar[int] = 0x0F


# Namespaces --------------------------------------------------------------------------


@dataclass(slots=True)
class PublishNamespace:
    """PUBLISH_NAMESPACE (0x06), formerly ANNOUNCE."""

    TYPE: ClassVar[int] = 0x06

    request_id: int
    namespace: Namespace
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        _encode_namespace(out, self.namespace)
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        namespace = _read_namespace(r)
        _check_name_size(namespace)
        return cls(request_id, namespace, _read_params(r, _NO_UNIQUE))


@dataclass(slots=True)
class PublishNamespaceOk(_RequestIdOnly):
    """PUBLISH_NAMESPACE_OK (0x07)."""

    TYPE: ClassVar[int] = 0x07


@dataclass(slots=True)
class PublishNamespaceError(_RequestError):
    """PUBLISH_NAMESPACE_ERROR (0x08); codes in `NamespaceErrorCode`."""

    TYPE: ClassVar[int] = 0x08


@dataclass(slots=True)
class PublishNamespaceDone:
    """PUBLISH_NAMESPACE_DONE (0x09), formerly UNANNOUNCE: no request id."""

    TYPE: ClassVar[int] = 0x09

    namespace: Namespace

    def encode_payload(self) -> bytes:
        out = bytearray()
        _encode_namespace(out, self.namespace)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        namespace = _read_namespace(r)
        _check_name_size(namespace)
        return cls(namespace)


@dataclass(slots=True)
class PublishNamespaceCancel:
    """PUBLISH_NAMESPACE_CANCEL (0x0C); codes in `NamespaceErrorCode`."""

    TYPE: ClassVar[int] = 0x0C

    namespace: Namespace
    error_code: int
    reason: str

    def encode_payload(self) -> bytes:
        out = bytearray()
        _encode_namespace(out, self.namespace)
        out += encode_varint(self.error_code)
        _encode_reason(out, self.reason)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        namespace = _read_namespace(r)
        _check_name_size(namespace)
        error_code = r.varint()
        return cls(namespace, error_code, _read_reason(r))


@dataclass(slots=True)
class SubscribeNamespace:
    """SUBSCRIBE_NAMESPACE (0x11), formerly SUBSCRIBE_ANNOUNCES.

    Deviation from draft-14: the prefix may have 0 fields, meaning every namespace.
    The draft calls that a protocol violation, but moq-dev's library (`moq-rs`)
    learns broadcasts only that way, and moq-dev's and aiomoqt's relays accept it.
    """

    TYPE: ClassVar[int] = 0x11

    request_id: int
    namespace_prefix: Namespace
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        _encode_namespace(out, self.namespace_prefix, min_fields=0)
        _encode_params(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        prefix = _read_namespace(r, min_fields=0)
        _check_name_size(prefix)
        return cls(request_id, prefix, _read_params(r, _NO_UNIQUE))


@dataclass(slots=True)
class SubscribeNamespaceOk(_RequestIdOnly):
    """SUBSCRIBE_NAMESPACE_OK (0x12)."""

    TYPE: ClassVar[int] = 0x12


@dataclass(slots=True)
class SubscribeNamespaceError(_RequestError):
    """SUBSCRIBE_NAMESPACE_ERROR (0x13); codes in `SubscribeNamespaceErrorCode`."""

    TYPE: ClassVar[int] = 0x13


@dataclass(slots=True)
class UnsubscribeNamespace:
    """UNSUBSCRIBE_NAMESPACE (0x14): no request id; the prefix may be empty, as in
    `SubscribeNamespace`, so that an empty-prefix watch can be ended."""

    TYPE: ClassVar[int] = 0x14

    namespace_prefix: Namespace

    def encode_payload(self) -> bytes:
        out = bytearray()
        _encode_namespace(out, self.namespace_prefix, min_fields=0)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        prefix = _read_namespace(r, min_fields=0)
        _check_name_size(prefix)
        return cls(prefix)


ControlMessage: TypeAlias = (
    ClientSetup
    | ServerSetup
    | GoAway
    | MaxRequestId
    | RequestsBlocked
    | Subscribe
    | SubscribeOk
    | SubscribeError
    | SubscribeUpdate
    | Unsubscribe
    | PublishDone
    | Publish
    | PublishOk
    | PublishError
    | Fetch
    | FetchOk
    | FetchError
    | FetchCancel
    | TrackStatus
    | TrackStatusOk
    | TrackStatusError
    | PublishNamespace
    | PublishNamespaceOk
    | PublishNamespaceError
    | PublishNamespaceDone
    | PublishNamespaceCancel
    | SubscribeNamespace
    | SubscribeNamespaceOk
    | SubscribeNamespaceError
    | UnsubscribeNamespace
)

_ALL_MESSAGES: tuple[type[ControlMessage], ...] = (
    ClientSetup,
    ServerSetup,
    GoAway,
    MaxRequestId,
    RequestsBlocked,
    Subscribe,
    SubscribeOk,
    SubscribeError,
    SubscribeUpdate,
    Unsubscribe,
    PublishDone,
    Publish,
    PublishOk,
    PublishError,
    Fetch,
    FetchOk,
    FetchError,
    FetchCancel,
    TrackStatus,
    TrackStatusOk,
    TrackStatusError,
    PublishNamespace,
    PublishNamespaceOk,
    PublishNamespaceError,
    PublishNamespaceDone,
    PublishNamespaceCancel,
    SubscribeNamespace,
    SubscribeNamespaceOk,
    SubscribeNamespaceError,
    UnsubscribeNamespace,
)

MESSAGE_TYPES: dict[int, type[ControlMessage]] = {cls.TYPE: cls for cls in _ALL_MESSAGES}


def encode_message(msg: ControlMessage) -> bytes:
    """Frame one control message: Type (i), Length (16), payload."""
    payload = msg.encode_payload()
    if len(payload) > _MAX_CONTROL_PAYLOAD:
        raise ValueError(f"{type(msg).__name__} payload is {len(payload)} bytes long")
    return encode_varint(msg.TYPE) + len(payload).to_bytes(2, "big") + payload


def _decode_framed(msg_type: int, r: Reader) -> ControlMessage:
    cls = MESSAGE_TYPES.get(msg_type)
    if cls is None:
        raise ProtocolViolation(f"unknown control message type 0x{msg_type:x}")
    with truncation_is_violation(cls.__name__):
        msg = cls.decode_payload(r)
    if not r.at_end():
        raise ProtocolViolation(f"{r.remaining()} bytes left over after {cls.__name__}")
    return msg


class FramedMessageDecoder(Generic[M]):
    """Reassemble and decode type-and-length framed control messages from a stream.

    Feed it bytes split anywhere; it returns every message completed by the feed.
    It holds at most one incomplete message between feeds. Once it has raised a
    ProtocolViolation it is dead: every later feed raises the same exception. A
    draft's decoder says which types it knows (`_check_type`) and decodes one
    message's payload (`_decode`); the framing is the same in every draft.
    """

    __slots__ = ("_buf", "_error", "_max_message_size")

    def __init__(self, max_message_size: int = _MAX_CONTROL_PAYLOAD) -> None:
        self._max_message_size = max_message_size
        self._buf = bytearray()
        self._error: ProtocolViolation | None = None

    def _check_type(self, msg_type: int) -> None:
        raise NotImplementedError

    def _decode(self, msg_type: int, r: Reader) -> M:
        raise NotImplementedError

    def feed(self, data: bytes | bytearray | memoryview) -> list[M]:
        """Add bytes from the stream; return the messages they complete, in order."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        messages: list[M] = []
        pos = 0
        try:
            while pos < len(buf):
                r = Reader(buf, pos)
                try:
                    msg_type = r.varint()
                    self._check_type(msg_type)
                    length = r.uint16()
                except NeedMoreData:
                    break
                if length > self._max_message_size:
                    raise ProtocolViolation(f"control message of {length} bytes is too long")
                end = r.pos + length
                if end > len(buf):
                    break
                messages.append(self._decode(msg_type, Reader(buf, r.pos, end)))
                pos = end
        except ProtocolViolation as exc:
            self._error = exc
            buf.clear()
            raise
        if pos:
            del buf[:pos]
        return messages


class ControlStreamDecoder(FramedMessageDecoder[ControlMessage]):
    """Reassemble and decode draft-14 control messages from a control stream."""

    __slots__ = ()

    def _check_type(self, msg_type: int) -> None:
        if msg_type not in MESSAGE_TYPES:
            raise ProtocolViolation(f"unknown control message type 0x{msg_type:x}")

    def _decode(self, msg_type: int, r: Reader) -> ControlMessage:
        return _decode_framed(msg_type, r)
