"""Tests for moqrelay.wire.data (wire layer): subgroup and fetch streams, datagrams."""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import random
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.wire.control import Param
from moqrelay.wire.data import (
    STATUS_DOES_NOT_EXIST,
    STATUS_END_OF_GROUP,
    STATUS_END_OF_TRACK,
    STATUS_NORMAL,
    DataEvent,
    DataStreamDecoder,
    FetchHeader,
    FetchObject,
    ObjectDatagram,
    ObjectRecord,
    SubgroupHeader,
    decode_datagram,
    encode_datagram,
    encode_extensions,
    encode_fetch_header,
    encode_fetch_object,
    encode_subgroup_header,
    encode_subgroup_object,
    parse_extensions,
    subgroup_stream_type,
)
from moqrelay.wire.errors import KeyValueFormattingError, ProtocolViolation, SessionErrorCode
from moqrelay.wire.varint import MAX_VARINT, Reader, encode_varint

# Hypothesis caches (constants, unicode tables) go to the temp dir, not into the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "moqrelay-hypothesis")

_PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
_FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=10_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_SUBGROUP_TYPES = [*range(0x10, 0x16), *range(0x18, 0x1E)]
_STATUSES = [STATUS_NORMAL, STATUS_DOES_NOT_EXIST, STATUS_END_OF_GROUP, STATUS_END_OF_TRACK]


def _hex(text: str) -> bytes:
    return bytes.fromhex(" ".join(text.split()))


def _decode(data: bytes, cuts: list[int] | None = None, *, fin: bool = True) -> list[DataEvent]:
    decoder = DataStreamDecoder()
    events: list[DataEvent] = []
    pos = 0
    for cut in [*(cuts or []), len(data)]:
        events += decoder.feed(data[pos:cut])
        pos = cut
    if fin:
        decoder.end_of_stream()
    return events


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


# Reference section 12 --------------------------------------------------------------------

EX_12_8 = """
14 02 00 00 00
00 04 61 62 63 64
00 04 65 66 67 68
"""
EX_12_9 = """
19 01 07 80
00 06 3c 02 0f 02 61 62 02 68 69
00 00 02 79 6f
00 00 00 03
"""
EX_12_10 = "18 01 07 80  00 02 68 69  00 00 03"
EX_12_12_STREAM = "05 06   00 00 00 80 00 04 61 62 63 64"

STREAM_EXAMPLES: list[tuple[str, str, list[DataEvent]]] = [
    (
        "12.8",
        EX_12_8,
        [
            SubgroupHeader(0x14, 2, 0, 0, 0),
            ObjectRecord(0, b"abcd", STATUS_NORMAL, b""),
            ObjectRecord(1, b"efgh", STATUS_NORMAL, b""),
        ],
    ),
    (
        "12.9",
        EX_12_9,
        [
            SubgroupHeader(0x19, 1, 7, 0, 128),
            ObjectRecord(0, b"hi", STATUS_NORMAL, _hex("3c 02 0f 02 61 62")),
            ObjectRecord(1, b"yo", STATUS_NORMAL, b""),
            ObjectRecord(2, b"", STATUS_END_OF_GROUP, b""),
        ],
    ),
    (
        "12.10",
        EX_12_10,
        [
            SubgroupHeader(0x18, 1, 7, 0, 128),
            ObjectRecord(0, b"hi", STATUS_NORMAL, b""),
            ObjectRecord(1, b"", STATUS_END_OF_GROUP, b""),
        ],
    ),
    (
        "12.12",
        EX_12_12_STREAM,
        [FetchHeader(6), FetchObject(0, 0, 0, 128, b"", b"abcd", STATUS_NORMAL)],
    ),
]

