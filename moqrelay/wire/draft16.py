"""Wire layer (sans-IO codec): MoQT draft-16 control messages.

Draft-16 keeps the control-stream framing of draft-14 (Type (i), Length (16),
payload) but changes what is inside, and reuses some type codes with new
meanings, so it has its own message table. Where a draft-16 message means
what a draft-14 one meant, it decodes into the draft-14 dataclass of
`moqrelay.wire.control` (SUBSCRIBE's priority, group order, forward and filter
come from parameters now, but land in the same fields), so the relay core sees
one set of types whatever the draft. Messages with a new meaning (REQUEST_OK,
REQUEST_ERROR, REQUEST_UPDATE, NAMESPACE, NAMESPACE_DONE, and the
Request-ID forms of PUBLISH_NAMESPACE_DONE / _CANCEL and SUBSCRIBE_NAMESPACE)
have their own dataclasses here.

Parameters and track extensions are Key-Value-Pairs whose types are
delta-encoded (§1.4.2): the encoders sort them by type (stable, so repeated
AUTHORIZATION TOKENs keep their order) and the decoders return absolute types.
Section numbers in comments are those of draft-ietf-moq-transport-16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeAlias

from moqrelay.wire.control import (
    FETCH_ABSOLUTE_JOINING,
    FETCH_RELATIVE_JOINING,
    FETCH_STANDALONE,
    FILTER_ABSOLUTE_START,
    GROUP_ORDER_ASCENDING,
    GROUP_ORDER_DESCENDING,
    GROUP_ORDER_PUBLISHER,
    MAX_KVP_BYTES,
    MAX_NAMESPACE_FIELDS,
    SETUP_AUTHORITY,
    SETUP_MAX_AUTH_TOKEN_CACHE_SIZE,
    SETUP_MAX_REQUEST_ID,
    SETUP_MOQT_IMPLEMENTATION,
    SETUP_PATH,
    ClientSetup,
    Fetch,
    FetchCancel,
    FetchOk,
    FramedMessageDecoder,
    GoAway,
    Location,
    MaxRequestId,
    Namespace,
    Param,
    Publish,
    PublishDone,
    PublishNamespace,
    PublishOk,
    RequestsBlocked,
    ServerSetup,
    Subscribe,
    SubscribeOk,
    TrackStatus,
    Unsubscribe,
    _check_name_size,
    _encode_bytes,
    _encode_filter,
    _encode_location,
    _encode_namespace,
    _encode_reason,
    _read_filter,
    _read_location,
    _read_reason,
    _RequestError,
    _RequestIdOnly,
)
from moqrelay.wire.errors import KeyValueFormattingError, ProtocolViolation
from moqrelay.wire.varint import NeedMoreData, Reader, encode_varint, truncation_is_violation

__all__ = [
    "DRAFT_16",
    "EXT_DEFAULT_PUBLISHER_GROUP_ORDER",
    "EXT_DELIVERY_TIMEOUT",
    "EXT_MAX_CACHE_DURATION",
    "MESSAGE_TYPES",
    "PARAM_AUTHORIZATION_TOKEN",
    "PARAM_DELIVERY_TIMEOUT",
    "PARAM_EXPIRES",
    "PARAM_FORWARD",
    "PARAM_GROUP_ORDER",
    "PARAM_LARGEST_OBJECT",
    "PARAM_NEW_GROUP_REQUEST",
    "PARAM_SUBSCRIBER_PRIORITY",
    "PARAM_SUBSCRIPTION_FILTER",
    "REMOVED_MESSAGE_TYPES",
    "SUBSCRIBE_OPTIONS_BOTH",
    "SUBSCRIBE_OPTIONS_NAMESPACE",
    "SUBSCRIBE_OPTIONS_PUBLISH",
    "ControlMessage16",
    "ControlStreamDecoder16",
    "NamespaceDoneMessage",
    "NamespaceMessage",
    "PublishNamespaceCancel16",
    "PublishNamespaceDone16",
    "RequestError",
    "RequestOk",
    "RequestUpdate",
    "SubscribeNamespace16",
    "decode_kvps",
    "encode_kvps",
    "encode_message",
]

# The version number draft-16 would have had in SETUP: it negotiates by ALPN instead
# (§3.1), so this value only fills ClientSetup.versions / ServerSetup.version.
DRAFT_16 = 0xFF000010

# Message Parameters (§9.2.2, IANA table §13.2).
PARAM_DELIVERY_TIMEOUT = 0x02
PARAM_AUTHORIZATION_TOKEN = 0x03
PARAM_EXPIRES = 0x08
PARAM_LARGEST_OBJECT = 0x09
PARAM_FORWARD = 0x10
PARAM_SUBSCRIBER_PRIORITY = 0x20
PARAM_SUBSCRIPTION_FILTER = 0x21
PARAM_GROUP_ORDER = 0x22
PARAM_NEW_GROUP_REQUEST = 0x32
_KNOWN_PARAMS = frozenset(
    {
        PARAM_DELIVERY_TIMEOUT,
        PARAM_AUTHORIZATION_TOKEN,
        PARAM_EXPIRES,
        PARAM_LARGEST_OBJECT,
        PARAM_FORWARD,
        PARAM_SUBSCRIBER_PRIORITY,
        PARAM_SUBSCRIPTION_FILTER,
        PARAM_GROUP_ORDER,
        PARAM_NEW_GROUP_REQUEST,
    }
)

# Track extension headers with a draft-14 counterpart (§11). DELIVERY_TIMEOUT (0x02)
# and MAX_CACHE_DURATION (0x04) have the codes of the draft-14 parameters they replace.
EXT_DELIVERY_TIMEOUT = 0x02
EXT_MAX_CACHE_DURATION = 0x04
EXT_DEFAULT_PUBLISHER_GROUP_ORDER = 0x22

SUBSCRIBE_OPTIONS_PUBLISH = 0x00
SUBSCRIBE_OPTIONS_NAMESPACE = 0x01
SUBSCRIBE_OPTIONS_BOTH = 0x02

_DEFAULT_PRIORITY = 128
_MAX_KVP_TYPE = 2**64 - 1
_MAX_CONTROL_PAYLOAD = 0xFFFF

# Draft-14 type codes with no draft-16 message (§9 table): receiving one is a violation.
REMOVED_MESSAGE_TYPES: dict[int, str] = {
    0x0F: "TRACK_STATUS_ERROR",
    0x12: "SUBSCRIBE_NAMESPACE_OK",
    0x13: "SUBSCRIBE_NAMESPACE_ERROR",
    0x14: "UNSUBSCRIBE_NAMESPACE",
    0x19: "FETCH_ERROR",
    0x1F: "PUBLISH_ERROR",
}


# Key-Value-Pairs with delta-encoded types (§1.4.2) --------------------------------------


def _read_one_kvp(r: Reader, previous: int) -> Param:
    kvp_type = previous + r.varint()
    if kvp_type > _MAX_KVP_TYPE:
        raise ProtocolViolation(f"key-value pair type {kvp_type} is above 2^64 - 1")
    if kvp_type & 1 == 0:
        return (kvp_type, r.varint())
    length = r.varint()
    if length > MAX_KVP_BYTES:
        # §1.4.2: a PROTOCOL_VIOLATION in draft-16 (draft-14 said KEY_VALUE_FORMATTING_ERROR).
        raise ProtocolViolation(f"key-value pair 0x{kvp_type:x} is {length} bytes long")
    return (kvp_type, r.bytes_(length))


def decode_kvps(r: Reader, count: int | None = None) -> list[Param]:
    """Read `count` delta-encoded Key-Value-Pairs, or up to the reader's end if None."""
    kvps: list[Param] = []
    previous = 0
    if count is None:
        while not r.at_end():
            kvp = _read_one_kvp(r, previous)
            previous = kvp[0]
            kvps.append(kvp)
    else:
        for _ in range(count):
            kvp = _read_one_kvp(r, previous)
            previous = kvp[0]
            kvps.append(kvp)
    return kvps


