"""Wire layer (sans-IO codec): MoQT draft-14 error codes and the ProtocolViolation family.

Every decoder in `moqrelay.wire` reports bad input by raising `ProtocolViolation`
(or a subclass) carrying the session termination code the draft names. The
session layer raises the same class with other `SessionErrorCode` values (version
negotiation, request ids) so a single ``except ProtocolViolation`` closes a session
with the right code.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "FetchErrorCode",
    "KeyValueFormattingError",
    "NamespaceErrorCode",
    "ProtocolViolation",
    "PublishDoneCode",
    "PublishErrorCode",
    "SessionErrorCode",
    "StreamResetCode",
    "SubscribeErrorCode",
    "SubscribeNamespaceErrorCode",
]


class SessionErrorCode(IntEnum):
    """Session termination codes (draft-14 §13.1.1; reference §11.1)."""

    NO_ERROR = 0x0
    INTERNAL_ERROR = 0x1
    UNAUTHORIZED = 0x2
    PROTOCOL_VIOLATION = 0x3
    INVALID_REQUEST_ID = 0x4
    DUPLICATE_TRACK_ALIAS = 0x5
    KEY_VALUE_FORMATTING_ERROR = 0x6
    TOO_MANY_REQUESTS = 0x7
    INVALID_PATH = 0x8
    MALFORMED_PATH = 0x9
    GOAWAY_TIMEOUT = 0x10
    CONTROL_MESSAGE_TIMEOUT = 0x11
    DATA_STREAM_TIMEOUT = 0x12
    AUTH_TOKEN_CACHE_OVERFLOW = 0x13
    DUPLICATE_AUTH_TOKEN_ALIAS = 0x14
    VERSION_NEGOTIATION_FAILED = 0x15
    MALFORMED_AUTH_TOKEN = 0x16
    UNKNOWN_AUTH_TOKEN_ALIAS = 0x17
    EXPIRED_AUTH_TOKEN = 0x18
    INVALID_AUTHORITY = 0x19
    MALFORMED_AUTHORITY = 0x1A


class SubscribeErrorCode(IntEnum):
    """SUBSCRIBE_ERROR codes, also used by TRACK_STATUS_ERROR (reference §11.2)."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    TRACK_DOES_NOT_EXIST = 0x4
    INVALID_RANGE = 0x5
    MALFORMED_AUTH_TOKEN = 0x10
    EXPIRED_AUTH_TOKEN = 0x12


class PublishDoneCode(IntEnum):
    """PUBLISH_DONE status codes (reference §11.3)."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TRACK_ENDED = 0x2
    SUBSCRIPTION_ENDED = 0x3
    GOING_AWAY = 0x4
    EXPIRED = 0x5
    TOO_FAR_BEHIND = 0x6
    MALFORMED_TRACK = 0x7


class PublishErrorCode(IntEnum):
    """PUBLISH_ERROR codes (reference §11.4)."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    UNINTERESTED = 0x4


class FetchErrorCode(IntEnum):
    """FETCH_ERROR codes (reference §11.5)."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    TRACK_DOES_NOT_EXIST = 0x4
    INVALID_RANGE = 0x5
    NO_OBJECTS = 0x6
    INVALID_JOINING_REQUEST_ID = 0x7
    UNKNOWN_STATUS_IN_RANGE = 0x8
    MALFORMED_TRACK = 0x9
    MALFORMED_AUTH_TOKEN = 0x10
    EXPIRED_AUTH_TOKEN = 0x12


class NamespaceErrorCode(IntEnum):
    """PUBLISH_NAMESPACE_ERROR and PUBLISH_NAMESPACE_CANCEL codes (reference §11.6)."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    UNINTERESTED = 0x4
    MALFORMED_AUTH_TOKEN = 0x10
    EXPIRED_AUTH_TOKEN = 0x12


class SubscribeNamespaceErrorCode(IntEnum):
    """SUBSCRIBE_NAMESPACE_ERROR codes (reference §11.7)."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    NAMESPACE_PREFIX_UNKNOWN = 0x4
    NAMESPACE_PREFIX_OVERLAP = 0x5
    MALFORMED_AUTH_TOKEN = 0x10
    EXPIRED_AUTH_TOKEN = 0x12


class StreamResetCode(IntEnum):
    """RESET_STREAM / RESET_STREAM_AT codes for data streams (reference §11.8)."""

    INTERNAL_ERROR = 0x0
    CANCELLED = 0x1
    DELIVERY_TIMEOUT = 0x2
    SESSION_CLOSED = 0x3


class ProtocolViolation(Exception):
    """The peer broke the protocol: close the session with `code`.

    `reason` is a short human-readable phrase, fit for the close reason.
    """

    reason: str
    code: int

    def __init__(self, reason: str, code: int = SessionErrorCode.PROTOCOL_VIOLATION) -> None:
        super().__init__(reason, code)
        self.reason = reason
        self.code = int(code)

    def __str__(self) -> str:
        return f"{self.reason} (error 0x{self.code:x})"


class KeyValueFormattingError(ProtocolViolation):
    """A Key-Value-Pair (parameter or extension header) could not be parsed."""

    def __init__(
        self, reason: str, code: int = SessionErrorCode.KEY_VALUE_FORMATTING_ERROR
    ) -> None:
        super().__init__(reason, code)