DATAGRAM_EXAMPLES: list[tuple[str, ObjectDatagram]] = [
    ("04 01 05 80 78 79 7a", ObjectDatagram(1, 5, 0, 128, b"", b"xyz", None, False)),
    ("02 01 05 03 80 78 79 7a", ObjectDatagram(1, 5, 3, 128, b"", b"xyz", None, True)),
    ("20 01 05 04 80 03", ObjectDatagram(1, 5, 4, 128, b"", b"", STATUS_END_OF_GROUP, False)),
]


class ReferenceExampleTests(SynchronousTestCase):
    def test_streams_decode(self) -> None:
        for name, hex_text, expected in STREAM_EXAMPLES:
            self.assertEqual(_decode(_hex(hex_text)), expected, name)

    def test_extension_values_of_12_9(self) -> None:
        record = _decode(_hex(EX_12_9))[1]
        assert isinstance(record, ObjectRecord)
        self.assertEqual(parse_extensions(record.extensions), [(0x3C, 2), (0x0F, b"ab")])

    def test_12_8_encodes(self) -> None:
        data = encode_subgroup_header(2, 0, 0, 0, extensions=False, stream_type=0x14)
        data += encode_subgroup_object(0, b"abcd", extensions=None)
        data += encode_subgroup_object(0, b"efgh", extensions=None)
        self.assertEqual(data, _hex(EX_12_8))

    def test_12_9_encodes(self) -> None:
        data = encode_subgroup_header(1, 7, 0, 128, extensions=True, end_of_group=True)
        data += encode_subgroup_object(
            0, b"hi", extensions=encode_extensions([(0x3C, 2), (0x0F, b"ab")])
        )
        data += encode_subgroup_object(0, b"yo", extensions=b"")
        data += encode_subgroup_object(0, b"", extensions=b"", status=STATUS_END_OF_GROUP)
        self.assertEqual(data, _hex(EX_12_9))

    def test_12_10_encodes(self) -> None:
        data = encode_subgroup_header(1, 7, 0, 128, extensions=False, end_of_group=True)
        data += encode_subgroup_object(0, b"hi", extensions=None)
        data += encode_subgroup_object(0, b"", extensions=None, status=STATUS_END_OF_GROUP)
        self.assertEqual(data, _hex(EX_12_10))

    def test_12_12_fetch_stream_encodes(self) -> None:
        data = encode_fetch_header(6)
        data += encode_fetch_object(FetchObject(0, 0, 0, 128, b"", b"abcd", STATUS_NORMAL))
        self.assertEqual(data, _hex(EX_12_12_STREAM))

    def test_datagrams(self) -> None:
        for hex_text, expected in DATAGRAM_EXAMPLES:
            self.assertEqual(decode_datagram(_hex(hex_text)), expected, hex_text)
            self.assertEqual(encode_datagram(expected), _hex(hex_text), hex_text)
            self.assertEqual(decode_datagram(memoryview(_hex(hex_text))), expected)

    def test_every_split_point(self) -> None:
        for name, hex_text, expected in STREAM_EXAMPLES:
            data = _hex(hex_text)
            for cut in range(len(data) + 1):
                self.assertEqual(_decode(data, [cut]), expected, (name, cut))
            self.assertEqual(_decode(data, list(range(1, len(data)))), expected, name)

    def test_memoryview_feeds(self) -> None:
        data = memoryview(_hex(EX_12_9))
        decoder = DataStreamDecoder()
        events = decoder.feed(data[:7]) + decoder.feed(data[7:])
        self.assertEqual(events, STREAM_EXAMPLES[1][2])


