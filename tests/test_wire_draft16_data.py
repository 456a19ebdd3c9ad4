"""Tests for moqrelay.wire.draft16_data (wire layer): the draft-16 data plane.

Section numbers are those of draft-ietf-moq-transport-16.
"""

# mypy: disallow-untyped-calls=False
# (twisted.trial's assertion methods are not annotated.)

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.wire.data import (
    STATUS_END_OF_GROUP,
    STATUS_END_OF_TRACK,
    STATUS_NORMAL,
    FetchHeader,
    ObjectDatagram,
    ObjectRecord,
    SubgroupHeader,
)
from moqrelay.wire.draft16_data import (
    DataEvent16,
    DataStreamDecoder16,
    FetchObject16,
    FetchRangeEnd,
    FetchStreamEncoder16,
    decode_datagram,
    encode_datagram,
    encode_extensions,
    encode_subgroup_header,
    encode_subgroup_object,
    parse_extensions,
)
from moqrelay.wire.errors import ProtocolViolation, SessionErrorCode

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "moqrelay-hypothesis")

PROTOCOL_VIOLATION = SessionErrorCode.PROTOCOL_VIOLATION


def feed_bytewise(data: bytes, decoder: DataStreamDecoder16 | None = None) -> list[DataEvent16]:
    decoder = decoder or DataStreamDecoder16()
    events: list[DataEvent16] = []
    for index in range(len(data)):
        events += decoder.feed(data[index : index + 1])
    decoder.end_of_stream()
    return events


# §10.5, second example: Extension Headers Length 33 = type 4 with an 8-byte varint
# value (9 bytes) + type 77 as delta 73 (2 bytes), length (1 byte), 21-byte value.
TRACE = b"traceID:1234567890abc"
EXAMPLE_EXTENSIONS = bytes.fromhex("04c00000008257dcd3404915") + TRACE


class ExampleTests(SynchronousTestCase):
    """The two streams of §10.5 (Examples), byte for byte."""

    def test_subgroup_with_priority(self) -> None:
        wire = bytes.fromhex("14020000000004") + b"abcd" + b"\x00\x04efgh"
        self.assertEqual(
            feed_bytewise(wire),
            [
                SubgroupHeader(0x14, 2, 0, 0, 0),
                ObjectRecord(0, b"abcd", STATUS_NORMAL, b""),
                ObjectRecord(1, b"efgh", STATUS_NORMAL, b""),
            ],
        )
        objects = encode_subgroup_object(0, b"abcd", extensions=None)
        objects += encode_subgroup_object(0, b"efgh", extensions=None)
        self.assertEqual(objects, wire[5:])

    def test_subgroup_with_default_priority_and_extensions(self) -> None:
        wire = (
            bytes.fromhex("350200000021")
            + EXAMPLE_EXTENSIONS
            + b"\x04abcd"
            + bytes.fromhex("000004")
            + b"efgh"
        )
        decoder = DataStreamDecoder16(default_priority=lambda alias: 7 if alias == 2 else 0)
        self.assertEqual(
            feed_bytewise(wire, decoder),
            [
                SubgroupHeader(0x35, 2, 0, 0, 7),
                ObjectRecord(0, b"abcd", STATUS_NORMAL, EXAMPLE_EXTENSIONS),
                ObjectRecord(1, b"efgh", STATUS_NORMAL, b""),
            ],
        )
        self.assertEqual(parse_extensions(EXAMPLE_EXTENSIONS), [(4, 2186796243), (77, TRACE)])
        self.assertEqual(encode_extensions([(77, TRACE), (4, 2186796243)]), EXAMPLE_EXTENSIONS)
        objects = encode_subgroup_object(0, b"abcd", extensions=EXAMPLE_EXTENSIONS)
        objects += encode_subgroup_object(0, b"efgh", extensions=b"")
        self.assertEqual(objects, wire[4:])


