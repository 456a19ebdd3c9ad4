"""Tests for moqrelay.wire.draft16 (wire layer): the draft-16 control messages.

Section numbers are those of draft-ietf-moq-transport-16.
"""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.wire.control import (
    FETCH_ABSOLUTE_JOINING,
    FETCH_RELATIVE_JOINING,
    FETCH_STANDALONE,
    FILTER_ABSOLUTE_RANGE,
    FILTER_ABSOLUTE_START,
    FILTER_LARGEST_OBJECT,
    FILTER_NEXT_GROUP_START,
    GROUP_ORDER_ASCENDING,
    GROUP_ORDER_DESCENDING,
    GROUP_ORDER_PUBLISHER,
    SETUP_MAX_REQUEST_ID,
    SETUP_PATH,
    ClientSetup,
    Fetch,
    FetchCancel,
    FetchOk,
    GoAway,
    Location,
    MaxRequestId,
    Param,
    Publish,
    PublishDone,
    PublishNamespace,
    PublishOk,
    RequestsBlocked,
    ServerSetup,
    Subscribe,
    SubscribeError,
    SubscribeOk,
    TrackStatus,
    Unsubscribe,
)
from moqrelay.wire.draft16 import (
    DRAFT_16,
    EXT_MAX_CACHE_DURATION,
    PARAM_AUTHORIZATION_TOKEN,
    PARAM_DELIVERY_TIMEOUT,
    PARAM_EXPIRES,
    PARAM_FORWARD,
    PARAM_LARGEST_OBJECT,
    PARAM_NEW_GROUP_REQUEST,
    PARAM_SUBSCRIBER_PRIORITY,
    PARAM_SUBSCRIPTION_FILTER,
    REMOVED_MESSAGE_TYPES,
    SUBSCRIBE_OPTIONS_BOTH,
    ControlMessage16,
    ControlStreamDecoder16,
    NamespaceDoneMessage,
    NamespaceMessage,
    PublishNamespaceCancel16,
    PublishNamespaceDone16,
    RequestError,
    RequestOk,
    RequestUpdate,
    SubscribeNamespace16,
    decode_kvps,
    encode_kvps,
    encode_message,
)
from moqrelay.wire.errors import ProtocolViolation, SessionErrorCode
from moqrelay.wire.varint import Reader, encode_varint

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "moqrelay-hypothesis")

PROTOCOL_VIOLATION = SessionErrorCode.PROTOCOL_VIOLATION
KEY_VALUE_FORMATTING_ERROR = SessionErrorCode.KEY_VALUE_FORMATTING_ERROR


def decode_one(data: bytes) -> ControlMessage16:
    messages = ControlStreamDecoder16().feed(data)
    assert len(messages) == 1, messages
    return messages[0]


def frame(msg_type: int, payload: bytes) -> bytes:
    assert msg_type < 0x40
    return bytes([msg_type]) + len(payload).to_bytes(2, "big") + payload


# Byte-exact examples, built by hand from the draft text ---------------------------------