class SubgroupHeaderTests(SynchronousTestCase):
    def test_type_properties(self) -> None:
        for stream_type in _SUBGROUP_TYPES:
            header = SubgroupHeader(stream_type, 0, 0, 0, 0)
            bits = stream_type - 0x10
            self.assertEqual(header.has_extensions, bool(bits & 1), hex(stream_type))
            self.assertEqual(header.end_of_group, stream_type >= 0x18, hex(stream_type))
            self.assertEqual(header.subgroup_mode, (bits >> 1) & 3, hex(stream_type))
        self.assertEqual(SubgroupHeader(0x12, 0, 0, None, 0).subgroup_mode, 1)
        self.assertEqual(SubgroupHeader(0x1D, 0, 0, 9, 0).subgroup_mode, 2)

    def test_stream_type_choice(self) -> None:
        table = {
            (0, False, False): 0x10,
            (0, True, False): 0x11,
            (0, False, True): 0x18,
            (0, True, True): 0x19,
            (5, False, False): 0x14,
            (5, True, False): 0x15,
            (5, False, True): 0x1C,
            (5, True, True): 0x1D,
        }
        for (subgroup, ext, eog), expected in table.items():
            self.assertEqual(
                subgroup_stream_type(subgroup_id=subgroup, extensions=ext, end_of_group=eog),
                expected,
            )
            # Never the first-object-id types, even when the subgroup id equals it.
            self.assertEqual(
                subgroup_stream_type(
                    subgroup_id=subgroup,
                    first_object_id=subgroup,
                    extensions=ext,
                    end_of_group=eog,
                ),
                expected,
            )

    def test_header_encoding(self) -> None:
        self.assertEqual(
            encode_subgroup_header(1, 7, 0, 128, extensions=False), _hex("10 01 07 80")
        )
        self.assertEqual(
            encode_subgroup_header(1, 7, 3, 128, extensions=True), _hex("15 01 07 03 80")
        )
        self.assertEqual(
            encode_subgroup_header(1, 7, 3, 128, extensions=False, stream_type=0x12),
            _hex("12 01 07 80"),
        )

    def test_forced_type_must_agree(self) -> None:
        bad = [
            dict(subgroup_id=0, extensions=False, stream_type=0x16),
            dict(subgroup_id=0, extensions=True, stream_type=0x10),
            dict(subgroup_id=0, extensions=False, end_of_group=True, stream_type=0x10),
            dict(subgroup_id=4, extensions=False, stream_type=0x10),
        ]
        for kwargs in bad:
            subgroup_id = kwargs.pop("subgroup_id")
            with self.assertRaises(ValueError):
                encode_subgroup_header(1, 2, subgroup_id, 0, **kwargs)  # type: ignore[arg-type]

    def test_unknown_stream_types(self) -> None:
        valid = {0x05, *_SUBGROUP_TYPES}
        for stream_type in range(0x100):
            if stream_type in valid:
                continue
            with self.assertRaises(ProtocolViolation) as caught:
                DataStreamDecoder().feed(encode_varint(stream_type))
            self.assertEqual(caught.exception.code, SessionErrorCode.PROTOCOL_VIOLATION)

    def test_first_object_id_mode(self) -> None:
        data = _hex("12 01 07 80") + encode_subgroup_object(5, b"a", extensions=None)
        data += encode_subgroup_object(0, b"b", extensions=None)
        decoder = DataStreamDecoder()
        header = decoder.feed(data[:4])
        self.assertEqual(header, [SubgroupHeader(0x12, 1, 7, None, 128)])
        objects = decoder.feed(data[4:])
        self.assertEqual(
            objects,
            [ObjectRecord(5, b"a", STATUS_NORMAL, b""), ObjectRecord(6, b"b", STATUS_NORMAL, b"")],
        )
        self.assertEqual(header[0], SubgroupHeader(0x12, 1, 7, 5, 128))
        self.assertIs(decoder.header, header[0])