class SubgroupHeaderTests(SynchronousTestCase):
    """§10.4.2: DEFAULT_PRIORITY (0x20) leaves the priority byte out."""

    def test_encode(self) -> None:
        self.assertEqual(encode_subgroup_header(2, 5, 0, 9, extensions=False).hex(), "10020509")
        self.assertEqual(
            encode_subgroup_header(2, 5, 3, 9, extensions=True, default_priority=9).hex(),
            "35020503",
        )
        self.assertEqual(
            encode_subgroup_header(
                2, 5, 0, 9, extensions=False, end_of_group=True, default_priority=128
            ).hex(),
            "18020509",
        )

    def test_invalid_types(self) -> None:
        # 0b11 subgroup-id mode (0x16, 0x1E, 0x36, 0x3E) and types outside 0b00X1XXXX.
        for stream_type in (0x16, 0x17, 0x1E, 0x36, 0x3F, 0x20, 0x40, 0x0F):
            with self.assertRaises(ProtocolViolation, msg=hex(stream_type)) as caught:
                DataStreamDecoder16().feed(bytes([stream_type, 1, 1, 1, 1]))
            self.assertEqual(caught.exception.code, PROTOCOL_VIOLATION)

    def test_every_valid_type(self) -> None:
        for stream_type in [*range(0x10, 0x16), *range(0x18, 0x1E)]:
            for default_bit in (0, 0x20):
                wire = bytes([stream_type | default_bit, 1, 2, 3, 4])
                events = DataStreamDecoder16().feed(wire)
                header = events[0]
                assert isinstance(header, SubgroupHeader)
                self.assertEqual(header.stream_type, stream_type | default_bit)


class SubgroupObjectTests(SynchronousTestCase):
    """§10.2.1.1: statuses are 0x0, 0x3, 0x4; a status object has no extensions."""

    def test_status_objects(self) -> None:
        wire = bytes.fromhex("10010080") + bytes.fromhex("000003000004")
        self.assertEqual(
            DataStreamDecoder16().feed(wire)[1:],
            [
                ObjectRecord(0, b"", STATUS_END_OF_GROUP, b""),
                ObjectRecord(1, b"", STATUS_END_OF_TRACK, b""),
            ],
        )
        self.assertEqual(
            encode_subgroup_object(0, b"", extensions=None, status=STATUS_END_OF_GROUP),
            bytes.fromhex("000003"),
        )

    def test_malformed(self) -> None:
        header = bytes.fromhex("10010080")
        ext_header = bytes.fromhex("11010080")
        cases = [
            ("does-not-exist status is gone", header + bytes.fromhex("000001")),
            ("status 2", header + bytes.fromhex("000002")),
            ("extensions on a status", ext_header + bytes.fromhex("000204000003")),
            ("bad extension block", ext_header + bytes.fromhex("000201050161")),
        ]
        for name, wire in cases:
            with self.assertRaises(ProtocolViolation, msg=name) as caught:
                DataStreamDecoder16().feed(wire)
            self.assertEqual(caught.exception.code, PROTOCOL_VIOLATION, name)

    def test_fin_inside_an_object(self) -> None:
        decoder = DataStreamDecoder16()
        decoder.feed(bytes.fromhex("100100800005") + b"abc")
        self.assertRaises(ProtocolViolation, decoder.end_of_stream)
        self.assertRaises(ProtocolViolation, decoder.feed, b"de")

    def test_encoder_refuses_removed_status(self) -> None:
        self.assertRaises(ValueError, encode_subgroup_object, 0, b"", extensions=None, status=1)