EXAMPLES: list[tuple[str, ControlMessage16, bytes]] = [
    (
        # §9.3: no version list, only parameters; §1.4.2: PATH (0x01) then MAX_REQUEST_ID
        # (0x02) as delta 1, delta 1.
        "CLIENT_SETUP",
        ClientSetup([DRAFT_16], [(SETUP_PATH, b"/moq"), (SETUP_MAX_REQUEST_ID, 100)]),
        frame(0x20, bytes.fromhex("020104") + b"/moq" + bytes.fromhex("014064")),
    ),
    (
        "SERVER_SETUP",  # §9.3
        ServerSetup(DRAFT_16, [(SETUP_MAX_REQUEST_ID, 2)]),
        frame(0x21, bytes.fromhex("010202")),
    ),
    (
        # §9.9: Request ID, namespace, name, parameters; FORWARD 0x10 = 1, then
        # SUBSCRIBER_PRIORITY 0x20 (delta 0x10) = 128, then SUBSCRIPTION_FILTER 0x21
        # (delta 1), length 1, Largest Object (0x2) (§5.1.2).
        "SUBSCRIBE",
        Subscribe(
            0, (b"live",), b"video", 128, GROUP_ORDER_PUBLISHER, True, FILTER_LARGEST_OBJECT
        ),
        frame(
            0x03,
            bytes.fromhex("000104") + b"live" + b"\x05video" + bytes.fromhex("031001104080010102"),
        ),
    ),
    (
        # §9.10: Track Alias, then LARGEST_OBJECT (0x09, length-prefixed Location {5, 3})
        # as the only parameter, then the Track Extensions up to the end: MAX_CACHE_DURATION
        # (0x04) = 5000, DEFAULT_PUBLISHER_GROUP_ORDER (0x22, delta 0x1e) = Descending.
        "SUBSCRIBE_OK",
        SubscribeOk(
            0,
            7,
            0,
            GROUP_ORDER_DESCENDING,
            Location(5, 3),
            [(EXT_MAX_CACHE_DURATION, 5000)],
        ),
        frame(0x04, bytes.fromhex("000701090205030453881e02")),
    ),
    (
        # §9.8: Request ID, Error Code DOES_NOT_EXIST (0x10, §13.3.2), Retry Interval
        # 501 (retry after 500 ms), Reason Phrase.
        "REQUEST_ERROR",
        RequestError(2, 0x10, 501, "no such"),
        frame(0x05, bytes.fromhex("021041f507") + b"no such"),
    ),
    (
        # §9.7: REQUEST_OK to a TRACK_STATUS with LARGEST_OBJECT {1, 0}.
        "REQUEST_OK",
        RequestOk(4, [(PARAM_LARGEST_OBJECT, bytes.fromhex("0100"))]),
        frame(0x07, bytes.fromhex("040109020100")),
    ),
    (
        # §9.11: Request ID, Existing Request ID, FORWARD (0x10) = 0.
        "REQUEST_UPDATE",
        RequestUpdate(6, 0, [(PARAM_FORWARD, 0)]),
        frame(0x02, bytes.fromhex("0600011000")),
    ),
    (
        # §9.13: track alias, then FORWARD = 1 (no LARGEST_OBJECT: nothing published yet),
        # and no Track Extensions (Ascending is the default group order).
        "PUBLISH",
        Publish(1, (b"a",), b"t", 9, GROUP_ORDER_ASCENDING, None, True),
        frame(0x1D, bytes.fromhex("010101") + b"a" + b"\x01t" + bytes.fromhex("09011001")),
    ),
    (
        # §9.14: PUBLISH_OK is only parameters: FORWARD 0x10 = 1, SUBSCRIBER_PRIORITY 0x20
        # = 1, SUBSCRIPTION_FILTER 0x21 = Next Group Start, GROUP_ORDER 0x22 = Ascending.
        "PUBLISH_OK",
        PublishOk(1, True, 1, GROUP_ORDER_ASCENDING, FILTER_NEXT_GROUP_START),
        frame(0x1E, bytes.fromhex("0104100110010101010101")),
    ),
    (
        # §9.16: Request ID, Fetch Type 0x1, Standalone {namespace, name, start, end},
        # SUBSCRIBER_PRIORITY 0x20 = 2, GROUP_ORDER 0x22 = Descending.
        "FETCH",
        Fetch(
            8,
            2,
            GROUP_ORDER_DESCENDING,
            FETCH_STANDALONE,
            namespace=(b"n",),
            track_name=b"t",
            start=Location(0, 0),
            end=Location(3, 0),
        ),
        frame(
            0x16,
            bytes.fromhex("08010101") + b"n" + b"\x01t" + bytes.fromhex("000003000220020202"),
        ),
    ),
    (
        # §9.17: End Of Track, End Location, no parameters, no Track Extensions.
        "FETCH_OK",
        FetchOk(8, GROUP_ORDER_ASCENDING, True, Location(3, 1)),
        frame(0x18, bytes.fromhex("0801030100")),
    ),
    (
        "TRACK_STATUS",  # §9.20: SUBSCRIBE's layout, no delivery parameters
        TrackStatus(
            10,
            (b"n",),
            b"t",
            128,
            GROUP_ORDER_PUBLISHER,
            True,
            FILTER_ABSOLUTE_START,
            Location(0, 0),
        ),
        frame(0x0D, bytes.fromhex("0a0101") + b"n" + b"\x01t" + b"\x00"),
    ),
    (
        "PUBLISH_NAMESPACE",  # §9.21
        PublishNamespace(12, (b"a", b"b"), [(PARAM_AUTHORIZATION_TOKEN, b"\x03\x00k")]),
        frame(0x06, bytes.fromhex("0c020161016201030303006b")),
    ),
    (
        "NAMESPACE",  # §9.22: only the suffix after the subscribed prefix
        NamespaceMessage((b"room1",)),
        frame(0x08, b"\x01\x05room1"),
    ),
    (
        "PUBLISH_NAMESPACE_DONE",  # §9.23: the Request ID of the PUBLISH_NAMESPACE
        PublishNamespaceDone16(12),
        frame(0x09, b"\x0c"),
    ),
    (
        "NAMESPACE_DONE",  # §9.24
        NamespaceDoneMessage((b"room1",)),
        frame(0x0E, b"\x01\x05room1"),
    ),
    (
        "PUBLISH_NAMESPACE_CANCEL",  # §9.25: Request ID, Error Code, Reason Phrase
        PublishNamespaceCancel16(12, 0x20, ""),
        frame(0x0C, bytes.fromhex("0c2000")),
    ),
    (
        # §9.26: an empty prefix (0 fields) is allowed now; options 2 = both.
        "SUBSCRIBE_NAMESPACE",
        SubscribeNamespace16(14, (), SUBSCRIBE_OPTIONS_BOTH),
        frame(0x11, bytes.fromhex("0e000200")),
    ),
    ("GOAWAY", GoAway(b""), frame(0x10, b"\x00")),  # §9.4, unchanged
    ("MAX_REQUEST_ID", MaxRequestId(20), frame(0x15, b"\x14")),  # §9.5
    ("REQUESTS_BLOCKED", RequestsBlocked(20), frame(0x1A, b"\x14")),  # §9.6
    ("UNSUBSCRIBE", Unsubscribe(0), frame(0x0A, b"\x00")),  # §9.12
    (
        "PUBLISH_DONE",  # §9.15, unchanged
        PublishDone(0, 2, 3, "end"),
        frame(0x0B, bytes.fromhex("00020303") + b"end"),
    ),
    ("FETCH_CANCEL", FetchCancel(8), frame(0x17, b"\x08")),  # §9.18
]


