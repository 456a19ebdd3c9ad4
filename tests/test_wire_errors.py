"""Tests for moqrelay.wire.errors (wire layer): error codes and the ProtocolViolation family."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

from enum import IntEnum

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.wire.errors import (
    FetchErrorCode,
    KeyValueFormattingError,
    NamespaceErrorCode,
    ProtocolViolation,
    PublishDoneCode,
    PublishErrorCode,
    SessionErrorCode,
    StreamResetCode,
    SubscribeErrorCode,
    SubscribeNamespaceErrorCode,
)

# The tables of reference section 11, verbatim.
_TABLES: dict[type[IntEnum], dict[str, int]] = {
    SessionErrorCode: {
        "NO_ERROR": 0x0,
        "INTERNAL_ERROR": 0x1,
        "UNAUTHORIZED": 0x2,
        "PROTOCOL_VIOLATION": 0x3,
        "INVALID_REQUEST_ID": 0x4,
        "DUPLICATE_TRACK_ALIAS": 0x5,
        "KEY_VALUE_FORMATTING_ERROR": 0x6,
        "TOO_MANY_REQUESTS": 0x7,
        "INVALID_PATH": 0x8,
        "MALFORMED_PATH": 0x9,
        "GOAWAY_TIMEOUT": 0x10,
        "CONTROL_MESSAGE_TIMEOUT": 0x11,
        "DATA_STREAM_TIMEOUT": 0x12,
        "AUTH_TOKEN_CACHE_OVERFLOW": 0x13,
        "DUPLICATE_AUTH_TOKEN_ALIAS": 0x14,
        "VERSION_NEGOTIATION_FAILED": 0x15,
        "MALFORMED_AUTH_TOKEN": 0x16,
        "UNKNOWN_AUTH_TOKEN_ALIAS": 0x17,
        "EXPIRED_AUTH_TOKEN": 0x18,
        "INVALID_AUTHORITY": 0x19,
        "MALFORMED_AUTHORITY": 0x1A,
    },
    SubscribeErrorCode: {
        "INTERNAL_ERROR": 0x0,
        "UNAUTHORIZED": 0x1,
        "TIMEOUT": 0x2,
        "NOT_SUPPORTED": 0x3,
        "TRACK_DOES_NOT_EXIST": 0x4,
        "INVALID_RANGE": 0x5,
        "MALFORMED_AUTH_TOKEN": 0x10,
        "EXPIRED_AUTH_TOKEN": 0x12,
    },
    PublishDoneCode: {
        "INTERNAL_ERROR": 0x0,
        "UNAUTHORIZED": 0x1,
        "TRACK_ENDED": 0x2,
        "SUBSCRIPTION_ENDED": 0x3,
        "GOING_AWAY": 0x4,
        "EXPIRED": 0x5,
        "TOO_FAR_BEHIND": 0x6,
        "MALFORMED_TRACK": 0x7,
    },
    PublishErrorCode: {
        "INTERNAL_ERROR": 0x0,
        "UNAUTHORIZED": 0x1,
        "TIMEOUT": 0x2,
        "NOT_SUPPORTED": 0x3,
        "UNINTERESTED": 0x4,
    },
    FetchErrorCode: {
        "INTERNAL_ERROR": 0x0,
        "UNAUTHORIZED": 0x1,
        "TIMEOUT": 0x2,
        "NOT_SUPPORTED": 0x3,
        "TRACK_DOES_NOT_EXIST": 0x4,
        "INVALID_RANGE": 0x5,
        "NO_OBJECTS": 0x6,
        "INVALID_JOINING_REQUEST_ID": 0x7,
        "UNKNOWN_STATUS_IN_RANGE": 0x8,
        "MALFORMED_TRACK": 0x9,
        "MALFORMED_AUTH_TOKEN": 0x10,
        "EXPIRED_AUTH_TOKEN": 0x12,
    },
    NamespaceErrorCode: {
        "INTERNAL_ERROR": 0x0,
        "UNAUTHORIZED": 0x1,
        "TIMEOUT": 0x2,
        "NOT_SUPPORTED": 0x3,
        "UNINTERESTED": 0x4,
        "MALFORMED_AUTH_TOKEN": 0x10,
        "EXPIRED_AUTH_TOKEN": 0x12,
    },
    SubscribeNamespaceErrorCode: {
        "INTERNAL_ERROR": 0x0,
        "UNAUTHORIZED": 0x1,
        "TIMEOUT": 0x2,
        "NOT_SUPPORTED": 0x3,
        "NAMESPACE_PREFIX_UNKNOWN": 0x4,
        "NAMESPACE_PREFIX_OVERLAP": 0x5,
        "MALFORMED_AUTH_TOKEN": 0x10,
        "EXPIRED_AUTH_TOKEN": 0x12,
    },
    StreamResetCode: {
        "INTERNAL_ERROR": 0x0,
        "CANCELLED": 0x1,
        "DELIVERY_TIMEOUT": 0x2,
        "SESSION_CLOSED": 0x3,
    },
}


class CodeTableTests(SynchronousTestCase):
    def test_tables_match_the_reference(self) -> None:
        """Every enum has exactly the members and values of its reference table."""
        for enum_class, table in _TABLES.items():
            self.assertEqual(
                {member.name: member.value for member in enum_class}, table, enum_class.__name__
            )


class ProtocolViolationTests(SynchronousTestCase):
    def test_default_code(self) -> None:
        exc = ProtocolViolation("bad thing")
        self.assertEqual(exc.reason, "bad thing")
        self.assertEqual(exc.code, SessionErrorCode.PROTOCOL_VIOLATION)
        self.assertEqual(exc.code, 0x3)

    def test_other_code(self) -> None:
        exc = ProtocolViolation("no common version", SessionErrorCode.VERSION_NEGOTIATION_FAILED)
        self.assertEqual(exc.code, 0x15)
        self.assertIs(type(exc.code), int)
        self.assertIn("no common version", str(exc))
        self.assertIn("0x15", str(exc))

    def test_key_value_formatting_error(self) -> None:
        exc = KeyValueFormattingError("truncated")
        self.assertIsInstance(exc, ProtocolViolation)
        self.assertEqual(exc.code, SessionErrorCode.KEY_VALUE_FORMATTING_ERROR)
        self.assertEqual(exc.reason, "truncated")

    def test_catchable_as_one_family(self) -> None:
        with self.assertRaises(ProtocolViolation) as caught:
            raise KeyValueFormattingError("x")
        self.assertEqual(caught.exception.code, 0x6)