def encode_kvps(kvps: list[Param]) -> bytes:
    """Encode Key-Value-Pairs sorted by type, each type as a delta from the one before."""
    out = bytearray()
    previous = 0
    for kvp_type, value in sorted(kvps, key=lambda kvp: kvp[0]):
        if not 0 <= kvp_type <= _MAX_KVP_TYPE:
            raise ValueError(f"key-value pair type {kvp_type} is out of range")
        out += encode_varint(kvp_type - previous)
        previous = kvp_type
        if kvp_type & 1 == 0:
            if not isinstance(value, int):
                raise ValueError(
                    f"key-value pair 0x{kvp_type:x} is even: its value must be an int"
                )
            out += encode_varint(value)
            continue
        if isinstance(value, int):
            raise ValueError(f"key-value pair 0x{kvp_type:x} is odd: its value must be bytes")
        if len(value) > MAX_KVP_BYTES:
            raise ValueError(f"key-value pair 0x{kvp_type:x} value is longer than {MAX_KVP_BYTES}")
        _encode_bytes(out, value)
    return bytes(out)


def _encode_counted(out: bytearray, kvps: list[Param]) -> None:
    out += encode_varint(len(kvps))
    out += encode_kvps(kvps)


# Message parameters -------------------------------------------------------------------


def _check_param(param_type: int, value: int | bytes) -> None:
    """Validate the value of a known message parameter (§9.2.2)."""
    if param_type == PARAM_DELIVERY_TIMEOUT and value == 0:
        raise ProtocolViolation("DELIVERY_TIMEOUT parameter is 0")
    if param_type == PARAM_SUBSCRIBER_PRIORITY and isinstance(value, int) and value > 0xFF:
        raise ProtocolViolation(f"SUBSCRIBER_PRIORITY {value} is above 255")
    if param_type == PARAM_GROUP_ORDER and value not in (
        GROUP_ORDER_ASCENDING,
        GROUP_ORDER_DESCENDING,
    ):
        raise ProtocolViolation(f"GROUP_ORDER {value!r} is not 1 or 2")
    if param_type == PARAM_FORWARD and value not in (0, 1):
        raise ProtocolViolation(f"FORWARD {value!r} is not 0 or 1")
    if param_type == PARAM_SUBSCRIPTION_FILTER and isinstance(value, bytes):
        _parse_filter(value)
    if param_type == PARAM_LARGEST_OBJECT and isinstance(value, bytes):
        _parse_location(value)


def _read_params(r: Reader, allowed: frozenset[int]) -> list[Param]:
    """Read a counted parameter list, keeping the known parameters `allowed` in this message.

    §9.2: an unknown parameter is a PROTOCOL_VIOLATION, and so is a repeated one
    (only AUTHORIZATION TOKEN may repeat); §9.2.2: a known parameter in a message
    it is not defined for is ignored.
    """
    kept: list[Param] = []
    seen: set[int] = set()
    for param_type, value in decode_kvps(r, r.varint()):
        if param_type not in _KNOWN_PARAMS:
            raise ProtocolViolation(f"unknown message parameter 0x{param_type:x}")
        if param_type != PARAM_AUTHORIZATION_TOKEN:
            if param_type in seen:
                raise ProtocolViolation(f"duplicate parameter 0x{param_type:x}")
            seen.add(param_type)
        if param_type in allowed:
            _check_param(param_type, value)
            kept.append((param_type, value))
    return kept