class SubgroupObjectTests(SynchronousTestCase):
    def test_object_id_deltas(self) -> None:
        data = encode_subgroup_header(1, 0, 0, 0, extensions=False)
        for delta in (2, 0, 3, 0):
            data += encode_subgroup_object(delta, b"x", extensions=None)
        ids = [e.object_id for e in _decode(data) if isinstance(e, ObjectRecord)]
        self.assertEqual(ids, [2, 3, 7, 8])

    def test_object_id_overflow(self) -> None:
        data = encode_subgroup_header(1, 0, 0, 0, extensions=False)
        data += encode_subgroup_object(MAX_VARINT, b"x", extensions=None)
        data += encode_subgroup_object(0, b"x", extensions=None)
        self.assertRaises(ProtocolViolation, _decode, data)

    def test_empty_normal_object(self) -> None:
        self.assertEqual(encode_subgroup_object(0, b"", extensions=None), b"\x00\x00\x00")
        self.assertEqual(encode_subgroup_object(1, b"", extensions=b""), b"\x01\x00\x00\x00")
        data = encode_subgroup_header(1, 0, 0, 0, extensions=False) + b"\x00\x00\x00"
        self.assertEqual(_decode(data)[1], ObjectRecord(0, b"", STATUS_NORMAL, b""))

    def test_statuses(self) -> None:
        header = encode_subgroup_header(1, 0, 0, 0, extensions=False)
        for status in _STATUSES:
            events = _decode(header + b"\x00\x00" + encode_varint(status))
            self.assertEqual(events[1], ObjectRecord(0, b"", status, b""))
        for status in (2, 5, 0x40):
            with self.assertRaises(ProtocolViolation):
                _decode(header + b"\x00\x00" + encode_varint(status))

    def test_does_not_exist_carries_no_extensions(self) -> None:
        header = encode_subgroup_header(1, 0, 0, 0, extensions=True)
        ok = header + encode_subgroup_object(0, b"", extensions=b"", status=STATUS_DOES_NOT_EXIST)
        self.assertEqual(_decode(ok)[1], ObjectRecord(0, b"", STATUS_DOES_NOT_EXIST, b""))
        with self.assertRaises(ProtocolViolation):
            _decode(header + _hex("00 02 3c 01 00 01"))
        with self.assertRaises(ValueError):
            encode_subgroup_object(0, b"", extensions=b"\x3c\x01", status=STATUS_DOES_NOT_EXIST)

    def test_malformed_extensions(self) -> None:
        header = encode_subgroup_header(1, 0, 0, 0, extensions=True)
        for block in (_hex("3c"), _hex("0f 05 61"), _hex("3c 40")):
            data = header + encode_varint(0) + encode_varint(len(block)) + block + _hex("01 61")
            with self.assertRaises(KeyValueFormattingError):
                _decode(data)

    def test_encode_errors(self) -> None:
        self.assertRaises(
            ValueError,
            encode_subgroup_object,
            0,
            b"x",
            extensions=None,
            status=STATUS_END_OF_GROUP,
        )
        self.assertRaises(ValueError, encode_subgroup_object, 0, b"", extensions=None, status=2)

    def test_object_too_large(self) -> None:
        header = encode_subgroup_header(1, 0, 0, 0, extensions=True)
        decoder = DataStreamDecoder(max_object_size=100)
        decoder.feed(header)
        with self.assertRaises(ProtocolViolation):
            decoder.feed(_hex("00 00") + encode_varint(101))
        decoder = DataStreamDecoder(max_object_size=100)
        decoder.feed(header)
        with self.assertRaises(ProtocolViolation):
            decoder.feed(_hex("00") + encode_varint(101))
        decoder = DataStreamDecoder(max_object_size=100)
        events = decoder.feed(header + _hex("00 00") + encode_varint(100) + b"z" * 100)
        self.assertEqual(events[1], ObjectRecord(0, b"z" * 100, STATUS_NORMAL, b""))