class ExamplesTests(SynchronousTestCase):
    """Every message against bytes written out from the draft-16 text."""

    def test_encode(self) -> None:
        for name, msg, wire in EXAMPLES:
            self.assertEqual(encode_message(msg).hex(), wire.hex(), name)

    def test_decode(self) -> None:
        for name, msg, wire in EXAMPLES:
            self.assertEqual(decode_one(wire), msg, name)

    def test_every_message_type_has_an_example(self) -> None:
        from moqrelay.wire.draft16 import MESSAGE_TYPES

        covered = {wire[0] for _, _, wire in EXAMPLES}
        self.assertEqual(covered, set(MESSAGE_TYPES))

    def test_decode_one_byte_at_a_time(self) -> None:
        stream = b"".join(wire for _, _, wire in EXAMPLES)
        decoder = ControlStreamDecoder16()
        decoded: list[ControlMessage16] = []
        for index in range(len(stream)):
            decoded += decoder.feed(stream[index : index + 1])
        self.assertEqual(decoded, [msg for _, msg, _ in EXAMPLES])


class DefaultsTests(SynchronousTestCase):
    """Omitted parameters take §9.2.2's defaults in the draft-14 fields."""

    def test_subscribe_without_parameters(self) -> None:
        msg = decode_one(frame(0x03, b"\x00\x01\x01n\x01t\x00"))
        self.assertEqual(
            msg,
            Subscribe(
                0,
                (b"n",),
                b"t",
                128,  # §9.2.2.3: the publisher uses 128
                GROUP_ORDER_PUBLISHER,  # §9.2.2.4: the publisher's preference
                True,  # §9.2.2.8: FORWARD defaults to 1
                FILTER_ABSOLUTE_START,  # §5.1.2: unfiltered == AbsoluteStart {0, 0}
                Location(0, 0),
            ),
        )

    def test_fetch_without_group_order_is_ascending(self) -> None:
        msg = decode_one(frame(0x16, bytes.fromhex("0002040100")))
        self.assertEqual(
            msg,
            Fetch(
                0,
                128,
                GROUP_ORDER_ASCENDING,
                FETCH_RELATIVE_JOINING,
                joining_request_id=4,
                joining_start=1,
            ),
        )

    def test_publisher_group_order_is_not_sent_in_fetch(self) -> None:
        msg = Fetch(
            0,
            128,
            GROUP_ORDER_PUBLISHER,
            FETCH_ABSOLUTE_JOINING,
            joining_request_id=0,
            joining_start=0,
        )
        self.assertEqual(encode_message(msg), frame(0x16, bytes.fromhex("0003000001204080")))

    def test_known_parameter_in_another_message_is_ignored(self) -> None:
        # §9.2.2: EXPIRES (0x08) is not defined for SUBSCRIBE: ignored, not kept.
        msg = decode_one(frame(0x03, b"\x00\x01\x01n\x01t\x01\x08\x05"))
        assert isinstance(msg, Subscribe)
        self.assertEqual(msg.params, [])

    def test_subscribe_keeps_parameters_without_a_field(self) -> None:
        payload = b"\x00\x01\x01n\x01t\x03" + bytes.fromhex("022401016b2f05")
        msg = decode_one(frame(0x03, payload))
        assert isinstance(msg, Subscribe)
        self.assertEqual(
            msg.params,
            [
                (PARAM_DELIVERY_TIMEOUT, 36),
                (PARAM_AUTHORIZATION_TOKEN, b"k"),
                (PARAM_NEW_GROUP_REQUEST, 5),
            ],
        )