def _take(params: list[Param], param_type: int) -> int | bytes | None:
    """Remove the (single) parameter of `param_type` from `params`; return its value."""
    for index, (kvp_type, value) in enumerate(params):
        if kvp_type == param_type:
            del params[index]
            return value
    return None


def _take_int(params: list[Param], param_type: int, default: int) -> int:
    value = _take(params, param_type)
    return default if value is None else int(value)


def _check_extra(params: list[Param], allowed: frozenset[int], what: str) -> None:
    """Encoders: the caller's params must be draft-16 parameters not carried by a field."""
    for param_type, _ in params:
        if param_type not in allowed:
            raise ValueError(f"parameter 0x{param_type:x} cannot be sent in draft-16 {what}")


def _parse_filter(value: bytes) -> tuple[int, Location | None, int | None]:
    r = Reader(value)
    try:
        parsed = _read_filter(r)
    except NeedMoreData:
        raise ProtocolViolation("SUBSCRIPTION_FILTER is shorter than its filter") from None
    if not r.at_end():
        raise ProtocolViolation("SUBSCRIPTION_FILTER is longer than its filter")
    return parsed


def _filter_bytes(filter_type: int, start: Location | None, end_group: int | None) -> bytes:
    out = bytearray()
    _encode_filter(out, filter_type, start, end_group)
    return bytes(out)


def _parse_location(value: bytes) -> Location:
    r = Reader(value)
    try:
        location = _read_location(r)
    except NeedMoreData:
        raise KeyValueFormattingError("LARGEST_OBJECT is not a Location") from None
    if not r.at_end():
        raise KeyValueFormattingError("LARGEST_OBJECT is longer than a Location")
    return location


def _location_bytes(location: Location) -> bytes:
    out = bytearray()
    _encode_location(out, location)
    return bytes(out)


def _read_namespace16(r: Reader, *, min_fields: int = 1) -> Namespace:
    """A Track Namespace (§2.4.1): min_fields..32 fields, none of them empty (new in draft-16)."""
    count = r.varint()
    if not min_fields <= count <= MAX_NAMESPACE_FIELDS:
        raise ProtocolViolation(f"track namespace has {count} fields")
    fields: list[bytes] = []
    for _ in range(count):
        part = r.length_prefixed()
        if not part:
            raise ProtocolViolation("track namespace field is empty")
        fields.append(part)
    return tuple(fields)


def _encode_namespace16(out: bytearray, namespace: Namespace, track_name: bytes = b"") -> None:
    if not all(namespace):
        raise ValueError("a track namespace field cannot be empty in draft-16")
    _encode_namespace(out, namespace, track_name)


def _encode_partial_namespace(out: bytearray, fields: Namespace) -> None:
    """A namespace prefix or suffix: like a Track Namespace, but 0 fields are allowed."""
    if len(fields) > MAX_NAMESPACE_FIELDS or not all(fields):
        raise ValueError("namespace prefix or suffix: at most 32 fields, none empty")
    out += encode_varint(len(fields))
    for part in fields:
        _encode_bytes(out, part)


def _check_track_extensions(extensions: list[Param]) -> None:
    """Validate the track extensions whose values draft-16 constrains (§11)."""
    for ext_type, value in extensions:
        if ext_type == EXT_DELIVERY_TIMEOUT and value == 0:
            raise ProtocolViolation("DELIVERY_TIMEOUT extension is 0")
        if ext_type == EXT_DEFAULT_PUBLISHER_GROUP_ORDER and value not in (
            GROUP_ORDER_ASCENDING,
            GROUP_ORDER_DESCENDING,
        ):
            raise ProtocolViolation(f"DEFAULT_PUBLISHER_GROUP_ORDER {value!r} is not 1 or 2")


def _check_extensions_for_encode(extensions: list[Param]) -> None:
    try:
        _check_track_extensions(extensions)
    except ProtocolViolation as exc:
        raise ValueError(exc.reason) from None


def _read_track_extensions(r: Reader) -> tuple[int, list[Param]]:
    """Read the Track Extensions ending a message: (publisher group order, the others).

    Track Extensions have no length or count: they run to the end of the payload.
    DEFAULT_PUBLISHER_GROUP_ORDER (0x22) becomes the draft-14 group order field
    (Ascending when omitted, §11); the other extensions are kept as they came.
    """
    extensions = decode_kvps(r)
    _check_track_extensions(extensions)
    orders = [
        value for ext_type, value in extensions if ext_type == EXT_DEFAULT_PUBLISHER_GROUP_ORDER
    ]
    if len(orders) > 1:
        raise ProtocolViolation("DEFAULT_PUBLISHER_GROUP_ORDER is repeated")
    group_order = int(orders[0]) if orders else GROUP_ORDER_ASCENDING
    rest = [ext for ext in extensions if ext[0] != EXT_DEFAULT_PUBLISHER_GROUP_ORDER]
    return group_order, rest


def _encode_track_extensions(out: bytearray, group_order: int, extensions: list[Param]) -> None:
    _check_extensions_for_encode(extensions)
    if group_order not in (GROUP_ORDER_ASCENDING, GROUP_ORDER_DESCENDING):
        raise ValueError(f"group order {group_order} is not allowed here")
    if any(ext_type == EXT_DEFAULT_PUBLISHER_GROUP_ORDER for ext_type, _ in extensions):
        raise ValueError("give the publisher group order in group_order, not as an extension")
    kvps = list(extensions)
    if group_order == GROUP_ORDER_DESCENDING:
        kvps.append((EXT_DEFAULT_PUBLISHER_GROUP_ORDER, group_order))
    out += encode_kvps(kvps)


# New messages -------------------------------------------------------------------------


