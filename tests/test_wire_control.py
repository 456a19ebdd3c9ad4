"""Tests for moqrelay.wire.control (wire layer): control messages and the stream decoder."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.wire.control import (
    DRAFT_14,
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
    MESSAGE_TYPES,
    PARAM_AUTHORIZATION_TOKEN,
    PARAM_DELIVERY_TIMEOUT,
    PARAM_MAX_CACHE_DURATION,
    SETUP_AUTHORITY,
    SETUP_MAX_REQUEST_ID,
    SETUP_MOQT_IMPLEMENTATION,
    SETUP_PATH,
    ClientSetup,
    ControlMessage,
    ControlStreamDecoder,
    Fetch,
    FetchCancel,
    FetchError,
    FetchOk,
    GoAway,
    Location,
    MaxRequestId,
    Namespace,
    Param,
    Publish,
    PublishDone,
    PublishError,
    PublishNamespace,
    PublishNamespaceCancel,
    PublishNamespaceDone,
    PublishNamespaceError,
    PublishNamespaceOk,
    PublishOk,
    RequestsBlocked,
    ServerSetup,
    Subscribe,
    SubscribeError,
    SubscribeNamespace,
    SubscribeNamespaceError,
    SubscribeNamespaceOk,
    SubscribeOk,
    SubscribeUpdate,
    TrackStatus,
    TrackStatusError,
    TrackStatusOk,
    Unsubscribe,
    UnsubscribeNamespace,
    encode_message,
    get_param,
)
from moqrelay.wire.errors import (
    KeyValueFormattingError,
    ProtocolViolation,
    SessionErrorCode,
    SubscribeErrorCode,
)
from moqrelay.wire.varint import MAX_VARINT, encode_varint

# Hypothesis caches (constants, unicode tables) go to the temp dir, not into the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "moqrelay-hypothesis")

_PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
_FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=10_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

LIVE_DEMO = (b"live", b"demo")

# Reference section 12, hex as written there, with the decoded message.
EXAMPLES: list[tuple[str, str, ControlMessage]] = [
    (
        "12.1 CLIENT_SETUP",
        """20 00 14 01 c0 00 00 00 ff 00 00 0e 02 02 40 64 07 05 70 79 6d 6f 71""",
        ClientSetup(
            [DRAFT_14], [(SETUP_MAX_REQUEST_ID, 100), (SETUP_MOQT_IMPLEMENTATION, b"pymoq")]
        ),
    ),
    (
        "12.2 CLIENT_SETUP raw QUIC",
        """20 00 27 01 c0 00 00 00 ff 00 00 0e 03
        01 04 2f 6d 6f 71
        05 12 72 65 6c 61 79 2e 65 78 61 6d 70 6c 65 3a 34 34 34 33
        02 40 64""",
        ClientSetup(
            [DRAFT_14],
            [
                (SETUP_PATH, b"/moq"),
                (SETUP_AUTHORITY, b"relay.example:4443"),
                (SETUP_MAX_REQUEST_ID, 100),
            ],
        ),
    ),
    (
        "12.3 CLIENT_SETUP @moq/lite",
        """20 00 2c 03 c0 00 00 00 ff 0d ad 02 c0 00 00 00 ff 0d ad 01
        c0 00 00 00 ff 00 00 0e 02 02 80 00 a4 55 07 0b 6d 6f 71 2d 6c 69 74 65 2d 6a 73""",
        ClientSetup(
            [0xFF0DAD02, 0xFF0DAD01, DRAFT_14],
            [(SETUP_MAX_REQUEST_ID, 42069), (SETUP_MOQT_IMPLEMENTATION, b"moq-lite-js")],
        ),
    ),
    (
        "12.4 SERVER_SETUP",
        "21 00 0c c0 00 00 00 ff 00 00 0e 01 02 40 64",
        ServerSetup(DRAFT_14, [(SETUP_MAX_REQUEST_ID, 100)]),
    ),
    (
        "12.5 SUBSCRIBE",
        """03 00 17 00 02 04 6c 69 76 65 04 64 65 6d 6f 05 76 69 64 65 6f 80 02 01 02 00""",
        Subscribe(
            0, LIVE_DEMO, b"video", 128, GROUP_ORDER_DESCENDING, True, FILTER_LARGEST_OBJECT
        ),
    ),
    (
        "12.6 SUBSCRIBE absolute range",
        "03 00 18 02 01 04 6c 69 76 65 05 61 75 64 69 6f 80 00 01 04 05 00 0a 01 02 47 d0",
        Subscribe(
            2,
            (b"live",),
            b"audio",
            128,
            GROUP_ORDER_PUBLISHER,
            True,
            FILTER_ABSOLUTE_RANGE,
            Location(5, 0),
            10,
            [(PARAM_DELIVERY_TIMEOUT, 2000)],
        ),
    ),
    (
        "12.7 SUBSCRIBE_OK",
        "04 00 08 00 01 00 01 01 07 03 00",
        SubscribeOk(0, 1, 0, GROUP_ORDER_ASCENDING, Location(7, 3)),
    ),
    (
        "12.7 SUBSCRIBE_OK without content",
        "04 00 06 00 00 00 02 00 00",
        SubscribeOk(0, 0, 0, GROUP_ORDER_DESCENDING, None),
    ),
    (
        "12.12 FETCH standalone",
        "16 00 1a 06 80 01 01 02 04 6c 69 76 65 04 64 65 6d 6f 05 76 69 64 65 6f 00 00 02 00 00",
        Fetch(
            6,
            128,
            GROUP_ORDER_ASCENDING,
            FETCH_STANDALONE,
            namespace=LIVE_DEMO,
            track_name=b"video",
            start=Location(0, 0),
            end=Location(2, 0),
        ),
    ),
    (
        "12.12 FETCH relative joining",
        "16 00 07 08 80 01 02 00 02 00",
        Fetch(
            8,
            128,
            GROUP_ORDER_ASCENDING,
            FETCH_RELATIVE_JOINING,
            joining_request_id=0,
            joining_start=2,
        ),
    ),
    (
        "12.12 FETCH_OK",
        "18 00 06 06 01 00 02 00 00",
        FetchOk(6, GROUP_ORDER_ASCENDING, False, Location(2, 0)),
    ),
    (
        "12.13 PUBLISH_NAMESPACE",
        "06 00 0d 00 02 04 6c 69 76 65 04 64 65 6d 6f 00",
        PublishNamespace(0, LIVE_DEMO),
    ),
    ("12.13 PUBLISH_NAMESPACE_OK", "07 00 01 00", PublishNamespaceOk(0)),
    (
        "12.13 PUBLISH_NAMESPACE_ERROR",
        "08 00 09 00 01 06 64 65 6e 69 65 64",
        PublishNamespaceError(0, 1, "denied"),
    ),
    (
        "12.13 PUBLISH_NAMESPACE_DONE",
        "09 00 0b 02 04 6c 69 76 65 04 64 65 6d 6f",
        PublishNamespaceDone(LIVE_DEMO),
    ),
    (
        "12.13 PUBLISH_NAMESPACE_CANCEL",
        "0c 00 0d 02 04 6c 69 76 65 04 64 65 6d 6f 01 00",
        PublishNamespaceCancel(LIVE_DEMO, 1, ""),
    ),
    (
        "12.13 SUBSCRIBE_NAMESPACE",
        "11 00 08 02 01 04 6c 69 76 65 00",
        SubscribeNamespace(2, (b"live",)),
    ),
    ("12.13 SUBSCRIBE_NAMESPACE_OK", "12 00 01 02", SubscribeNamespaceOk(2)),
    (
        "12.13 UNSUBSCRIBE_NAMESPACE",
        "14 00 06 01 04 6c 69 76 65",
        UnsubscribeNamespace((b"live",)),
    ),
    (
        "12.14 SUBSCRIBE_ERROR",
        "05 00 0b 00 04 08 6e 6f 20 74 72 61 63 6b",
        SubscribeError(0, SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "no track"),
    ),
    (
        "12.14 SUBSCRIBE_UPDATE",
        "02 00 08 04 00 08 00 00 0a 01 00",
        SubscribeUpdate(4, 0, Location(8, 0), 0, 10, True),
    ),
    ("12.14 UNSUBSCRIBE", "0a 00 01 00", Unsubscribe(0)),
    ("12.14 PUBLISH_DONE", "0b 00 04 00 02 03 00", PublishDone(0, 2, 3, "")),
    ("12.14 MAX_REQUEST_ID", "15 00 02 40 c8", MaxRequestId(200)),
    ("12.14 REQUESTS_BLOCKED", "1a 00 02 40 64", RequestsBlocked(100)),
    ("12.14 GOAWAY", "10 00 01 00", GoAway(b"")),
    ("12.14 FETCH_CANCEL", "17 00 01 06", FetchCancel(6)),
    ("12.14 FETCH_ERROR", "19 00 03 06 06 00", FetchError(6, 6, "")),
    (
        "12.14 PUBLISH",
        "1d 00 0e 01 01 04 6c 69 76 65 01 76 09 01 00 01 00",
        Publish(1, (b"live",), b"v", 9, GROUP_ORDER_ASCENDING, None, True),
    ),
    (
        "12.14 PUBLISH_OK",
        "1e 00 06 01 01 80 01 02 00",
        PublishOk(1, True, 128, GROUP_ORDER_ASCENDING, FILTER_LARGEST_OBJECT),
    ),
    ("12.14 PUBLISH_ERROR", "1f 00 03 01 04 00", PublishError(1, 4, "")),
    (
        "12.14 TRACK_STATUS",
        "0d 00 17 04 02 04 6c 69 76 65 04 64 65 6d 6f 05 76 69 64 65 6f 80 00 01 02 00",
        TrackStatus(
            4, LIVE_DEMO, b"video", 128, GROUP_ORDER_PUBLISHER, True, FILTER_LARGEST_OBJECT
        ),
    ),
]


def _hex(text: str) -> bytes:
    return bytes.fromhex(" ".join(text.split()))


def _decode_all(data: bytes, chunks: list[int] | None = None) -> list[ControlMessage]:
    decoder = ControlStreamDecoder()
    if chunks is None:
        return decoder.feed(data)
    messages: list[ControlMessage] = []
    pos = 0
    for cut in [*chunks, len(data)]:
        messages += decoder.feed(data[pos:cut])
        pos = cut
    return messages


def _frame(msg_type: int, payload: bytes) -> bytes:
    return encode_varint(msg_type) + len(payload).to_bytes(2, "big") + payload


@contextmanager
def _shallow_stack(headroom: int = 40) -> Iterator[None]:
    """Run with a recursion limit only `headroom` frames above the current depth."""
    depth = 0
    frame = sys._getframe()
    while frame.f_back is not None:
        frame = frame.f_back
        depth += 1
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + headroom)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


# Strategies ---------------------------------------------------------------------------

varints = st.one_of(st.integers(0, 63), st.integers(0, 2**14), st.integers(0, MAX_VARINT))
uint8s = st.integers(0, 255)
namespaces: st.SearchStrategy[Namespace] = st.lists(
    st.binary(max_size=12), min_size=1, max_size=32
).map(tuple)
# SUBSCRIBE_NAMESPACE and UNSUBSCRIBE_NAMESPACE also take the empty prefix.
prefixes: st.SearchStrategy[Namespace] = st.lists(
    st.binary(max_size=12), min_size=0, max_size=32
).map(tuple)
track_names = st.binary(max_size=24)
reasons = st.text(max_size=40)
locations = st.builds(Location, varints, varints)
_kvp_types = st.one_of(st.integers(0, 8), varints)
kvps: st.SearchStrategy[Param] = _kvp_types.flatmap(
    lambda t: st.tuples(st.just(t), varints if t % 2 == 0 else st.binary(max_size=16))
)
_SINGLE_VALUED = {
    SETUP_PATH,
    SETUP_MAX_REQUEST_ID,
    0x04,
    SETUP_AUTHORITY,
    SETUP_MOQT_IMPLEMENTATION,
}


def _no_duplicate_known(params: list[Param]) -> list[Param]:
    """Drop repeats of the single-valued parameter types (a decoder rejects those)."""
    seen: set[int] = set()
    kept: list[Param] = []
    for param in params:
        if param[0] in _SINGLE_VALUED:
            if param[0] in seen:
                continue
            seen.add(param[0])
        kept.append(param)
    return kept


params = st.lists(kvps, max_size=5).map(_no_duplicate_known)
filters = st.one_of(
    st.tuples(
        st.sampled_from([FILTER_NEXT_GROUP_START, FILTER_LARGEST_OBJECT]), st.none(), st.none()
    ),
    st.tuples(st.just(FILTER_ABSOLUTE_START), locations, st.none()),
    st.tuples(st.just(FILTER_ABSOLUTE_RANGE), locations, varints),
)
any_order = st.sampled_from([0, 1, 2])
set_order = st.sampled_from([1, 2])


def _subscribe_like(cls: Callable[..., ControlMessage]) -> st.SearchStrategy[ControlMessage]:
    return st.builds(
        lambda rid, ns, name, prio, order, fwd, flt, ps: cls(
            rid, ns, name, prio, order, fwd, flt[0], flt[1], flt[2], ps
        ),
        varints,
        namespaces,
        track_names,
        uint8s,
        any_order,
        st.booleans(),
        filters,
        params,
    )


def _subscribe_ok_like(cls: Callable[..., ControlMessage]) -> st.SearchStrategy[ControlMessage]:
    return st.builds(cls, varints, varints, varints, set_order, st.none() | locations, params)


def _error_like(cls: Callable[..., ControlMessage]) -> st.SearchStrategy[ControlMessage]:
    return st.builds(cls, varints, varints, reasons)


_fetches = st.one_of(
    st.builds(
        lambda rid, prio, order, ns, name, start, end, ps: Fetch(
            rid,
            prio,
            order,
            FETCH_STANDALONE,
            namespace=ns,
            track_name=name,
            start=start,
            end=end,
            params=ps,
        ),
        varints,
        uint8s,
        any_order,
        namespaces,
        track_names,
        locations,
        locations,
        params,
    ),
    st.builds(
        lambda rid, prio, order, ftype, joining, start, ps: Fetch(
            rid, prio, order, ftype, joining_request_id=joining, joining_start=start, params=ps
        ),
        varints,
        uint8s,
        any_order,
        st.sampled_from([FETCH_RELATIVE_JOINING, FETCH_ABSOLUTE_JOINING]),
        varints,
        varints,
        params,
    ),
)

STRATEGIES: dict[type[Any], st.SearchStrategy[ControlMessage]] = {
    ClientSetup: st.builds(ClientSetup, st.lists(varints, max_size=6), params),
    ServerSetup: st.builds(ServerSetup, varints, params),
    GoAway: st.builds(GoAway, st.binary(max_size=64)),
    MaxRequestId: st.builds(MaxRequestId, varints),
    RequestsBlocked: st.builds(RequestsBlocked, varints),
    Subscribe: _subscribe_like(Subscribe),
    SubscribeOk: _subscribe_ok_like(SubscribeOk),
    SubscribeError: _error_like(SubscribeError),
    SubscribeUpdate: st.builds(
        SubscribeUpdate, varints, varints, locations, varints, uint8s, st.booleans(), params
    ),
    Unsubscribe: st.builds(Unsubscribe, varints),
    PublishDone: st.builds(PublishDone, varints, varints, varints, reasons),
    Publish: st.builds(
        Publish,
        varints,
        namespaces,
        track_names,
        varints,
        set_order,
        st.none() | locations,
        st.booleans(),
        params,
    ),
    PublishOk: st.builds(
        lambda rid, fwd, prio, order, flt, ps: PublishOk(
            rid, fwd, prio, order, flt[0], flt[1], flt[2], ps
        ),
        varints,
        st.booleans(),
        uint8s,
        set_order,
        filters,
        params,
    ),
    PublishError: _error_like(PublishError),
    Fetch: _fetches,
    FetchOk: st.builds(FetchOk, varints, set_order, st.booleans(), locations, params),
    FetchError: _error_like(FetchError),
    FetchCancel: st.builds(FetchCancel, varints),
    TrackStatus: _subscribe_like(TrackStatus),
    TrackStatusOk: _subscribe_ok_like(TrackStatusOk),
    TrackStatusError: _error_like(TrackStatusError),
    PublishNamespace: st.builds(PublishNamespace, varints, namespaces, params),
    PublishNamespaceOk: st.builds(PublishNamespaceOk, varints),
    PublishNamespaceError: _error_like(PublishNamespaceError),
    PublishNamespaceDone: st.builds(PublishNamespaceDone, namespaces),
    PublishNamespaceCancel: st.builds(PublishNamespaceCancel, namespaces, varints, reasons),
    SubscribeNamespace: st.builds(SubscribeNamespace, varints, prefixes, params),
    SubscribeNamespaceOk: st.builds(SubscribeNamespaceOk, varints),
    SubscribeNamespaceError: _error_like(SubscribeNamespaceError),
    UnsubscribeNamespace: st.builds(UnsubscribeNamespace, prefixes),
}

any_message = st.one_of(list(STRATEGIES.values()))


# Tests --------------------------------------------------------------------------------


class ReferenceExampleTests(SynchronousTestCase):
    def test_examples_decode(self) -> None:
        for name, hex_text, expected in EXAMPLES:
            self.assertEqual(_decode_all(_hex(hex_text)), [expected], name)

    def test_examples_encode(self) -> None:
        for name, hex_text, message in EXAMPLES:
            self.assertEqual(encode_message(message), _hex(hex_text), name)

    def test_examples_cover_every_message_type(self) -> None:
        covered = {type(message) for _, _, message in EXAMPLES}
        missing = {cls.__name__ for cls in MESSAGE_TYPES.values()} - {
            cls.__name__ for cls in covered
        }
        # These have no hex example in section 12; the property tests cover them.
        self.assertEqual(
            missing,
            {"TrackStatusOk", "TrackStatusError", "SubscribeNamespaceError"},
        )

    def test_examples_as_one_stream(self) -> None:
        stream = b"".join(_hex(hex_text) for _, hex_text, _ in EXAMPLES)
        expected = [message for _, _, message in EXAMPLES]
        self.assertEqual(_decode_all(stream), expected)

    def test_every_split_point(self) -> None:
        """Each example split in two at every point decodes the same as one feed."""
        for name, hex_text, expected in EXAMPLES:
            data = _hex(hex_text)
            for cut in range(len(data) + 1):
                self.assertEqual(_decode_all(data, [cut]), [expected], (name, cut))

    def test_one_byte_at_a_time(self) -> None:
        stream = b"".join(_hex(hex_text) for _, hex_text, _ in EXAMPLES)
        expected = [message for _, _, message in EXAMPLES]
        self.assertEqual(_decode_all(stream, list(range(1, len(stream)))), expected)

    def test_capture_style_three_writes(self) -> None:
        """@moq/lite writes type, length and payload as three chunks (reference §3)."""
        data = _hex(EXAMPLES[4][1])
        self.assertEqual(_decode_all(data, [1, 3]), [EXAMPLES[4][2]])


class MessageTableTests(SynchronousTestCase):
    def test_message_types(self) -> None:
        expected: dict[int, type[ControlMessage]] = {
            0x20: ClientSetup,
            0x21: ServerSetup,
            0x10: GoAway,
            0x15: MaxRequestId,
            0x1A: RequestsBlocked,
            0x03: Subscribe,
            0x04: SubscribeOk,
            0x05: SubscribeError,
            0x02: SubscribeUpdate,
            0x0A: Unsubscribe,
            0x0B: PublishDone,
            0x1D: Publish,
            0x1E: PublishOk,
            0x1F: PublishError,
            0x16: Fetch,
            0x18: FetchOk,
            0x19: FetchError,
            0x17: FetchCancel,
            0x0D: TrackStatus,
            0x0E: TrackStatusOk,
            0x0F: TrackStatusError,
            0x06: PublishNamespace,
            0x07: PublishNamespaceOk,
            0x08: PublishNamespaceError,
            0x09: PublishNamespaceDone,
            0x0C: PublishNamespaceCancel,
            0x11: SubscribeNamespace,
            0x12: SubscribeNamespaceOk,
            0x13: SubscribeNamespaceError,
            0x14: UnsubscribeNamespace,
        }
        self.assertEqual(MESSAGE_TYPES, expected)
        for code, cls in MESSAGE_TYPES.items():
            self.assertEqual(cls.TYPE, code)
        self.assertEqual(set(STRATEGIES), set(expected.values()))

    def test_shared_layouts_are_distinct_classes(self) -> None:
        """Dispatch on the class must not confuse look-alike messages."""
        status = TrackStatus(0, (b"a",), b"t", 0, 0, True, FILTER_NEXT_GROUP_START)
        self.assertNotIsInstance(status, Subscribe)
        self.assertNotIsInstance(TrackStatusOk(0, 0, 0, 1, None), SubscribeOk)
        self.assertNotIsInstance(FetchError(0, 0, ""), SubscribeError)
        self.assertNotIsInstance(Unsubscribe(0), MaxRequestId)
        self.assertNotEqual(Unsubscribe(3), FetchCancel(3))

    def test_location_ordering(self) -> None:
        self.assertLess(Location(1, 9), Location(2, 0))
        self.assertLess(Location(2, 0), Location(2, 1))
        self.assertEqual(Location(3, 4), (3, 4))
        self.assertEqual(Location(3, 4).object, 4)

    def test_get_param(self) -> None:
        ps: list[Param] = [(7, b"first"), (2, 5), (7, b"second")]
        self.assertEqual(get_param(ps, 7), b"first")
        self.assertEqual(get_param(ps, 2), 5)
        self.assertIsNone(get_param(ps, 4))
        self.assertIsNone(get_param([], 2))

    def test_defaults(self) -> None:
        self.assertEqual(Subscribe(0, (b"a",), b"", 0, 0, True, 1).params, [])
        first = PublishNamespace(0, (b"a",))
        first.params.append((2, 1))
        self.assertEqual(PublishNamespace(0, (b"a",)).params, [])


class RoundTripTests(SynchronousTestCase):
    """Each message type: encode, decode (whole and split anywhere), re-encode."""

    def _check(self, message: ControlMessage, cut: int) -> None:
        data = encode_message(message)
        self.assertEqual(_decode_all(data), [message])
        cut = cut % (len(data) + 1)
        self.assertEqual(_decode_all(data, [cut]), [message])
        self.assertEqual(encode_message(_decode_all(data)[0]), data)


def _round_trip_test(cls: type[Any]) -> Callable[[RoundTripTests], None]:
    @_PROPERTY
    @given(message=STRATEGIES[cls], cut=st.integers(0, 10_000))
    def test(self: RoundTripTests, message: ControlMessage, cut: int) -> None:
        self.assertIs(type(message), cls)
        self._check(message, cut)

    test.__name__ = f"test_round_trip_{cls.__name__}"
    return test


for _cls in STRATEGIES:
    setattr(RoundTripTests, f"test_round_trip_{_cls.__name__}", _round_trip_test(_cls))


class StreamTests(SynchronousTestCase):
    @_PROPERTY
    @given(st.lists(any_message, min_size=1, max_size=6), st.lists(st.integers(0, 4000)))
    def test_many_messages_any_split(
        self, messages: list[ControlMessage], cuts: list[int]
    ) -> None:
        data = b"".join(encode_message(m) for m in messages)
        chunks = sorted({c % (len(data) + 1) for c in cuts})
        self.assertEqual(_decode_all(data, chunks), messages)

    def test_partial_message_waits(self) -> None:
        data = _hex(EXAMPLES[0][1]) + _hex(EXAMPLES[1][1])
        decoder = ControlStreamDecoder()
        self.assertEqual(decoder.feed(data[:-1]), [EXAMPLES[0][2]])
        self.assertEqual(decoder.feed(b""), [])
        self.assertEqual(decoder.feed(data[-1:]), [EXAMPLES[1][2]])

    def test_memoryview_input(self) -> None:
        data = _hex(EXAMPLES[4][1])
        self.assertEqual(ControlStreamDecoder().feed(memoryview(data)), [EXAMPLES[4][2]])

    def test_unknown_types(self) -> None:
        for msg_type in (0x00, 0x01, 0x1B, 0x1C, 0x22, 0x40, 0x41, 0x3FFF):
            with self.assertRaises(ProtocolViolation) as caught:
                ControlStreamDecoder().feed(encode_varint(msg_type))
            self.assertEqual(caught.exception.code, SessionErrorCode.PROTOCOL_VIOLATION)

    def test_message_too_long(self) -> None:
        decoder = ControlStreamDecoder(max_message_size=10)
        self.assertRaises(ProtocolViolation, decoder.feed, _frame(0x10, b"\x00" * 11)[:3])
        decoder = ControlStreamDecoder(max_message_size=12)
        self.assertEqual(decoder.feed(_frame(0x10, b"\x0b" + b"u" * 11)), [GoAway(b"u" * 11)])

    def test_trailing_bytes(self) -> None:
        self.assertRaises(ProtocolViolation, _decode_all, _frame(0x0A, b"\x00\x00"))

    def test_short_payload(self) -> None:
        with self.assertRaises(ProtocolViolation) as caught:
            _decode_all(_frame(0x04, _hex("00 01 00 01 01 07")))
        self.assertIn("truncated", caught.exception.reason)
        self.assertRaises(ProtocolViolation, _decode_all, _frame(0x0A, b""))

    def test_dead_after_error(self) -> None:
        decoder = ControlStreamDecoder()
        with self.assertRaises(ProtocolViolation) as first:
            decoder.feed(_hex("07 00 01 00 40 40"))
        with self.assertRaises(ProtocolViolation) as second:
            decoder.feed(_hex("07 00 01 00"))
        self.assertIs(second.exception, first.exception)

    def test_one_byte_at_a_time_is_flat(self) -> None:
        """Byte-by-byte feeding neither recurses nor loops: it works on a shallow stack."""
        stream = b"".join(_hex(hex_text) for _, hex_text, _ in EXAMPLES) * 20
        decoder = ControlStreamDecoder()
        messages: list[ControlMessage] = []
        with _shallow_stack():
            for i in range(len(stream)):
                messages += decoder.feed(stream[i : i + 1])
        self.assertEqual(len(messages), 20 * len(EXAMPLES))
        # A CLIENT_SETUP claiming 2**62-1 versions in 9000 bytes of 0xff.
        garbage = _frame(0x20, b"\xff" * 9000)
        decoder = ControlStreamDecoder()
        with self.assertRaises(ProtocolViolation) as caught, _shallow_stack():
            for i in range(len(garbage)):
                self.assertEqual(decoder.feed(garbage[i : i + 1]), [])
        self.assertIn("truncated", caught.exception.reason)


class ValidationTests(SynchronousTestCase):
    """Field checks on decode: each must be a ProtocolViolation with the right code."""

    def assertViolation(
        self, data: bytes, code: int = SessionErrorCode.PROTOCOL_VIOLATION
    ) -> None:
        with self.assertRaises(ProtocolViolation) as caught:
            _decode_all(data)
        self.assertEqual(caught.exception.code, code, caught.exception.reason)

    def _subscribe(self, order: int = 2, forward: int = 1, flt: bytes = b"\x02") -> bytes:
        payload = _hex("00 02 04 6c 69 76 65 04 64 65 6d 6f 05 76 69 64 65 6f 80")
        return _frame(0x03, payload + bytes([order, forward]) + flt + b"\x00")

    def test_valid_baseline(self) -> None:
        self.assertEqual(_decode_all(self._subscribe()), [EXAMPLES[4][2]])

    def test_group_order(self) -> None:
        self.assertViolation(self._subscribe(order=3))
        self.assertViolation(_frame(0x04, _hex("00 01 00 00 00 00")))  # 0 not allowed in OK
        self.assertViolation(_frame(0x04, _hex("00 01 00 03 00 00")))
        self.assertViolation(_frame(0x18, _hex("06 00 00 02 00 00")))
        self.assertViolation(_frame(0x1E, _hex("01 01 80 00 02 00")))
        self.assertViolation(_frame(0x16, _hex("08 80 03 02 00 02 00")))

    def test_flags(self) -> None:
        self.assertViolation(self._subscribe(forward=2))
        self.assertViolation(_frame(0x04, _hex("00 01 00 01 02 07 03 00")))  # content exists
        self.assertViolation(_frame(0x18, _hex("06 01 02 02 00 00")))  # end of track
        self.assertViolation(_frame(0x02, _hex("04 00 08 00 00 0a 02 00")))  # update forward

    def test_filter_and_fetch_types(self) -> None:
        for flt in (b"\x00", b"\x05", b"\x40\x02"[:1]):
            self.assertViolation(self._subscribe(flt=flt))
        self.assertViolation(_frame(0x1E, _hex("01 01 80 01 05 00")))
        for fetch_type in (0, 4):
            self.assertViolation(_frame(0x16, bytes([8, 0x80, 1, fetch_type, 0, 2, 0])))

    def test_namespace_field_count(self) -> None:
        self.assertViolation(_frame(0x09, b"\x00"))
        fields = b"".join(b"\x01a" for _ in range(33))
        self.assertViolation(_frame(0x09, b"\x21" + fields))
        fields32 = b"".join(b"\x01a" for _ in range(32))
        self.assertEqual(
            _decode_all(_frame(0x09, b"\x20" + fields32)), [PublishNamespaceDone((b"a",) * 32)]
        )
        self.assertViolation(_frame(0x06, b"\x02\x00\x00"))  # PUBLISH_NAMESPACE, 0 fields
        self.assertViolation(_frame(0x03, _hex("00 00 01 74 80 01 01 02 00")))  # SUBSCRIBE

    def test_an_empty_namespace_prefix_means_every_namespace(self) -> None:
        """A deviation from draft-14 that moq-dev's library relies on: 0 prefix fields."""
        self.assertEqual(_decode_all(_frame(0x11, b"\x02\x00\x00")), [SubscribeNamespace(2, ())])
        self.assertEqual(_decode_all(_frame(0x14, b"\x00")), [UnsubscribeNamespace(())])
        self.assertEqual(encode_message(SubscribeNamespace(2, ())), _frame(0x11, b"\x02\x00\x00"))
        self.assertEqual(encode_message(UnsubscribeNamespace(())), _frame(0x14, b"\x00"))
        fields = b"".join(b"\x01a" for _ in range(33))
        self.assertViolation(_frame(0x11, b"\x02\x21" + fields + b"\x00"))
        self.assertViolation(_frame(0x14, b"\x21" + fields))

    def test_full_track_name_limit(self) -> None:
        def subscribe(ns_size: int, name_size: int) -> bytes:
            message = Subscribe(0, (b"n" * 10,), b"t", 0, 0, True, FILTER_LARGEST_OBJECT)
            payload = bytearray(message.encode_payload())
            ns = encode_varint(ns_size) + b"n" * ns_size
            name = encode_varint(name_size) + b"t" * name_size
            return _frame(0x03, b"\x00\x01" + ns + name + bytes(payload[15:]))

        decoded = _decode_all(subscribe(2048, 2048))
        self.assertEqual(len(decoded), 1)
        self.assertViolation(subscribe(2048, 2049))
        self.assertViolation(_frame(0x09, b"\x01" + encode_varint(4097) + b"x" * 4097))
        with self.assertRaises(ValueError):
            Subscribe(0, (b"n" * 4000,), b"t" * 97, 0, 0, True, 1).encode_payload()

    def test_reason_phrase(self) -> None:
        self.assertViolation(_frame(0x05, b"\x00\x04" + encode_varint(1025) + b"x" * 1025))
        ok = _decode_all(_frame(0x05, b"\x00\x04" + encode_varint(1024) + b"x" * 1024))
        self.assertEqual(ok, [SubscribeError(0, 4, "x" * 1024)])
        self.assertViolation(_frame(0x05, b"\x00\x04\x02\xc3\x28"))
        self.assertEqual(
            _decode_all(_frame(0x05, b"\x00\x04\x02\xc3\xa9")), [SubscribeError(0, 4, "\u00e9")]
        )

    def test_goaway_uri_limit(self) -> None:
        self.assertViolation(_frame(0x10, encode_varint(8193) + b"u" * 8193))
        self.assertEqual(
            _decode_all(_frame(0x10, encode_varint(8192) + b"u" * 8192)), [GoAway(b"u" * 8192)]
        )

    def test_kvp_too_long(self) -> None:
        """An odd-type value longer than 65535 bytes is a KEY_VALUE_FORMATTING_ERROR."""
        self.assertViolation(
            _frame(0x21, _hex("01 01 07") + encode_varint(65536) + b"x" * 10),
            SessionErrorCode.KEY_VALUE_FORMATTING_ERROR,
        )
        with self.assertRaises(KeyValueFormattingError):
            _decode_all(_frame(0x06, _hex("00 01 01 61 01 05") + encode_varint(70_000)))

    def test_duplicate_parameters(self) -> None:
        dup_setup = ServerSetup(DRAFT_14, [(SETUP_MAX_REQUEST_ID, 1), (SETUP_MAX_REQUEST_ID, 2)])
        self.assertViolation(encode_message(dup_setup))
        # Repeatable and unknown parameters may repeat.
        tokens = ServerSetup(DRAFT_14, [(0x03, b"a"), (0x03, b"b"), (0x3E, 1), (0x3E, 1)])
        self.assertEqual(_decode_all(encode_message(tokens)), [tokens])
        timeout = (PARAM_DELIVERY_TIMEOUT, 5)
        dup_sub = Subscribe(0, (b"a",), b"t", 0, 0, True, 1, params=[timeout, timeout])
        self.assertViolation(encode_message(dup_sub))
        cache = (PARAM_MAX_CACHE_DURATION, 5)
        self.assertViolation(encode_message(FetchOk(0, 1, False, Location(0, 0), [cache, cache])))
        # DELIVERY_TIMEOUT is not defined for FETCH: ignored there, so repeats are tolerated.
        fetch = Fetch(0, 0, 0, 2, joining_request_id=0, joining_start=0, params=[timeout, timeout])
        self.assertEqual(_decode_all(encode_message(fetch)), [fetch])
        auth = (PARAM_AUTHORIZATION_TOKEN, b"tok")
        sub = Subscribe(0, (b"a",), b"t", 0, 0, True, 1, params=[auth, auth])
        self.assertEqual(_decode_all(encode_message(sub)), [sub])