class StreamEndTests(SynchronousTestCase):
    def test_clean_ends(self) -> None:
        for data in (b"", _hex("10 01 07 80"), _hex(EX_12_10), _hex("05 06")):
            decoder = DataStreamDecoder()
            decoder.feed(data)
            decoder.end_of_stream()

    def test_fin_inside_header_or_object(self) -> None:
        for data in (_hex("10 01 07"), _hex("40"), _hex("05"), _hex(EX_12_10)[:-1]):
            decoder = DataStreamDecoder()
            decoder.feed(data)
            with self.assertRaises(ProtocolViolation) as caught:
                decoder.end_of_stream()
            self.assertEqual(caught.exception.code, SessionErrorCode.PROTOCOL_VIOLATION)

    def test_dead_after_error(self) -> None:
        decoder = DataStreamDecoder()
        with self.assertRaises(ProtocolViolation) as first:
            decoder.feed(_hex("16"))
        with self.assertRaises(ProtocolViolation) as again:
            decoder.feed(_hex("10 01 07 80"))
        self.assertIs(again.exception, first.exception)
        with self.assertRaises(ProtocolViolation) as at_fin:
            decoder.end_of_stream()
        self.assertIs(at_fin.exception, first.exception)


class _CountingDecoder(DataStreamDecoder):
    """Counts parse attempts, to show that waiting for a payload does not re-parse."""

    attempts = 0

    def _parse_unit(self, r: Reader) -> DataEvent:
        self.attempts += 1
        return super()._parse_unit(r)


class LargeObjectTests(SynchronousTestCase):
    def test_large_object_in_small_pieces(self) -> None:
        """A 16 KiB object fed in 1 KiB pieces: parsed once the last piece arrives."""
        payload = bytes(range(256)) * 64
        data = encode_subgroup_header(1, 2, 0, 3, extensions=False)
        data += encode_subgroup_object(0, payload, extensions=None)
        decoder = _CountingDecoder()
        events: list[DataEvent] = []
        for pos in range(0, len(data), 1024):
            events += decoder.feed(data[pos : pos + 1024])
        decoder.end_of_stream()
        self.assertEqual(events[1:], [ObjectRecord(0, payload, STATUS_NORMAL, b"")])
        # Header, first object try, completed object: the 15 middle pieces parse nothing.
        self.assertEqual(decoder.attempts, 3)

    def test_many_objects_one_buffer(self) -> None:
        data = bytearray(encode_subgroup_header(1, 2, 0, 3, extensions=True))
        for i in range(500):
            data += encode_subgroup_object(0, bytes([i % 256]) * 100, extensions=b"")
        events = _decode(bytes(data))
        self.assertEqual(len(events), 501)
        self.assertEqual(events[-1], ObjectRecord(499, bytes([499 % 256]) * 100, 0, b""))

    def test_buffer_compaction(self) -> None:
        """Many objects across uneven pieces: results identical to one feed."""
        data = bytearray(encode_fetch_header(3))
        for i in range(300):
            data += encode_fetch_object(FetchObject(i, 0, i, 1, b"", b"p" * (i * 7 % 1000), 0))
        data += encode_fetch_object(FetchObject(1, 0, 0, 1, b"", b"", STATUS_END_OF_TRACK))
        whole = _decode(bytes(data))
        rng = random.Random(5)
        cuts = sorted(rng.sample(range(1, len(data)), 400))
        self.assertEqual(_decode(bytes(data), cuts), whole)
        self.assertEqual(len(whole), 302)

    def test_one_byte_at_a_time_is_flat(self) -> None:
        """Byte-by-byte feeding neither recurses nor loops: it works on a shallow stack."""
        stream = bytearray(encode_subgroup_header(1, 2, 0, 3, extensions=True))
        for i in range(200):
            stream += encode_subgroup_object(0, b"abc" * i, extensions=b"\x3c\x01")
        decoder = DataStreamDecoder()
        events: list[DataEvent] = []
        with _shallow_stack():
            for i in range(len(stream)):
                events += decoder.feed(stream[i : i + 1])
            decoder.end_of_stream()
        self.assertEqual(len(events), 201)
        garbage = encode_subgroup_header(1, 2, 0, 3, extensions=False) + b"\x00\x7f\xff" + b"\xaa"
        decoder = DataStreamDecoder(max_object_size=100_000)
        with _shallow_stack():
            for i in range(len(garbage)):
                decoder.feed(garbage[i : i + 1])
            for _ in range(5_000):
                self.assertEqual(decoder.feed(b"\xaa"), [])
            with self.assertRaises(ProtocolViolation):
                decoder.end_of_stream()