class KeyValuePairTests(SynchronousTestCase):
    """§1.4.2: types are deltas from the previous type."""

    def test_sorted_and_delta_encoded(self) -> None:
        kvps: list[Param] = [(0x22, 1), (0x03, b"x"), (0x03, b"y"), (0x02, 7)]
        self.assertEqual(encode_kvps(kvps).hex(), "0207" + "0101" + "78" + "000179" + "1f01")
        self.assertEqual(
            decode_kvps(Reader(encode_kvps(kvps)), 4),
            [(0x02, 7), (0x03, b"x"), (0x03, b"y"), (0x22, 1)],
        )

    def test_type_may_reach_two_to_the_64_minus_one(self) -> None:
        # Each pair: Delta Type 2^62 - 1, then a zero length (odd type) or value (even).
        big = 2**62 - 1
        pair = bytes.fromhex("ffffffffffffffff00")
        kvps = decode_kvps(Reader(pair * 4), 4)  # 4 * (2^62 - 1) <= 2^64 - 1
        self.assertEqual(kvps, [(big, b""), (2 * big, 0), (3 * big, b""), (4 * big, 0)])
        with self.assertRaises(ProtocolViolation) as caught:
            decode_kvps(Reader(pair * 5), 5)  # 5 * (2^62 - 1) > 2^64 - 1
        self.assertEqual(caught.exception.code, PROTOCOL_VIOLATION)