class EncodeErrorTests(SynchronousTestCase):
    """Values that cannot be put on the wire are a programming error: ValueError."""

    def test_payload_too_long(self) -> None:
        big: list[Param] = [(0x3F, b"x" * 40_000), (0x3F, b"y" * 40_000)]
        self.assertRaises(ValueError, encode_message, PublishNamespace(0, (b"a",), big))

    def test_bad_fields(self) -> None:
        bad: list[ControlMessage] = [
            Subscribe(0, (), b"t", 0, 0, True, 1),
            Subscribe(0, (b"a",) * 33, b"t", 0, 0, True, 1),
            Subscribe(0, (b"a",), b"t", 0, 3, True, 1),
            Subscribe(0, (b"a",), b"t", 0, 0, True, 5),
            Subscribe(0, (b"a",), b"t", 0, 0, True, 1, start=Location(1, 1)),
            Subscribe(0, (b"a",), b"t", 0, 0, True, 3),
            Subscribe(0, (b"a",), b"t", 0, 0, True, 3, Location(0, 0), end_group=4),
            Subscribe(0, (b"a",), b"t", 0, 0, True, 4, Location(0, 0)),
            Subscribe(0, (b"a",), b"t", 256, 0, True, 1),
            Subscribe(-1, (b"a",), b"t", 0, 0, True, 1),
            SubscribeOk(0, 0, 0, 0, None),
            Publish(0, (b"a",), b"t", 0, 0, None, True),
            PublishOk(0, True, 0, 1, 4, Location(0, 0)),
            Fetch(0, 0, 0, FETCH_STANDALONE),
            Fetch(0, 0, 0, FETCH_RELATIVE_JOINING),
            Fetch(
                0,
                0,
                0,
                FETCH_ABSOLUTE_JOINING,
                (b"a",),
                b"t",
                joining_request_id=0,
                joining_start=0,
            ),
            Fetch(
                0,
                0,
                0,
                FETCH_STANDALONE,
                (b"a",),
                b"t",
                Location(0, 0),
                Location(0, 0),
                joining_start=3,
            ),
            Fetch(0, 0, 0, 7),
            SubscribeError(0, 0, "x" * 1025),
            GoAway(b"u" * 8193),
            ServerSetup(DRAFT_14, [(2, b"even types take varints")]),
            ServerSetup(DRAFT_14, [(7, 1)]),
            ServerSetup(DRAFT_14, [(7, b"x" * 65536)]),
            MaxRequestId(MAX_VARINT + 1),
        ]
        for message in bad:
            self.assertRaises(ValueError, encode_message, message)