class DatagramTests(SynchronousTestCase):
    def test_all_types(self) -> None:
        for datagram_type in range(8):
            d = ObjectDatagram(
                1,
                2,
                0 if datagram_type & 4 else 9,
                3,
                b"\x3c\x01" if datagram_type & 1 else b"",
                b"pay",
                None,
                bool(datagram_type & 2),
            )
            data = encode_datagram(d)
            self.assertEqual(data[0], datagram_type)
            self.assertEqual(decode_datagram(data), d)
        for datagram_type, ext in ((0x20, b""), (0x21, b"\x3c\x01")):
            d = ObjectDatagram(1, 2, 0, 3, ext, b"", STATUS_END_OF_TRACK, False)
            data = encode_datagram(d)
            self.assertEqual(data[0], datagram_type)
            self.assertEqual(decode_datagram(data), d)

    def test_object_id_zero_in_explicit_form(self) -> None:
        """Type 0x00 with object id 0 is valid input (the encoder just prefers 0x04)."""
        self.assertEqual(
            decode_datagram(_hex("00 01 05 00 80 78")),
            ObjectDatagram(1, 5, 0, 128, b"", b"x", None, False),
        )

    def test_empty_payload(self) -> None:
        d = ObjectDatagram(1, 5, 2, 0, b"", b"", None, False)
        self.assertEqual(decode_datagram(encode_datagram(d)), d)

    def test_unknown_types(self) -> None:
        for datagram_type in (*range(0x08, 0x20), 0x22, 0x23, 0x24, 0x40):
            with self.assertRaises(ProtocolViolation):
                decode_datagram(encode_varint(datagram_type) + _hex("01 05 04 80 03"))

    def test_violations(self) -> None:
        bad = [
            "",
            "04 01",
            "01 01 05 03 80 00 78",  # ext bit with 0 extension bytes
            "01 01 05 03 80 05 3c 01",  # extensions run past the end
            "20 01 05 04 80 02",  # undefined status
            "20 01 05 04 80 03 00",  # bytes after the status
            "20 01 05 04 80",  # no status
            "21 01 05 04 80 02 3c 01 01",  # Does Not Exist with extensions
        ]
        for hex_text in bad:
            with self.assertRaises(ProtocolViolation):
                decode_datagram(_hex(hex_text))
        with self.assertRaises(KeyValueFormattingError):
            decode_datagram(_hex("05 01 05 80 01 0f 78"))

    def test_encode_errors(self) -> None:
        bad = [
            ObjectDatagram(1, 5, 4, 128, b"", b"x", STATUS_END_OF_GROUP, False),
            ObjectDatagram(1, 5, 4, 128, b"", b"", STATUS_END_OF_GROUP, True),
            ObjectDatagram(1, 5, 4, 128, b"\x3c\x01", b"", STATUS_DOES_NOT_EXIST, False),
            ObjectDatagram(1, 5, 4, 128, b"", b"", 7, False),
        ]
        for d in bad:
            self.assertRaises(ValueError, encode_datagram, d)


class ExtensionTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        params: list[Param] = [(0x3C, 2), (0x0F, b"ab"), (0x0B, b""), (0x3E, MAX_VARINT)]
        block = encode_extensions(params)
        self.assertEqual(parse_extensions(block), params)
        self.assertEqual(parse_extensions(b""), [])
        self.assertEqual(encode_extensions([]), b"")

    def test_malformed(self) -> None:
        for block in (_hex("3c"), _hex("3c 40"), _hex("0f"), _hex("0f 03 61 62")):
            with self.assertRaises(KeyValueFormattingError) as caught:
                parse_extensions(block)
            self.assertEqual(caught.exception.code, SessionErrorCode.KEY_VALUE_FORMATTING_ERROR)
        with self.assertRaises(KeyValueFormattingError):
            parse_extensions(_hex("0f") + encode_varint(65536) + b"x" * 65536)