# Malformed input ------------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes, int]] = [
    # §9: "An endpoint that receives an unknown message type MUST close the session."
    ("unknown type", frame(0x30, b""), PROTOCOL_VIOLATION),
    # §9.2: unknown Message Parameter.
    ("unknown parameter", frame(0x07, b"\x00\x01\x04\x01"), PROTOCOL_VIOLATION),
    ("duplicate parameter", frame(0x07, b"\x00\x02\x08\x01\x00\x02"), PROTOCOL_VIOLATION),
    # §9.2.2.2: DELIVERY_TIMEOUT 0.
    ("zero delivery timeout", frame(0x02, b"\x00\x00\x01\x02\x00"), PROTOCOL_VIOLATION),
    ("priority above 255", frame(0x02, b"\x00\x00\x01\x20\x41\x00"), PROTOCOL_VIOLATION),
    ("group order 3", frame(0x1E, b"\x00\x01\x22\x03"), PROTOCOL_VIOLATION),
    ("forward 2", frame(0x02, b"\x00\x00\x01\x10\x02"), PROTOCOL_VIOLATION),
    # §9.2.2.5: a filter that does not fill its parameter.
    ("long filter", frame(0x02, b"\x00\x00\x01\x21\x02\x02\x00"), PROTOCOL_VIOLATION),
    ("short filter", frame(0x02, b"\x00\x00\x01\x21\x01\x03"), PROTOCOL_VIOLATION),
    ("unknown filter", frame(0x02, b"\x00\x00\x01\x21\x01\x05"), PROTOCOL_VIOLATION),
    # §1.4.2: a known type whose value does not match its serialization.
    ("bad largest", frame(0x07, b"\x00\x01\x09\x01\x05"), KEY_VALUE_FORMATTING_ERROR),
    # §1.4.2: a value longer than 2^16 - 1 bytes.
    ("long value", frame(0x07, b"\x00\x01\x03\x81\x00\x00\x00"), PROTOCOL_VIOLATION),
    # §9.8 REQUEST_ERROR without its Retry Interval (the draft-14 SUBSCRIBE_ERROR layout).
    ("short request error", frame(0x05, b"\x00\x00\x00"), PROTOCOL_VIOLATION),
    ("trailing bytes", frame(0x0A, b"\x00\x00"), PROTOCOL_VIOLATION),
    # §11: DEFAULT_PUBLISHER_GROUP_ORDER must be 1 or 2; DELIVERY_TIMEOUT must not be 0.
    ("bad track group order", frame(0x04, b"\x00\x00\x00\x22\x00"), PROTOCOL_VIOLATION),
    ("zero track timeout", frame(0x04, b"\x00\x00\x00\x02\x00"), PROTOCOL_VIOLATION),
    ("truncated track extension", frame(0x04, b"\x00\x00\x00\x03\x05"), PROTOCOL_VIOLATION),
    ("fetch type 4", frame(0x16, b"\x00\x04\x00"), PROTOCOL_VIOLATION),
    ("end of track 2", frame(0x18, b"\x00\x02\x00\x00\x00"), PROTOCOL_VIOLATION),
    # §2.4.1 (Track Naming): 0 namespace fields outside SUBSCRIBE_NAMESPACE.
    ("empty namespace", frame(0x06, b"\x00\x00\x00"), PROTOCOL_VIOLATION),
    ("empty namespace field", frame(0x08, b"\x02\x01a\x00"), PROTOCOL_VIOLATION),
    (
        "33-field prefix",
        frame(0x11, b"\x00\x21" + b"\x01a" * 33 + b"\x00\x00"),
        PROTOCOL_VIOLATION,
    ),
    ("subscribe options 3", frame(0x11, b"\x00\x00\x03\x00"), PROTOCOL_VIOLATION),
    ("setup parameter twice", frame(0x20, b"\x02\x02\x01\x00\x02"), PROTOCOL_VIOLATION),
]


class MalformedTests(SynchronousTestCase):
    """Bad input raises ProtocolViolation with the code the draft names."""

    def test_malformed(self) -> None:
        for name, data, code in MALFORMED:
            with self.assertRaises(ProtocolViolation, msg=name) as caught:
                ControlStreamDecoder16().feed(data)
            self.assertEqual(caught.exception.code, code, name)

    def test_removed_messages(self) -> None:
        # §9's table has no FETCH_ERROR, PUBLISH_ERROR, ... any more: unknown types now.
        for msg_type, name in REMOVED_MESSAGE_TYPES.items():
            with self.assertRaises(ProtocolViolation) as caught:
                ControlStreamDecoder16().feed(frame(msg_type, b"\x00\x00\x00"))
            self.assertIn(name, caught.exception.reason)
            self.assertEqual(caught.exception.code, PROTOCOL_VIOLATION)

    def test_decoder_stays_dead(self) -> None:
        decoder = ControlStreamDecoder16()
        with self.assertRaises(ProtocolViolation):
            decoder.feed(frame(0x19, b""))
        with self.assertRaises(ProtocolViolation):
            decoder.feed(frame(0x0A, b"\x00"))

    def test_draft14_only_messages_cannot_be_encoded(self) -> None:
        with self.assertRaises(ValueError):
            encode_message(SubscribeError(0, 1, "x"))  # type: ignore[arg-type]

    def test_setup_versions_must_be_draft16(self) -> None:
        with self.assertRaises(ValueError):
            encode_message(ClientSetup([0xFF00000E]))
        with self.assertRaises(ValueError):
            encode_message(ServerSetup(0xFF00000E))

    def test_invalid_track_extension_is_not_sent(self) -> None:
        # §11: DELIVERY_TIMEOUT 0 is invalid as a track extension too.
        with self.assertRaises(ValueError):
            encode_message(FetchOk(0, GROUP_ORDER_ASCENDING, False, Location(0, 0), [(2, 0)]))

    def test_parameter_without_a_draft16_place(self) -> None:
        # Draft-14's MAX_CACHE_DURATION parameter (0x04) is not a draft-16 parameter.
        msg = Subscribe(0, (b"n",), b"t", 1, 1, True, 2, params=[(0x04, 1)])
        with self.assertRaises(ValueError):
            encode_message(msg)