def mutate(data: bytes, seed: int) -> bytes:
    """Truncate, change, insert or remove bytes of `data`, deterministically from `seed`."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        i = rng.randint(0, len(out))
        if op == 0:
            del out[i:]
        elif op == 1 and i < len(out):
            out[i] = rng.randrange(256)
        elif op == 2:
            out[i:i] = rng.randbytes(rng.randint(1, 4))
        else:
            del out[i : i + rng.randint(1, 4)]
    return bytes(out)


_VALID_ENCODINGS = [_hex(hex_text) for _, hex_text, _ in EXAMPLES]
_KNOWN_TYPES = sorted(MESSAGE_TYPES)


def fuzz_input(raw: bytes) -> tuple[bytes, int]:
    """Turn one drawn byte string into decoder input and a split point.

    One draw per example keeps hypothesis fast. The first byte picks the kind of
    input: the raw bytes themselves, a mutated valid encoding, or a framed
    message of a known type around a random payload (which reaches every
    payload decoder).
    """
    if len(raw) < 3:
        return raw, 0
    mode, pick, cut = raw[0] % 3, raw[1], raw[2]
    body = raw[3:]
    if mode == 0:
        data = body
    elif mode == 1:
        data = mutate(_VALID_ENCODINGS[pick % len(_VALID_ENCODINGS)], int.from_bytes(body, "big"))
    else:
        data = _frame(_KNOWN_TYPES[pick % len(_KNOWN_TYPES)], body)
    return data, cut % (len(data) + 1)


class FuzzTests(SynchronousTestCase):
    @_FUZZ
    @given(st.binary(max_size=64))
    def test_only_protocol_violations(self, raw: bytes) -> None:
        """Whatever the bytes, the decoder returns messages or raises ProtocolViolation."""
        data, cut = fuzz_input(raw)
        decoder = ControlStreamDecoder()
        try:
            messages = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        except ProtocolViolation as exc:
            self.assertIsInstance(exc.reason, str)
            self.assertIn(exc.code, (0x3, 0x6))
        else:
            for message in messages:
                self.assertIn(type(message), MESSAGE_TYPES.values())

    def test_fuzz_input_modes(self) -> None:
        """The three fuzz input kinds are what they claim to be."""
        self.assertEqual(fuzz_input(b"\x00\x00\x02abc"), (b"abc", 2))
        mutated, _ = fuzz_input(b"\x01\x00\x00\x07")
        self.assertNotEqual(mutated, _VALID_ENCODINGS[0])
        self.assertEqual(mutated, mutate(_VALID_ENCODINGS[0], 7))
        framed, cut = fuzz_input(b"\x02\x00\x09xy")
        self.assertEqual(framed, _frame(_KNOWN_TYPES[0], b"xy"))
        self.assertEqual(cut, 9 % (len(framed) + 1))