# Property tests --------------------------------------------------------------------------

varints = st.one_of(st.integers(0, 63), st.integers(0, 2**14), st.integers(0, MAX_VARINT))
uint8s = st.integers(0, 255)
kvps: st.SearchStrategy[Param] = st.one_of(st.integers(0, 64), varints).flatmap(
    lambda t: st.tuples(st.just(t), varints if t % 2 == 0 else st.binary(max_size=8))
)
extension_blocks = st.lists(kvps, max_size=3).map(encode_extensions)
payloads = st.binary(max_size=64)


@st.composite
def object_bodies(draw: st.DrawFn, with_extensions: bool) -> tuple[bytes, int, bytes]:
    """(payload, status, extensions) that can legally go together."""
    status = draw(st.sampled_from(_STATUSES))
    payload = draw(payloads) if status == STATUS_NORMAL else b""
    ext = b""
    if with_extensions and status != STATUS_DOES_NOT_EXIST:
        ext = draw(extension_blocks)
    return payload, status, ext


@st.composite
def subgroup_streams(draw: st.DrawFn) -> tuple[bytes, list[DataEvent]]:
    """An encoded subgroup stream (any of the 12 types) and the events it decodes to."""
    stream_type = draw(st.sampled_from(_SUBGROUP_TYPES))
    bits = stream_type - 0x10
    ext = bool(bits & 1)
    mode = (bits >> 1) & 3
    alias, group, priority = draw(varints), draw(varints), draw(uint8s)
    deltas = draw(st.lists(st.integers(0, 1000), max_size=6))
    bodies = [draw(object_bodies(ext)) for _ in deltas]
    ids: list[int] = []
    for delta in deltas:
        ids.append(delta if not ids else ids[-1] + delta + 1)
    subgroup: int | None = 0
    if mode == 2:
        subgroup = draw(varints)
    elif mode == 1:
        subgroup = ids[0] if ids else None
    data = encode_subgroup_header(
        alias,
        group,
        subgroup or 0,
        priority,
        extensions=ext,
        end_of_group=bool(bits & 8),
        stream_type=stream_type,
    )
    events: list[DataEvent] = [SubgroupHeader(stream_type, alias, group, subgroup, priority)]
    for delta, object_id, (payload, status, extensions) in zip(deltas, ids, bodies, strict=True):
        data += encode_subgroup_object(
            delta, payload, extensions=extensions if ext else None, status=status
        )
        events.append(ObjectRecord(object_id, payload, status, extensions))
    return data, events


fetch_objects = st.builds(
    lambda g, s, o, p, body: FetchObject(g, s, o, p, body[2], body[0], body[1]),
    varints,
    varints,
    varints,
    uint8s,
    object_bodies(True),
)


@st.composite
def datagrams(draw: st.DrawFn) -> ObjectDatagram:
    status = draw(st.none() | st.sampled_from(_STATUSES))
    payload = draw(payloads) if status is None else b""
    ext = b"" if status == STATUS_DOES_NOT_EXIST else draw(extension_blocks)
    end_of_group = draw(st.booleans()) if status is None else False
    object_id = draw(st.just(0) | varints)
    return ObjectDatagram(
        draw(varints), draw(varints), object_id, draw(uint8s), ext, payload, status, end_of_group
    )