# Round trips ----------------------------------------------------------------------------

varints = st.integers(0, 2**62 - 1)
small = st.integers(0, 2**20)
names = st.binary(min_size=1, max_size=8)
namespaces = st.lists(names, min_size=1, max_size=4).map(tuple)
locations = st.builds(Location, small, small)
reasons = st.text(max_size=20)


def _tokens(values: list[bytes]) -> list[Param]:
    return [(PARAM_AUTHORIZATION_TOKEN, value) for value in values]


tokens = st.lists(st.binary(max_size=10), max_size=2).map(_tokens)


def _optional(param_type: int, values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Param]]:
    return st.one_of(st.just([]), values.map(lambda value: [(param_type, value)]))


def _sorted(*lists: list[Param]) -> list[Param]:
    return sorted((param for part in lists for param in part), key=lambda param: param[0])


def _kvp(kvp_type: int) -> st.SearchStrategy[Param]:
    value: st.SearchStrategy[Any] = st.binary(max_size=6) if kvp_type & 1 else varints
    return value.map(lambda v: (kvp_type, v))


# Track extensions that no draft-16 rule constrains and Publish.params can carry.
track_extensions = (
    st.lists(
        st.integers(0x40, 0x4000).flatmap(_kvp) | st.sampled_from([0x04, 0x0B]).flatmap(_kvp),
        max_size=3,
    )
).map(lambda kvps: sorted(kvps, key=lambda kvp: kvp[0]))


@st.composite
def filters(draw: st.DrawFn) -> tuple[int, Location | None, int | None]:
    filter_type = draw(
        st.sampled_from(
            [
                FILTER_NEXT_GROUP_START,
                FILTER_LARGEST_OBJECT,
                FILTER_ABSOLUTE_START,
                FILTER_ABSOLUTE_RANGE,
            ]
        )
    )
    start = draw(locations) if filter_type >= FILTER_ABSOLUTE_START else None
    end = draw(small) if filter_type == FILTER_ABSOLUTE_RANGE else None
    return filter_type, start, end


@st.composite
def subscribes(draw: st.DrawFn) -> Subscribe:
    filter_type, start, end = draw(filters())
    params = _sorted(
        draw(_optional(PARAM_DELIVERY_TIMEOUT, st.integers(1, 2**30))),
        draw(tokens),
        draw(_optional(PARAM_NEW_GROUP_REQUEST, varints)),
    )
    return Subscribe(
        draw(varints),
        draw(namespaces),
        draw(st.binary(max_size=8)),
        draw(st.integers(0, 255)),
        draw(st.integers(0, 2)),
        draw(st.booleans()),
        filter_type,
        start,
        end,
        params,
    )


@st.composite
def publish_oks(draw: st.DrawFn) -> PublishOk:
    filter_type, start, end = draw(filters())
    params = _sorted(
        draw(_optional(PARAM_DELIVERY_TIMEOUT, st.integers(1, 2**30))),
        draw(_optional(PARAM_EXPIRES, varints)),
        draw(_optional(PARAM_NEW_GROUP_REQUEST, varints)),
    )
    return PublishOk(
        draw(varints),
        draw(st.booleans()),
        draw(st.integers(0, 255)),
        draw(st.integers(1, 2)),
        filter_type,
        start,
        end,
        params,
    )


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    params = _sorted(draw(tokens), draw(_optional(PARAM_EXPIRES, varints)))
    return Publish(
        draw(varints),
        draw(namespaces),
        draw(st.binary(max_size=8)),
        draw(varints),
        draw(st.integers(1, 2)),
        draw(st.none() | locations),
        draw(st.booleans()),
        params + draw(track_extensions),
    )


@st.composite
def fetches(draw: st.DrawFn) -> Fetch:
    fetch_type = draw(st.integers(1, 3))
    common = (draw(varints), draw(st.integers(0, 255)), draw(st.integers(1, 2)), fetch_type)
    if fetch_type == FETCH_STANDALONE:
        return Fetch(
            *common,
            namespace=draw(namespaces),
            track_name=draw(st.binary(max_size=8)),
            start=draw(locations),
            end=draw(locations),
            params=draw(tokens),
        )
    return Fetch(
        *common, joining_request_id=draw(varints), joining_start=draw(varints), params=draw(tokens)
    )