@dataclass(slots=True)
class RequestOk:
    """REQUEST_OK (0x07, §9.7): answers REQUEST_UPDATE, TRACK_STATUS and the namespace requests.

    `params` keeps every known parameter (LARGEST_OBJECT, EXPIRES for a TRACK_STATUS
    answer): which request it answers is known only to the session.
    """

    TYPE: ClassVar[int] = 0x07

    request_id: int
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        _encode_counted(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        return cls(request_id, _read_params(r, _KNOWN_PARAMS))


@dataclass(slots=True)
class RequestError:
    """REQUEST_ERROR (0x05, §9.8): every request's error reply.

    `retry_interval` is the wire value: the minimum wait in milliseconds plus one;
    0 means do not retry.
    """

    TYPE: ClassVar[int] = 0x05

    request_id: int
    error_code: int
    retry_interval: int
    reason: str

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        out += encode_varint(self.error_code)
        out += encode_varint(self.retry_interval)
        _encode_reason(out, self.reason)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        error_code = r.varint()
        retry_interval = r.varint()
        return cls(request_id, error_code, retry_interval, _read_reason(r))


_UPDATE_PARAMS = frozenset(
    {
        PARAM_DELIVERY_TIMEOUT,
        PARAM_AUTHORIZATION_TOKEN,
        PARAM_FORWARD,
        PARAM_SUBSCRIBER_PRIORITY,
        PARAM_SUBSCRIPTION_FILTER,
        PARAM_NEW_GROUP_REQUEST,
    }
)


@dataclass(slots=True)
class RequestUpdate:
    """REQUEST_UPDATE (0x02, §9.11), formerly SUBSCRIBE_UPDATE: changes only what it carries."""

    TYPE: ClassVar[int] = 0x02

    request_id: int
    existing_request_id: int
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        out = bytearray(encode_varint(self.request_id))
        out += encode_varint(self.existing_request_id)
        _encode_counted(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        existing = r.varint()
        return cls(request_id, existing, _read_params(r, _UPDATE_PARAMS))


@dataclass(slots=True)
class _NamespaceSuffix:
    """Layout shared by NAMESPACE and NAMESPACE_DONE: one Track Namespace Suffix.

    The suffix may have 0 fields: a namespace equal to the subscribed prefix
    (draft-16 does not say; §2.4.1's 1-field minimum is for whole namespaces).
    """

    TYPE: ClassVar[int]

    suffix: Namespace

    def encode_payload(self) -> bytes:
        out = bytearray()
        _encode_partial_namespace(out, self.suffix)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        suffix = _read_namespace16(r, min_fields=0)
        _check_name_size(suffix)
        return cls(suffix)


@dataclass(slots=True)
class NamespaceMessage(_NamespaceSuffix):
    """NAMESPACE (0x08, §9.22): a namespace matching a SUBSCRIBE_NAMESPACE, minus its prefix."""

    TYPE: ClassVar[int] = 0x08


@dataclass(slots=True)
class NamespaceDoneMessage(_NamespaceSuffix):
    """NAMESPACE_DONE (0x0E, §9.24): a NAMESPACE sent before is gone."""

    TYPE: ClassVar[int] = 0x0E


@dataclass(slots=True)
class PublishNamespaceDone16(_RequestIdOnly):
    """PUBLISH_NAMESPACE_DONE (0x09, §9.23) in draft-16: names the request, not the namespace."""

    TYPE: ClassVar[int] = 0x09


@dataclass(slots=True)
class PublishNamespaceCancel16(_RequestError):
    """PUBLISH_NAMESPACE_CANCEL (0x0C, §9.25) in draft-16: Request ID, REQUEST_ERROR code."""

    TYPE: ClassVar[int] = 0x0C


_SUBSCRIBE_NAMESPACE_PARAMS = frozenset({PARAM_AUTHORIZATION_TOKEN, PARAM_FORWARD})


@dataclass(slots=True)
class SubscribeNamespace16:
    """SUBSCRIBE_NAMESPACE (0x11, §9.26) in draft-16: first message of its own bidi stream.

    The prefix may be empty (0 fields); `options` asks for PUBLISH (0), NAMESPACE (1)
    or both (2).
    """

    TYPE: ClassVar[int] = 0x11

    request_id: int
    namespace_prefix: Namespace
    options: int
    params: list[Param] = field(default_factory=list)

    def encode_payload(self) -> bytes:
        if not SUBSCRIBE_OPTIONS_PUBLISH <= self.options <= SUBSCRIBE_OPTIONS_BOTH:
            raise ValueError(f"subscribe options {self.options} is not 0, 1 or 2")
        out = bytearray(encode_varint(self.request_id))
        _encode_partial_namespace(out, self.namespace_prefix)
        out += encode_varint(self.options)
        _encode_counted(out, self.params)
        return bytes(out)

    @classmethod
    def decode_payload(cls, r: Reader) -> Self:
        request_id = r.varint()
        prefix = _read_namespace16(r, min_fields=0)
        _check_name_size(prefix)
        options = r.varint()
        if options > SUBSCRIBE_OPTIONS_BOTH:
            raise ProtocolViolation(f"subscribe options {options} is not 0, 1 or 2")
        return cls(request_id, prefix, options, _read_params(r, _SUBSCRIBE_NAMESPACE_PARAMS))


# Draft-14 dataclasses in their draft-16 layout -------------------------------------------


_UNIQUE_SETUP = frozenset(
    {
        SETUP_PATH,
        SETUP_MAX_REQUEST_ID,
        SETUP_MAX_AUTH_TOKEN_CACHE_SIZE,
        SETUP_AUTHORITY,
        SETUP_MOQT_IMPLEMENTATION,
    }
)


def _read_setup_params(r: Reader) -> list[Param]:
    """Setup parameters (§9.3): unknown ones are kept (and may repeat), known ones may not."""
    params = decode_kvps(r, r.varint())
    seen: set[int] = set()
    for param_type, _ in params:
        if param_type in _UNIQUE_SETUP:
            if param_type in seen:
                raise ProtocolViolation(f"duplicate setup parameter 0x{param_type:x}")
            seen.add(param_type)
    return params


def _encode_client_setup(msg: ClientSetup) -> bytes:
    if msg.versions != [DRAFT_16]:
        raise ValueError("draft-16 negotiates by ALPN: CLIENT_SETUP versions must be [DRAFT_16]")
    out = bytearray()
    _encode_counted(out, msg.params)
    return bytes(out)


def _decode_client_setup(r: Reader) -> ClientSetup:
    return ClientSetup([DRAFT_16], _read_setup_params(r))


def _encode_server_setup(msg: ServerSetup) -> bytes:
    if msg.version != DRAFT_16:
        raise ValueError("draft-16 negotiates by ALPN: SERVER_SETUP version must be DRAFT_16")
    out = bytearray()
    _encode_counted(out, msg.params)
    return bytes(out)


def _decode_server_setup(r: Reader) -> ServerSetup:
    return ServerSetup(DRAFT_16, _read_setup_params(r))


_SUBSCRIBE_PARAMS = frozenset(
    {
        PARAM_DELIVERY_TIMEOUT,
        PARAM_AUTHORIZATION_TOKEN,
        PARAM_FORWARD,
        PARAM_SUBSCRIBER_PRIORITY,
        PARAM_SUBSCRIPTION_FILTER,
        PARAM_GROUP_ORDER,
        PARAM_NEW_GROUP_REQUEST,
    }
)
_SUBSCRIBE_EXTRA = frozenset(
    {PARAM_DELIVERY_TIMEOUT, PARAM_AUTHORIZATION_TOKEN, PARAM_NEW_GROUP_REQUEST}
)


def _encode_subscribe(msg: Subscribe) -> bytes:
    _check_extra(msg.params, _SUBSCRIBE_EXTRA, "SUBSCRIBE")
    kvps = list(msg.params)
    kvps.append((PARAM_SUBSCRIBER_PRIORITY, msg.subscriber_priority))
    if msg.group_order != GROUP_ORDER_PUBLISHER:
        kvps.append((PARAM_GROUP_ORDER, msg.group_order))
    kvps.append((PARAM_FORWARD, 1 if msg.forward else 0))
    kvps.append(
        (PARAM_SUBSCRIPTION_FILTER, _filter_bytes(msg.filter_type, msg.start, msg.end_group))
    )
    for param_type, value in kvps:
        _check_param_for_encode(param_type, value)
    out = bytearray(encode_varint(msg.request_id))
    _encode_namespace16(out, msg.namespace, msg.track_name)
    _encode_bytes(out, msg.track_name)
    _encode_counted(out, kvps)
    return bytes(out)


def _check_param_for_encode(param_type: int, value: int | bytes) -> None:
    try:
        _check_param(param_type, value)
    except ProtocolViolation as exc:
        raise ValueError(exc.reason) from None


def _decode_subscribe(r: Reader) -> Subscribe:
    """SUBSCRIBE (0x03, §9.9): the draft-14 fields come from parameters, with §9.2.2's defaults.

    An omitted filter is "unfiltered", which §5.1.2 equates with AbsoluteStart {0, 0};
    an omitted group order is the publisher's (GROUP_ORDER_PUBLISHER).
    """
    request_id = r.varint()
    namespace = _read_namespace16(r)
    track_name = r.length_prefixed()
    _check_name_size(namespace, track_name)
    params = _read_params(r, _SUBSCRIBE_PARAMS)
    priority = _take_int(params, PARAM_SUBSCRIBER_PRIORITY, _DEFAULT_PRIORITY)
    group_order = _take_int(params, PARAM_GROUP_ORDER, GROUP_ORDER_PUBLISHER)
    forward = _take_int(params, PARAM_FORWARD, 1) == 1
    raw_filter = _take(params, PARAM_SUBSCRIPTION_FILTER)
    if isinstance(raw_filter, bytes):
        filter_type, start, end_group = _parse_filter(raw_filter)
    else:
        filter_type, start, end_group = FILTER_ABSOLUTE_START, Location(0, 0), None
    return Subscribe(
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


_TRACK_STATUS_PARAMS = frozenset({PARAM_AUTHORIZATION_TOKEN})


def _encode_track_status(msg: TrackStatus) -> bytes:
    """TRACK_STATUS (0x0D, §9.20): SUBSCRIBE's layout without the delivery parameters.

    Priority, group order, forward and filter are not sent (#1325); decoding fills
    the same defaults as an omitted SUBSCRIBE parameter.
    """
    _check_extra(msg.params, _TRACK_STATUS_PARAMS, "TRACK_STATUS")
    out = bytearray(encode_varint(msg.request_id))
    _encode_namespace16(out, msg.namespace, msg.track_name)
    _encode_bytes(out, msg.track_name)
    _encode_counted(out, msg.params)
    return bytes(out)


def _decode_track_status(r: Reader) -> TrackStatus:
    request_id = r.varint()
    namespace = _read_namespace16(r)
    track_name = r.length_prefixed()
    _check_name_size(namespace, track_name)
    params = _read_params(r, _TRACK_STATUS_PARAMS)
    return TrackStatus(
        request_id,
        namespace,
        track_name,
        _DEFAULT_PRIORITY,
        GROUP_ORDER_PUBLISHER,
        True,
        FILTER_ABSOLUTE_START,
        Location(0, 0),
        None,
        params,
    )


_SUBSCRIBE_OK_PARAMS = frozenset({PARAM_EXPIRES, PARAM_LARGEST_OBJECT})


def _encode_subscribe_ok(msg: SubscribeOk) -> bytes:
    """SUBSCRIBE_OK (0x04, §9.10): `params` are the Track Extensions (§1.4.2 KVPs, no count).

    Draft-14's SUBSCRIBE_OK parameters DELIVERY_TIMEOUT and MAX_CACHE_DURATION are
    draft-16 track extensions with the same codes; `group_order` is the
    DEFAULT_PUBLISHER_GROUP_ORDER extension, written only when it is not the
    default (Ascending).
    """
    kvps: list[Param] = []
    if msg.expires:
        kvps.append((PARAM_EXPIRES, msg.expires))
    if msg.largest is not None:
        kvps.append((PARAM_LARGEST_OBJECT, _location_bytes(msg.largest)))
    out = bytearray(encode_varint(msg.request_id))
    out += encode_varint(msg.track_alias)
    _encode_counted(out, kvps)
    _encode_track_extensions(out, msg.group_order, msg.params)
    return bytes(out)


def _decode_subscribe_ok(r: Reader) -> SubscribeOk:
    request_id = r.varint()
    track_alias = r.varint()
    params = _read_params(r, _SUBSCRIBE_OK_PARAMS)
    expires = _take_int(params, PARAM_EXPIRES, 0)
    raw_largest = _take(params, PARAM_LARGEST_OBJECT)
    largest = _parse_location(raw_largest) if isinstance(raw_largest, bytes) else None
    group_order, extensions = _read_track_extensions(r)
    return SubscribeOk(request_id, track_alias, expires, group_order, largest, extensions)


_PUBLISH_PARAMS = frozenset(
    {PARAM_AUTHORIZATION_TOKEN, PARAM_EXPIRES, PARAM_LARGEST_OBJECT, PARAM_FORWARD}
)
# PUBLISH parameters that stay in Publish.params, beside the track extensions.
_PUBLISH_EXTRA = frozenset({PARAM_AUTHORIZATION_TOKEN, PARAM_EXPIRES})


def _encode_publish(msg: Publish) -> bytes:
    """PUBLISH (0x1D, §9.13): `params` holds AUTHORIZATION TOKEN and EXPIRES (sent as
    parameters) and the Track Extensions (every other type, sent after them)."""
    kvps = [param for param in msg.params if param[0] in _PUBLISH_EXTRA]
    extensions = [param for param in msg.params if param[0] not in _PUBLISH_EXTRA]
    if msg.largest is not None:
        kvps.append((PARAM_LARGEST_OBJECT, _location_bytes(msg.largest)))
    kvps.append((PARAM_FORWARD, 1 if msg.forward else 0))
    out = bytearray(encode_varint(msg.request_id))
    _encode_namespace16(out, msg.namespace, msg.track_name)
    _encode_bytes(out, msg.track_name)
    out += encode_varint(msg.track_alias)
    _encode_counted(out, kvps)
    _encode_track_extensions(out, msg.group_order, extensions)
    return bytes(out)


def _decode_publish(r: Reader) -> Publish:
    request_id = r.varint()
    namespace = _read_namespace16(r)
    track_name = r.length_prefixed()
    _check_name_size(namespace, track_name)
    track_alias = r.varint()
    params = _read_params(r, _PUBLISH_PARAMS)
    raw_largest = _take(params, PARAM_LARGEST_OBJECT)
    largest = _parse_location(raw_largest) if isinstance(raw_largest, bytes) else None
    forward = _take_int(params, PARAM_FORWARD, 1) == 1
    group_order, extensions = _read_track_extensions(r)
    for ext_type, _ in extensions:
        if ext_type in _PUBLISH_EXTRA:
            # Publish.params could not tell this extension from the parameter of that type.
            raise ProtocolViolation(f"PUBLISH track extension 0x{ext_type:x} is not supported")
    return Publish(
        request_id,
        namespace,
        track_name,
        track_alias,
        group_order,
        largest,
        forward,
        params + extensions,
    )


_PUBLISH_OK_PARAMS = frozenset(
    {
        PARAM_DELIVERY_TIMEOUT,
        PARAM_EXPIRES,
        PARAM_FORWARD,
        PARAM_SUBSCRIBER_PRIORITY,
        PARAM_SUBSCRIPTION_FILTER,
        PARAM_GROUP_ORDER,
        PARAM_NEW_GROUP_REQUEST,
    }
)
_PUBLISH_OK_EXTRA = frozenset({PARAM_DELIVERY_TIMEOUT, PARAM_EXPIRES, PARAM_NEW_GROUP_REQUEST})


def _encode_publish_ok(msg: PublishOk) -> bytes:
    """PUBLISH_OK (0x1E, §9.14): every draft-14 field is a parameter now."""
    _check_extra(msg.params, _PUBLISH_OK_EXTRA, "PUBLISH_OK")
    kvps = list(msg.params)
    kvps.append((PARAM_FORWARD, 1 if msg.forward else 0))
    kvps.append((PARAM_SUBSCRIBER_PRIORITY, msg.subscriber_priority))
    kvps.append((PARAM_GROUP_ORDER, msg.group_order))
    kvps.append(
        (PARAM_SUBSCRIPTION_FILTER, _filter_bytes(msg.filter_type, msg.start, msg.end_group))
    )
    for param_type, value in kvps:
        _check_param_for_encode(param_type, value)
    out = bytearray(encode_varint(msg.request_id))
    _encode_counted(out, kvps)
    return bytes(out)


def _decode_publish_ok(r: Reader) -> PublishOk:
    """An omitted GROUP_ORDER is Ascending here: draft-14's PublishOk has no "publisher's"
    value, and Ascending is the publisher's default (§11)."""
    request_id = r.varint()
    params = _read_params(r, _PUBLISH_OK_PARAMS)
    forward = _take_int(params, PARAM_FORWARD, 1) == 1
    priority = _take_int(params, PARAM_SUBSCRIBER_PRIORITY, _DEFAULT_PRIORITY)
    group_order = _take_int(params, PARAM_GROUP_ORDER, GROUP_ORDER_ASCENDING)
    raw_filter = _take(params, PARAM_SUBSCRIPTION_FILTER)
    if isinstance(raw_filter, bytes):
        filter_type, start, end_group = _parse_filter(raw_filter)
    else:
        filter_type, start, end_group = FILTER_ABSOLUTE_START, Location(0, 0), None
    return PublishOk(
        request_id, forward, priority, group_order, filter_type, start, end_group, params
    )


_FETCH_PARAMS = frozenset(
    {PARAM_AUTHORIZATION_TOKEN, PARAM_SUBSCRIBER_PRIORITY, PARAM_GROUP_ORDER}
)
_FETCH_EXTRA = frozenset({PARAM_AUTHORIZATION_TOKEN})


def _encode_fetch(msg: Fetch) -> bytes:
    """FETCH (0x16, §9.16): priority and group order are parameters; GROUP_ORDER_PUBLISHER
    cannot be said in draft-16 and is sent as no GROUP_ORDER (the receiver uses Ascending)."""
    _check_extra(msg.params, _FETCH_EXTRA, "FETCH")
    kvps = list(msg.params)
    kvps.append((PARAM_SUBSCRIBER_PRIORITY, msg.subscriber_priority))
    if msg.group_order != GROUP_ORDER_PUBLISHER:
        kvps.append((PARAM_GROUP_ORDER, msg.group_order))
    for param_type, value in kvps:
        _check_param_for_encode(param_type, value)
    out = bytearray(encode_varint(msg.request_id))
    out += encode_varint(msg.fetch_type)
    if msg.fetch_type == FETCH_STANDALONE:
        if msg.namespace is None or msg.track_name is None or msg.start is None or msg.end is None:
            raise ValueError("standalone FETCH: give namespace, track_name, start, end")
        _encode_namespace16(out, msg.namespace, msg.track_name)
        _encode_bytes(out, msg.track_name)
        _encode_location(out, msg.start)
        _encode_location(out, msg.end)
    elif msg.fetch_type in (FETCH_RELATIVE_JOINING, FETCH_ABSOLUTE_JOINING):
        if msg.joining_request_id is None or msg.joining_start is None:
            raise ValueError("joining FETCH: give joining_request_id, joining_start")
        out += encode_varint(msg.joining_request_id)
        out += encode_varint(msg.joining_start)
    else:
        raise ValueError(f"unknown fetch type {msg.fetch_type}")
    _encode_counted(out, kvps)
    return bytes(out)


def _decode_fetch(r: Reader) -> Fetch:
    request_id = r.varint()
    fetch_type = r.varint()
    if fetch_type == FETCH_STANDALONE:
        namespace = _read_namespace16(r)
        track_name = r.length_prefixed()
        _check_name_size(namespace, track_name)
        start = _read_location(r)
        end = _read_location(r)
        params = _read_params(r, _FETCH_PARAMS)
        priority = _take_int(params, PARAM_SUBSCRIBER_PRIORITY, _DEFAULT_PRIORITY)
        group_order = _take_int(params, PARAM_GROUP_ORDER, GROUP_ORDER_ASCENDING)
        return Fetch(
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
        params = _read_params(r, _FETCH_PARAMS)
        priority = _take_int(params, PARAM_SUBSCRIBER_PRIORITY, _DEFAULT_PRIORITY)
        group_order = _take_int(params, PARAM_GROUP_ORDER, GROUP_ORDER_ASCENDING)
        return Fetch(
            request_id,
            priority,
            group_order,
            fetch_type,
            joining_request_id=joining_request_id,
            joining_start=joining_start,
            params=params,
        )
    raise ProtocolViolation(f"unknown fetch type {fetch_type}")


def _encode_fetch_ok(msg: FetchOk) -> bytes:
    """FETCH_OK (0x18, §9.17): no group order on the wire any more; `params` are the
    Track Extensions. Decoding sets group_order to Ascending, FETCH's default order."""
    out = bytearray(encode_varint(msg.request_id))
    out.append(1 if msg.end_of_track else 0)
    _encode_location(out, msg.end)
    _encode_counted(out, [])
    _check_extensions_for_encode(msg.params)
    out += encode_kvps(msg.params)
    return bytes(out)


def _decode_fetch_ok(r: Reader) -> FetchOk:
    request_id = r.varint()
    end_of_track = r.uint8()
    if end_of_track > 1:
        raise ProtocolViolation(f"end of track is {end_of_track}, not 0 or 1")
    end = _read_location(r)
    _read_params(r, frozenset())
    extensions = decode_kvps(r)
    _check_track_extensions(extensions)
    return FetchOk(request_id, GROUP_ORDER_ASCENDING, end_of_track == 1, end, extensions)


_PUBLISH_NAMESPACE_PARAMS = frozenset({PARAM_AUTHORIZATION_TOKEN})


def _encode_publish_namespace(msg: PublishNamespace) -> bytes:
    _check_extra(msg.params, _PUBLISH_NAMESPACE_PARAMS, "PUBLISH_NAMESPACE")
    out = bytearray(encode_varint(msg.request_id))
    _encode_namespace16(out, msg.namespace)
    _encode_counted(out, msg.params)
    return bytes(out)


def _decode_publish_namespace(r: Reader) -> PublishNamespace:
    request_id = r.varint()
    namespace = _read_namespace16(r)
    _check_name_size(namespace)
    return PublishNamespace(request_id, namespace, _read_params(r, _PUBLISH_NAMESPACE_PARAMS))


def _same_layout(cls: Any) -> tuple[Callable[[Any], bytes], Callable[[Reader], Any]]:
    """Codec of a message whose draft-14 layout is unchanged in draft-16."""
    return cls.encode_payload, cls.decode_payload


ControlMessage16: TypeAlias = (
    ClientSetup
    | ServerSetup
    | GoAway
    | MaxRequestId
    | RequestsBlocked
    | RequestOk
    | RequestError
    | Subscribe
    | SubscribeOk
    | RequestUpdate
    | Unsubscribe
    | Publish
    | PublishOk
    | PublishDone
    | Fetch
    | FetchOk
    | FetchCancel
    | TrackStatus
    | PublishNamespace
    | NamespaceMessage
    | NamespaceDoneMessage
    | PublishNamespaceDone16
    | PublishNamespaceCancel16
    | SubscribeNamespace16
)

_Codec: TypeAlias = tuple[Callable[[Any], bytes], Callable[[Reader], Any]]

# Message class -> (type code, payload encoder, payload decoder). The draft-16 table (§9).
_CODECS: dict[type[Any], tuple[int, _Codec]] = {
    ClientSetup: (0x20, (_encode_client_setup, _decode_client_setup)),
    ServerSetup: (0x21, (_encode_server_setup, _decode_server_setup)),
    GoAway: (GoAway.TYPE, _same_layout(GoAway)),
    MaxRequestId: (MaxRequestId.TYPE, _same_layout(MaxRequestId)),
    RequestsBlocked: (RequestsBlocked.TYPE, _same_layout(RequestsBlocked)),
    RequestOk: (RequestOk.TYPE, _same_layout(RequestOk)),
    RequestError: (RequestError.TYPE, _same_layout(RequestError)),
    Subscribe: (0x03, (_encode_subscribe, _decode_subscribe)),
    SubscribeOk: (0x04, (_encode_subscribe_ok, _decode_subscribe_ok)),
    RequestUpdate: (RequestUpdate.TYPE, _same_layout(RequestUpdate)),
    Unsubscribe: (Unsubscribe.TYPE, _same_layout(Unsubscribe)),
    Publish: (0x1D, (_encode_publish, _decode_publish)),
    PublishOk: (0x1E, (_encode_publish_ok, _decode_publish_ok)),
    PublishDone: (PublishDone.TYPE, _same_layout(PublishDone)),
    Fetch: (0x16, (_encode_fetch, _decode_fetch)),
    FetchOk: (0x18, (_encode_fetch_ok, _decode_fetch_ok)),
    FetchCancel: (FetchCancel.TYPE, _same_layout(FetchCancel)),
    TrackStatus: (0x0D, (_encode_track_status, _decode_track_status)),
    PublishNamespace: (0x06, (_encode_publish_namespace, _decode_publish_namespace)),
    NamespaceMessage: (NamespaceMessage.TYPE, _same_layout(NamespaceMessage)),
    PublishNamespaceDone16: (PublishNamespaceDone16.TYPE, _same_layout(PublishNamespaceDone16)),
    NamespaceDoneMessage: (NamespaceDoneMessage.TYPE, _same_layout(NamespaceDoneMessage)),
    PublishNamespaceCancel16: (
        PublishNamespaceCancel16.TYPE,
        _same_layout(PublishNamespaceCancel16),
    ),
    SubscribeNamespace16: (SubscribeNamespace16.TYPE, _same_layout(SubscribeNamespace16)),
}

MESSAGE_TYPES: dict[int, type[Any]] = {code: cls for cls, (code, _) in _CODECS.items()}
_DECODERS: dict[int, Callable[[Reader], Any]] = {
    code: codec[1] for code, codec in _CODECS.values()
}


def encode_message(msg: ControlMessage16) -> bytes:
    """Frame one control message in its draft-16 form: Type (i), Length (16), payload.

    ValueError for a message draft-16 does not have (SubscribeError, TrackStatusOk, ...):
    the session answers with RequestError / RequestOk instead.
    """
    entry = _CODECS.get(type(msg))
    if entry is None:
        raise ValueError(f"{type(msg).__name__} has no draft-16 form")
    msg_type, (encode, _) = entry
    payload = encode(msg)
    if len(payload) > _MAX_CONTROL_PAYLOAD:
        raise ValueError(f"{type(msg).__name__} payload is {len(payload)} bytes long")
    return encode_varint(msg_type) + len(payload).to_bytes(2, "big") + payload


def _check_type(msg_type: int) -> None:
    if msg_type in _DECODERS:
        return
    removed = REMOVED_MESSAGE_TYPES.get(msg_type)
    if removed is not None:
        raise ProtocolViolation(f"{removed} (0x{msg_type:x}) does not exist in draft-16")
    raise ProtocolViolation(f"unknown control message type 0x{msg_type:x}")


def _decode_framed(msg_type: int, r: Reader) -> ControlMessage16:
    name = MESSAGE_TYPES[msg_type].__name__
    with truncation_is_violation(name):
        msg: ControlMessage16 = _DECODERS[msg_type](r)
    if not r.at_end():
        raise ProtocolViolation(f"{r.remaining()} bytes left over after {name}")
    return msg


class ControlStreamDecoder16(FramedMessageDecoder[ControlMessage16]):
    """Reassemble and decode draft-16 control messages (the control stream, or a
    SUBSCRIBE_NAMESPACE stream), fed bytes split anywhere.

    Same contract as `control.ControlStreamDecoder`: it returns every message a
    feed completes and, once it has raised a ProtocolViolation, raises it again.
    """

    __slots__ = ()

    def _check_type(self, msg_type: int) -> None:
        _check_type(msg_type)

    def _decode(self, msg_type: int, r: Reader) -> ControlMessage16:
        return _decode_framed(msg_type, r)