class RoundTripTests(SynchronousTestCase):
    @_PROPERTY
    @given(subgroup_streams(), st.lists(st.integers(0, 4000), max_size=4))
    def test_subgroup_streams(
        self, stream: tuple[bytes, list[DataEvent]], cuts: list[int]
    ) -> None:
        data, expected = stream
        self.assertEqual(_decode(data), expected)
        self.assertEqual(_decode(data, sorted({c % (len(data) + 1) for c in cuts})), expected)

    @_PROPERTY
    @given(varints, st.lists(fetch_objects, max_size=5), st.integers(0, 4000))
    def test_fetch_streams(self, request_id: int, objects: list[FetchObject], cut: int) -> None:
        data = encode_fetch_header(request_id) + b"".join(map(encode_fetch_object, objects))
        expected = [FetchHeader(request_id), *objects]
        self.assertEqual(_decode(data), expected)
        self.assertEqual(_decode(data, [cut % (len(data) + 1)]), expected)

    @_PROPERTY
    @given(datagrams())
    def test_datagrams(self, d: ObjectDatagram) -> None:
        data = encode_datagram(d)
        self.assertEqual(decode_datagram(data), d)
        self.assertEqual(encode_datagram(decode_datagram(data)), data)

    @_PROPERTY
    @given(st.lists(kvps, max_size=6))
    def test_extensions(self, params: list[Param]) -> None:
        self.assertEqual(parse_extensions(encode_extensions(params)), params)


# Fuzzing -------------------------------------------------------------------------------

_VALID_STREAMS = [_hex(hex_text) for _, hex_text, _ in STREAM_EXAMPLES]
_VALID_DATAGRAMS = [_hex(hex_text) for hex_text, _ in DATAGRAM_EXAMPLES]
_STREAM_PREFIXES = [
    encode_subgroup_header(1, 2, 3, 4, extensions=True),
    encode_subgroup_header(1, 2, 0, 4, extensions=False),
    _hex("12 01 02 03"),
    encode_fetch_header(7),
]


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


def fuzz_input(raw: bytes, valid: list[bytes], prefixes: list[bytes]) -> tuple[bytes, int]:
    """One drawn byte string -> input and split point.

    The first byte picks raw bytes, a mutated valid encoding, or a valid prefix + raw bytes.
    """
    if len(raw) < 3:
        return raw, 0
    mode, pick, cut = raw[0] % 3, raw[1], raw[2]
    body = raw[3:]
    if mode == 0:
        data = body
    elif mode == 1:
        data = mutate(valid[pick % len(valid)], int.from_bytes(body, "big"))
    else:
        data = prefixes[pick % len(prefixes)] + body
    return data, cut % (len(data) + 1)


class FuzzTests(SynchronousTestCase):
    @_FUZZ
    @given(st.binary(max_size=64))
    def test_stream_decoder(self, raw: bytes) -> None:
        """Any bytes, split anywhere, then FIN: events or ProtocolViolation, nothing else."""
        data, cut = fuzz_input(raw, _VALID_STREAMS, _STREAM_PREFIXES)
        decoder = DataStreamDecoder(max_object_size=1 << 20)
        try:
            events = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
            decoder.end_of_stream()
        except ProtocolViolation as exc:
            self.assertIn(exc.code, (0x3, 0x6))
        else:
            for event in events:
                self.assertIsInstance(
                    event, (SubgroupHeader, FetchHeader, ObjectRecord, FetchObject)
                )

    @_FUZZ
    @given(st.binary(max_size=64))
    def test_datagram_decoder(self, raw: bytes) -> None:
        data, _ = fuzz_input(raw, _VALID_DATAGRAMS, [b"\x01\x01\x05", b"\x20", b"\x21\x00\x00"])
        try:
            d = decode_datagram(data)
        except ProtocolViolation as exc:
            self.assertIn(exc.code, (0x3, 0x6))
        else:
            self.assertIsInstance(d, ObjectDatagram)

    def test_fuzz_input_modes(self) -> None:
        self.assertEqual(fuzz_input(b"\x00\x00\x02abc", [b"v"], [b"p"]), (b"abc", 2))
        self.assertEqual(
            fuzz_input(b"\x01\x00\x00\x07", [b"valid"], [b"p"])[0], mutate(b"valid", 7)
        )
        self.assertEqual(fuzz_input(b"\x02\x00\x01xy", [b"v"], [b"pre"]), (b"prexy", 1))