request_ok_params = st.tuples(
    _optional(PARAM_EXPIRES, varints),
    _optional(
        PARAM_LARGEST_OBJECT,
        locations.map(lambda loc: encode_varint(loc[0]) + encode_varint(loc[1])),
    ),
    tokens,
).map(lambda parts: _sorted(*parts))

update_params = st.tuples(
    _optional(PARAM_DELIVERY_TIMEOUT, st.integers(1, 2**30)),
    tokens,
    _optional(PARAM_FORWARD, st.integers(0, 1)),
    _optional(PARAM_SUBSCRIBER_PRIORITY, st.integers(0, 255)),
    _optional(PARAM_SUBSCRIPTION_FILTER, st.just(b"\x01")),
).map(lambda parts: _sorted(*parts))

setup_params = st.lists(st.integers(0x40, 0x400).flatmap(_kvp), max_size=3).map(
    lambda kvps: [(SETUP_PATH, b"/x"), *sorted(kvps, key=lambda kvp: kvp[0])]
)

MESSAGES: st.SearchStrategy[Any] = st.one_of(
    st.builds(ClientSetup, st.just([DRAFT_16]), setup_params),
    st.builds(ServerSetup, st.just(DRAFT_16), setup_params),
    st.builds(GoAway, st.binary(max_size=20)),
    st.builds(MaxRequestId, varints),
    st.builds(RequestsBlocked, varints),
    st.builds(RequestOk, varints, request_ok_params),
    st.builds(RequestError, varints, varints, varints, reasons),
    subscribes(),
    st.builds(
        SubscribeOk,
        varints,
        varints,
        varints,
        st.integers(1, 2),
        st.none() | locations,
        track_extensions,
    ),
    st.builds(RequestUpdate, varints, varints, update_params),
    st.builds(Unsubscribe, varints),
    publishes(),
    publish_oks(),
    st.builds(PublishDone, varints, varints, varints, reasons),
    fetches(),
    st.builds(
        FetchOk,
        varints,
        st.just(GROUP_ORDER_ASCENDING),
        st.booleans(),
        locations,
        track_extensions,
    ),
    st.builds(FetchCancel, varints),
    st.builds(
        TrackStatus,
        varints,
        namespaces,
        st.binary(max_size=8),
        st.just(128),
        st.just(GROUP_ORDER_PUBLISHER),
        st.just(True),
        st.just(FILTER_ABSOLUTE_START),
        st.just(Location(0, 0)),
        st.none(),
        tokens,
    ),
    st.builds(PublishNamespace, varints, namespaces, tokens),
    st.builds(NamespaceMessage, st.lists(names, max_size=3).map(tuple)),
    st.builds(NamespaceDoneMessage, st.lists(names, max_size=3).map(tuple)),
    st.builds(PublishNamespaceDone16, varints),
    st.builds(PublishNamespaceCancel16, varints, varints, reasons),
    st.builds(
        SubscribeNamespace16,
        varints,
        st.lists(names, max_size=3).map(tuple),
        st.integers(0, 2),
        st.tuples(tokens, _optional(PARAM_FORWARD, st.integers(0, 1))).map(
            lambda parts: _sorted(*parts)
        ),
    ),
)


class RoundTripTests(SynchronousTestCase):
    """decode(encode(message)) == message for every draft-16 message."""

    @settings(max_examples=300, deadline=None)
    @given(MESSAGES)
    def test_round_trip(self, msg: ControlMessage16) -> None:
        self.assertEqual(decode_one(encode_message(msg)), msg)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(MESSAGES, min_size=1, max_size=5))
    def test_one_byte_at_a_time(self, messages: list[ControlMessage16]) -> None:
        stream = b"".join(encode_message(msg) for msg in messages)
        decoder = ControlStreamDecoder16()
        decoded: list[ControlMessage16] = []
        for index in range(len(stream)):
            decoded += decoder.feed(stream[index : index + 1])
        self.assertEqual(decoded, messages)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=40))
    def test_garbage_raises_only_protocol_violation(self, data: bytes) -> None:
        try:
            ControlStreamDecoder16().feed(data)
        except ProtocolViolation:
            pass