class FetchTests(SynchronousTestCase):
    """§10.4.4: Serialization Flags, fields repeated from the prior object left out."""

    ENTRIES: list[FetchObject16 | FetchRangeEnd] = [
        FetchObject16(0, 0, 0, 0x80, b"", b"a"),  # flags 0x1C: group, object, priority
        FetchObject16(0, 0, 1, 0x80, b"", b"b"),  # flags 0x00: all from the prior object
        FetchObject16(1, 1, 0, 0x80, b"", b"c"),  # 0x0E: subgroup prior+1, object, group
        FetchObject16(1, None, 1, 0x80, b"", b"d"),  # 0x40: datagram preference
        FetchRangeEnd(3, 0, unknown=True),  # 0x10C: End of Unknown Range, no length
        # 0x20: extensions; group and object from the marker, priority from object "d".
        FetchObject16(3, 0, 1, 0x80, b"\x02\x05", b"e"),
    ]
    WIRE = bytes.fromhex(
        "0507"
        "1c000080" + "0161"
        "00" + "0162"
        "0e0100" + "0163"
        "4040" + "0164"
        "410c0300"
        "20" + "020205" + "0165"
    )

    def test_encode(self) -> None:
        encoder = FetchStreamEncoder16()
        wire = encoder.header(7)
        for entry in self.ENTRIES:
            if isinstance(entry, FetchRangeEnd):
                wire += encoder.encode_range_end(entry)
            else:
                wire += encoder.encode(entry)
        self.assertEqual(wire.hex(), self.WIRE.hex())

    def test_decode(self) -> None:
        self.assertEqual(feed_bytewise(self.WIRE), [FetchHeader(7), *self.ENTRIES])

    def test_datagram_counts_as_subgroup_zero(self) -> None:
        # A datagram-preference object, then "prior subgroup + 1": subgroup 1.
        wire = bytes.fromhex("0507405c000080000200")
        self.assertEqual(
            feed_bytewise(wire)[1:],
            [FetchObject16(0, None, 0, 0x80, b"", b""), FetchObject16(0, 1, 1, 0x80, b"", b"")],
        )

    def test_malformed(self) -> None:
        cases = [
            ("first object refers to the prior", "05070000"),
            ("first object without a group", "050714008000"),
            ("unknown flags", "0507408000"),
            ("priority after only a marker", "0507408c00000c000100"),
            ("subgroup after only a marker", "0507408c00001d00018000"),
        ]
        for name, hex_wire in cases:
            with self.assertRaises(ProtocolViolation, msg=name) as caught:
                DataStreamDecoder16().feed(bytes.fromhex(hex_wire))
            self.assertEqual(caught.exception.code, PROTOCOL_VIOLATION, name)


class DatagramTests(SynchronousTestCase):
    """§10.3.1: OBJECT_DATAGRAM types 0x00-0x0F and the status types 0x20-0x2D."""

    def test_examples(self) -> None:
        cases = [
            # 0x0C: ZERO_OBJECT_ID | DEFAULT_PRIORITY, payload to the end.
            ("0c0105" + b"hi".hex(), ObjectDatagram(1, 5, 0, 128, b"", b"hi", None, False), 128),
            # 0x02: END_OF_GROUP with an object id and a priority.
            ("0201050709" + b"x".hex(), ObjectDatagram(1, 5, 7, 9, b"", b"x", None, True), None),
            # 0x24: a status datagram for object 0 (new in draft-15).
            ("2401058003", ObjectDatagram(1, 5, 0, 128, b"", b"", 3, False), None),
            # 0x21: an explicit Normal status with extensions (only Normal may have them).
            ("210105018002040000", ObjectDatagram(1, 5, 1, 128, b"\x04\x00", b"", 0, False), None),
        ]
        for wire, datagram, default in cases:
            self.assertEqual(decode_datagram(bytes.fromhex(wire)), datagram, wire)
            self.assertEqual(encode_datagram(datagram, default_priority=default).hex(), wire, wire)

    def test_default_priority_of_the_track(self) -> None:
        datagram = decode_datagram(bytes.fromhex("0c0105"), lambda alias: alias + 40)
        self.assertEqual(datagram.publisher_priority, 41)

    def test_malformed(self) -> None:
        for wire in (
            "220105800003",  # STATUS with END_OF_GROUP
            "2f0105",
            "100105",  # outside 0b00X0XXXX
            "400105",
            "010105800000",  # EXTENSIONS bit with 0 extension bytes
            "200105018001",  # status 1 is gone
            "20010501800300",  # bytes after the status
            "000105",  # truncated
        ):
            with self.assertRaises(ProtocolViolation, msg=wire) as caught:
                decode_datagram(bytes.fromhex(wire))
            self.assertEqual(caught.exception.code, PROTOCOL_VIOLATION, wire)


# Round trips ------------------------------------------------------------------------------

