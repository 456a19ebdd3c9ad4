"""Tests for the wire layer's WebSocket polyfill frame codec (moqrelay.wire.polyfill)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from moqrelay.wire.errors import ProtocolViolation
from moqrelay.wire.polyfill import (
    MAX_STREAM_FRAME_DATA,
    STREAM_HEADER_MAX,
    ApplicationCloseFrame,
    Frame,
    ResetStreamFrame,
    StopSendingFrame,
    StreamFrame,
    decode_frame,
    encode_frame,
    split_stream_frame,
)
from moqrelay.wire.varint import MAX_VARINT

_ROUND_TRIPS = settings(max_examples=500, database=None, derandomize=True, deadline=None)
_FUZZ = settings(max_examples=10_000, database=None, derandomize=True, deadline=None)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# Section 8 of webtransport-over-websocket.md, one WebSocket message a line.
CAPTURE: list[tuple[str, Frame]] = [
    ("08 00 20", StreamFrame(0, h("20"), False)),
    ("08 00 00 2c", StreamFrame(0, h("00 2c"), False)),
    (
        "08 00 03 c0 00 00 00 ff 0d ad 02 c0 00 00 00 ff 0d ad 01 c0 00 00 00 ff 00 00 0e"
        " 02 02 80 00 a4 55 07 0b 6d 6f 71 2d 6c 69 74 65 2d 6a 73",
        StreamFrame(
            0,
            h(
                "03 c0 00 00 00 ff 0d ad 02 c0 00 00 00 ff 0d ad 01 c0 00 00 00 ff 00 00 0e"
                " 02 02 80 00 a4 55 07 0b"
            )
            + b"moq-lite-js",
            False,
        ),
    ),
    (
        "08 00 21 00 0c c0 00 00 00 ff 00 00 0e 01 02 40 64",
        StreamFrame(0, h("21 00 0c c0 00 00 00 ff 00 00 0e 01 02 40 64"), False),
    ),
    ("08 00 03", StreamFrame(0, h("03"), False)),
    ("08 00 00 17", StreamFrame(0, h("00 17"), False)),
    (
        "08 00 00 02 04 6c 69 76 65 04 64 65 6d 6f 05 76 69 64 65 6f 80 02 01 02 00",
        StreamFrame(
            0,
            h("00 02 04") + b"live" + h("04") + b"demo" + h("05") + b"video" + h("80 02 01 02 00"),
            False,
        ),
    ),
    (
        "08 00 04 00 06 00 00 00 02 00 00",
        StreamFrame(0, h("04 00 06 00 00 00 02 00 00"), False),
    ),
    (
        "08 03 14 00 00 00 00 00 04 61 62 63 64 00 04 65 66 67 68",
        StreamFrame(3, h("14 00 00 00 00 00 04") + b"abcd" + h("00 04") + b"efgh", False),
    ),
    ("09 03", StreamFrame(3, b"", True)),
    ("1d 00", ApplicationCloseFrame(0, "")),
]

# The encoding cheat-sheet of the same document.
CHEAT_SHEET: list[tuple[str, Frame]] = [
    ("08 07 aa bb", StreamFrame(7, h("aa bb"), False)),
    ("09 07", StreamFrame(7, b"", True)),
    ("04 07 01", ResetStreamFrame(7, 1)),
    ("05 02 00", StopSendingFrame(2, 0)),
    ("08 40 43 00", StreamFrame(67, h("00"), False)),
    ("1d 03 62 61 64", ApplicationCloseFrame(3, "bad")),
]


class KnownBytesTests(SynchronousTestCase):
    def check(self, table: list[tuple[str, Frame]]) -> None:
        for text, frame in table:
            with self.subTest(text):
                self.assertEqual(decode_frame(h(text)), frame)
                self.assertEqual(encode_frame(frame), h(text))

    def test_capture(self) -> None:
        """Every message of the real @moq/lite capture decodes and re-encodes exactly."""
        self.check(CAPTURE)

    def test_cheat_sheet(self) -> None:
        self.check(CHEAT_SHEET)

    def test_capture_subgroup_is_server_uni_stream(self) -> None:
        frame = decode_frame(h("08 03 14"))
        assert isinstance(frame, StreamFrame)
        self.assertEqual(frame.stream_id & 0x3, 0x3)

    def test_decode_accepts_bytearray_and_memoryview(self) -> None:
        data = h("08 07 aa bb")
        expected = StreamFrame(7, h("aa bb"), False)
        self.assertEqual(decode_frame(bytearray(data)), expected)
        self.assertEqual(decode_frame(memoryview(data)), expected)
        decoded = decode_frame(memoryview(data))
        assert isinstance(decoded, StreamFrame)
        self.assertIs(type(decoded.data), bytes)

    def test_long_varints(self) -> None:
        frame = ResetStreamFrame(MAX_VARINT, MAX_VARINT)
        encoded = encode_frame(frame)
        self.assertEqual(encoded, b"\x04" + b"\xff" * 8 + b"\xff" * 8)
        self.assertEqual(decode_frame(encoded), frame)

    def test_non_shortest_varint_accepted(self) -> None:
        self.assertEqual(decode_frame(h("08 40 07 aa")), StreamFrame(7, h("aa"), False))

    def test_max_stream_frame_data(self) -> None:
        self.assertEqual(MAX_STREAM_FRAME_DATA, 16384 - 24)

    def test_unicode_reason(self) -> None:
        frame = ApplicationCloseFrame(0x10, "fermé ✓")
        self.assertEqual(decode_frame(encode_frame(frame)), frame)

    def test_encode_out_of_range(self) -> None:
        self.assertRaises(ValueError, encode_frame, StreamFrame(MAX_VARINT + 1, b"", False))
        self.assertRaises(ValueError, encode_frame, ResetStreamFrame(0, -1))


class BadInputTests(SynchronousTestCase):
    def assertViolation(self, text: str, fragment: str) -> None:
        with self.assertRaises(ProtocolViolation) as caught:
            decode_frame(h(text))
        self.assertIn(fragment, caught.exception.reason)
        self.assertEqual(caught.exception.code, 0x3)

    def test_empty(self) -> None:
        self.assertViolation("", "empty")

    def test_unknown_types(self) -> None:
        for kind in (0x00, 0x06, 0x0A, 0x1C, 0x1E, 0x3F, 0x40, 0xFF):
            with self.subTest(kind):
                self.assertViolation(f"{kind:02x} 00 00", "unknown")

    def test_truncated(self) -> None:
        for text in ("08", "09", "08 40", "04", "04 07", "05 02", "05 80 00 00", "1d", "1d c0"):
            with self.subTest(text):
                self.assertViolation(text, "truncated")

    def test_trailing_bytes(self) -> None:
        self.assertViolation("04 07 01 00", "trailing")
        self.assertViolation("05 02 00 ff", "trailing")

    def test_bad_utf8_reason(self) -> None:
        self.assertViolation("1d 00 ff", "UTF-8")
        self.assertViolation("1d 00 e2 9c", "UTF-8")


def varints() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 0x3F),
        st.integers(0, 0x3FFF),
        st.integers(0, 0x3FFF_FFFF),
        st.integers(0, MAX_VARINT),
    )


frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(StreamFrame, varints(), st.binary(max_size=64), st.booleans()),
    st.builds(ResetStreamFrame, varints(), varints()),
    st.builds(StopSendingFrame, varints(), varints()),
    st.builds(ApplicationCloseFrame, varints(), st.text(max_size=32)),
)


class PropertyTests(SynchronousTestCase):
    @_ROUND_TRIPS
    @given(frames)
    def test_round_trip(self, frame: Frame) -> None:
        self.assertEqual(decode_frame(encode_frame(frame)), frame)

    @_ROUND_TRIPS
    @given(frames)
    def test_truncation_never_decodes_to_the_same_frame(self, frame: Frame) -> None:
        encoded = encode_frame(frame)
        for end in range(len(encoded)):
            try:
                decoded = decode_frame(encoded[:end])
            except ProtocolViolation:
                continue
            # Only frames whose tail is free-form (data, reason) can decode shorter.
            self.assertIsInstance(decoded, (StreamFrame, ApplicationCloseFrame))
            self.assertNotEqual(decoded, frame)

    @_FUZZ
    @given(st.binary(max_size=24))
    def test_fuzz_random_bytes(self, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except ProtocolViolation:
            return
        self.assertEqual(decode_frame(encode_frame(frame)), frame)

    @_ROUND_TRIPS
    @given(frames, st.integers(0, 255))
    def test_fuzz_mutations(self, frame: Frame, value: int) -> None:
        """Overwriting any one byte of a valid frame decodes or raises ProtocolViolation."""
        encoded = encode_frame(frame)
        for where in range(len(encoded)):
            mutated = encoded[:where] + bytes((value,)) + encoded[where + 1 :]
            try:
                decode_frame(mutated)
            except ProtocolViolation:
                pass

    @_FUZZ
    @given(st.one_of(frames.map(encode_frame), st.binary(max_size=24)))
    def test_split_stream_frame_agrees_with_decode(self, message: bytes) -> None:
        """Whenever the header split finds a STREAM frame, decode_frame finds the same one."""
        split = split_stream_frame(message[:STREAM_HEADER_MAX])
        if split is None:
            self.assertFalse(
                len(message) >= STREAM_HEADER_MAX and message[0] in (0x08, 0x09),
                "a STREAM frame with a whole header must split",
            )
            return
        stream_id, offset, fin = split
        self.assertEqual(decode_frame(message), StreamFrame(stream_id, message[offset:], fin))


class SplitStreamFrameTests(SynchronousTestCase):
    def test_examples(self) -> None:
        self.assertEqual(split_stream_frame(bytes.fromhex("08 03 14 00")), (3, 2, False))
        self.assertEqual(split_stream_frame(bytes.fromhex("09 03")), (3, 2, True))
        self.assertEqual(split_stream_frame(bytes.fromhex("08 40 43 00")), (67, 3, False))
        self.assertEqual(
            split_stream_frame(bytes.fromhex("08 c0 00 00 00 00 00 00 07")), (7, 9, False)
        )

    def test_not_a_stream_frame(self) -> None:
        self.assertIsNone(split_stream_frame(b""))
        self.assertIsNone(split_stream_frame(b"\x08"))
        self.assertIsNone(split_stream_frame(bytes.fromhex("04 03 00")))
        self.assertIsNone(split_stream_frame(bytes.fromhex("1d 00")))
        self.assertIsNone(split_stream_frame(bytes.fromhex("08 40")))  # truncated stream id