varints = st.integers(0, 2**62 - 1)
small = st.integers(0, 2**20)
priorities = st.integers(0, 255)
extension_blocks = st.lists(
    st.tuples(st.integers(0, 100), varints, st.binary(max_size=5)), max_size=3
).map(lambda kvps: encode_extensions([(t, b if t & 1 else v) for t, v, b in kvps]))


@st.composite
def subgroup_streams(draw: st.DrawFn) -> tuple[bytes, list[DataEvent16], list[int]]:
    extensions = draw(st.booleans())
    priority = draw(priorities)
    default = draw(st.sampled_from([None, priority, 128]))
    alias, group, subgroup = draw(small), draw(small), draw(small)
    wire = encode_subgroup_header(
        alias, group, subgroup, priority, extensions=extensions, default_priority=default
    )
    header = SubgroupHeader(wire[0], alias, group, subgroup, priority)
    events: list[DataEvent16] = [header]
    object_id = -1
    for _ in range(draw(st.integers(0, 4))):
        delta = draw(st.integers(0, 3))
        object_id = delta if object_id < 0 else object_id + delta + 1
        status = draw(st.sampled_from([STATUS_NORMAL, STATUS_END_OF_GROUP, STATUS_END_OF_TRACK]))
        payload = draw(st.binary(max_size=10)) if status == STATUS_NORMAL else b""
        ext = draw(extension_blocks) if extensions and status == STATUS_NORMAL else b""
        wire += encode_subgroup_object(
            delta, payload, extensions=ext if extensions else None, status=status
        )
        events.append(ObjectRecord(object_id, payload, status, ext))
    cuts = draw(st.lists(st.integers(0, len(wire)), max_size=6))
    return wire, events, sorted(cuts)


class RoundTripTests(SynchronousTestCase):
    """Encoders and decoders agree, however the stream is split."""

    @settings(max_examples=200, deadline=None)
    @given(subgroup_streams())
    def test_subgroup_streams(self, stream: tuple[bytes, list[DataEvent16], list[int]]) -> None:
        wire, expected, cuts = stream
        header = expected[0]
        assert isinstance(header, SubgroupHeader)
        decoder = DataStreamDecoder16(default_priority=lambda _: header.publisher_priority)
        events: list[DataEvent16] = []
        start = 0
        for cut in [*cuts, len(wire)]:
            events += decoder.feed(wire[start:cut])
            start = cut
        decoder.end_of_stream()
        self.assertEqual(events, expected)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.builds(
                FetchObject16,
                st.integers(0, 5),
                st.none() | st.integers(0, 5),
                st.integers(0, 5),
                st.sampled_from([0, 128]),
                extension_blocks,
                st.binary(max_size=5),
            )
            | st.builds(FetchRangeEnd, st.integers(0, 5), st.integers(0, 5), st.booleans()),
            max_size=8,
        )
    )
    def test_fetch_streams(self, entries: list[FetchObject16 | FetchRangeEnd]) -> None:
        encoder = FetchStreamEncoder16()
        wire = encoder.header(1)
        for entry in entries:
            if isinstance(entry, FetchRangeEnd):
                wire += encoder.encode_range_end(entry)
            else:
                wire += encoder.encode(entry)
        self.assertEqual(feed_bytewise(wire), [FetchHeader(1), *entries])

    @settings(max_examples=200, deadline=None)
    @given(
        st.builds(
            ObjectDatagram,
            small,
            small,
            small,
            priorities,
            st.just(b""),
            st.binary(max_size=8),
            st.none(),
            st.booleans(),
        )
        | st.builds(
            ObjectDatagram,
            small,
            small,
            small,
            priorities,
            extension_blocks,
            st.just(b""),
            st.sampled_from([STATUS_NORMAL, STATUS_END_OF_GROUP, STATUS_END_OF_TRACK]),
            st.just(False),
        ).filter(lambda d: d.status == STATUS_NORMAL or not d.extensions),
        st.sampled_from([None, 0, 128]),
    )
    def test_datagrams(self, datagram: ObjectDatagram, default: int | None) -> None:
        wire = encode_datagram(datagram, default_priority=default)
        decoded = decode_datagram(wire, lambda _: datagram.publisher_priority)
        self.assertEqual(decoded, datagram)
